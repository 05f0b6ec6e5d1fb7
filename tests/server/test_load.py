"""Load testing: the `python -m bench` CLI and the Locust users against the shared server, and the load generator's
stream parsing and statistics against fake servers. Each is kept to a few requests: the suite checks that the tools
measure and count right, not how fast the server is."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from bench.__main__ import main as bench_main
from bench.compare_report import ENGINE, HF, HF_CB, NAIVE, TINYSERVE, render
from bench.loadgen import LoadConfig, Result, run_load, summarize
from bench.prompts import build_prompts, local_tokenizer
from tests.conftest import REPO, free_port

SMALL = ["--max-tokens", "8", "--prompt-tokens", "8", "--warmup", "1", "--no-progress"]
STAT_KEYS = {"mean", "median", "p90", "p99"}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    rc = bench_main([*args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


# ---- the CLI against the shared server ----------------------------------------------------------------------------


def test_cli_json_has_vllm_metrics(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(capsys, "--url", base_url, "--concurrency", "2", "--num-requests", "4", *SMALL)
    assert rc == 0
    assert out["completed"] == 4 and out["failed"] == 0 and out["failures"] == {}
    for key in ("ttft_s", "tpot_s", "itl_s", "e2el_s"):
        assert set(out[key]) == STAT_KEYS
        assert 0 < out[key]["median"] <= out[key]["p99"]
    assert out["request_throughput"] > 0 and out["output_throughput"] > 0
    assert 4 <= out["output_tokens"] <= 4 * 8
    assert out["ttft_s"]["median"] < out["e2el_s"]["median"]
    assert out["tokenizer"] == "server /v1/tokenize"
    assert out["prompt_tokens"] == pytest.approx(8, abs=1)  # windows re-tokenized may merge at an edge


def test_cli_sweep_writes_plot_and_table(base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(
        capsys, "--url", base_url, "--sweep", "1,2", "--num-requests", "4", "--out", str(tmp_path), *SMALL
    )
    assert rc == 0
    assert [level["config"]["concurrency"] for level in out["levels"]] == [1, 2]
    png = tmp_path / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| concurrency |") and "TTFT" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["1", "2"]
    assert json.loads((tmp_path / "sweep.json").read_text())["levels"][1]["completed"] == 4


def test_cli_classify(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(
        capsys,
        "--url",
        base_url,
        "--endpoint",
        "classify",
        "--request-rate",
        "200",
        "--num-requests",
        "20",
        "--no-progress",
    )
    assert rc == 0 and out["completed"] == 20 and out["failures"] == {}
    assert set(out["e2el_s"]) == STAT_KEYS and out["request_throughput"] > 0
    assert "ttft_s" not in out  # no stream, no tokens: only latency


def test_cli_counts_failures_by_kind(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(
        capsys, "--url", f"{base_url}/no-such-prefix", "--num-requests", "3", "--tokenizer", "local", *SMALL
    )
    assert rc == 1
    assert out["completed"] == 0 and out["failures"] == {"http_404": 3}
    closed = f"http://127.0.0.1:{free_port()}"
    rc, out = run_cli(capsys, "--url", closed, "--num-requests", "3", "--tokenizer", "local", *SMALL)
    assert rc == 1 and out["failures"] == {"ClientConnectorError": 3}


def test_cli_refuses_remote_hosts() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["--url", "http://192.0.2.1:8000"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        bench_main(["--url", "http://localhost:8000", "--num-requests", "0"])


# ---- Locust -------------------------------------------------------------------------------------------------------


def test_locust_headless(base_url: str, tmp_path: Path) -> None:
    """A few seconds of both users: requests made, none failed, TTFT reported as its own entry."""
    prefix = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "deploy" / "locust" / "locustfile.py"),
        "--headless",
        "--host",
        base_url,
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "5s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "LOCUST_MAX_TOKENS": "8"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for key in (("POST", "POST /v1/completions"), ("TTFT", "/v1/completions"), ("POST", "POST /v1/classify")):
        assert key in rows, f"{key} missing from {sorted(rows)}"
        assert int(rows[key]["Request Count"]) > 0
    assert all(int(r["Failure Count"]) == 0 for r in rows.values()), rows
    # The stream's entry covers the whole stream, so it outlasts the first chunk.
    assert float(rows[("POST", "POST /v1/completions")]["Median Response Time"]) >= float(
        rows[("TTFT", "/v1/completions")]["Median Response Time"]
    )


# ---- the load generator against fake servers (no HTTP server needed) ---------------------------------------------


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _chunk(text: str, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


USAGE = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})


def _run_fake(body: bytes, status: int = 200, n: int = 2) -> dict:
    """The load generator against a one-route aiohttp server that answers every request with `body`."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="text/event-stream")

    async def go() -> dict:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            cfg = LoadConfig(url=f"http://127.0.0.1:{port}", concurrency=1, num_requests=n, warmup=0)
            return await run_load(cfg)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("body", "status", "failures", "tokens"),
    [
        (_sse(_chunk("a"), _chunk("b"), _chunk("c", "length"), USAGE, "[DONE]"), 200, {}, 3),
        # transformers serve: no [DONE], the usage rides on the last chunk; a finish reason proves the end.
        (_sse(_chunk("a"), _chunk("b", "stop")), 200, {}, 2),
        (_sse(_chunk("a"), _chunk("b")), 200, {"incomplete_stream": 2}, 0),
        (
            _sse(_chunk("a"), json.dumps({"error": {"code": "deadline_exceeded"}}), "[DONE]"),
            200,
            {"stream_error:deadline_exceeded": 2},
            0,
        ),
        (_sse(_chunk("a"), json.dumps({"error": "boom"})), 200, {"stream_error:unknown": 2}, 0),
        (_sse("{not json"), 200, {"bad_chunk": 2}, 0),
        (b'{"error": "busy"}', 503, {"http_503": 2}, 0),
    ],
)
def test_stream_outcomes(body: bytes, status: int, failures: dict[str, int], tokens: int) -> None:
    out = _run_fake(body, status)
    assert out["failures"] == failures
    assert out["output_tokens"] == tokens * (2 - sum(failures.values()))


