"""CORE as nanochat scores it: prompts, few-shot sampling, spans, truncation, centering, CLI, JSON."""

import argparse
import json
import math
import random
from pathlib import Path

import pytest
import torch

from nanochat_hf.evaluation import core

BUNDLE = Path(__file__).parent / "fixtures" / "eval" / "eval_bundle"


class BigramLM(torch.nn.Module):
    """A hand-built deterministic LM: the logits at position t are a fixed row of a seeded table for token t."""

    def __init__(self, vocab_size, seed=0, max_position_embeddings=4096):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g) * 3)
        self.config = type("Cfg", (), {"max_position_embeddings": max_position_embeddings})()

    def forward(self, input_ids, **kwargs):
        return type("Out", (), {"logits": self.table[input_ids]})()


def bigram_loss(table, ids, start, end):
    """Mean -log p(ids[t] | ids[t-1]) over t in [start, end), in plain Python floats."""
    total = 0.0
    for t in range(start, end):
        row = table[ids[t - 1]].tolist()
        m = max(row)
        logz = m + math.log(sum(math.exp(x - m) for x in row))
        total += logz - row[ids[t]]
    return total / (end - start)


def bigram_greedy(table, ids, start, end):
    return all(int(table[ids[t - 1]].argmax()) == ids[t] for t in range(start, end))


def test_bundle_tasks_and_baselines():
    tasks = core.load_tasks(BUNDLE)
    assert [(t.label, t.task_type, t.num_fewshot, t.delimiter, t.random_baseline) for t in tasks] == [
        ("arc_easy", "multiple_choice", 10, "\nAnswer: ", 25.0),
        ("copa", "multiple_choice", 0, " ", 50.0),
        ("lambada_openai", "language_modeling", 0, " ", 0.0),
        ("winograd", "schema", 0, " ", 50.0),
    ]
    with pytest.raises(ValueError, match="unknown CORE task"):
        core.load_tasks(BUNDLE, ["hellaswag_zeroshot_typo"])
    assert core.centered(0.6, 50.0) == pytest.approx(0.2)  # GPT-2's copa in nanochat's reference csv
    assert core.centered(0.412458, 25.0) == pytest.approx(0.216611, abs=1e-6)


def test_rows_are_shuffled_with_nanochat_seed_and_cut():
    task = core.load_tasks(BUNDLE, ["copa"])[0]
    raw = [json.loads(line) for line in (BUNDLE / "eval_data" / task.dataset_uri).read_text().splitlines()]
    rows = core.load_task_rows(BUNDLE, task)
    expected = list(raw)
    random.Random(1337).shuffle(expected)
    assert rows == expected and rows[0]["query"] == "The girl found a bug in her cereal, therefore"
    assert core.load_task_rows(BUNDLE, task, max_per_task=2) == expected[:2]


def test_prompt_rendering_matches_nanochat_templates():
    mc = {"query": "Q1", "choices": ["a", "b"], "gold": 1}
    shot = {"query": "S", "choices": ["x", "y"], "gold": 0}
    assert core.render_mc(mc, "\nAnswer: ", [shot]) == ["S\nAnswer: x\n\nQ1\nAnswer: a", "S\nAnswer: x\n\nQ1\nAnswer: "
                                                                                         "b"]
    sc = {"context_options": ["c1", "c2"], "continuation": "end.", "gold": 0}
    assert core.render_schema(sc, " ", [{"context_options": ["p", "q"], "continuation": "z", "gold": 1}]) == \
        ["q z\n\nc1 end.", "q z\n\nc2 end."]
    lm = {"context": "  The cat sat on the ", "continuation": "mat"}
    assert core.render_lm(lm, " ", [{"context": "A b ", "continuation": "c"}]) == \
        ["A b c\n\nThe cat sat on the", "A b c\n\nThe cat sat on the mat"]


