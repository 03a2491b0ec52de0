"""Conversation data for mid/SFT: converters on real-schema rows, generators, mixtures, packed-batch masks."""

import json
import re

import pytest

from nanochat_hf import chat_data as cd, chat_format as cf, synthetic_tasks as st

# Real GSM8K train rows (openai/gsm8k, config main): several <<expr=result>> per answer.
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
               "in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]
MMLU_ROW = {"question": "What is the capital of France?", "subject": "geography",
            "choices": ["Berlin", "Madrid", "Paris", "Rome"], "answer": 2}


def test_gsm8k_annotations_become_tool_calls():
    messages = cd.gsm8k_to_messages(GSM8K_ROWS[0])
    assert messages[0] == {"role": "user", "content": GSM8K_ROWS[0]["question"]}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output", "text"]
    assert [p["text"] for p in parts if p["type"] == "python"] == ["48/2", "48+24"]
    assert [p["text"] for p in parts if p["type"] == "python_output"] == ["24", "72"]
    assert parts[0]["text"] == "Natalia sold 48/2 = "
    assert parts[-1]["text"].endswith("#### 72")
    # Nothing is lost: the parts put back together are the answer with the annotations rendered inline.
    rebuilt = "".join(f"<<{p['text']}=" if p["type"] == "python" else f"{p['text']}>>" if p["type"] == "python_output"
                      else p["text"] for p in parts)
    assert rebuilt == GSM8K_ROWS[0]["answer"]
    # A '$' right before the call and the result repeated after it stay as plain text.
    parts = cd.gsm8k_answer_to_parts(GSM8K_ROWS[1]["answer"])
    assert parts[0]["text"].endswith("$") and parts[3]["text"].startswith("0.2 per minute")
    # An annotation without '=' is a call with an empty output (nanochat's rule).
    assert cd.gsm8k_answer_to_parts("x <<3*4>> y")[1:3] == [{"type": "python", "text": "3*4"},
                                                            {"type": "python_output", "text": ""}]


def test_gsm8k_tool_parts_render_with_python_tokens(tiny_tokenizer):
    from nanochat_hf.chat_format import render_conversation

    ids, mask = render_conversation(tiny_tokenizer, cd.gsm8k_to_messages(GSM8K_ROWS[0]))
    text = tiny_tokenizer.decode(ids)
    assert "<|python_start|>48/2<|python_end|><|output_start|>24<|output_end|>" in text
    # The tool's output is forced in at inference: never supervised. The call itself is.
    out_start = tiny_tokenizer.convert_tokens_to_ids("<|output_start|>")
    py_start = tiny_tokenizer.convert_tokens_to_ids("<|python_start|>")
    i = ids.index(out_start)
    assert mask[i] == 0 and mask[i + 1] == 0 and mask[ids.index(py_start)] == 1


def test_mmlu_renders_letters_after_choices():
    messages = cd.mmlu_to_messages(MMLU_ROW)
    assert messages[1] == {"role": "assistant", "content": "C"}
    assert "- Paris=C\n" in messages[0]["content"]
    assert messages[0]["content"].startswith("Multiple Choice question: What is the capital of France?")
    assert messages[0]["content"].endswith("Respond only with the letter of the correct answer.")
    assert cd.mmlu_to_messages({"train": MMLU_ROW}) == messages  # auxiliary_train's nested rows
    with pytest.raises(ValueError, match="4 choices"):
        cd.mmlu_to_messages({**MMLU_ROW, "choices": ["a", "b"]})


def test_real_sources_load_from_local_files_of_the_hub_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS * 3), tmp_path / "gsm8k-train.parquet")
    (tmp_path / "mmlu.jsonl").write_text("\n".join(json.dumps(MMLU_ROW) for _ in range(4)))
    smol = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}], "source": "x"}]
    (tmp_path / "smol.jsonl").write_text(json.dumps(smol[0]))

    gsm = cd.load_source(cd.SourceSpec("gsm8k", path=str(tmp_path / "gsm8k-train.parquet"), size=4))
    assert len(gsm) == 4 and gsm.column_names == ["messages"]
    assert gsm[0]["messages"][1]["content"][1] == {"type": "python", "text": "48/2"}
    mmlu = cd.load_source(cd.SourceSpec("mmlu", path=str(tmp_path / "mmlu.jsonl")))
    assert mmlu[3]["messages"][1]["content"] == "C"
    talk = cd.load_source(cd.SourceSpec("smoltalk", path=str(tmp_path / "smol.jsonl")))
    assert [m["role"] for m in talk[0]["messages"]] == ["system", "user", "assistant"]


