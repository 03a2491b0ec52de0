"""Engine: KV-cache generation equals model.generate, sampling knobs, several samples, tool forcing, batching."""

import random
import threading
import time

import pytest
import torch
from torch import nn

from nanochat_hf.engine import Engine
from nanochat_hf.kv_cache import SlotCache
from nanochat_hf.modeling import pop_cache
from nanochat_hf.rendering import StreamDecoder
from nanochat_hf.sampling import SamplingParams
from nanochat_hf.scheduler import Event
from nanochat_hf.tools import run_calculator


def tiny_model(tokenizer, arch="modern", depth=2, seed=0):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(seed)
    cfg = NanoChatConfig.from_depth(depth, arch=arch, vocab_size=len(tokenizer),
                                    max_position_embeddings=256, head_dim=64)
    model = NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():  # nanochat's init zeroes some projections; random weights make every token matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module", params=["modern", "classic"])
def model(request, tiny_tokenizer):
    return tiny_model(tiny_tokenizer, request.param)


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer):
    from nanochat_hf.chat_format import render_for_completion

    return render_for_completion(tiny_tokenizer, [{"role": "user", "content": "What is the meaning of life?"}])


def completion(seqs, prompt):
    return [s[len(prompt):] for s in seqs]


def test_greedy_matches_model_generate(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()  # compare the raw token stream, without stopping
    got = [col[0] for col, _ in engine.generate(prompt, max_tokens=24, temperature=0.0)]
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got == ref[0, len(prompt):].tolist()


def test_sampling_is_seeded_and_samples_differ(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=7)
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=7)
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=8)
    assert a == b and a != c
    assert len({tuple(s) for s in a}) > 1  # one prefill, four different samples
    assert all(s[:len(prompt)] == prompt for s in a)


