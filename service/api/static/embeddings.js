// The embeddings view: words on the model's embedding plane (POST /v1/embeddings/map), their nearest words on hover
// or focus, the analogy box (a - b + c), and the path of a word through the layers of a sentence.

import { onKeyChange, postJSON } from "./api.js";
import { $, fixed, rovingFocus, svg } from "./ui.js";

const SIZE = 520;
const MARGIN = 40;

let answer = null;
let seq = 0;

function words() {
  return $("emb-words").value.split(",").map((w) => w.trim()).filter(Boolean);
}

function analogy() {
  const parts = ["an-a", "an-b", "an-c"].map((id) => $(id).value.trim());
  return parts.every(Boolean) ? parts : null;
}

// Every point drawn, so the plane is scaled to hold them all.
function allPoints(data) {
  const points = data.words.flatMap((w) => [w.point, ...w.neighbours.map((n) => n.point)]);
  for (const o of data.context ? data.context.occurrences : []) points.push(...o.path.map((p) => p.point));
  if (data.analogy) points.push(data.analogy.point, ...data.analogy.nearest.map((n) => n.point));
  return points;
}

function scaler(points) {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  // One scale for both axes (distances stay true), the narrower axis centred.
  const span = Math.max(x1 - x0, y1 - y0, 1e-6);
  const inner = SIZE - 2 * MARGIN;
  const dx = (span - (x1 - x0)) / 2;
  const dy = (span - (y1 - y0)) / 2;
  return ([x, y]) => [MARGIN + ((x - x0 + dx) / span) * inner, SIZE - MARGIN - ((y - y0 + dy) / span) * inner];
}

// A point of the plane: `label` is what it says on focus, `short` what is written beside it.
function point(at, cls, label, short, dataset = {}) {
  const [cx, cy] = at;
  const group = svg("g", { class: `pt ${cls}`, tabindex: -1, role: "img", "aria-label": label });
  Object.entries(dataset).forEach(([k, v]) => { group.dataset[k] = String(v); });
  group.append(svg("circle", { cx, cy, r: cls === "word" ? 5 : 3.5 }));
  const text = svg("text", { x: cx + 7, y: cy + 4 });
  text.textContent = short;
  group.append(text);
  return group;
}

function draw() {
  const plane = $("emb-svg");
  plane.replaceChildren();
  plane.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
  const at = scaler(allPoints(answer));
  plane.append(svg("g", { class: "neighbours", id: "emb-neighbours" }));
  for (const o of answer.context ? answer.context.occurrences : []) {
    const pts = o.path.map((p) => at(p.point));
    plane.append(svg("polyline", { class: "path", points: pts.map((p) => p.map((v) => fixed(v, 1)).join(",")).join(" ") }));
    o.path.forEach((p, i) => {
      const label = `${o.word} at layer ${p.layer}: nearest ${p.nearest.map((n) => n.word.trim()).join(", ")}`;
      plane.append(point(pts[i], "layer", label, `${p.layer}`, { occurrence: o.position, layer: p.layer }));
    });
  }
  answer.words.forEach((w, i) => {
    const label = `${w.word}: (${fixed(w.point[0])}, ${fixed(w.point[1])})`;
    plane.append(point(at(w.point), "word", label, w.word, { word: i }));
  });
  if (answer.analogy) {
    const { expression, point: where } = answer.analogy;
    plane.append(point(at(where), "analogy", `${expression}: the analogy's point`, expression));
  }
  const first = plane.querySelector(".pt");
  if (first) first.setAttribute("tabindex", "0");
  plane.dataset.state = "ready";
  showAnalogy();
  showPaths();
}

// A word's neighbours, drawn faintly around it and listed with their cosines.
function focusWord(index) {
  const w = answer.words[index];
  const at = scaler(allPoints(answer));
  const layer = $("emb-neighbours");
  layer.replaceChildren(
    ...w.neighbours.map((n) => point(at(n.point), "near", `${n.word.trim()}: cosine ${fixed(n.cosine)}`, n.word.trim())),
  );
  const detail = $("emb-detail");
  const tokens = w.tokens.map((t) => JSON.stringify(t)).join(" + ");
  detail.textContent =
    `${w.word} (${w.tokens.length === 1 ? "one token" : `${w.tokens.length} tokens: ${tokens}`}), nearest: ` +
    w.neighbours.map((n) => `${n.word.trim()} ${fixed(n.cosine)}`).join(", ");
  detail.dataset.word = w.word;
}

function showAnalogy() {
  const out = $("an-out");
  if (!answer.analogy) {
    out.textContent = "";
    return;
  }
  out.textContent = answer.analogy.nearest.slice(0, 5).map((n) => `${n.word.trim()} (${fixed(n.cosine)})`).join(", ");
}

function showPaths() {
  const list = $("emb-paths");
  list.replaceChildren();
  const occurrences = answer.context ? answer.context.occurrences : [];
  for (const o of occurrences) {
    const item = document.createElement("li");
    item.textContent = `${o.word} (token ${o.position + 1}): ` +
      o.path.map((p) => `layer ${p.layer} \u2192 ${p.nearest.slice(0, 3).map((n) => n.word.trim()).join("/")}`).join("; ");
    list.append(item);
  }
  if (answer.context && !occurrences.length) {
    const item = document.createElement("li");
    item.textContent = "None of the words occurs in the sentence (after a space).";
    list.append(item);
  }
}

async function load() {
  const mine = ++seq;
  const status = $("emb-status");
  status.textContent = "Asking\u2026";
  const body = { words: words(), neighbours: 6 };
  const context = $("emb-context").value.trim();
  if (context) body.context = context;
  const parts = analogy();
  if (parts) body.analogy = parts;
  try {
    const data = await postJSON("/v1/embeddings/map", body);
    if (mine !== seq) return;
    answer = data;
    draw();
    const share = data.explained_variance.map((v) => `${(v * 100).toFixed(1)}%`).join(" and ");
    status.textContent = `${data.words.length} words; the two axes hold ${share} of the embeddings' variance.`;
  } catch (error) {
    if (mine !== seq) return;
    status.textContent = `Error: ${error.message}`;
  }
}

export function start() {
  const plane = $("emb-svg");
  const pick = (event) => {
    const group = event.target.closest ? event.target.closest(".pt") : null;
    if (!group) return;
    if (group.dataset.word !== undefined) focusWord(Number(group.dataset.word));
    else $("emb-detail").textContent = group.getAttribute("aria-label");
  };
  for (const kind of ["mouseover", "focusin", "click"]) plane.addEventListener(kind, pick);
  rovingFocus(plane, ".pt:not(.near)", (key, i) =>
    ({ ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1 })[key],
  );
  for (const id of ["emb-form", "analogy-form"]) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
  }
  load();
  onKeyChange(load);
}
