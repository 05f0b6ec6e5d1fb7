"""The playground page at GET /: its files, and the page itself driven in Debian's chromium through Playwright."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from model.pixels import SYMBOL_DRAWINGS
from service.api.playground import STATIC_DIR, add_playground

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"
# Set to 1 to refresh the README's screenshot from this run.
UPDATE_DOCS = os.environ.get("TINYSERVE_UPDATE_SCREENSHOT") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI containers run as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Nothing but the server under test: no update checks, no sync, no component downloads.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "JULIET.\nO Romeo, Romeo"
STATIC_TYPES = {"app.js": "javascript", "style.css": "text/css", "index.html": "text/html"}
# The views' modules: served as JavaScript, which a browser requires of a module script.
MODULES = [
    "api.js",
    "ui.js",
    "complete.js",
    "tokenizer.js",
    "pixels.js",
    "network.js",
    "attention.js",
    "embeddings.js",
    "constrained.js",
]
# The README's pictures of the views, refreshed with TINYSERVE_UPDATE_SCREENSHOT=1.
VIEW_SHOTS = {"#network": "network.png", "#attention": "attention.png", "#embeddings": "embeddings.png"}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: `apt-get install chromium` (as .ci/run does)"
)


# ---- without a browser ----------------------------------------------------------------------------------------


def test_playground_replaces_the_index_route_and_serves_its_files():
    app = FastAPI()

    @app.get("/")
    async def index() -> PlainTextResponse:  # stands in for LitServe's own GET /
        return PlainTextResponse("litserve running")

    add_playground(app)
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "litserve running" not in page.text and "/static/app.js" in page.text
    for name, kind in {**STATIC_TYPES, **dict.fromkeys(MODULES, "javascript")}.items():
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], (name, r.headers)
    assert client.get("/static/missing.js").status_code == 404
    symbols = client.get("/static/symbols.json").json()["symbols"]
    assert [s["name"] for s in symbols] == list(SYMBOL_DRAWINGS)
    plus = next(s for s in symbols if s["name"] == "plus")
    assert plus["pixels"] == [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]


def test_static_files_load_nothing_from_outside():
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} >= set(STATIC_TYPES)
    for f in files:
        text = f.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), f"external URL in {f.name}"
        assert "@import" not in text and "@font-face" not in text, f.name


def test_server_serves_the_playground(base_url):
    page = httpx.get(f"{base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "tinyserve playground" in page.text
    for name, kind in STATIC_TYPES.items():
        r = httpx.get(f"{base_url}/static/{name}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert httpx.get(f"{base_url}/static/symbols.json", timeout=10).json()["symbols"][0]["name"] == "plus"
    # The API's own routes are untouched by the mount and the new index.
    assert httpx.get(f"{base_url}/health", timeout=10).text == "ok"
    assert "/" not in httpx.get(f"{base_url}/openapi.json", timeout=10).json()["paths"]


# ---- in a browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def open_page(browser: Browser, base_url: str, **context_args) -> tuple[Page, list[str]]:
    """A fresh page on the playground; the list collects console errors and requests that left the server."""
    page = browser.new_context(**context_args).new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "request",
        lambda req: None if req.url.startswith((base_url, "data:")) else problems.append(f"external: {req.url}"),
    )
    page.goto(f"{base_url}/")
    page.wait_for_selector("#tok-chips .chip")  # the script ran and the tokenizer answered
    return page, problems


def set_range(page: Page, selector: str, value: float) -> None:
    page.eval_on_selector(
        selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(value)
    )


def chip_text(page: Page) -> str:
    """The generated text as the chips show it, with the visible whitespace marks turned back into whitespace."""
    shown = page.eval_on_selector_all("#output .chip.gen", "chips => chips.map(c => c.textContent).join('')")
    return shown.replace("\u00b7", " ").replace("\u21b5", "\n").replace("\u2192", "\t")


# Pixel values in the order a click cycles them.
CYCLE = [-1, 0, 1]


def draw(page: Page, pattern: list[list[int]]) -> None:
    """Click each pad button until it shows the pattern's value (black -> grey -> white -> black)."""
    for i, target in enumerate(v for row in pattern for v in row):
        button = page.locator(f"#pad .pixel[data-index='{i}']")
        current = int(button.get_attribute("data-value") or "0")
        for _ in range((CYCLE.index(target) - CYCLE.index(current)) % 3):
            button.click()