def test_greedy_samples_identical_and_topk1_topp_small_are_greedy(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    greedy, masks = engine.generate_batch(prompt, num_samples=3, max_tokens=12, temperature=0.0)
    assert greedy[0] == greedy[1] == greedy[2]
    assert masks[0][:len(prompt)] == [0] * len(prompt) and set(masks[0][len(prompt):]) <= {1}
    top1, _ = engine.generate_batch(prompt, max_tokens=12, temperature=1.0, top_k=1, seed=3)
    nucleus, _ = engine.generate_batch(prompt, max_tokens=12, temperature=1.0, top_p=1e-6, seed=3)
    assert top1[0] == nucleus[0] == greedy[0]


def test_bad_arguments(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    for kwargs in [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                   dict(max_tokens=0), dict(num_samples=0)]:
        with pytest.raises(ValueError):
            next(engine.generate(prompt, **kwargs))
    for bad in [[], "hello", [1, "a"], [10**9]]:
        with pytest.raises(ValueError):
            next(engine.generate(bad))
    with pytest.raises(ValueError, match="context"):
        next(engine.generate([1] * 300))


def test_max_tokens_is_capped_by_context(model, tiny_tokenizer):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    steps = list(engine.generate([0] * 250, max_tokens=100, temperature=0.0))
    assert len(steps) == 6  # 256 positions - 250 prompt tokens


# ----------------------------------------------------------------------------- tool use with a scripted model


class ScriptedLM(nn.Module):
    """A causal LM whose next token is `script[last input token]`: it drives the tool state machine exactly.

    It speaks the Cache API like a real model (one KV update per layer per call), so the engine's cache,
    padding and row surgery are exercised too.
    """

    def __init__(self, script: dict[int, int], vocab: int):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.config = type("Cfg", (), {"num_hidden_layers": 2, "max_position_embeddings": 256})()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True,
                logits_to_keep=0, **kwargs):
        cache = pop_cache(cache, kwargs)  # the Engine passes it under the installed transformers' name
        b, t = input_ids.shape
        for layer in range(2):
            cache.update(torch.zeros(b, 1, t, 4), torch.zeros(b, 1, t, 4), layer)
        logits = torch.full((b, t, self.vocab), -10.0)
        for i in range(b):
            for j in range(t):
                logits[i, j, self.script.get(int(input_ids[i, j]), 0)] = 10.0
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return type("Out", (), {"logits": logits})()


def scripted_engine(tokenizer, prompt_last: int, expr: str):
    """Model that answers: <|python_start|> expr <|python_end|> (forced output) then <|assistant_end|>."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ["<|python_start|>", "<|python_end|>", "<|output_end|>", "<|assistant_end|>"]}
    expr_ids = tokenizer.encode(expr, add_special_tokens=False)
    assert len(set(expr_ids)) == len(expr_ids), "the script needs distinct tokens"
    chain = [prompt_last, ids["<|python_start|>"], *expr_ids, ids["<|python_end|>"]]
    script = dict(zip(chain[:-1], chain[1:]))
    script[ids["<|python_end|>"]] = 5  # overridden: the output is forced in
    script[ids["<|output_end|>"]] = ids["<|assistant_end|>"]
    return Engine(ScriptedLM(script, len(tokenizer)), tokenizer), expr_ids, ids


@pytest.mark.parametrize("expr", ["12*3+4", "exec(y)"])
def test_calculator_output_is_forced_and_masked(tiny_tokenizer, prompt, expr):
    engine, expr_ids, ids = scripted_engine(tiny_tokenizer, prompt[-1], expr)
    seqs, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=64, temperature=0.0)
    out = [engine.ids["<|output_start|>"], *tiny_tokenizer.encode(run_calculator(expr), add_special_tokens=False),
           engine.ids["<|output_end|>"]]
    sampled = [ids["<|python_start|>"], *expr_ids, ids["<|python_end|>"]]
    for seq, mask in zip(seqs, masks):
        assert seq == prompt + sampled + out  # <|assistant_end|> ends the row and is not included
        assert mask == [0] * len(prompt) + [1] * len(sampled) + [0] * len(out)
    text = tiny_tokenizer.decode(seqs[0][len(prompt):])
    assert ("<|output_start|>40<|output_end|>" in text) if expr == "12*3+4" else ("<|output_start|>Error:" in text)


def test_scheduler_batches_tool_rows(tiny_tokenizer, prompt):
    engine, _, _ = scripted_engine(tiny_tokenizer, prompt[-1], "7*6")
    ref, _ = engine.generate_batch(prompt, max_tokens=64, temperature=0.0)
    sched = engine.scheduler(max_batch_size=4)
    try:
        results = run_concurrently(sched, [prompt, [0, 0, 0] + prompt, prompt[2:]],
                                   SamplingParams(max_tokens=64, temperature=0))
    finally:
        sched.close()
    tokens, reasons = results[0]
    assert prompt + tokens[:-1] == ref[0] and reasons == "stop"
    assert all(r == "stop" for _, r in results)


# ----------------------------------------------------------------------------- continuous batching


def run_concurrently(sched, prompts, params, cancel_index=None):
    """Submit all prompts at once; return [(tokens, finish_reason)] per prompt."""
    out = [([], None) for _ in prompts]
    done = [threading.Event() for _ in prompts]
    requests = []

    def callback(i):
        def on_event(ev: Event):
            if ev.token is not None:
                out[i][0].append(ev.token)
                if cancel_index == i and len(out[i][0]) == 2:
                    requests[i].cancel()
            if ev.finish_reason:
                out[i] = (out[i][0], ev.finish_reason)
                done[i].set()
        return on_event

    for i, p in enumerate(prompts):
        requests.append(sched.submit(p, params, callback(i)))
    for d in done:
        assert d.wait(60), "a request never finished"
    return out


def test_scheduler_matches_single_requests(model, tiny_tokenizer):
    from nanochat_hf.chat_format import render_for_completion

    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    questions = ["Hi", "Tell me a story about a king and his three daughters.", "2+2?",
                 "Why is the sky blue at noon?", "Ok"]
    prompts = [render_for_completion(tiny_tokenizer, [{"role": "user", "content": q}]) for q in questions]
    lengths = [5, 9, 3, 12, 7]
    refs = [[c[0] for c, _ in engine.generate(p, max_tokens=n, temperature=0.0)] for p, n in zip(prompts, lengths)]
    sched = engine.scheduler(max_batch_size=3)  # fewer slots than requests: some wait, then join mid-flight
    try:
        outs = []
        done = threading.Event()
        results = {}
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            def on_event(ev, i=i):
                if ev.token is not None:
                    results.setdefault(i, []).append(ev.token)
                if ev.finish_reason:
                    outs.append((i, ev.finish_reason))
                    if len(outs) == len(prompts):
                        done.set()
            sched.submit(p, SamplingParams(max_tokens=n, temperature=0.0), on_event)
        assert done.wait(60)
        assert sched.steps > 0
    finally:
        sched.close()
    assert all(reason == "length" for _, reason in outs)
    for i, ref in enumerate(refs):
        assert results[i] == ref, f"request {i} differs when batched"


def test_scheduler_cancel_frees_the_row(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    sched = engine.scheduler(max_batch_size=2)
    try:
        results = run_concurrently(sched, [prompt, prompt, prompt],
                                   SamplingParams(max_tokens=20, temperature=0), cancel_index=0)
    finally:
        sched.close()
    assert results[0][1] == "cancelled" and len(results[0][0]) < 20
    assert [r for _, r in results[1:]] == ["length", "length"] and all(len(t) == 20 for t, _ in results[1:])


class Reader:
    """A request's consumer that reads (marks read) only while `reading` is set, like an HTTP client."""

    def __init__(self, reading=True):
        self.tokens, self.finish, self.request = [], None, None
        self.reading, self.done = threading.Event(), threading.Event()
        if reading:
            self.reading.set()

    def __call__(self, ev: Event):  # scheduler thread
        if ev.token is not None:
            self.tokens.append(ev.token)
        if self.reading.is_set() and self.request is not None:  # None: the first event beat `submit`'s return
            self.request.mark_read(self.request.unread)
        if ev.finish_reason:
            self.finish = ev.finish_reason
            self.done.set()

    def submit(self, sched, prompt, params, max_unread=None):
        self.request = sched.submit(prompt, params, self, max_unread=max_unread)
        return self


def test_a_request_nobody_reads_is_parked_and_resumes_with_the_same_tokens(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    params = {"max_tokens": 30, "temperature": 1.0, "seed": 5}  # sampled: its random stream must wait with it
    alone = [c[0] for c, _ in engine.generate(prompt, **params)]
    sched = engine.scheduler(max_batch_size=4)
    try:
        stuck = Reader(reading=False).submit(sched, prompt, SamplingParams(**params), max_unread=4)
        other = Reader().submit(sched, prompt, SamplingParams(max_tokens=40, temperature=0))
        assert other.done.wait(60) and other.finish == "length" and len(other.tokens) == 40
        assert len(stuck.tokens) == 4 and len(sched.parked) == 1  # not decoded while its events sat unread
        stuck.request.mark_read(4)
        stuck.reading.set()
        assert stuck.done.wait(60)
    finally:
        sched.close()
    assert stuck.finish == "length" and stuck.tokens == alone and not sched.parked


def test_a_parked_request_holds_its_slot_until_cancelled(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    sched = engine.scheduler(max_batch_size=1)
    try:
        stuck = Reader(reading=False).submit(sched, prompt, SamplingParams(max_tokens=50, temperature=0), max_unread=2)
        for _ in range(200):
            if sched.parked:
                break
            time.sleep(0.01)
        waiting = Reader().submit(sched, prompt, SamplingParams(max_tokens=5, temperature=0))
        assert not waiting.done.wait(0.5) and not waiting.tokens  # the parked row's cache still fills the batch
        stuck.request.cancel()
        assert stuck.done.wait(10) and stuck.finish == "cancelled" and len(stuck.tokens) == 2
        assert waiting.done.wait(60) and waiting.finish == "length"
    finally:
        sched.close()
    assert not sched.parked


def test_slot_cache_merge_and_select():
    a, b = SlotCache(1), SlotCache(1)
    a.update(torch.ones(2, 1, 3, 2), torch.ones(2, 1, 3, 2), 0)
    b.update(torch.full((1, 1, 5, 2), 2.0), torch.full((1, 1, 5, 2), 2.0), 0)
    a.nanochat_prev_embedding, b.nanochat_prev_embedding = torch.zeros(2, 1, 4), torch.ones(1, 1, 4)
    m = SlotCache.merge(a, b)
    assert m.get_seq_length() == 5 and m.layers[0].keys.shape == (3, 1, 5, 2)
    assert m.layers[0].keys[0, 0, :2].abs().sum() == 0 and m.layers[0].keys[0, 0, 2:].eq(1).all()
    assert m.nanochat_prev_embedding[:, 0, 0].tolist() == [0, 0, 1]  # per-row model state follows its row
    m.batch_select_indices(torch.tensor([2]))
    m.crop_left(1)
    assert m.layers[0].keys.shape == (1, 1, 4, 2) and m.nanochat_prev_embedding.shape[0] == 1
    for _ in range(200):  # the buffer grows past its first capacity
        m.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), 0)
    assert m.get_seq_length() == 204


def test_stream_decoder_holds_split_characters(tiny_tokenizer):
    text = "héllo wörld ☃ ok"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tiny_tokenizer)
    pieces = [dec.push(t) for t in ids]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_stream_decoder_pieces_equal_the_whole_decode_on_a_long_text(tiny_tokenizer):
    """The decoder looks at a short window per token; over many tokens the pieces still add up exactly."""
    text = ("Ünïcödé ☃ and emoji 🎉🎉 mixed with plain words, numbers 12345 and 中文字符 " * 20).strip()
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tiny_tokenizer)
    pieces = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == tiny_tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    assert dec.prefix > len(ids) - 10  # the window moved along instead of growing with the text


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    from nanochat_hf.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0], [0.1, 0.0, 0.0, 0.0, 0.0, 0.9]])
    rng = random.Random(0)
    n = 20_000
    counts = torch.zeros_like(probs)
    for _ in range(n):
        tokens = draw(probs, [rng.random(), rng.random()])
        counts[0, tokens[0]] += 1
        counts[1, tokens[1]] += 1
    assert counts[probs == 0].sum() == 0
    assert (counts / n - probs).abs().max() < 0.015
    # the ends of [0, 1): the first and the last token with mass
    assert draw(probs, [0.0, 0.0]).tolist() == [1, 0]
    assert draw(probs, [1 - 1e-12, 1 - 1e-12]).tolist() == [4, 5]
    # unnormalised rows (filtered probabilities) are scaled by their total
    assert draw(probs * 7, [0.6, 0.05]).tolist() == [3, 0]


