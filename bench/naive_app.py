"""The GPT behind the FastAPI app a user writes first: `model.generate` per request, streamed by TextIteratorStreamer.

This is the baseline of `make bench-compare`, written the way the transformers docs show streaming: each request
starts its own `model.generate` in a thread with a `TextIteratorStreamer` and relays its text as server-sent events.
Nothing is batched: concurrent requests are concurrent `generate` calls fighting over the same cores. The answer
speaks the OpenAI completions stream (chunks, a usage chunk, `[DONE]`) so that the same load generator measures it;
the only addition to the textbook code is counting generated tokens for that usage chunk.

    NAIVE_WEIGHTS=model/weights/gpt python -m bench.naive_app --port 8001
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

WEIGHTS = Path(os.environ.get("NAIVE_WEIGHTS", Path(__file__).resolve().parents[1] / "model" / "weights" / "gpt"))

app = FastAPI()
tokenizer = AutoTokenizer.from_pretrained(WEIGHTS, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(WEIGHTS, local_files_only=True).eval()


class CompletionRequest(BaseModel):
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    stream: bool = False


class CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts the tokens it was given (the prompt excluded)."""

    generated = 0

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.generated += value.numel()
        super().put(value)


def _chunk(cid: str, text: str, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": "naive",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    if usage is not None:
        body = {**body, "choices": [], "usage": usage}
    return f"data: {json.dumps(body)}\n\n"


@app.get("/health")
def health() -> str:
    return "ok"


@app.post("/v1/completions")
def completions(req: CompletionRequest) -> Any:
    inputs = tokenizer(req.prompt, return_tensors="pt")
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": req.temperature} if req.temperature > 0 else {"do_sample": False}
    )
    kwargs = dict(**inputs, max_new_tokens=req.max_tokens, pad_token_id=tokenizer.eos_token_id, **sampling)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    cid = f"cmpl-{uuid.uuid4().hex}"
    if not req.stream:
        with torch.no_grad():
            out = model.generate(**kwargs)
        new = out[0, prompt_tokens:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(new)}
        return {"id": cid, "object": "text_completion", "choices": [{"index": 0, "text": text}], "usage": usage}

    streamer = CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer}).start()

    def events() -> Iterator[str]:
        for text in streamer:
            if text:
                yield _chunk(cid, text)
        finish = "length" if streamer.generated >= req.max_tokens else "stop"
        yield _chunk(cid, "", finish)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": streamer.generated}
        yield _chunk(cid, "", usage=usage | {"total_tokens": prompt_tokens + streamer.generated})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
