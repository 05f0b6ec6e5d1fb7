"""The decoding engine on tiny random GPT-2 models: parity with `generate`, batching, sampling, logprobs."""

import dataclasses
import threading
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.engine import AdmissionError, Engine, SamplingParams, TokenEvent

CTX = 64
PROMPTS = [[5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17], [20], list(range(30, 50)), [3, 1, 4, 1, 5, 9, 2, 6]]


def tiny_gpt(seed: int = 0) -> GPT2LMHeadModel:
    # A wide init and untied head: at GPT-2's 0.02 a random model just repeats its last token, so a wrong
    # position, mask or cache row would go unnoticed.
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=97,
        n_positions=CTX,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_pytorch_tanh",
        eos_token_id=0,
        bos_token_id=0,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return tiny_gpt()


def generate_ref(model: GPT2LMHeadModel, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, pad_token_id=0)
    ref = out[0, len(prompt) :].tolist()
    assert len(ref) == n, "generate stopped at EOS: pick another prompt so the comparison is meaningful"
    return ref


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)  # type: ignore[arg-type]


def run(
    engine: Engine,
    schedule: dict[int, list[tuple[str, list[int], SamplingParams]]] | None = None,
    max_steps: int = 500,
) -> dict[str, list[TokenEvent]]:
    """Step until idle, adding `schedule[step]` requests before that step; events by request id."""
    schedule = schedule or {}
    events: dict[str, list[TokenEvent]] = {}
    for step in range(max_steps):
        for rid, prompt, params in schedule.get(step, []):
            engine.add_request(rid, prompt, params)
        if not engine.has_work() and step > max(schedule, default=-1):
            return events
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    raise AssertionError("engine did not finish")


def tokens(evs: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in evs if e.token_id is not None]


def test_greedy_alone_matches_generate(model):
    engine = Engine(model)
    for i, prompt in enumerate(PROMPTS):
        ref = generate_ref(model, prompt, 20)
        evs = run(engine, {0: [(f"r{i}", prompt, greedy(20))]})[f"r{i}"]
        assert tokens(evs) == ref
        assert [e.finish_reason for e in evs] == [None] * 19 + ["length"]
        assert all(e.logprob is None and e.top_logprobs is None for e in evs)


def test_greedy_in_a_batch_with_joins_matches_generate(model):
    # Different lengths join at different steps; at batch 3 two wait, then fill slots freed by shorter ones.
    n = [20, 7, 15, 12, 9]
    refs = [generate_ref(model, p, k) for p, k in zip(PROMPTS, n, strict=True)]
    schedule = {0: [("r0", PROMPTS[0], greedy(n[0]))], 2: [("r1", PROMPTS[1], greedy(n[1]))],
                3: [("r2", PROMPTS[2], greedy(n[2])), ("r3", PROMPTS[3], greedy(n[3]))],
                5: [("r4", PROMPTS[4], greedy(n[4]))]}  # fmt: skip
    events = run(Engine(model, max_batch_size=3), schedule)
    for i, ref in enumerate(refs):
        assert tokens(events[f"r{i}"]) == ref, f"r{i}"


def test_max_batch_size_is_respected(model):
    engine = Engine(model, max_batch_size=2)
    for i in range(5):
        engine.add_request(f"r{i}", PROMPTS[i], greedy(6))
    assert engine.num_waiting == 5 and not engine.has_capacity()
    events: dict[str, list[TokenEvent]] = {}
    seen = []
    while engine.has_work():
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
        seen.append((engine.num_active, engine.num_waiting))
    assert seen[0] == (2, 3) and max(active for active, _ in seen) == 2
    for i in range(5):
        assert tokens(events[f"r{i}"]) == generate_ref(model, PROMPTS[i], 6)
    assert engine.has_capacity()


SAMPLERS = [
    SamplingParams(max_tokens=15, temperature=1.0, seed=7),  # whole vocabulary
    SamplingParams(max_tokens=15, temperature=0.8, top_k=20, top_p=0.9, seed=7),  # inside a top-k slice
    SamplingParams(max_tokens=15, temperature=1.3, top_p=0.8, seed=123),  # top-p alone: sorts the vocabulary
]


