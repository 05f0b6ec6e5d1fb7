// The network view: the pixel classifier's neurons and weights, drawn from GET /v1/classify/network, each neuron
// shaded by its activation for what is on the pixel pad (the pad's answers carry every layer's activations).

import { getJSON, onKeyChange } from "./api.js";
import { $, fixed, rovingFocus, svg } from "./ui.js";

const WIDTH = 640;
const HEIGHT = 420;
const TOP = 56; // room for the layer labels
const RADIUS = 9;

const LABELS = {
  input: (layer) => [`${layer.size} pixels`, "-1 black \u2026 1 white"],
  hidden1: (layer) => [`${layer.size} neurons, tanh`, "squashed to (-1, 1)"],
  hidden2: (layer) => [`${layer.size} neurons, sigmoid`, "squashed to (0, 1)"],
  output: (layer) => [`${layer.size} outputs, softmax`, "probabilities"],
};

let network = null;
let neurons = []; // per layer: the <circle>s
let last = null; // the latest activations, to describe a neuron on focus

// Room on the left for the first layer's labels and on the right for the symbols' names.
function x(layer) {
  return 70 + (layer * (WIDTH - 190)) / (network.layers.length - 1);
}

function y(index, size) {
  return TOP + ((index + 0.5) * (HEIGHT - TOP - 8)) / size;
}

// A neuron's shade, from black (the low end of its range) to white (the high end), as the pixels are drawn.
function shade(value, range) {
  const [low, high] = range || [0, 1];
  const t = Math.max(0, Math.min(1, (value - low) / (high - low)));
  const level = Math.round(t * 255);
  return `rgb(${level}, ${level}, ${level})`;
}

function draw() {
  const figure = $("net-svg");
  figure.replaceChildren();
  figure.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const lines = svg("g", { class: "weights" });
  network.weights.forEach((matrix, layer) => {
    const from = network.layers[layer].size;
    const to = network.layers[layer + 1].size;
    matrix.forEach((row, j) => {
      row.forEach((w, k) => {
        lines.append(
          svg("line", {
            x1: x(layer), y1: y(k, from), x2: x(layer + 1), y2: y(j, to),
            class: w >= 0 ? "pos" : "neg",
            "stroke-width": fixed(0.25 + 2.5 * Math.abs(w)),
          }),
        );
      });
    });
  });
  figure.append(lines);
  neurons = network.layers.map((layer, l) => {
    const [first, second] = LABELS[layer.name] ? LABELS[layer.name](layer) : [layer.name, ""];
    const label = svg("text", { x: x(l), y: 18, class: "layer-label", "text-anchor": "middle" });
    label.textContent = first;
    const range = svg("text", { x: x(l), y: 36, class: "layer-range", "text-anchor": "middle" });
    range.textContent = second;
    figure.append(label, range);
    return Array.from({ length: layer.size }, (_, i) => {
      const circle = svg("circle", {
        cx: x(l), cy: y(i, layer.size), r: RADIUS, class: "neuron",
        tabindex: l === 0 && i === 0 ? 0 : -1, role: "img",
        "data-layer": layer.name, "data-index": i,
      });
      figure.append(circle);
      if (layer.name === "output") {
        const name = svg("text", { x: x(l) + RADIUS + 6, y: y(i, layer.size) + 4, class: "symbol-label" });
        name.textContent = network.symbols[i] || "";
        figure.append(name);
      }
      return circle;
    });
  });
}

function describe(circle) {
  const layer = network.layers.find((item) => item.name === circle.dataset.layer);
  const index = Number(circle.dataset.index);
  const value = circle.dataset.value;
  const what = layer.name === "output" ? `${network.symbols[index]} (probability)` : `neuron ${index + 1}`;
  return `${layer.name}, ${what}: ${value === undefined ? "not computed yet" : value}`;
}

function show(data) {
  last = data;
  if (!network || !data.activations) return;
  network.layers.forEach((layer, l) => {
    const values = layer.name === "output" ? network.symbols.map((s) => data.probabilities[s]) : data.activations[layer.name];
    const range = layer.name === "output" ? [0, 1] : layer.range;
    neurons[l].forEach((circle, i) => {
      circle.style.fill = shade(values[i], range); // a style: the stylesheet's grey would win over an attribute
      circle.dataset.value = fixed(values[i], 3);
      circle.setAttribute("aria-label", describe(circle));
    });
  });
  const focused = document.activeElement;
  if (focused && focused.classList && focused.classList.contains("neuron")) $("net-caption").textContent = describe(focused);
}

async function load() {
  try {
    network = await getJSON("/v1/classify/network");
    draw();
    if (last) show(last);
    $("net-caption").textContent = "Focus or hover a neuron to read its value.";
  } catch (error) {
    $("net-caption").textContent = `Error: ${error.message}`;
  }
}

export function start() {
  const figure = $("net-svg");
  // The pixel pad announces each answer; this view only draws it.
  document.addEventListener("pixels:classified", (event) => show(event.detail));
  const caption = (event) => {
    if (event.target.classList && event.target.classList.contains("neuron")) {
      $("net-caption").textContent = describe(event.target);
    }
  };
  figure.addEventListener("focusin", caption);
  figure.addEventListener("mouseover", caption);
  // Up and down within a layer; left and right to the same place in the next layer.
  rovingFocus(figure, ".neuron", (key, index, items) => {
    const here = items[index];
    const layer = network.layers.findIndex((item) => item.name === here.dataset.layer);
    const i = Number(here.dataset.index);
    const to = (l) => {
      if (l < 0 || l >= neurons.length) return index;
      const size = network.layers[l].size;
      return items.indexOf(neurons[l][Math.min(size - 1, Math.round((i * size) / network.layers[layer].size))]);
    };
    return { ArrowDown: index + 1, ArrowUp: index - 1, ArrowRight: to(layer + 1), ArrowLeft: to(layer - 1) }[key];
  });
  load();
  onKeyChange(load);
}
