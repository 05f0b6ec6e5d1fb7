// The pixel pad: a 3x3 display the user draws on, classified at each click; each answer is announced to the page
// as a "pixels:classified" event (the network view draws it).

import { onKeyChange, postJSON } from "./api.js";
import { $, bar, percent } from "./ui.js";

const BLACK = -1;
const GREY = 0;
const WHITE = 1;
const NAMES = { [BLACK]: "black", [GREY]: "grey", [WHITE]: "white" };
const NEXT = { [BLACK]: GREY, [GREY]: WHITE, [WHITE]: BLACK };
const pixels = new Array(9).fill(BLACK);
const padButtons = [];
const symbolPatterns = new Map(); // name -> 3 rows of 3 pixels, from /static/symbols.json
const symbolRows = new Map(); // name -> its <li> in the result list
let classifySeq = 0;

function renderPad() {
  pixels.forEach((value, i) => {
    const button = padButtons[i];
    button.dataset.value = String(value);
    button.setAttribute("aria-label", `Row ${Math.floor(i / 3) + 1}, column ${(i % 3) + 1}: ${NAMES[value]}`);
  });
}

function buildPad() {
  const pad = $("pad");
  for (let i = 0; i < 9; i++) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "pixel";
    button.dataset.index = String(i);
    button.addEventListener("click", () => {
      pixels[i] = NEXT[pixels[i]];
      renderPad();
      classify();
    });
    padButtons.push(button);
    pad.append(button);
  }
  renderPad();
}

function miniSymbol(name) {
  const mini = document.createElement("button");
  mini.type = "button";
  mini.className = "mini";
  mini.setAttribute("aria-label", `Draw ${name} on the pad`);
  const pattern = symbolPatterns.get(name);
  if (pattern) {
    for (const value of pattern.flat()) {
      const cell = document.createElement("span");
      cell.dataset.value = String(value);
      mini.append(cell);
    }
    mini.addEventListener("click", () => {
      pattern.flat().forEach((value, i) => {
        pixels[i] = value;
      });
      renderPad();
      classify();
    });
  } else {
    mini.disabled = true;
  }
  return mini;
}

function symbolRow(name) {
  let row = symbolRows.get(name);
  if (row) return row;
  row = document.createElement("li");
  row.className = "bar-row symbol-row";
  row.dataset.symbol = name;
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  const value = document.createElement("span");
  value.className = "value";
  row.append(miniSymbol(name), label, bar(0), value);
  $("pixel-bars").append(row);
  symbolRows.set(name, row);
  return row;
}

async function classify() {
  const seq = ++classifySeq;
  const grid = [pixels.slice(0, 3), pixels.slice(3, 6), pixels.slice(6, 9)];
  const result = $("pixel-symbol");
  try {
    // explain: every layer's activations too, for the network view (network.js listens for them).
    const data = await postJSON("/v1/classify", { pixels: grid, explain: true });
    if (seq !== classifySeq) return; // the pad changed while this was in flight
    document.dispatchEvent(new CustomEvent("pixels:classified", { detail: data }));
    for (const [name, p] of Object.entries(data.probabilities)) {
      const row = symbolRow(name);
      row.querySelector(".fill").style.width = `${p * 100}%`;
      row.querySelector(".value").textContent = percent(p);
      row.classList.toggle("best", name === data.symbol);
    }
    result.textContent = data.symbol;
    result.dataset.symbol = data.symbol;
    result.classList.remove("error");
  } catch (error) {
    if (seq !== classifySeq) return;
    result.textContent = `an error: ${error.message}`;
    result.dataset.symbol = "";
    result.classList.add("error");
  }
}

async function loadSymbols() {
  try {
    const data = await (await fetch("/static/symbols.json")).json();
    for (const symbol of data.symbols) {
      if (symbol.pixels) symbolPatterns.set(symbol.name, symbol.pixels);
      symbolRow(symbol.name); // the classifier's own order, before the first answer arrives
    }
  } catch {
    // Without the drawings the bars still work; the names then come from the first answer.
  }
}

$("pad-clear").addEventListener("click", () => {
  pixels.fill(BLACK);
  renderPad();
  classify();
});

export function start() {
  buildPad();
  loadSymbols().then(classify);
  onKeyChange(classify);
}