def test_fewshot_examples_seeded_per_row(tiny_tokenizer):
    task = core.load_tasks(BUNDLE, ["arc_easy"])[0]
    rows = core.load_task_rows(BUNDLE, task)
    ex = core.prepare_example(3, rows, task, tiny_tokenizer, None)
    shots = [rows[i] for i in random.Random(1234 + 3).sample([i for i in range(len(rows)) if i != 3], 10)]
    prefix = "".join(f"{s['query']}\nAnswer: {s['choices'][s['gold']]}\n\n" for s in shots)
    item = rows[3]
    texts = [f"{prefix}{item['query']}\nAnswer: {c}" for c in item["choices"]]
    ids = [[tiny_tokenizer.bos_token_id] + tiny_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert ex.tokens == ids and ex.gold == item["gold"]
    # the continuation starts after the longest token prefix shared by all choices
    start = ex.starts[0]
    assert all(t[:start] == ids[0][:start] for t in ids) and len({t[start] for t in ids if len(t) > start}) > 1


def test_core_scores_equal_hand_computed_bigram_scores(tiny_tokenizer):
    model = BigramLM(len(tiny_tokenizer))
    table = model.table.detach()
    bos = tiny_tokenizer.bos_token_id

    def enc(s):
        return [bos] + tiny_tokenizer.encode(s, add_special_tokens=False)

    result = core.evaluate_core(model, tiny_tokenizer, BUNDLE, progress=False)
    for task in core.load_tasks(BUNDLE):
        rows = core.load_task_rows(BUNDLE, task)
        correct = []
        for i, item in enumerate(rows):
            others = [j for j in range(len(rows)) if j != i]
            shots = [] if not task.num_fewshot else \
                [rows[j] for j in random.Random(1234 + i).sample(others, task.num_fewshot)]
            d = task.delimiter
            if task.task_type == "language_modeling":
                prefix = "".join(f"{s['context'].strip()}{d}{s['continuation']}\n\n" for s in shots)
                without = enc((prefix + item["context"].strip() + d).strip())
                with_ = enc(prefix + item["context"].strip() + d + item["continuation"])
                correct.append(bigram_greedy(table, with_, len(without), len(with_)))
                continue
            if task.task_type == "multiple_choice":
                prefix = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
                seqs = [enc(f"{prefix}{item['query']}{d}{c}") for c in item["choices"]]
                n = 0
                while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
                    n += 1
                spans = [(n, len(s)) for s in seqs]
            else:
                seqs = [enc(f"{c}{d}{item['continuation']}") for c in item["context_options"]]
                n = 0
                while all(len(s) > n for s in seqs) and len({s[-1 - n] for s in seqs}) == 1:
                    n += 1
                spans = [(len(s) - n, len(s)) for s in seqs]
            losses = [bigram_loss(table, s, a, b) for s, (a, b) in zip(seqs, spans)]
            correct.append(losses.index(min(losses)) == item["gold"])
        acc = sum(correct) / len(correct)
        got = result["tasks"][task.label]
        assert got["n"] == len(rows) and got["accuracy"] == pytest.approx(acc), task.label
        assert got["centered"] == pytest.approx((acc - task.random_baseline / 100) / (1 - task.random_baseline / 100))
    assert result["core"] == pytest.approx(sum(r["centered"] for r in result["tasks"].values()) / 4)


def test_batching_does_not_change_scores(tiny_tokenizer):
    model = BigramLM(len(tiny_tokenizer), seed=1)
    task = core.load_tasks(BUNDLE, ["arc_easy"])[0]
    rows = core.load_task_rows(BUNDLE, task)
    one_by_one = core.evaluate_task(model, tiny_tokenizer, rows, task, batch_tokens=1, progress=False)
    batched = core.evaluate_task(model, tiny_tokenizer, rows, task, batch_tokens=1 << 20, progress=False)
    assert one_by_one == batched


def test_long_prompts_keep_their_last_tokens(tiny_tokenizer):
    task = core.load_tasks(BUNDLE, ["arc_easy"])[0]
    rows = core.load_task_rows(BUNDLE, task)
    full = core.prepare_example(0, rows, task, tiny_tokenizer, None)
    cut = core.prepare_example(0, rows, task, tiny_tokenizer, 64)
    for t, s, e, ct, cs, ce in zip(full.tokens, full.starts, full.ends, cut.tokens, cut.starts, cut.ends):
        assert len(ct) == min(64, len(t)) and ct == t[-64:]
        assert t[s:e] == ct[cs:ce]
    # a model whose context is that short gets the same scores as scoring the cropped sequences
    model = BigramLM(len(tiny_tokenizer), max_position_embeddings=64)
    assert core.model_max_seq_len(model) == 64
    assert core.evaluate_task(model, tiny_tokenizer, rows, task, progress=False) == \
        core.score_examples(model, [core.prepare_example(i, rows, task, tiny_tokenizer, 64) for i in range(len(rows))],
                            tiny_tokenizer.bos_token_id, progress=False)



def _accuracies_by_hand(model, tokenizer, crop):
    """Per task: accuracy from one unbatched forward per sequence (nanochat's rules), prompts cropped to `crop`."""
    accs = {}
    for task in core.load_tasks(BUNDLE):
        rows = core.load_task_rows(BUNDLE, task)
        correct = []
        for i in range(len(rows)):
            ex = core.prepare_example(i, rows, task, tokenizer, crop)
            losses, greedy = [], []
            for seq, s, e in zip(ex.tokens, ex.starts, ex.ends):
                with torch.no_grad():
                    logits = model(torch.tensor([seq])).logits[0, s - 1:e - 1]
                target = torch.tensor(seq[s:e])
                losses.append(torch.nn.functional.cross_entropy(logits, target).item())
                greedy.append(bool((logits.argmax(-1) == target).all()))
            lm = task.task_type == "language_modeling"
            correct.append(greedy[0] if lm else losses.index(min(losses)) == ex.gold)
        accs[task.label] = sum(correct) / len(correct)
    return accs


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_converted_nanochat_checkpoint_gets_long_prompts_whole(tiny_tokenizer, tmp_path, arch):
    """nanochat's core_eval forwards its GPT whole prompts, however long: a converted checkpoint with a 16-token
    context gets the 10-shot ARC prompts (~330 tokens) whole, and scores what whole forwards score, not cropped."""
    from test_conversion import nanochat_state, write_checkpoint

    from nanochat_hf.conversion import convert_nanochat_checkpoint
    from nanochat_hf.modeling import NanoChatForCausalLM

    mc = {"sequence_len": 16, "vocab_size": len(tiny_tokenizer), "n_layer": 2, "n_head": 2, "n_kv_head": 1,
          "n_embd": 32, **({"window_pattern": "SL"} if arch == "modern" else {})}
    src = write_checkpoint(tmp_path / "nanochat", nanochat_state(mc, arch), mc)
    model = NanoChatForCausalLM.from_pretrained(convert_nanochat_checkpoint(src, tmp_path / "hf")).eval()
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    result = core.evaluate_core(model, tiny_tokenizer, BUNDLE, progress=False)
    hook.remove()
    assert core.prompt_crop_length(model.config) is None and max(widths) > 300
    whole = _accuracies_by_hand(model, tiny_tokenizer, None)
    assert {label: r["accuracy"] for label, r in result["tasks"].items()} == pytest.approx(whole)
    cropped = _accuracies_by_hand(model, tiny_tokenizer, 16)
    assert cropped != whole  # cropping to the context scores differently
    # --max-context trained (the CPU speedrun tiers): every prompt cropped to the model's 16-token context.
    widths.clear()
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    trained = core.evaluate_core(model, tiny_tokenizer, BUNDLE, progress=False, max_context="trained")
    hook.remove()
    assert max(widths) <= 16
    assert {label: r["accuracy"] for label, r in trained["tasks"].items()} == pytest.approx(cropped)


def test_max_context_flag(tiny_tokenizer):
    assert [core.parse_max_context(v) for v in ("auto", "trained", "512")] == ["auto", "trained", 512]
    config = type("Cfg", (), {"max_position_embeddings": 32, "rope_parameters": {"rope_theta": 1e4}})()
    model = type("M", (), {"config": config})()
    assert [core.crop_length(model, v) for v in ("auto", "trained", 8)] == [None, 32, 8]
    for bad in ("0", "-5", "half", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="auto, trained or a number of tokens"):
            core.parse_max_context(bad)


def test_learned_positions_still_crop(tiny_tokenizer):
    """A model with a learned position table (GPT-2's n_positions) cannot go past it: its prompts keep their
    last tokens; RoPE configs (ours, Llama) are not cropped; a config that says nothing crops to its context."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, OPTConfig

    from nanochat_hf import NanoChatConfig

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=16, n_layer=1,
                                      n_head=2)).eval()
    assert core.prompt_crop_length(gpt2.config) == 64
    assert core.prompt_crop_length(OPTConfig(max_position_embeddings=128)) == 128
    assert core.prompt_crop_length(type("Cfg", (), {"max_position_embeddings": 32})()) == 32
    for cfg in (LlamaConfig(), NanoChatConfig.from_depth(2, arch="classic"), NanoChatConfig.from_depth(2)):
        assert core.prompt_crop_length(cfg) is None, type(cfg).__name__
    task = core.load_tasks(BUNDLE, ["arc_easy"])[0]  # 10-shot prompts of ~330 tokens
    rows = core.load_task_rows(BUNDLE, task)
    cropped = [core.prepare_example(i, rows, task, tiny_tokenizer, 64) for i in range(len(rows))]
    assert core.evaluate_task(gpt2, tiny_tokenizer, rows, task, progress=False) == \
        core.score_examples(gpt2, cropped, tiny_tokenizer.bos_token_id, progress=False)

def test_missing_bundle_and_task_files_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a CORE eval bundle"):
        core.resolve_bundle(tmp_path)
    monkeypatch.setenv("NANOCHAT_HF_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="--bundle"):
        core.resolve_bundle(None, download=False)
    # offline download: the message names the URL and the --bundle way out
    monkeypatch.setattr(core, "EVAL_BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")
    with pytest.raises(FileNotFoundError, match="--bundle DIR"):
        core.download_bundle(tmp_path / "b", url="http://127.0.0.1:9/eval_bundle.zip")
    partial = tmp_path / "partial"
    (partial / "eval_data").mkdir(parents=True)
    for f in ("core.yaml", "eval_meta_data.csv"):
        (partial / f).write_text((BUNDLE / f).read_text())
    task = core.load_tasks(partial, ["copa"])[0]
    with pytest.raises(FileNotFoundError, match="copa.jsonl"):
        core.load_task_rows(partial, task)


def test_download_unpacks_a_bundle_zip(tmp_path):
    import shutil
    import threading
    from functools import partial
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    shutil.make_archive(str(tmp_path / "eval_bundle"), "zip", root_dir=BUNDLE.parent, base_dir="eval_bundle")
    server = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = core.download_bundle(tmp_path / "cache" / "eval_bundle",
                                    url=f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip")
    finally:
        server.shutdown()
    assert core.resolve_bundle(dest) == dest and [t.label for t in core.load_tasks(dest)][0] == "arc_easy"