@needs_chromium
def test_playground_in_chromium(browser, base_url, artifacts):
    page, problems = open_page(browser, base_url, viewport={"width": 1280, "height": 900})

    # Tokenizer: typing re-tokenizes the prompt, and the chips carry the server's ids.
    page.fill("#prompt", PROMPT)
    expected = httpx.post(f"{base_url}/v1/tokenize", json={"prompt": PROMPT}, timeout=10).json()
    page.wait_for_function(f"document.querySelectorAll('#tok-chips .chip').length === {expected['count']}")
    ids = page.eval_on_selector_all("#tok-chips .chip .id", "els => els.map(e => Number(e.textContent))")
    assert ids == expected["tokens"]
    assert f"{expected['count']} of {expected['max_model_len']} tokens" in page.inner_text("#tok-count")

    # Completion: seeded, so the streamed chips must spell the same text as a plain request with the same settings.
    set_range(page, "#temperature", 0.8)
    page.fill("#top_k", "40")
    page.fill("#max_tokens", "32")
    page.fill("#seed", "7")
    # Count chips at each change of the output, to see them arrive over time rather than all at once.
    page.evaluate(
        """() => {
        window.chipCounts = [];
        const out = document.getElementById('output');
        new MutationObserver(() => {
            if (out.dataset.state === 'streaming') window.chipCounts.push(out.querySelectorAll('.chip').length);
        }).observe(out, {childList: true});
    }"""
    )
    page.click("#generate")
    page.wait_for_selector("#output[data-state='done']", timeout=60_000)
    n_chips = page.locator("#output .chip.gen").count()
    counts = page.evaluate("window.chipCounts")
    assert n_chips > 1 and len({c for c in counts if c > 0}) > 1, counts  # chips came in more than one step
    plain = httpx.post(
        f"{base_url}/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 32, "temperature": 0.8, "top_k": 40, "seed": 7},
        timeout=60,
    ).json()
    assert chip_text(page) == plain["choices"][0]["text"]
    assert n_chips == plain["usage"]["completion_tokens"] or plain["choices"][0]["finish_reason"] == "stop"
    assert re.match(r"\d+ tokens", page.inner_text("#gen-status"))
    assert page.get_attribute("#output", "aria-busy") == "false"

    # Hovering a chip shows that step's five likeliest tokens, largest first, the chosen one marked when among them.
    page.hover("#output .chip[data-step='2']")
    page.wait_for_selector("#probs[data-step='2']")
    assert page.locator("#probs-bars li").count() == 5
    assert page.locator("#probs-bars li.chosen").count() <= 1
    widths = page.eval_on_selector_all("#probs-bars .fill", "els => els.map(e => parseFloat(e.style.width))")
    assert widths == sorted(widths, reverse=True) and 0 < sum(widths) <= 100.01
    # And from the keyboard: focus a chip, then the arrow keys walk the tokens.
    page.mouse.move(0, 0)
    page.focus("#output .chip[data-step='0']")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#probs[data-step='1']")
    assert page.evaluate("document.activeElement.dataset.step") == "1"
    assert page.locator("#probs-bars li").count() == 5

    # Pixel pad: click the grid into each symbol and read the answer (the first one last, for the screenshot).
    symbols = httpx.get(f"{base_url}/static/symbols.json", timeout=10).json()["symbols"]
    for symbol in reversed(symbols):
        draw(page, symbol["pixels"])
        page.wait_for_selector(f"#pixel-symbol[data-symbol='{symbol['name']}']")
        assert page.locator("#pixel-bars .symbol-row").count() == 4
        assert page.get_attribute("#pixel-bars .symbol-row.best", "data-symbol") == symbol["name"]
    page.focus(f"#output .chip[data-step='{min(9, n_chips - 1)}']")
    page.screenshot(path=str(artifacts / "playground-desktop.png"), full_page=True)

    # Stop: a long generation ends early, on request, and the page says so. Stop is clicked at once: a quiet server
    # sends all 200 tokens before the page draws the first, so waiting for a token first would race the stream's end.
    page.fill("#max_tokens", "200")
    page.click("#generate")
    page.click("#stop")
    page.wait_for_selector("#output[data-state='stopped']")
    assert page.locator("#output .chip.gen").count() < 200
    assert page.is_enabled("#generate") and not page.is_enabled("#stop")

    assert not problems, problems
    if UPDATE_DOCS:
        shutil.copy(artifacts / "playground-desktop.png", REPO / "docs" / "playground.png")


