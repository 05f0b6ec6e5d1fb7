// The completion view: a prompt streamed back token by token as chips, with each step's next-token probabilities.

import { apiFetch, errorMessage, onKeyChange } from "./api.js";
import { $, appendVisible, bar, percent, spoken, srOnly } from "./ui.js";

async function loadModelInfo() {
  try {
    const response = await apiFetch("/v1/models");
    if (!response.ok) {
      errorMessage(null, response); // shows the key form on a 401
      return;
    }
    const models = await response.json();
    const gpt = models.data.find((m) => m.max_model_len);
    if (!gpt) return;
    const contextLength = gpt.max_model_len;
    $("model-info").textContent =
      `${gpt.id}: a context of ${contextLength} tokens. ` +
      "A 3\u00d73-pixel classifier beside it. Served by LitServe.";
    $("max_tokens").max = String(contextLength - 1);
  } catch {
    // The page still works with the defaults; the completion request reports any real problem.
  }
}

const output = $("output");
const form = $("complete-form");
const generateButton = $("generate");
const stopButton = $("stop");
const status = $("gen-status");

let steps = []; // one per generated token: {token, logprob, top: [[token, logprob], ...]}
let pinned = -1; // the chip chosen by click or focus; -1 shows the newest token
let hovered = -1; // the chip under the mouse: new tokens must not pull the panel away from it
let controller = null;

for (const id of ["temperature", "top_p"]) {
  const input = $(id);
  const out = $(`${id}-out`);
  input.addEventListener("input", () => {
    out.textContent = input.value;
  });
}

