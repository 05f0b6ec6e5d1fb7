// The attention view: a prompt's tokens; hover or focus one to see how much it attends to each earlier token, in one
// layer and head or averaged over them (POST /v1/attention).

import { onKeyChange, postJSON } from "./api.js";
import { $, appendVisible, percent, rovingFocus, spoken, srOnly } from "./ui.js";

let answer = null; // the latest /v1/attention answer
let query = -1; // the token whose attention is shown
let seq = 0;

// The attention of every query to every key for the chosen layer and head; "avg" averages over that axis.
function weights() {
  const layer = $("att-layer").value;
  const head = $("att-head").value;
  const layers = layer === "avg" ? answer.attentions : [answer.attentions[answer.layers.indexOf(Number(layer))]];
  const n = answer.tokens.length;
  const out = Array.from({ length: n }, (_, q) => new Array(q + 1).fill(0));
  let count = 0;
  for (const heads of layers) {
    const chosen = head === "avg" ? heads : [heads[answer.heads.indexOf(Number(head))]];
    for (const rows of chosen) {
      count += 1;
      rows.forEach((row, q) => row.forEach((w, k) => { out[q][k] += w; }));
    }
  }
  return out.map((row) => row.map((w) => w / count));
}

function fillSelect(select, values, noun) {
  const current = select.value;
  select.replaceChildren(new Option(`average of all ${values.length} ${noun}s`, "avg"));
  for (const v of values) select.append(new Option(`${noun} ${v}`, String(v)));
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function drawTokens() {
  const list = $("att-tokens");
  list.replaceChildren();
  answer.tokens.forEach((token, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip att-chip";
    chip.dataset.index = String(i);
    chip.tabIndex = i === 0 ? 0 : -1;
    const text = document.createElement("span");
    text.className = "tok";
    text.setAttribute("aria-hidden", "true");
    appendVisible(text, token);
    const value = document.createElement("small");
    value.className = "weight";
    chip.append(text, srOnly(spoken(token)), value);
    list.append(chip);
    if (token.includes("\n")) list.append(document.createElement("br"));
  });
}

// Shade each earlier token by the attention the chosen token pays it, and write the number under it.
function shade() {
  const chips = $("att-tokens").querySelectorAll(".att-chip");
  const caption = $("att-caption");
  if (query < 0 || !answer) {
    for (const chip of chips) {
      chip.style.removeProperty("--w");
      chip.classList.remove("query", "future");
      chip.querySelector(".weight").textContent = "";
      delete chip.dataset.weight;
    }
    caption.textContent = "Hover, focus or tap a token to see what it attends to.";
    return;
  }
  const row = weights()[query];
  chips.forEach((chip, k) => {
    const w = k <= query ? row[k] : null;
    chip.classList.toggle("query", k === query);
    chip.classList.toggle("future", w === null);
    chip.querySelector(".weight").textContent = w === null ? "" : percent(w);
    if (w === null) {
      chip.style.removeProperty("--w");
      delete chip.dataset.weight;
    } else {
      chip.style.setProperty("--w", w.toFixed(3));
      chip.dataset.weight = w.toFixed(4);
    }
  });
  const best = row.indexOf(Math.max(...row));
  const where = `${$("att-layer").selectedOptions[0].text}, ${$("att-head").selectedOptions[0].text}`;
  caption.textContent =
    `Token ${query + 1} (${spoken(answer.tokens[query])}) looks most at token ${best + 1} ` +
    `(${spoken(answer.tokens[best])}, ${percent(row[best])}); ${where}. A token sees only itself and what came before.`;
}

function choose(index) {
  query = index;
  shade();
}

async function load() {
  const mine = ++seq;
  const status = $("att-status");
  status.textContent = "Asking\u2026";
  try {
    const data = await postJSON("/v1/attention", { prompt: $("att-prompt").value });
    if (mine !== seq) return;
    answer = data;
    fillSelect($("att-layer"), data.layers, "layer");
    fillSelect($("att-head"), data.heads, "head");
    drawTokens();
    query = -1;
    shade();
    status.textContent = `${data.tokens.length} tokens, ${data.layers.length} layers of ${data.heads.length} heads.`;
    $("att-tokens").dataset.state = "ready";
  } catch (error) {
    if (mine !== seq) return;
    status.textContent = `Error: ${error.message}`;
  }
}

export function start() {
  const list = $("att-tokens");
  const index = (target) => {
    const chip = target.closest ? target.closest(".att-chip") : null;
    return chip ? Number(chip.dataset.index) : -1;
  };
  for (const kind of ["mouseover", "focusin", "click"]) {
    list.addEventListener(kind, (event) => {
      const i = index(event.target);
      if (i >= 0) choose(i);
    });
  }
  rovingFocus(list, ".att-chip", (key, i, items) =>
    ({ ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: items.length - 1 })[key],
  );
  for (const id of ["att-layer", "att-head"]) $(id).addEventListener("change", shade);
  $("att-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  for (const preset of document.querySelectorAll("#attention .preset")) {
    preset.addEventListener("click", () => {
      $("att-prompt").value = preset.dataset.prompt;
      load().then(() => {
        // Show the ambiguous word's attention at once: it is what the preset is about.
        const word = answer ? answer.tokens.findIndex((t) => t.trim() === preset.dataset.word) : -1;
        if (word >= 0) choose(word);
      });
    });
  }
  load();
  onKeyChange(load);
}
