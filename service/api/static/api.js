// Talking to the server: fetch with the API key when the server asks for one, and errors as readable messages.

const KEY_STORAGE = "tinyserve-api-key";
// The server's API key, when it was started with one (TINYSERVE_API_KEY); kept for this tab only.
let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
const keyListeners = [];

export function apiFetch(url, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  return fetch(url, { ...options, headers });
}

// The message of an error answer (OpenAI's shape, or FastAPI's `detail`); a 401 shows the key form.
export function errorMessage(data, response) {
  if (response.status === 401) document.getElementById("key-form").hidden = false;
  if (data && data.error && data.error.message) return data.error.message;
  if (data && Array.isArray(data.detail) && data.detail[0]) return data.detail[0].msg;
  return `HTTP ${response.status} ${response.statusText}`;
}

async function answer(response) {
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorMessage(data, response));
  return data;
}

export async function postJSON(url, body, signal) {
  return answer(
    await apiFetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal,
    }),
  );
}

export async function getJSON(url) {
  return answer(await apiFetch(url));
}

// Called after the user gives a key, so every view can ask again what the 401 refused.
export function onKeyChange(listener) {
  keyListeners.push(listener);
}

export function setUpKeyForm() {
  const form = document.getElementById("key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = document.getElementById("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    form.hidden = true;
    for (const listener of keyListeners) listener();
  });
}