function requestBody() {
  const body = {
    prompt: $("prompt").value,
    max_tokens: Number($("max_tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    top_k: Number($("top_k").value),
    logprobs: 5,
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

function resetOutput(prompt) {
  steps = [];
  pinned = -1;
  hovered = -1;
  output.replaceChildren();
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt-text";
  promptSpan.textContent = prompt;
  output.append(promptSpan);
  showProbs(-1);
}

function addStep(token, logprob, top) {
  const index = steps.length;
  const entries = Object.entries(top || {}).sort((a, b) => b[1] - a[1]);
  steps.push({ token, logprob, top: entries });
  const p = logprob == null ? null : Math.exp(logprob);
  const chip = document.createElement("button");
  chip.type = "button";
  chip.className = "chip gen";
  chip.dataset.step = String(index);
  // Roving tabindex: one Tab stop for the whole output; the arrow keys move between tokens.
  chip.tabIndex = index === 0 ? 0 : -1;
  if (p != null) chip.style.setProperty("--p", p.toFixed(3));
  chip.setAttribute("aria-label", `Token ${index + 1}: ${spoken(token)}${p == null ? "" : `, ${percent(p)}`}`);
  // A screen reader then reads the step's five likeliest tokens when the chip gets focus (filled on focusin).
  chip.setAttribute("aria-describedby", "probs-bars");
  appendVisible(chip, token);
  output.append(chip);
  if (token.includes("\n")) output.append(document.createElement("br"));
  if (pinned < 0 && hovered < 0) showProbs(index);
}

function markActive(index) {
  for (const chip of output.querySelectorAll(".chip.active")) {
    chip.classList.remove("active");
    chip.removeAttribute("aria-current");
  }
  const chip = output.querySelector(`.chip[data-step="${index}"]`);
  if (chip) {
    chip.classList.add("active");
    chip.setAttribute("aria-current", "true");
  }
}

function showProbs(index) {
  const caption = $("probs-caption");
  const list = $("probs-bars");
  list.replaceChildren();
  markActive(index);
  const step = steps[index];
  if (!step) {
    caption.textContent = "Hover, focus or tap a token.";
    $("probs").dataset.step = "";
    return;
  }
  $("probs").dataset.step = String(index);
  caption.replaceChildren(`Step ${index + 1}: the model chose `);
  const chosen = document.createElement("span");
  chosen.className = "tok";
  appendVisible(chosen, step.token);
  caption.append(chosen, srOnly(` (${spoken(step.token)})`));
  if (step.logprob != null) caption.append(` at ${percent(Math.exp(step.logprob))}.`);
  const inTop = step.top.some(([token]) => token === step.token);
  for (const [token, logprob] of step.top) {
    const p = Math.exp(logprob);
    const item = document.createElement("li");
    item.className = "bar-row";
    if (token === step.token) item.classList.add("chosen");
    const label = document.createElement("span");
    label.className = "tok";
    label.setAttribute("aria-hidden", "true"); // the sr-only text below says it in words
    appendVisible(label, token);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    item.append(label, srOnly(` ${spoken(token)}: `), bar(p), value);
    if (token === step.token) item.append(srOnly(" (chosen)"));
    list.append(item);
  }
  if (!inTop && step.top.length) {
    caption.append(" A sampled token outside the top five.");
  }
}

function chipIndex(target) {
  const chip = target.closest ? target.closest(".chip.gen") : null;
  return chip ? Number(chip.dataset.step) : -1;
}

output.addEventListener("mouseover", (event) => {
  const index = chipIndex(event.target);
  if (index < 0) return;
  hovered = index;
  showProbs(index);
});
output.addEventListener("mouseleave", () => {
  hovered = -1;
  showProbs(pinned >= 0 ? pinned : steps.length - 1);
});
output.addEventListener("focusin", (event) => {
  const index = chipIndex(event.target);
  if (index < 0) return;
  for (const chip of output.querySelectorAll(".chip.gen")) chip.tabIndex = -1;
  event.target.tabIndex = 0;
  pinned = index;
  showProbs(index);
});
// A tap on a phone: click also focuses the chip in most browsers, but not in all (Safari), so pin here as well.
output.addEventListener("click", (event) => {
  const index = chipIndex(event.target);
  if (index < 0) return;
  pinned = index;
  showProbs(index);
});
output.addEventListener("keydown", (event) => {
  const index = chipIndex(event.target);
  if (index < 0) return;
  const last = steps.length - 1;
  const next = { ArrowRight: index + 1, ArrowDown: index + 1, ArrowLeft: index - 1, ArrowUp: index - 1,
    Home: 0, End: last }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const chip = output.querySelector(`.chip[data-step="${Math.max(0, Math.min(last, next))}"]`);
  if (chip) chip.focus();
});

function setRunning(running) {
  generateButton.disabled = running;
  stopButton.disabled = !running;
  output.setAttribute("aria-busy", running ? "true" : "false");
}

// Server-sent events arrive in arbitrary slices of the byte stream; an event ends at a blank line.
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

async function generate() {
  if (controller) return;
  const body = requestBody();
  resetOutput(body.prompt);
  controller = new AbortController();
  setRunning(true);
  output.dataset.state = "streaming";
  status.textContent = "Generating\u2026";
  let finish = null;
  let firstTokenAt = 0;
  let usage = null;
  const started = performance.now();
  try {
    const response = await apiFetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error(errorMessage(data, response));
    }
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const lp = choice.logprobs;
        if (lp && lp.tokens.length) {
          if (!firstTokenAt) firstTokenAt = performance.now();
          lp.tokens.forEach((token, k) => addStep(token, lp.token_logprobs[k], lp.top_logprobs[k]));
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    output.dataset.state = "done";
    const seconds = (performance.now() - (firstTokenAt || started)) / 1000;
    const rate = steps.length > 1 && seconds > 0 ? `, ${(steps.length / seconds).toFixed(0)} tokens/s` : "";
    const why = { length: "reached max tokens", stop: "the model ended the text" }[finish] || finish || "done";
    const prompt = usage ? ` after a ${usage.prompt_tokens}-token prompt` : "";
    status.textContent = `${steps.length} tokens${prompt}${rate}; ${why}.`;
  } catch (error) {
    if (error.name === "AbortError") {
      output.dataset.state = "stopped";
      status.textContent = `Stopped after ${steps.length} tokens.`;
    } else {
      output.dataset.state = "error";
      status.textContent = `Error: ${error.message}`;
    }
  } finally {
    controller = null;
    setRunning(false);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
stopButton.addEventListener("click", () => {
  if (controller) controller.abort();
});
// Ctrl+Enter (Cmd+Enter) in the prompt generates, as in most chat boxes.
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

export function start() {
  loadModelInfo();
  onKeyChange(loadModelInfo);
}
