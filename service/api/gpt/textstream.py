"""Token ids to streamed text, at the edge of the service: whole UTF-8 characters only, stop strings cut off."""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from model.gpt import decode

# What a byte-level BPE decoder yields for bytes that do not (yet) form a whole UTF-8 character.
_PARTIAL = "\ufffd"


class TextStream:
    """Feeds one choice's token ids and hands back the text that is safe to send.

    Text is held back while it ends in an incomplete UTF-8 character, or in something that may be the start of a
    stop string; a stop string found across token boundaries ends the text just before it. Before `min_tokens`
    tokens no stop string ends it (as vLLM): one completed earlier is part of the text.
    Byte-level BPE decodes by concatenating bytes, so only the tokens not yet turned into whole characters are
    decoded at each step: the cost per token stays constant instead of growing with the sequence.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str], min_tokens: int = 0) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._min_tokens = min_tokens
        self._pushed = 0
        self._max_stop = max((len(s) for s in stops), default=0)
        self._pending: list[int] = []  # tokens whose bytes do not yet end on a character boundary
        self._decoded = ""  # whole characters decoded so far, less the `dropped` ones before the reply
        self.dropped = 0  # characters decoded before the reply began, never handed out (SpeechStream's)
        self.text = ""  # all text handed out so far
        self.stopped = False

    @property
    def decoded_length(self) -> int:
        """Characters decoded so far, dropped ones included: where the next token's text starts."""
        return self.dropped + len(self._decoded)

    @property
    def shown_length(self) -> int:
        """Where the text handed out so far ends, counted as `decoded_length` counts."""
        return self.dropped + len(self.text)

    def push(self, token_id: int) -> str:
        """Add a token; return the new text that is safe to send (possibly empty)."""
        if self.stopped:
            return ""
        self._pushed += 1
        self._pending.append(token_id)
        piece = decode(self._tok, self._pending)
        if piece.endswith(_PARTIAL):
            return ""  # wait for the rest of the character
        self._pending.clear()
        self._decoded += piece
        self._drop_front()
        cut = self._stop_at() if self._pushed >= self._min_tokens else None
        if cut is not None:
            self.stopped = True
            return self._hand_out(cut)
        return self._hand_out(len(self._decoded) - self._held_back())

    def finish(self) -> str:
        """The generation ended without a stop string: release everything held back."""
        if self.stopped:
            return ""
        if self._pending:
            self._decoded += decode(self._tok, self._pending)
            self._pending.clear()
        return self._hand_out(len(self._decoded))

    def _drop_front(self) -> None:
        """Drop decoded text that comes before the reply (none here)."""

    def _stop_at(self) -> int | None:
        """Where the text ends, if a stop string has come: the first one found past what was handed out."""
        if not self._stops:
            return None
        start = max(0, len(self.text) - self._max_stop + 1)
        hits = [i for i in (self._decoded.find(s, start) for s in self._stops) if i != -1]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """How many characters at the end of the decoded text to hold back: they may begin a stop string."""
        return self._stop_prefix_len(self._decoded)

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _hand_out(self, upto: int) -> str:
        """Hand out the decoded text up to character `upto` that was not handed out yet."""
        delta = self._decoded[len(self.text) : upto]
        self.text += delta
        return delta


class SpeechStream(TextStream):
    """A speech of a play, as the chat template prompts for one: it ends at a blank line or at a new speaker's
    heading (a line such as `OTHELLO.` or `FIRST CITIZEN.`), neither of which is handed out; stop strings as above.

    The speech starts on a fresh line (the prompt ends with its speaker's heading), so the text is read as if a new
    line came before it. A speech says something before it can end: blank lines and headings before its first words
    are dropped (the model began a new speech: it is taken as the reply), and nothing is handed out while the text
    is blank, so a reply is never empty because it began with an end. (End-of-text cannot come first either: chat
    asks min_tokens 1 of the engine.)
    """

    # A new line, then a blank line or a heading line: capitals, spaces, apostrophes and hyphens, a full stop.
    _END = re.compile(r"\n(?:\n|[A-Z][A-Z' -]+\.\n)")
    # What the last line may be while it can still become a heading (or the blank line's second new line).
    _MAY_END = re.compile(r"\n(?:[A-Z][A-Z' -]*\.?)?")
    # Blank lines and heading lines before the speech's first words.
    _PREAMBLE = re.compile(r"(?:[ \t]*\n|[A-Z][A-Z' -]+\.\n)+")

    def _drop_front(self) -> None:
        found = None if self.text else self._PREAMBLE.match(self._decoded)
        if found is not None:
            self.dropped += found.end()
            self._decoded = self._decoded[found.end() :]

    def _stop_at(self) -> int | None:
        own = super()._stop_at()
        # Search from the last character handed out: a speech end starts at or after it.
        found = self._END.search("\n" + self._decoded, len(self.text))
        ends = [i for i in (own, None if found is None else max(0, found.start() - 1)) if i is not None]
        return min(ends) if ends else None

    def _held_back(self) -> int:
        if not self._decoded.strip():
            return len(self._decoded)  # blank so far: it may yet turn out to be a blank line, dropped
        text = "\n" + self._decoded
        line = text.rfind("\n")
        tail = len(text) - line if self._MAY_END.fullmatch(text, line) else 0
        return max(super()._held_back(), min(tail, len(self._decoded)))