@needs_chromium
def test_playground_on_a_phone(browser, base_url, artifacts):
    page, problems = open_page(
        browser,
        base_url,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.fill("#max_tokens", "24")
    page.fill("#seed", "1")
    page.tap("#generate")
    page.wait_for_selector("#output[data-state='done']", timeout=60_000)
    page.tap("#output .chip[data-step='1']")
    page.wait_for_selector("#probs[data-step='1']")
    assert page.locator("#probs-bars li").count() == 5
    draw(page, [[1, 1, 1], [1, -1, 1], [1, 1, 1]])
    page.wait_for_selector("#pixel-symbol[data-symbol='ring']")
    page.screenshot(path=str(artifacts / "playground-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not problems, problems


def hidden_values(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#net-svg .neuron[data-layer='hidden1'], #net-svg .neuron[data-layer='hidden2']",
        "els => els.map(e => e.dataset.value)",
    )


def shown_weights(page: Page) -> list[float | None]:
    return page.eval_on_selector_all(
        "#att-tokens .att-chip", "els => els.map(e => e.dataset.weight === undefined ? null : Number(e.dataset.weight))"
    )


@needs_chromium
def test_inside_views_in_chromium(browser, base_url, artifacts):
    page, problems = open_page(browser, base_url, viewport={"width": 1280, "height": 900})

    # Network: drawn from the live description, every weight a line; the shading follows the pad.
    network = httpx.get(f"{base_url}/v1/classify/network", timeout=10).json()
    sizes = [layer["size"] for layer in network["layers"]]
    page.wait_for_selector("#net-svg .neuron[data-value]")
    assert page.locator("#net-svg .neuron").count() == sum(sizes)
    assert page.locator("#net-svg .weights line").count() == sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    assert page.locator("#net-svg .weights line.neg").count() > 0 and page.locator("#net-svg .weights line.pos").count()
    before = hidden_values(page)
    plus = [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]
    explained = httpx.post(f"{base_url}/v1/classify", json={"pixels": plus, "explain": True}, timeout=10).json()
    acts = explained["activations"]
    draw(page, plus)
    # The shading of the last answer, that of the finished drawing (earlier clicks' answers may come first).
    page.wait_for_function(
        "expected => [...document.querySelectorAll('#net-svg .neuron[data-layer=hidden1]')]"
        ".every((e, i) => Math.abs(Number(e.dataset.value) - expected[i]) < 1e-3)",
        arg=acts["hidden1"],
    )
    after = hidden_values(page)
    assert after != before  # a click on a pixel changed the neurons' shading
    assert [float(v) for v in after] == pytest.approx(acts["hidden1"] + acts["hidden2"], abs=1e-3)
    fills = page.eval_on_selector_all(
        "#net-svg .neuron[data-layer='hidden2']", "els => els.map(e => getComputedStyle(e).fill)"
    )
    assert len(set(fills)) > 1  # shaded by value, not one colour
    page.focus("#net-svg .neuron[data-layer='hidden2'][data-index='3']")
    assert f"{acts['hidden2'][3]:.3f}" in page.inner_text("#net-caption")  # the number, not just the shade
    page.locator("#network").screenshot(path=str(artifacts / "network.png"))

    # Attention: the tokens of the live answer; focusing a token shades the earlier ones by its attention.
    page.click("#attention .preset >> nth=1")
    prompt = page.get_attribute("#attention .preset >> nth=1", "data-prompt")
    answer = httpx.post(f"{base_url}/v1/attention", json={"prompt": prompt}, timeout=10).json()
    n = len(answer["tokens"])
    page.wait_for_function(f"document.querySelectorAll('#att-tokens .att-chip').length === {n}")
    page.wait_for_selector("#att-tokens .att-chip.query")  # the preset shows its ambiguous word at once
    page.focus("#att-tokens .att-chip >> nth=1")
    page.keyboard.press("End")
    page.wait_for_selector(f"#att-tokens .att-chip.query[data-index='{n - 1}']")
    last = shown_weights(page)
    cells = [head[n - 1] for heads in answer["attentions"] for head in heads]
    average = [sum(c[k] for c in cells) / len(cells) for k in range(n)]
    assert last == pytest.approx(average, abs=2e-4) and sum(filter(None, last)) == pytest.approx(1, abs=1e-3)
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector(f"#att-tokens .att-chip.query[data-index='{n - 2}']")
    assert shown_weights(page)[-1] is None and shown_weights(page) != last  # the shading changed with the focus
    page.select_option("#att-layer", "0")
    page.select_option("#att-head", "0")
    assert shown_weights(page)[: n - 1] == pytest.approx(answer["attentions"][0][0][n - 2], abs=1e-4)
    assert "looks most at" in page.inner_text("#att-caption")
    page.locator("#attention").screenshot(path=str(artifacts / "attention.png"))

    # Embeddings: the plane from the live answer; a word's neighbours on hover; the analogy; the path of a word.
    page.wait_for_selector("#emb-svg[data-state='ready']")
    words = [w.strip() for w in page.input_value("#emb-words").split(",")]
    assert page.locator("#emb-svg .pt.word").count() == len(words)
    # Focus, and a mouse over (dispatched: a label drawn later may lie over a point, and the mouse would meet it).
    page.focus("#emb-svg .pt.word >> nth=0")
    page.wait_for_selector(f"#emb-detail[data-word='{words[0]}']")
    page.dispatch_event("#emb-svg .pt.word >> nth=1", "mouseover")
    page.wait_for_selector(f"#emb-detail[data-word='{words[1]}']")
    page.dispatch_event("#emb-svg .pt.word >> nth=0", "mouseover")
    page.wait_for_selector(f"#emb-detail[data-word='{words[0]}']")
    assert page.locator("#emb-svg .pt.near").count() == 6
    a, b, c = (page.input_value(f"#an-{x}") for x in "abc")
    body = {"words": words, "context": page.input_value("#emb-context"), "neighbours": 6, "analogy": [a, b, c]}
    plane = httpx.post(f"{base_url}/v1/embeddings/map", json=body, timeout=10).json()
    assert plane["words"][0]["neighbours"][0]["word"].strip() in page.inner_text("#emb-detail")
    assert page.inner_text("#an-out").startswith(plane["analogy"]["nearest"][0]["word"].strip())
    occurrences = plane["context"]["occurrences"]
    assert occurrences and page.locator("#emb-svg .path").count() == len(occurrences)
    assert page.locator("#emb-paths li").count() == len(occurrences)
    page.fill("#an-a", "night")
    page.press("#an-c", "Enter")  # the analogy box asks again
    page.wait_for_selector(f"#emb-svg .pt.analogy[aria-label^='night - {b} + {c}']")
    page.fill("#an-a", a)
    page.press("#an-c", "Enter")
    page.wait_for_selector(f"#emb-svg .pt.analogy[aria-label^='{a} - {b} + {c}']")
    page.focus("#emb-svg .pt.word >> nth=0")
    page.locator("#embeddings").screenshot(path=str(artifacts / "embeddings.png"))

    assert not problems, problems
    if UPDATE_DOCS:
        for name in VIEW_SHOTS.values():
            shutil.copy(artifacts / name, REPO / "docs" / name)


@needs_chromium
def test_constrained_view_in_chromium(browser, base_url, artifacts):
    page, problems = open_page(browser, base_url, viewport={"width": 1280, "height": 900})
    schema = json.loads(page.input_value("#con-spec"))
    page.select_option("#con-kind", "choice")
    page.fill("#con-spec", "Ay\nNo")
    page.click("#con-run")
    page.wait_for_function("['Ay', 'No'].includes(document.querySelector('#con-out').textContent)")
    page.select_option("#con-kind", "json")
    page.fill("#con-spec", json.dumps(schema))
    page.click("#con-run")
    page.wait_for_function("document.querySelector('#con-out').textContent.startsWith('{')")
    page.wait_for_selector("#con-steps li")
    reply = json.loads(page.inner_text("#con-out"))
    jsonschema.validate(reply, schema)  # the page's own schema, kept
    steps = page.locator("#con-steps li")
    assert steps.count() >= 4
    assert page.locator("#con-steps .alt.forbidden").count() > 0  # the mask struck out some likely tokens
    assert page.locator("#con-steps .alt.chosen.forbidden").count() == 0  # never the one chosen
    assert "forbidden by the grammar" in page.inner_text("#con-steps")  # said, not only drawn
    page.locator("#constrained").screenshot(path=str(artifacts / "constrained.png"))
    assert not problems, problems
    if UPDATE_DOCS:
        shutil.copy(artifacts / "constrained.png", REPO / "docs" / "constrained.png")
