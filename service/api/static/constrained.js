// The Constrained view: a reply decoded under a grammar (a JSON schema or a list of choices), then each step's
// likeliest tokens as the model saw them (chat logprobs: the raw distribution), those the grammar forbade struck out
// (POST /v1/structured/mask replays the reply through the grammar), and the one chosen.

import { postJSON } from "./api.js";
import { $, appendVisible, percent, spoken, srOnly } from "./ui.js";

function structuredOutputs() {
  const spec = $("con-spec").value;
  if ($("con-kind").value === "choice") {
    return { choice: spec.split("\n").filter((line) => line.trim() !== "") };
  }
  return { json: JSON.parse(spec) };
}

function alternative(token, logprob, allowed, chosen) {
  const item = document.createElement("span");
  item.className = `alt${allowed ? "" : " forbidden"}${chosen ? " chosen" : ""}`;
  const text = document.createElement("span");
  text.setAttribute("aria-hidden", "true");
  appendVisible(text, token);
  const p = document.createElement("small");
  p.textContent = percent(Math.exp(logprob));
  const said = `${spoken(token)}${allowed ? "" : ", forbidden by the grammar"}${chosen ? ", chosen" : ""}, `;
  item.append(srOnly(said), text, p);
  return item;
}

function showStep(record, masked) {
  const row = document.createElement("li");
  const chip = document.createElement("span");
  chip.className = "chip gen";
  chip.style.setProperty("--p", Math.exp(record.logprob).toFixed(3));
  appendVisible(chip, record.token);
  chip.append(srOnly(" chosen; the likeliest were: "));
  row.append(chip);
  record.top_logprobs.forEach((alt, k) => {
    row.append(alternative(alt.token, alt.logprob, masked.allowed[k], alt.token === record.token));
  });
  return row;
}

async function run(event) {
  event.preventDefault();
  const status = $("con-status");
  const button = $("con-run");
  let outputs;
  try {
    outputs = structuredOutputs();
  } catch (error) {
    status.textContent = `The schema is not JSON: ${error.message}`;
    return;
  }
  button.disabled = true;
  status.textContent = "Decoding under the grammar\u2026";
  try {
    const reply = await postJSON("/v1/chat/completions", {
      messages: [{ role: "user", content: $("con-prompt").value }],
      structured_outputs: outputs,
      logprobs: true,
      top_logprobs: 5,
      max_tokens: 64,
      temperature: 0.8,
    });
    const choice = reply.choices[0];
    const records = choice.logprobs.content;
    const steps = records.map((r) => ({ chosen: r.bytes, candidates: r.top_logprobs.map((a) => a.bytes) }));
    const mask = await postJSON("/v1/structured/mask", { structured_outputs: outputs, steps });
    $("con-out").textContent = choice.message.content;
    $("con-steps").replaceChildren(...records.map((r, i) => showStep(r, mask.steps[i])));
    const forbidden = mask.steps.reduce((n, s) => n + s.allowed.filter((a) => !a).length, 0);
    const why = choice.finish_reason === "length" ? "cut at max tokens" : "the grammar is complete";
    const count = records.length === 1 ? "1 token" : `${records.length} tokens`;
    status.textContent = `${count}, ${why}; ${forbidden} of the likeliest tokens were forbidden.`;
  } catch (error) {
    status.textContent = `Error: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

export function start() {
  $("con-form").addEventListener("submit", run);
}
