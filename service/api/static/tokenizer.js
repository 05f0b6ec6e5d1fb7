// The tokenizer view: the prompt as the model reads it, re-tokenized as the user types.

import { onKeyChange, postJSON } from "./api.js";
import { $, appendVisible, spoken, srOnly } from "./ui.js";

let tokenizeSeq = 0;
let tokenizeTimer = 0;

async function tokenize() {
  const seq = ++tokenizeSeq;
  const prompt = $("prompt").value;
  const list = $("tok-chips");
  const count = $("tok-count");
  try {
    const data = await postJSON("/v1/tokenize", { prompt });
    if (seq !== tokenizeSeq) return; // a newer edit has already been sent; drop this stale answer
    list.replaceChildren();
    data.tokens.forEach((id, k) => {
      const chip = document.createElement("span");
      chip.className = "chip tok-chip";
      chip.setAttribute("role", "listitem");
      const text = document.createElement("span");
      text.className = "tok";
      text.setAttribute("aria-hidden", "true");
      appendVisible(text, data.token_strs[k]);
      const idLabel = document.createElement("small");
      idLabel.className = "id";
      idLabel.textContent = String(id);
      chip.append(text, srOnly(`${spoken(data.token_strs[k])}, id `), idLabel);
      list.append(chip);
      if (data.token_strs[k].includes("\n")) list.append(document.createElement("br"));
    });
    count.textContent = `${data.count} of ${data.max_model_len} tokens.`;
    count.classList.remove("error");
    // The browser then refuses a max_tokens that would overflow the context, naming the limit.
    $("max_tokens").max = String(Math.max(1, data.max_model_len - Math.max(1, data.count)));
  } catch (error) {
    if (seq !== tokenizeSeq) return;
    count.textContent = `Error: ${error.message}`;
    count.classList.add("error");
  }
}

$("prompt").addEventListener("input", () => {
  clearTimeout(tokenizeTimer);
  tokenizeTimer = setTimeout(tokenize, 200); // one request per pause in typing, not one per key
});

export function start() {
  tokenize();
  onKeyChange(tokenize);
}
