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
    Byte-level BPE decodes by concatenating bytes, so only the tokens not yet turned into whole characters are
    decoded at each step: the cost per token stays constant instead of growing with the sequence.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str]) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._max_stop = max((len(s) for s in stops), default=0)
        self._pending: list[int] = []  # tokens whose bytes do not yet end on a character boundary
        self._decoded = ""  # whole characters decoded so far
        self.text = ""  # all text handed out so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the new text that is safe to send (possibly empty)."""
        if self.stopped:
            return ""
        self._pending.append(token_id)
        piece = decode(self._tok, self._pending)
        if piece.endswith(_PARTIAL):
            return ""  # wait for the rest of the character
        self._pending.clear()
        self._decoded += piece
        if not self._stops:
            return self._hand_out(len(self._decoded))
        start = max(0, len(self.text) - self._max_stop + 1)
        hits = [i for i in (self._decoded.find(s, start) for s in self._stops) if i != -1]
        if hits:
            self.stopped = True
            return self._hand_out(min(hits))
        return self._hand_out(len(self._decoded) - self._stop_prefix_len(self._decoded))

    def finish(self) -> str:
        """The generation ended without a stop string: release everything held back."""
        if self.stopped:
            return ""
        if self._pending:
            self._decoded += decode(self._tok, self._pending)
            self._pending.clear()
        return self._hand_out(len(self._decoded))

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
