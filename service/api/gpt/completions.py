"""OpenAI's completions protocol, `POST /v1/completions`, on the GPT: request in, `text_completion` out, plain or
streamed as server-sent events.

The prompt becomes token ids and sampling parameters (`to_sampling_params`), checked against the context before
anything is queued; the choices run on the GPT workers (api/gpt/choices.py, transport/gpt_client.py), and their
text comes back here to be framed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from starlette.requests import Request

from model.gpt import decode
from service.api.errors import bad_request, out_of_vocabulary
from service.api.gpt.choices import Choice, Step, TokenLogprob
from service.api.gpt.served import ServedGPT
from service.api.gpt.structured import grammar_of
from service.api.gpt.textstream import TextStream
from service.api.sse import sse_json
from service.schemas.completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    Logprobs,
    StreamChunk,
    completion_id,
)
from service.schemas.inputs import find_out_of_vocabulary


def legacy_logprobs(generated: list[TokenLogprob], echo: str = "", prompt: Sequence[TokenLogprob] = ()) -> Logprobs:
    """OpenAI's completions logprobs (parallel lists): the echoed prompt's tokens first, when scored (the first has
    no logprob: null, as OpenAI and vLLM send it), then the generated ones, whose offsets count the echo too."""
    records = [*prompt, *generated]
    return Logprobs(
        tokens=[r.text for r in records],
        token_logprobs=[r.logprob for r in records],
        top_logprobs=[None if r.logprob is None else {text: lp for _, text, lp in r.top} for r in records],
        text_offset=[r.offset for r in prompt] + [len(echo) + r.offset for r in generated],
    )


class Completions:
    def __init__(self, gpt: ServedGPT) -> None:
        self.gpt = gpt

    def _choices(self, body: CompletionRequest) -> list[Choice]:
        """Every choice to generate (prompts x best_of, or n), checked against the model: a 400 before any is queued."""
        conflict = body.conflict()
        if conflict is not None:
            raise bad_request(conflict[1], conflict[0])
        bad_id = find_out_of_vocabulary(body.prompt, self.gpt.vocab_size, "prompt")
        if bad_id is not None:
            raise out_of_vocabulary(bad_id, self.gpt.vocab_size)
        room = 0 if body.max_tokens == 0 else 1  # a prompt only scored may fill the context
        grammar = grammar_of(body.grammar_ask())
        choices = []
        for p_idx, prompt in enumerate(body.prompts):
            prompt_ids = self.gpt.prompt_ids(prompt, room=room)
            for j in range(body.candidates):
                index = p_idx * body.candidates + j
                params = self.gpt.params(body, prompt_ids, index)
                if body.scores_prompt:  # the prefill's logits score the prompt: no second forward
                    params = replace(params, prompt_logprobs=body.logprobs or 0)
                if body.candidates > body.n and params.logprobs is None:
                    params = replace(params, logprobs=0)  # best_of ranks by the chosen tokens' logprobs
                choices.append(
                    Choice(
                        index=index,
                        prompt_ids=prompt_ids,
                        params=params,
                        text=TextStream(self.gpt.tok, body.stops, params.min_tokens),
                        logprobs=[] if body.logprobs is not None else None,
                        grammar=grammar,
                    )
                )
        return choices

    def _echoes(self, body: CompletionRequest, choices: list[Choice]) -> dict[int, str]:
        """Each choice's echoed prompt, by index (none without echo): a prompt of ids is echoed as its text."""
        if not body.echo:
            return {}
        prompts = body.prompts
        texts = [p if isinstance(p, str) else decode(self.gpt.tok, p) for p in prompts]
        return {c.index: texts[c.index // body.candidates] for c in choices}

    async def create(self, body: CompletionRequest, request: Request) -> Any:
        self.gpt.check_model(body.model)
        choices = self._choices(body)
        run = self.gpt.run()
        refused = run.start(choices, self.gpt.deadline(body))
        if refused is not None:
            return refused
        model = body.model or self.gpt.settings.gpt_model_id
        echoes = self._echoes(body, choices)
        cid = completion_id()
        if body.stream:
            chunk = StreamChunk(cid, model)

            def frame(step: Step) -> list[str]:
                index, echo = step.choice.index, echoes.get(step.choice.index, "")
                logprobs = None
                if step.choice.logprobs is not None:
                    logprobs = legacy_logprobs(step.logprobs, echo, step.prompt or ())
                text = echo + step.delta if step.prompt is not None else step.delta  # a scored prompt comes first
                return [chunk(index, text, step.finish_reason, logprobs)]

            def usage() -> str:
                done = Completion(id=cid, created=chunk.created, model=model, choices=[], usage=run.usage())
                return sse_json(done.model_dump_json())

            # An echo comes first, at once; with logprobs it waits for its scores, in the first step's chunk.
            opening = [] if body.logprobs is not None else [chunk(index, echo, None) for index, echo in echoes.items()]
            return run.stream(opening, frame, usage if body.include_usage else None)
        failed = await run.finish(request)
        if failed is not None:
            return failed
        return Completion(id=cid, model=model, choices=self._returned(body, choices, echoes), usage=run.usage())

    @staticmethod
    def _returned(body: CompletionRequest, choices: list[Choice], echoes: dict[int, str]) -> list[CompletionChoice]:
        """The n choices of each prompt to return: of best_of candidates, those of highest mean token logprob."""
        returned = []
        for p_idx in range(len(body.prompts)):
            group = choices[p_idx * body.candidates : (p_idx + 1) * body.candidates]
            if body.candidates > body.n:
                group = sorted(group, key=lambda c: c.logprob_sum / max(c.tokens, 1), reverse=True)[: body.n]
            for j, c in enumerate(group):
                echo = echoes.get(c.index, "")
                logprobs = None if c.logprobs is None else legacy_logprobs(c.logprobs, echo, c.prompt_logprobs or ())
                returned.append(
                    CompletionChoice(
                        index=p_idx * body.n + j,
                        text=echo + c.text.text,
                        logprobs=logprobs,
                        finish_reason=c.finish_reason,
                    )
                )
        return returned