def test_bad_rows_are_refused_naming_dataset_and_row(tmp_path):
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps([{"role": "user", "content": "only a question"}]) + "\n")
    with pytest.raises(ValueError, match=r"mine.jsonl row 2: .*assistant"):
        cf.read_jsonl_conversations(path)
    bad = tmp_path / "talk.jsonl"
    robot = {"messages": [{"role": "robot", "content": "x"}]}
    bad.write_text(json.dumps({"messages": good}) + "\n" + json.dumps(robot))
    with pytest.raises(ValueError, match=r"talk.jsonl row 1: .*role 'robot'"):
        cd.load_source(cd.SourceSpec("conversations", path=str(bad)))
    rows = tmp_path / "gsm.jsonl"
    rows.write_text(json.dumps({"question": "q", "solution": "no answer column"}))
    with pytest.raises(ValueError, match=r"gsm.jsonl row 0: .*gsm8k schema"):
        cd.load_source(cd.SourceSpec("gsm8k", path=str(rows)))
    with pytest.raises(ValueError, match="row 7: message 1 has a bad part"):
        cf.check_conversation([good[0], {"role": "assistant", "content": [{"type": "bash", "text": "ls"}]}], "d", 7)


def test_simple_spelling():
    words = ["apple", "strawberry", "kiwi"]
    rows = st.simple_spelling(20, seed=3, words=words)
    assert rows == st.simple_spelling(20, seed=3, words=words)  # deterministic
    for user, assistant in rows:
        word = user["content"].removeprefix("Spell the word: ")
        assert word in words
        assert assistant["content"] == f"{word}:{','.join(word)}"