def test_a_sampled_request_does_not_depend_on_its_neighbours(model, tiny_tokenizer, prompt):
    engine = Engine(model, tiny_tokenizer)
    engine.stop_ids = set()
    alone = [c[0] for c, _ in engine.generate(prompt, max_tokens=10, temperature=1.0, seed=5)]
    sched = engine.scheduler(max_batch_size=8)
    results, done = {}, threading.Event()
    try:
        for i, seed in enumerate([11, 5, 12, 13]):  # the seed-5 request decodes in a batch of four
            def on_event(ev, i=i):
                if ev.token is not None:
                    results.setdefault(i, []).append(ev.token)
                if ev.finish_reason and len(results) == 4 and all(len(r) == 10 for r in results.values()):
                    done.set()
            sched.submit(prompt, SamplingParams(max_tokens=10, temperature=1.0, seed=seed), on_event)
        assert done.wait(60)
    finally:
        sched.close()
    assert results[1] == alone
    assert len({tuple(r) for r in results.values()}) > 1


def test_sampling_from_an_fsdp2_model_leaves_it_trainable(tiny_tokenizer, prompt, tmp_path):
    """RL samples (pass@k at step 0) before its first training step. FSDP2 allocates a sharded model's gathered
    weights on the first forward, once: allocated under inference_mode they stay inference tensors, and the
    training forward's gather into them failed ("Inplace update to inference tensor outside InferenceMode")."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model = tiny_model(tiny_tokenizer, depth=1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        fully_shard(model.model.layers[0])
        fully_shard(model)
        seqs, _ = Engine(model, tiny_tokenizer).generate_batch(prompt, num_samples=2, max_tokens=4, seed=0)
        assert all(len(s) > len(prompt) for s in seqs)
        model.train()
        model(input_ids=torch.tensor([prompt]), labels=torch.tensor([prompt])).loss.backward()
        assert model.lm_head.weight.grad is not None
    finally:
        dist.destroy_process_group()
