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