def test_spelling_bee_counts_with_a_count_tool_call():
    words = st.load_words()  # offline: the english-words package if installed, else the embedded corpus
    assert len(words) > 1000 and all(w.isalpha() and w.islower() for w in words[:100])
    rows = st.spelling_bee(200, seed=0, words=words)
    assert rows[:5] == st.spelling_bee(5, seed=0, words=words)  # row i does not depend on the size asked for
    zero_counts = 0
    for user, assistant in rows:
        parts = assistant["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        m = re.fullmatch(r"'([a-z]+)'\.count\('([a-z])'\)", parts[1]["text"])
        assert m, parts[1]["text"]
        word, letter = m.groups()
        assert word in user["content"] and letter in user["content"]
        count = word.count(letter)
        zero_counts += count == 0
        assert parts[2]["text"] == str(count)
        assert parts[3]["text"].endswith(f"#### {count}")
        assert f"That gives {count}." in parts[0]["text"]  # the manual count agrees with the tool
        assert f"{word}:{','.join(word)}" in parts[0]["text"]
    assert 0 < zero_counts < 60  # some letters are not in the word (nanochat: ~10% random letters)
    assert st.spelling_bee(3, seed=st.VAL_SEED_OFFSET, words=words) != rows[:3]


def test_arithmetic_tool_calls_agree_with_the_calculator():
    from nanochat_hf.tools import run_calculator

    rows = st.arithmetic(100, seed=1)
    for _user, assistant in rows:
        _, call, output, final = assistant["content"]
        assert call["type"] == "python" and re.fullmatch(r"[0-9+\-*]+", call["text"])
        assert output["text"] == str(eval(call["text"]))
        assert final["text"].endswith(f"#### {output['text']}")
        assert run_calculator(call["text"]) == output["text"]


def test_identity_and_corpus_qa_are_valid_conversations():
    ident = st.identity()
    assert len(ident) >= 50
    assert any("nanochat" in m["content"] for conv in ident for m in conv if m["role"] == "assistant")
    for conv in st.corpus_qa(30, seed=0):
        cf.check_conversation(conv, "corpus_qa", 0)
        assert conv[1]["content"].strip()


def test_mixture_sizes_repeats_and_validation():
    mix = {"train": [{"source": "arithmetic", "size": 30}, {"source": "simple_spelling", "size": 10, "repeat": 3}],
           "val_fraction": 0.25}
    splits = cd.build_mixture(mix)
    assert len(splits["train"]) + len(splits["validation"]) == 60
    assert len(splits["validation"]) == 15
    assert splits.source_counts == {"arithmetic": 30, "simple_spelling": 30}
    # Explicit validation sources draw from other seeds than the training rows.
    mix = {"train": [{"source": "arithmetic", "size": 20}], "validation": [{"source": "arithmetic", "size": 20}]}
    splits = cd.build_mixture(mix)
    train_q = {r["messages"][0]["content"] for r in splits["train"]}
    assert not train_q & {r["messages"][0]["content"] for r in splits["validation"]}
    # The YAML text of a recipe parses the same.
    yaml_text = "train:\n  - {source: arithmetic, size: 20}\nvalidation:\n  - {source: arithmetic, size: 20}\n"
    assert cd.build_mixture(yaml_text)["train"]["messages"] == splits["train"]["messages"]
    assert set(cd.MIXTURES) >= {"synthetic", "nanochat_mid", "nanochat_sft"}
    for bad, msg in [({"train": [{"source": "nope"}]}, "unknown source"), ({"train": []}, "non-empty 'train'"),
                     ({"train": ["arithmetic"], "val_fraction": 1.5}, "val_fraction"),
                     ("no_such_mixture", "named mixture")]:
        with pytest.raises(ValueError, match=msg):
            cd.build_mixture(bad)


def test_long_rows_are_cropped_and_counted(tiny_tokenizer):
    from datasets import Dataset

    long = [{"role": "user", "content": "Count: " + " ".join(map(str, range(200)))},
            {"role": "assistant", "content": "ok"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ds = Dataset.from_dict({"messages": [long, short, short]}, features=cf.messages_features())
    out, stats = cf.tokenize_conversations(ds, tiny_tokenizer, max_length=32)
    assert stats["truncated_rows"] == 1
    # The long row, cropped to its first 32 tokens, has no assistant token left: dropped and counted.
    assert stats["dropped_rows"] == 1 and len(out) == 2
    assert all(len(r) <= 32 for r in out["input_ids"])
    out, stats = cf.tokenize_conversations(ds, tiny_tokenizer, max_length=4096)
    assert stats["truncated_rows"] == 0 and stats["dropped_rows"] == 0


def test_packed_batch_mask(tiny_tokenizer):
    """Only assistant tokens carry labels, and no label is predicted across a document boundary."""
    import torch
    from trl.data_utils import pack_dataset

    from nanochat_hf.chat_format import render_conversation
    from nanochat_hf.sft import PackedRowsCollator

    convs = st.arithmetic(6, seed=0) + st.simple_spelling(6, seed=0) + st.identity(4)
    from datasets import Dataset

    ds = Dataset.from_dict({"messages": convs}, features=cf.messages_features())
    tok, _ = cf.tokenize_conversations(ds, tiny_tokenizer, max_length=128)
    # What TRL does with it: labels = input_ids where assistant_masks == 1, then best-fit packing.
    tok = tok.map(lambda r: {"labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])]})
    packed = pack_dataset(tok.select_columns(["input_ids", "labels"]), 128, "bfd")
    assert len(packed) < len(tok)  # several conversations share a row
    batch = PackedRowsCollator(tiny_tokenizer.pad_token_id)([packed[i] for i in range(len(packed))])
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert ids.shape == labels.shape == pos.shape and ids.shape[1] <= 128

    expected = {}  # every conversation's supervised tokens, by its ids
    for conv in convs:
        cids, cmask = render_conversation(tiny_tokenizer, conv)
        expected[tuple(cids)] = cmask
    bos = tiny_tokenizer.bos_token_id
    seen_docs = 0
    for r in range(ids.shape[0]):
        starts = (pos[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for a, b in zip(starts, starts[1:]):
            doc = tuple(ids[r, a:b].tolist())
            if doc not in expected:  # the right padding: its own document, never supervised
                assert (labels[r, a:b] == -100).all() and (ids[r, a:b] == tiny_tokenizer.pad_token_id).all()
                continue
            seen_docs += 1
            assert doc[0] == bos and labels[r, a] == -100  # no label across the boundary into this document
            want = torch.tensor([t if m else -100 for t, m in zip(doc, expected[doc])])
            want[0] = -100
            assert torch.equal(labels[r, a:b], want)
            assert torch.equal(pos[r, a:b], torch.arange(b - a))
    assert seen_docs == len(convs)
    names = tiny_tokenizer.convert_ids_to_tokens(ids[labels != -100].tolist())
    for special in ("<|user_start|>", "<|user_end|>", "<|output_start|>", "<|output_end|>", "<|bos|>"):
        assert special not in names
    assert "<|assistant_end|>" in names and "<|python_start|>" in names
