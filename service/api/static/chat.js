// The playground's chat: messages in, the reply streamed from /v1/chat/completions as token chips. An ES module
// of its own (no build step, nothing from outside this server); it shares only the page's API key with app.js.

const $ = (id) => document.getElementById(id);
const form = $("chat-form");
const log = $("chat-log");
const input = $("chat-input");
const status = $("chat-status");
const stopButton = $("chat-stop");
const sendButton = $("chat-send");

// The conversation so far, as OpenAI messages; the reply being streamed is added once it is done.
const messages = [];
let controller = null;

function apiHeaders() {
  // app.js keeps the key (TINYSERVE_API_KEY) for this tab in sessionStorage.
  const key = sessionStorage.getItem("tinyserve-api-key");
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// One chip per token, whitespace made visible, tinted by the token's probability (as in the completion box).
function chip(token, logprob) {
  const element = document.createElement("span");
  element.className = "chip gen";
  if (logprob != null) element.style.setProperty("--p", Math.exp(logprob).toFixed(3));
  for (const ch of token) {
    const shown = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u2192" }[ch];
    if (shown) {
      const ws = document.createElement("span");
      ws.className = "ws";
      ws.textContent = shown;
      element.append(ws);
    } else {
      element.append(document.createTextNode(ch));
    }
  }
  element.title = logprob == null ? token : `${(Math.exp(logprob) * 100).toFixed(1)}%`;
  return element;
}

function addTurn(role, speaker) {
  const turn = document.createElement("li");
  turn.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "speaker";
  who.textContent = speaker;
  const body = document.createElement("div");
  body.className = role === "assistant" ? "chips output" : "said";
  turn.append(who, body);
  log.append(turn);
  return body;
}

async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ")) yield event.slice(6);
    }
  }
}

async function send(text) {
  messages.push({ role: "user", content: text });
  addTurn("user", "You").textContent = text;
  const reply = addTurn("assistant", "The model");
  reply.setAttribute("aria-busy", "true");
  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  status.textContent = "The model is speaking\u2026";
  let content = "";
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: apiHeaders(),
      body: JSON.stringify({ messages, stream: true, logprobs: true, max_tokens: 96, temperature: 0.8 }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      if (response.status === 401) $("key-form").hidden = false;
      throw new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
    }
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        const tokens = (choice.logprobs && choice.logprobs.content) || [];
        for (const t of tokens) reply.append(chip(t.token, t.logprob));
        content += choice.delta.content || "";
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    messages.push({ role: "assistant", content });
    const why = { stop: "the speech ended", length: "reached max tokens" }[finish] || finish || "done";
    status.textContent = `${reply.childElementCount} tokens; ${why}.`;
  } catch (error) {
    messages.pop(); // the question stays on screen but leaves the conversation: ask again
    status.textContent = error.name === "AbortError" ? "Stopped." : `Error: ${error.message}`;
  } finally {
    reply.setAttribute("aria-busy", "false");
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
stopButton.addEventListener("click", () => controller && controller.abort());
$("chat-clear").addEventListener("click", () => {
  if (controller) controller.abort();
  messages.length = 0;
  log.replaceChildren();
  status.textContent = "";
});