@pytest.mark.parametrize("params", SAMPLERS)
def test_seeded_sampling_is_the_same_alone_and_in_a_crowd(model, params):
    alone = tokens(run(Engine(model), {0: [("me", PROMPTS[1], params)]})["me"])
    crowd = {
        0: [("a", PROMPTS[0], SamplingParams(max_tokens=30, temperature=1.0))],
        1: [("b", PROMPTS[3], SamplingParams(max_tokens=30, temperature=0.7, top_k=5)),
            ("c", PROMPTS[2], greedy(30)), ("me", PROMPTS[1], params)],
        2: [("d", PROMPTS[4], SamplingParams(max_tokens=30, temperature=1.0, seed=99, top_k=10))],
    }  # fmt: skip
    crowded = tokens(run(Engine(model, max_batch_size=8), crowd)["me"])
    assert crowded == alone
    other_seed = dataclasses.replace(params, seed=params.seed + 1)
    assert tokens(run(Engine(model), {0: [("me", PROMPTS[1], other_seed)]})["me"]) != alone


def first_token_samples(model, prompt, params: SamplingParams, n: int) -> list[int]:
    """`n` first tokens drawn with seeds 0..n-1, each beside a neighbour with other top-k/top-p settings."""
    neighbour = SamplingParams(1, 1.0, top_k=40, top_p=1.0 if params.top_p < 1 else 0.95)
    requests = [(f"s{i}", prompt, dataclasses.replace(params, seed=i)) for i in range(n)]
    requests += [(f"n{i}", prompt, neighbour) for i in range(n)]
    events = run(Engine(model, max_batch_size=64), {0: requests})
    firsts = [events[f"s{i}"][0].token_id for i in range(n)]
    assert all(t is not None for t in firsts)
    return [t for t in firsts if t is not None]


def test_sampling_follows_the_tempered_distribution(model):
    prompt, temperature, n = PROMPTS[0], 0.7, 3000
    with torch.no_grad():
        probs = (model(torch.tensor([prompt])).logits[0, -1] / temperature).softmax(-1)
    drawn = torch.tensor(first_token_samples(model, prompt, SamplingParams(1, temperature), n))
    freq = torch.bincount(drawn, minlength=probs.numel()).double() / n
    sigma = (probs * (1 - probs) / n).sqrt().double()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 2e-3).all()


def test_top_k_and_top_p_limit_the_candidates(model):
    prompt = PROMPTS[2]
    with torch.no_grad():
        probs = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
    order = probs.argsort(descending=True).tolist()
    drawn = set(first_token_samples(model, prompt, SamplingParams(1, 1.0, top_k=3), 300))
    assert drawn == set(order[:3])
    sorted_p = probs[order]
    nucleus = set(order[: int(((sorted_p.cumsum(0) - sorted_p) <= 0.5).sum())])
    drawn = set(first_token_samples(model, prompt, SamplingParams(1, 1.0, top_p=0.5), 300))
    assert drawn == nucleus and len(nucleus) > 1
    assert set(first_token_samples(model, prompt, SamplingParams(1, 1.0, top_k=1), 20)) == {order[0]}


@pytest.mark.parametrize("params", [greedy(8, logprobs=5), SamplingParams(8, temperature=1.5, seed=3, logprobs=3)])
def test_logprobs_match_a_plain_forward(model, params):
    evs = run(Engine(model), {0: [("x", PROMPTS[1], params), ("y", PROMPTS[0], greedy(8))]})
    seq = list(PROMPTS[1])
    for ev in evs["x"]:
        with torch.no_grad():
            lp = model(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)  # raw: before temperature
        top = lp.topk(params.logprobs)
        assert ev.top_logprobs is not None and ev.logprob is not None and ev.token_id is not None
        assert [t for t, _ in ev.top_logprobs] == top.indices.tolist()
        assert torch.allclose(torch.tensor([p for _, p in ev.top_logprobs]).exp(), top.values.exp(), atol=1e-4)
        assert abs(ev.logprob - lp[ev.token_id].item()) < 1e-4
        seq.append(ev.token_id)
    assert all(e.logprob is None and e.top_logprobs is None for e in evs["y"])
    zero = run(Engine(model), {0: [("z", PROMPTS[0], greedy(2, logprobs=0))]})["z"]
    assert all(e.top_logprobs == [] and e.logprob is not None for e in zero)


