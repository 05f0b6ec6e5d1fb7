"""Incremental detokenization: whole UTF-8 characters only, stop strings matched across token boundaries."""

from __future__ import annotations

import pytest

from model.gpt import train_tokenizer
from service.api.gpt.textstream import SpeechStream, TextStream


@pytest.fixture(scope="module")
def tok():
    # A tiny byte-level BPE trained here: no shipped weights needed.
    return train_tokenizer(["the cat sat on the mat. " * 50, "to be or not to be. " * 50], vocab_size=300)


def run(tok, text: str, stops: list[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(tok, stops)
    deltas = [stream.push(t) for t in tok.encode(text, add_special_tokens=False)]
    if not stream.stopped:
        deltas.append(stream.finish())
    return deltas, stream


def test_deltas_rebuild_the_text_exactly(tok):
    text = "the cat sat on the mat, naïve café 🐈 to be"
    deltas, stream = run(tok, text, [])
    assert "".join(deltas) == text == stream.text


def test_never_splits_a_utf8_character(tok):
    # The emoji is 4 bytes, several byte-level tokens with this vocabulary: no delta may hold a partial character.
    text = "a🐈b€c"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # the multi-byte characters really span tokens
    deltas, _ = run(tok, text, [])
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_string_across_token_boundaries_is_cut_and_not_returned(tok):
    deltas, stream = run(tok, "the cat sat on the mat", ["sat on"])
    assert stream.stopped
    assert "".join(deltas) == "the cat "


def test_text_that_may_start_a_stop_string_is_held_back_then_released(tok):
    stream = TextStream(tok, ["mat!"])
    out = "".join(stream.push(t) for t in tok.encode("the mat", add_special_tokens=False))
    assert not out.endswith("mat")  # could still become "mat!"
    out += stream.finish()
    assert out == "the mat"


def test_earliest_of_several_stops_wins(tok):
    deltas, stream = run(tok, "to be or not to be", ["not", "or"])
    assert "".join(deltas) == "to be "


@pytest.mark.parametrize(
    ("text", "speech", "ended"),
    [
        ("Why, go to bed.\n\nRODERIGO.\nI will", "Why, go to bed.", True),  # a blank line
        ("What say'st thou,\nnoble heart?\nRODERIGO.\nWhat", "What say'st thou,\nnoble heart?", True),  # a heading
        ("Ends here\nFIRST CITIZEN.\nHo", "Ends here", True),  # a heading of several words
        # A speech says something before it ends: blank lines and headings before its first words are dropped.
        ("\nIAGO.\nx", "x", False),
        ("\n\nSo, my lord.\n\nOTHELLO.\n", "So, my lord.", True),
        ("  \nRODERIGO.\n\nWell.\nIAGO.\n", "Well.", True),
        ("ALL CAPS LINE\nnext", "ALL CAPS LINE\nnext", False),  # capitals without the full stop: still speech
        ("O, then.\nTo the sea", "O, then.\nTo the sea", False),
        ("cut short\nIAG", "cut short\nIAG", False),  # held back while it may be a heading, released at the end
    ],
)
def test_a_speech_ends_at_a_blank_line_or_a_new_heading(tok, text, speech, ended):
    stream = SpeechStream(tok, [])
    deltas = []
    for t in tok.encode(text, add_special_tokens=False):
        deltas.append(stream.push(t))
        if stream.stopped:
            break
    if not stream.stopped:
        deltas.append(stream.finish())
    assert "".join(deltas) == stream.text == speech
    assert stream.stopped is ended


def test_no_stop_string_ends_the_text_before_min_tokens(tok):
    text = "to be or not to be. the cat"
    ids = tok.encode(text, add_special_tokens=False)
    first_be = len(tok.encode("to be", add_special_tokens=False))
    stream = TextStream(tok, ["be"], min_tokens=first_be + 1)  # the first "be" comes one token too early
    deltas = [stream.push(t) for t in ids]
    assert stream.stopped and "".join(deltas) == "to be or not to "
    eager = TextStream(tok, ["be"])
    assert "".join(eager.push(t) for t in ids) == "to "