def test_summary_definitions() -> None:
    """vLLM's: TPOT per request then averaged, ITL pooled over requests, throughput over the wall time."""
    a = Result(ok=True, ttft=0.1, e2el=0.5, itl=[0.2, 0.2], output_tokens=3)
    b = Result(ok=True, ttft=0.2, e2el=1.0, itl=[0.1, 0.3, 0.4], output_tokens=5)
    s = summarize([a, b, Result(ok=False, error="timeout")], wall=2.0)
    assert s["completed"] == 2 and s["failures"] == {"timeout": 1}
    assert s["tpot_s"]["mean"] == pytest.approx(((0.5 - 0.1) / 2 + (1.0 - 0.2) / 4) / 2)
    assert s["itl_s"]["median"] == pytest.approx(0.2) and s["itl_s"]["mean"] == pytest.approx(1.2 / 5)
    assert s["output_throughput"] == pytest.approx(8 / 2.0) and s["request_throughput"] == pytest.approx(1.0)
    assert s["e2el_s"]["p99"] == pytest.approx(0.5 + 0.99 * 0.5)  # linear interpolation, as numpy and vLLM
    assert math.isnan(summarize([], 1.0)["ttft_s"]["median"])


def test_prompts_have_the_asked_length() -> None:
    texts = local_tokenizer()
    prompts = build_prompts(texts, 40, count=4)
    assert len(set(prompts)) == 4
    assert all(abs(len(texts(p)) - 40) <= 1 for p in prompts)
    assert abs(len(texts(build_prompts(texts, 600)[0])) - 600) <= 2  # longer than the passage: it wraps


def test_compare_page_renders_from_data(tmp_path: Path) -> None:
    def level(c: int, tps: float, ttft: float) -> dict:
        st = {"mean": ttft, "median": ttft, "p90": ttft, "p99": ttft * 2}
        return {"output_throughput": tps, "ttft_s": st, "completed": 4, "output_tokens": 32, "failures": {}}

    levels = [1, 32]
    data = {
        "machine": {
            "cpu": "x",
            "cores": 2,
            "memory_gib": 1.0,
            "os": "y",
            "python": "3",
            "torch": "t",
            "transformers": "t",
            "litserve": "l",
            "cuda": False,
            "load_average_at_start": [0, 0, 0],
            "date": "d",
        },
        "settings": {
            "levels": levels,
            "prompt": "p",
            "prompt_tokens": 32,
            "max_tokens": 8,
            "threads": None,
            "tinyserve_threads": 1,
            "torch_default_threads": 2,
            "engine_threads": 2,
            "tinyserve_batch": 32,
            "requests": {"1": 4, "32": 4},
            "level_seconds": 10.0,
            "sweep": [],
        },
        "results": {
            TINYSERVE: {str(c): level(c, 100.0 * c, 0.01) for c in levels},
            ENGINE: {
                str(c): {"output_throughput": 200.0 * c, "ttft_s": level(c, 0, 0.001)["ttft_s"], "output_tokens": 32}
                for c in levels
            },
            NAIVE: {str(c): level(c, 50.0, 0.5) for c in levels},
            HF: {str(c): level(c, 2000.0, 0.02) for c in levels},
        },
        "errors": {HF_CB: "RuntimeError: it did not start"},
    }
    page = render(data, tmp_path / "performance.md")
    assert f"at least 10x {NAIVE}: 64.0x, met" in page
    assert f"at least 2x {HF}: 1.60x, **not met**" in page
    assert f"{HF_CB}: RuntimeError: it did not start" in page


def test_naive_app_speaks_the_openai_stream() -> None:
    """The baseline answers the same stream the load generator reads: text chunks, usage, [DONE]."""
    from fastapi.testclient import TestClient

    from bench.naive_app import app

    body = {"prompt": "ROMEO.\n", "max_tokens": 5, "temperature": 0, "stream": True}
    with TestClient(app) as client:
        r = client.post("/v1/completions", json=body)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-3])["choices"][0]["finish_reason"] in ("length", "stop")
    assert 1 <= json.loads(events[-2])["usage"]["completion_tokens"] <= 5


def test_bench_serve_reports_server_and_engine_side_by_side(base_url: str, tmp_path: Path) -> None:
    from bench.serve import main as bench_serve

    out = tmp_path / "serve.json"
    bench_serve(
        ["--url", base_url, "--concurrency", "1,2", "--requests-per-slot", "1", "--max-tokens", "4", "--repeat", "2"]
        + ["--json", str(out)]
    )
    data = json.loads(out.read_text())
    assert set(data["table"]) == {"1", "2"}
    for row in data["table"].values():
        assert row["failures"] == 0
        assert row["server_tps"] > 0 and row["engine_tps"] > 0 and row["engine_all_tps"] > 0
        assert row["ratio"] > 0 and row["server_ttft_p50"] > 0
    for source in ("server", "engine", "engine_all"):
        assert [len(data["runs"][source][c]) for c in ("1", "2")] == [2, 2]  # one summary per repeat
        assert all(run["output_tokens"] == 8 * 4 for run in data["runs"][source]["1"])  # 8 requests x 4 tokens