def test_a_request_added_while_others_run_gets_its_own_tokens(model):
    events = run(Engine(model), {0: [("a", PROMPTS[3], greedy(25))], 6: [("b", PROMPTS[1], greedy(10))]})
    assert tokens(events["a"]) == generate_ref(model, PROMPTS[3], 25)
    assert tokens(events["b"]) == generate_ref(model, PROMPTS[1], 10)


def test_cancel_frees_the_slot_within_one_step(model):
    engine = Engine(model, max_batch_size=3)
    for rid, prompt in zip("abcd", PROMPTS, strict=False):
        engine.add_request(rid, prompt, greedy(15))
    engine.add_request("e", PROMPTS[4], greedy(15))
    events: dict[str, list[TokenEvent]] = {}

    def step() -> None:
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)

    step()
    step()
    assert (engine.num_active, engine.num_waiting) == (3, 2)
    engine.cancel("a")  # row 0: the last row moves into its slot
    engine.cancel("e")  # still waiting
    step()
    assert events["a"][-1] == TokenEvent("a", None, None, None, "cancelled")
    assert events["e"] == [TokenEvent("e", None, None, None, "cancelled")]
    assert (engine.num_active, engine.num_waiting) == (3, 0)  # "d" took a's slot in the same step
    while engine.has_work():
        step()
    for rid, prompt in zip("bcd", PROMPTS[1:4], strict=True):
        assert tokens(events[rid]) == generate_ref(model, prompt, 15), rid
    engine.cancel("b")  # finished: nothing to cancel
    assert engine.step() == [] and not engine.has_work()


def test_stop_token_ends_the_request(model):
    ref = generate_ref(model, PROMPTS[0], 20)
    stop = ref[4]
    evs = run(Engine(model), {0: [("s", PROMPTS[0], greedy(20, stop_token_ids=(stop, 96)))]})["s"]
    end = ref.index(stop)
    assert tokens(evs) == ref[: end + 1]
    assert [e.finish_reason for e in evs] == [None] * end + ["stop"]


def test_lengths_up_to_the_context_end(model):
    prompt = list(range(1, CTX - 4))
    evs = run(Engine(model), {0: [("long", prompt, greedy(5)), ("one", PROMPTS[0], greedy(1))]})
    assert len(evs["long"]) == 5 and evs["long"][-1].finish_reason == "length"
    assert [e.finish_reason for e in evs["one"]] == ["length"]


@pytest.mark.parametrize(
    ("prompt", "params"),
    [
        ([], greedy(4)),
        (list(range(1, CTX - 3)), greedy(5)),  # prompt + max_tokens = context + 1
        ([1, 97], greedy(4)),
        ([1, -1], greedy(4)),
        ([1, 2], greedy(0)),
        ([1, 2], SamplingParams(4, temperature=-1.0)),
        ([1, 2], SamplingParams(4, top_p=0.0)),
        ([1, 2], SamplingParams(4, top_k=-1)),
        ([1, 2], greedy(4, logprobs=21)),
        ([1, 2], greedy(4, stop_token_ids=(100,))),
    ],
)
def test_admission_errors(model, prompt, params):
    engine = Engine(model)
    with pytest.raises(AdmissionError):
        engine.add_request("bad", prompt, params)
    assert not engine.has_work()


def test_duplicate_request_id_is_refused(model):
    engine = Engine(model)
    engine.add_request("x", [1, 2], greedy(3))
    with pytest.raises(AdmissionError):
        engine.add_request("x", [3, 4], greedy(3))
    run(engine)
    engine.add_request("x", [3, 4], greedy(3))  # free again once finished


