"""Token ids to streamed text, at the edge of the service: whole UTF-8 characters only, stop strings cut off."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from model.gpt import decode

# What a byte-level BPE decoder yields for bytes that do not (yet) form a whole UTF-8 character.
_PARTIAL = "\ufffd"


class TextStream:
    """Feeds one choice's token ids and hands back the text that is safe to send.

    Text is held back while it ends in an incomplete UTF-8 character, or in something that may be the start of a
    stop string; a stop string found across token boundaries ends the text just before it.
    Decoding the whole sequence each time is quadratic, but sequences are bounded by a 256-token context, where a
    decode costs microseconds; it keeps the byte-level merge exactly right.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str]) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already handed out
        self.text = ""  # all text handed out so far
        self.stopped = False

    def _decode(self) -> str:
        return decode(self._tok, self._ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the new text that is safe to send (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        full = self._decode()
        complete = full.rstrip(_PARTIAL)
        if self._stops:
            start = max(0, self._emitted - max(len(s) for s in self._stops) + 1)
            hits = [i for i in (complete.find(s, start) for s in self._stops) if i != -1]
            if hits:
                self.stopped = True
                return self._hand_out(complete[: min(hits)])
            complete = complete[: len(complete) - self._stop_prefix_len(complete)]
        return self._hand_out(complete)

    def finish(self) -> str:
        """The generation ended without a stop string: release everything held back."""
        if self.stopped:
            return ""
        return self._hand_out(self._decode())

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _hand_out(self, upto: str) -> str:
        delta = upto[self._emitted :] if len(upto) > self._emitted else ""
        self._emitted = max(self._emitted, len(upto))
        self.text += delta
        return delta
