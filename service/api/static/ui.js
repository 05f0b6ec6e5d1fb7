// Small pieces of page shared by the views: tokens with visible whitespace, percentages, bars, screen-reader text.

export const $ = (id) => document.getElementById(id);

const SHOWN = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u2192", "\r": "\u240d" };

// Append `text` to `parent` with its whitespace made visible: a token's leading space is part of the token, and
// a chip that showed nothing would hide it.
export function appendVisible(parent, text) {
  if (text === "") {
    parent.append(wsSpan("\u2205")); // empty set: a token with no text of its own (part of a character)
    return;
  }
  let plain = "";
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  for (const ch of text) {
    const shown = SHOWN[ch];
    if (shown) {
      flush();
      parent.append(wsSpan(shown));
    } else {
      plain += ch;
    }
  }
  flush();
}

function wsSpan(symbol) {
  const span = document.createElement("span");
  span.className = "ws";
  span.textContent = symbol;
  return span;
}

// How a screen reader should say a token: the visible dots and arrows would be read as punctuation.
export function spoken(token) {
  return token.replace(/\n/g, " new line ").replace(/\t/g, " tab ").replace(/^ /, "space ").trim() || "empty";
}

export function percent(p) {
  if (p >= 0.9995) return "100%";
  if (p < 0.001) return "<0.1%";
  return `${(p * 100).toFixed(p < 0.1 ? 1 : 0)}%`;
}

export function bar(fraction) {
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  track.append(fill);
  return track;
}

export function srOnly(text) {
  const span = document.createElement("span");
  span.className = "sr-only";
  span.textContent = text;
  return span;
}

// The SVG namespace, read off an <svg> the HTML parser made: the static files name no URL at all (a test checks).
const SVG_NS = (() => {
  const template = document.createElement("template");
  template.innerHTML = "<svg></svg>";
  return template.content.firstChild.namespaceURI;
})();

// An SVG element with its attributes set.
export function svg(tag, attributes = {}) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  return element;
}

export function fixed(x, digits = 2) {
  return Number(x).toFixed(digits).replace(/^-(0\.0+)$/, "$1"); // no "-0.00"
}

// Roving tabindex over `items` (one Tab stop for the group): the arrow keys move, `moves` maps a key to the next
// index (or undefined to leave the key alone).
export function rovingFocus(container, selector, moves) {
  container.addEventListener("keydown", (event) => {
    const items = [...container.querySelectorAll(selector)];
    const index = items.indexOf(event.target);
    if (index < 0) return;
    const next = moves(event.key, index, items);
    if (next === undefined) return;
    event.preventDefault();
    const target = items[Math.max(0, Math.min(items.length - 1, next))];
    for (const item of items) item.setAttribute("tabindex", "-1");
    target.setAttribute("tabindex", "0");
    target.focus();
  });
}