def test_reset_drops_everything(model):
    engine = Engine(model, max_batch_size=2)
    for i in range(3):
        engine.add_request(f"r{i}", PROMPTS[i], greedy(10))
    engine.step()
    assert sorted(engine.reset()) == ["r0", "r1", "r2"]
    assert (engine.num_active, engine.num_waiting, engine.has_work()) == (0, 0, False)
    assert engine.step() == []
    events = run(engine, {0: [("r0", PROMPTS[3], greedy(10))]})
    assert tokens(events["r0"]) == generate_ref(model, PROMPTS[3], 10)


def test_requests_added_from_another_thread(model):
    engine = Engine(model, max_batch_size=4)
    added = threading.Event()

    def producer() -> None:
        for i in range(12):
            engine.add_request(f"t{i}", PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=5 + i % 3))
            time.sleep(0.001)
        added.set()

    thread = threading.Thread(target=producer)
    thread.start()
    events: dict[str, list[TokenEvent]] = {}
    while not (added.is_set() and not engine.has_work()):
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    thread.join()
    assert {rid: len(evs) for rid, evs in events.items()} == {f"t{i}": 5 + i % 3 for i in range(12)}


def test_runs_in_the_models_dtype():
    model = tiny_gpt()
    model.to(torch.bfloat16)  # type: ignore[arg-type]  # transformers types `to` oddly
    engine = Engine(model)
    evs = run(
        engine,
        {
            0: [
                ("b", PROMPTS[1], SamplingParams(6, top_k=5, seed=1, logprobs=2)),
                ("g", PROMPTS[0], greedy(6)),
            ]
        },
    )
    assert len(evs["b"]) == 6 and len(evs["g"]) == 6
    assert all(
        isinstance(e.logprob, float) and e.top_logprobs is not None and len(e.top_logprobs) == 2 for e in evs["b"]
    )


def test_prefill_budget_admits_a_burst_in_chunks(model):
    # Budget 16 padded tokens: [5,6,7] and [20] fit together (2 x 3 = 6); adding the 8-token prompt would make
    # 3 x 8 = 24. A prompt longer than the budget still joins, alone.
    engine = Engine(model, max_batch_size=8, max_prefill_tokens=16)
    burst = [PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[3]]  # 3, 1, 8, 20 tokens
    for i, prompt in enumerate(burst):
        engine.add_request(f"r{i}", prompt, greedy(5))
    first = engine.prefill()
    assert [e.request_id for e in first] == ["r0", "r1"]
    assert all(e.token_id is not None for e in first) and engine.num_waiting == 2
    assert [e.request_id for e in engine.decode()] == ["r0", "r1"]  # the second tokens of the first chunk
    assert [e.request_id for e in engine.prefill()] == ["r2"]  # 8 tokens: the 20-token prompt would not fit
    engine.decode()
    assert [e.request_id for e in engine.prefill()] == ["r3"]  # longer than the budget: alone
    assert engine.num_waiting == 0


def test_chunked_prefill_changes_no_token(model):
    # The budget only changes when a request joins; each one's greedy tokens stay those of generate.
    schedule = {0: [(f"r{i}", p, greedy(9)) for i, p in enumerate(PROMPTS)]}
    events = run(Engine(model, max_batch_size=4, max_prefill_tokens=1), schedule)
    for i, prompt in enumerate(PROMPTS):
        assert tokens(events[f"r{i}"]) == generate_ref(model, prompt, 9), f"r{i}"


def test_prefill_and_decode_split_a_step(model):
    engine = Engine(model)
    engine.add_request("a", PROMPTS[1], greedy(3))
    assert engine.decode() == []  # nothing runs before a prefill
    first = engine.prefill()
    assert [(e.request_id, e.finish_reason) for e in first] == [("a", None)]
    assert engine.prefill() == []  # nobody waiting
    second = engine.decode()
    assert tokens(first + second) == generate_ref(model, PROMPTS[1], 2)
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        Engine(model, max_prefill_tokens=0)
