"""What an API server knows of the GPT, read once per process from the model folder (no weights): its tokenizer
with the chat template, its shape and limits, the sampling defaults, and the client that reaches its workers. It turns
a request into checked token ids and sampling parameters (a 400 naming the field before anything is queued).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GPT2Config, PreTrainedTokenizerFast

from model.gpt import encode, eot_id, load_tokenizer
from model.sampling import SamplingParams
from service.api.errors import bad_request, model_not_found, out_of_vocabulary
from service.api.gpt.choices import ChoiceRun
from service.schemas.sampling import SamplingDefaults, SamplingRequest
from service.settings import Settings
from service.transport.gpt_client import Deadline, GenerateClient


@dataclass(frozen=True)
class ServedGPT:
    """What the HTTP side knows of the GPT: its tokenizer (with the chat template), limits, the server's sampling
    defaults, and the client that reaches its workers. Read from the model folder alone, without the weights."""

    settings: Settings
    client: GenerateClient
    tok: PreTrainedTokenizerFast
    config: GPT2Config
    eot_id: int
    defaults: SamplingDefaults

    @property
    def context_length(self) -> int:
        return int(self.config.n_positions)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @classmethod
    def load(cls, settings: Settings, client: GenerateClient) -> ServedGPT:
        tok = load_tokenizer(settings.gpt_dir)
        config = GPT2Config.from_pretrained(settings.gpt_dir, local_files_only=True)
        defaults = SamplingDefaults.from_folder(settings.gpt_dir)
        return cls(settings, client, tok, config, eot_id(tok), defaults)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.gpt_model_id:
            raise model_not_found(model)

    def prompt_ids(self, prompt: str | list[int], param: str = "prompt", room: int = 1) -> list[int]:
        """The prompt's token ids (a text is tokenized, ids are taken as they are), or a 400 naming `param` when it
        leaves fewer than `room` tokens of the context (0: a prompt only scored may fill it)."""
        if isinstance(prompt, str):
            ids = encode(self.tok, prompt) or [self.eot_id]  # an empty prompt starts from the separator, as GPT-2's
        else:
            ids = list(prompt)
        if len(ids) > self.context_length - room:
            message = f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} tokens"
            raise bad_request(message, param, "context_length_exceeded")
        return ids

    def params(self, body: SamplingRequest, prompt_ids: list[int], index: int) -> SamplingParams:
        """The request's sampling parameters for one choice, or a 400 naming the parameter that cannot be served:
        one not supported, a logit_bias id outside the vocabulary, max_tokens past the context or below min_tokens."""
        refused = body.refused_parameter()
        if refused is not None:
            raise bad_request(f"{refused} is not supported by this server", refused, "unsupported_parameter")
        bad_bias = body.logit_bias_error(self.vocab_size)
        if bad_bias is not None:
            raise out_of_vocabulary(bad_bias, self.vocab_size)
        room = self.context_length - len(prompt_ids)
        params = body.to_sampling_params(self.defaults, room=room, index=index, stop_token_ids=(self.eot_id,))
        if params.max_tokens > room:
            name = body.MAX_TOKENS_PARAM
            message = (
                f"prompt ({len(prompt_ids)} tokens) + {name} ({params.max_tokens}) exceeds the context of"
                f" {self.context_length} tokens; ask for at most {room} tokens"
            )
            raise bad_request(message, name, "context_length_exceeded")
        if params.min_tokens > params.max_tokens:
            message = f"min_tokens ({params.min_tokens}) exceeds max_tokens ({params.max_tokens})"
            raise bad_request(message, "min_tokens")
        return params

    def deadline(self, body: SamplingRequest) -> Deadline:
        return Deadline.of(self.settings.request_deadline_seconds, body.timeout)

    def run(self) -> ChoiceRun:
        return ChoiceRun(self.client, self.tok, self.eot_id)
