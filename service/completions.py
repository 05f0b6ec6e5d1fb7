"""OpenAI's completions protocol, `POST /v1/completions`, on the GPT: request in, `text_completion` out, plain or
streamed as server-sent events.

The prompt becomes token ids and sampling parameters (`to_sampling_params`), checked against the context before
anything is queued; the choices run on the GPT workers through the GPT client (service/choices.py,
service/gpt_client.py), and their text comes back here to be framed. Everything below that line (buffers, cancels,
the deadline, a dead worker) is the client's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from service.choices import Choice, ServedGPT, Step, TokenLogprob
from service.schemas.completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    Logprobs,
    StreamChunk,
    completion_id,
)
from service.textstream import TextStream


def legacy_logprobs(records: list[TokenLogprob], echo: str) -> Logprobs:
    """OpenAI's completions logprobs (parallel lists) for these tokens; offsets count the echoed prompt too."""
    return Logprobs(
        tokens=[r.text for r in records],
        token_logprobs=[r.logprob for r in records],
        top_logprobs=[{text: lp for _, text, lp in r.top} for r in records],
        text_offset=[len(echo) + r.offset for r in records],
    )


class Completions:
    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt

    def _choices(self, body: CompletionRequest) -> list[Choice]:
        """Every choice of the request (prompts x n), checked against the context: raises 400 before any is queued."""
        choices = []
        for p_idx, prompt in enumerate(body.prompts):
            prompt_ids = self.gpt.prompt_ids(prompt)
            for j in range(body.n):
                index = p_idx * body.n + j
                choices.append(
                    Choice(
                        index=index,
                        prompt_ids=prompt_ids,
                        params=self.gpt.params(body, prompt_ids, index),
                        text=TextStream(self.gpt.tok, body.stops),
                        logprobs=[] if body.logprobs is not None else None,
                    )
                )
        return choices

    async def create(self, body: CompletionRequest, request: Request) -> Any:
        self.gpt.check_model(body.model)
        choices = self._choices(body)
        run = self.gpt.run()
        refused = run.start(choices, self.gpt.deadline(body))
        if refused is not None:
            return refused
        model = body.model or self.gpt.settings.gpt_model_id
        echoes = {c.index: prompt for c in choices for prompt in [body.prompts[c.index // body.n]] if body.echo}
        cid = completion_id()
        if body.stream:
            chunk = StreamChunk(cid, model)

            def frame(step: Step) -> list[str]:
                return [chunk(step.choice.index, step.delta, step.finish_reason, _step_logprobs(step, echoes))]

            def usage() -> str:
                done = Completion(id=cid, created=chunk.created, model=model, choices=[], usage=run.usage())
                return f"data: {done.model_dump_json()}\n\n"

            opening = [chunk(index, echo, None) for index, echo in echoes.items()]  # the prompt comes first
            return run.stream(opening, frame, usage if body.include_usage else None)
        failed = await run.finish(request)
        if failed is not None:
            return failed
        return Completion(
            id=cid,
            model=model,
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=echoes.get(c.index, "") + c.text.text,
                    logprobs=None if c.logprobs is None else legacy_logprobs(c.logprobs, echoes.get(c.index, "")),
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=run.usage(),
        )


def _step_logprobs(step: Step, echoes: dict[int, str]) -> Logprobs | None:
    if step.choice.logprobs is None:
        return None
    return legacy_logprobs(step.logprobs, echoes.get(step.choice.index, ""))
