"""The tokenizer: training inputs, special tokens and ids, exact round trips, the chat template
(hand-written expected tokens and masks), errors, token bytes, the CLI and the tiktoken import."""

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from nanochat_hf.chat_format import render_conversation, render_for_completion
from nanochat_hf.conversion import convert_tiktoken_tokenizer
from nanochat_hf.tokenization import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    get_token_bytes,
    iter_documents,
    load_tokenizer,
    main,
    to_tiktoken,
    train_tokenizer,
)

TRICKY = [
    "Hello world! It's   three spaces,\t\ttwo tabs\n\n\nthree newlines\r\nand CRLF.   ",
    "emoji 😀👍🏽🇫🇷 and a family 👨‍👩‍👧 , CJK 日本語のテキストです。中文 한국어",
    "Ünïcödé àccents, Ελληνικά, русский, עברית, العربية, \u00a0nbsp \u200bzero-width\ufeff",
    "def f(x):\n    return x**2 + 1234567  # numbers in pairs\n\n\tif x != y: print(f'{x!r}')\n",
    "contractions: I'll you've they're WE'RE it's DON'T  ’curly’ quotes",
    "    leading spaces and trailing ones    \n",
    "",
    " ",
    "\n\n\n\n",
    "a" * 300 + " " + "ab" * 100,
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def sid(tok, name):
    return tok.convert_tokens_to_ids(name)


# ----------------------------------------------------------------------------- special tokens and ids


def test_special_tokens_are_the_last_ids_in_nanochat_order(tok):
    assert len(tok) == 1024
    ids = [sid(tok, t) for t in SPECIAL_TOKENS]
    assert ids == list(range(1024 - 9, 1024))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|assistant_end|>", "<|bos|>")
    assert tok.bos_token_id == ids[0] and tok.pad_token_id == ids[0] and tok.eos_token_id == ids[4]
    assert set(ids) <= set(tok.all_special_ids)


def test_first_256_ids_are_the_bytes(tok):
    # nanochat's layout: id b is the single byte b
    for b in (0, 10, 32, 65, 200, 255):
        assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(b)) == b
    assert enc(tok, "A") == [65]
    assert enc(tok, "\n") == [10]


def test_encoding_prepends_bos_only_when_asked(tok):
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    assert tok("hello", add_special_tokens=False)["input_ids"] == enc(tok, "hello")
    assert tok.bos_token_id not in enc(tok, "hello")


@pytest.mark.parametrize("text", TRICKY)
def test_exact_round_trip(tok, text):
    assert tok.decode(enc(tok, text)) == text
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_special_token_strings_in_text_are_text_when_split(tok):
    ids = tok("say <|bos|> now", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not set(ids) & set(tok.all_special_ids)
    assert tok.decode(ids) == "say <|bos|> now"


def test_token_bytes_counts_utf8_bytes_and_zero_for_specials(tok, tiny_tokenizer_dir):
    import torch

    tb = get_token_bytes(tok)
    assert tb.dtype == torch.long and len(tb) == len(tok)
    assert tb[:256].tolist() == [1] * 256
    assert tb[-9:].tolist() == [0] * 9
    for text in TRICKY:
        assert int(tb[enc(tok, text)].sum()) == len(text.encode("utf-8"))
    assert torch.equal(torch.load(tiny_tokenizer_dir / "token_bytes.pt"), tb)


def test_same_ids_as_tiktoken_on_the_same_merges(tok):
    """Our tokenizer.json encodes exactly as nanochat's inference path (tiktoken) with our merges."""
    tiktoken = pytest.importorskip("tiktoken")
    tb_tokens = tok.convert_ids_to_tokens(list(range(len(tok) - 9)))
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(char_to_byte[c] for c in t): i for i, t in enumerate(tb_tokens)}
    ref = tiktoken.Encoding("ours", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
    from nanochat_hf.assets import embedded_corpus_path

    shakespeare = embedded_corpus_path().read_text()[-20_000:]  # text the tokenizer was not trained on
    for text in TRICKY + [shakespeare]:
        assert enc(tok, text) == ref.encode_ordinary(text)


def test_to_tiktoken_exports_the_same_ids_specials_included(tok):
    pytest.importorskip("tiktoken")
    exported = to_tiktoken(tok)
    assert exported.n_vocab == len(tok)
    for text in TRICKY:
        assert exported.encode_ordinary(text) == enc(tok, text)
        assert exported.decode(enc(tok, text)) == text
    chat = "<|bos|><|user_start|>What is 2+2?<|user_end|><|assistant_start|>"
    assert exported.encode(chat, allowed_special="all") == tok(chat, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- loading without nanochat_hf


def test_autotokenizer_loads_in_a_process_without_nanochat_hf(tiny_tokenizer_dir, tok):
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tiny_tokenizer_dir)!r})
        texts = json.loads(sys.stdin.read())
        msgs = [{{"role": "user", "content": "2+2?"}},
                {{"role": "assistant", "content": [{{"type": "python", "text": "2+2"}},
                                                  {{"type": "python_output", "text": "4"}},
                                                  {{"type": "text", "text": "4"}}]}}]
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert "nanochat_hf" not in sys.modules
        print(json.dumps({{"round_trip": [tok.decode(tok.encode(t, add_special_tokens=False)) == t for t in texts],
                          "ids": [tok.encode(t, add_special_tokens=False) for t in texts],
                          "chat": [list(out["input_ids"]), list(out["assistant_masks"])]}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(TRICKY), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(got["round_trip"])
    assert got["ids"] == [enc(tok, t) for t in TRICKY]
    assert got["chat"] == list(render_conversation(tok, [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [{"type": "python", "text": "2+2"}, {"type": "python_output", "text": "4"},
                                          {"type": "text", "text": "4"}]}]))


# ------------------------------------------------------------------------ chat template (hand-written expectations)


def expected(tok, *segments):
    """segments: (special token name or text, mask) -> (ids, mask) as nanochat builds them piece by piece."""
    ids, mask = [], []
    for piece, m in segments:
        piece_ids = [sid(tok, piece)] if piece in SPECIAL_TOKENS else enc(tok, piece)
        ids += piece_ids
        mask += [m] * len(piece_ids)
    return ids, mask


def test_simple_conversation(tok):
    msgs = [{"role": "user", "content": "Hello, who are you?"},
            {"role": "assistant", "content": "I am nanochat."},
            {"role": "user", "content": "Nice."},
            {"role": "assistant", "content": "Thanks!"}]
    assert render_conversation(tok, msgs) == expected(
        tok,
        ("<|bos|>", 0), ("<|user_start|>", 0), ("Hello, who are you?", 0), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("I am nanochat.", 1), ("<|assistant_end|>", 1),
        ("<|user_start|>", 0), ("Nice.", 0), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("Thanks!", 1), ("<|assistant_end|>", 1),
    )


def test_exact_ids_of_a_tiny_conversation(tok):
    """Spelled out id by id: single-byte contents make the expected ids independent of the merges."""
    bos, us, ue, ast, ae = (sid(tok, t) for t in SPECIAL_TOKENS[:5])
    ids, mask = render_conversation(tok, [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}])
    assert ids == [bos, us, 65, ue, ast, 66, ae]
    assert mask == [0, 0, 0, 0, 0, 1, 1]


def test_system_message_is_merged_into_the_first_user_message(tok):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hey"}]
    assert render_conversation(tok, msgs) == expected(
        tok,
        ("<|bos|>", 0), ("<|user_start|>", 0), ("You are terse.\n\nHi", 0), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("Hey", 1), ("<|assistant_end|>", 1),
    )


def test_tool_call_parts(tok):
    msgs = [{"role": "user", "content": "What is 12*34?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me compute. "},
                {"type": "python", "text": "12*34"},
                {"type": "python_output", "text": "408"},
                {"type": "text", "text": " The answer is 408."},
            ]}]
    assert render_conversation(tok, msgs) == expected(
        tok,
        ("<|bos|>", 0), ("<|user_start|>", 0), ("What is 12*34?", 0), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0),
        ("Let me compute. ", 1),
        ("<|python_start|>", 1), ("12*34", 1), ("<|python_end|>", 1),  # the tool call is trained on
        ("<|output_start|>", 0), ("408", 0), ("<|output_end|>", 0),  # the tool's output is not
        (" The answer is 408.", 1),
        ("<|assistant_end|>", 1),
    )


def test_unicode_content_mask_is_exact(tok):
    msgs = [{"role": "user", "content": "日本語 😀"}, {"role": "assistant", "content": "  はい 👍🏽\n\n"}]
    assert render_conversation(tok, msgs) == expected(
        tok, ("<|bos|>", 0), ("<|user_start|>", 0), ("日本語 😀", 0), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("  はい 👍🏽\n\n", 1), ("<|assistant_end|>", 1))


def test_empty_assistant_message_supervises_only_the_end_token(tok):
    ids, mask = render_conversation(tok, [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}])
    assert ids[-2:] == [sid(tok, "<|assistant_start|>"), sid(tok, "<|assistant_end|>")]
    assert mask == [0] * (len(ids) - 1) + [1]


def test_accepts_nanochat_conversation_dict_and_truncates(tok):
    conv = {"messages": [{"role": "user", "content": "Hello there"},
                         {"role": "assistant", "content": "General Kenobi"}]}
    ids, mask = render_conversation(tok, conv)
    assert (ids[:5], mask[:5]) == render_conversation(tok, conv, max_length=5)
    assert len(ids) > 5


def test_generation_prompt_and_render_for_completion(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}]
    prompt_ids, _ = expected(tok, ("<|bos|>", 0), ("<|user_start|>", 0), ("S\n\nQ", 0), ("<|user_end|>", 0),
                             ("<|assistant_start|>", 0))
    assert render_for_completion(tok, msgs) == prompt_ids
    assert render_for_completion(tok, msgs[:2]) == prompt_ids
    out = tok.apply_chat_template(msgs[:2], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(out["input_ids"]) == prompt_ids
    assert msgs[-1] == {"role": "assistant", "content": "A"}  # the caller's list is not mutated


def test_template_ships_generation_markers(tiny_tokenizer_dir):
    template = (tiny_tokenizer_dir / "chat_template.jinja").read_text()
    assert "{% generation %}" in template and "{% endgeneration %}" in template


@pytest.mark.parametrize("msgs, message", [
    ([], "empty"),
    ([{"role": "assistant", "content": "hi"}], "should be from user"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "should be from assistant"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "followed by a user"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "should be from assistant"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown part type image"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text"}]}], "'text' field"),
    ([{"role": "user", "content": ["a"]}], "string content"),
    ([{"role": "user"}], "'role' and 'content'"),
])
def test_bad_conversations_raise_clear_errors(tok, msgs, message):
    with pytest.raises(ValueError, match=message):
        render_conversation(tok, msgs)


def test_generation_prompt_after_assistant_is_refused_by_the_template(tok):
    import jinja2

    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="ends with a user message"):
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


# ----------------------------------------------------------------------------- training inputs


def _docs():
    from nanochat_hf.assets import embedded_corpus_path

    text = embedded_corpus_path().read_text()[:120_000]
    return [d for d in text.split("\n\n") if d.strip()]


def test_txt_jsonl_parquet_and_hub_streaming_train_the_same_tokenizer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs()
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    with open(tmp_path / "a.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    hub = tmp_path / "hub_like"  # same schema as karpathy/climbmix-400b-shuffle: parquet shards, column `text`
    hub.mkdir()
    half = len(docs) // 2
    pq.write_table(pa.table({"text": docs[:half], "id": list(range(half))}),
                   hub / "shard_00000.parquet", row_group_size=100)
    pq.write_table(pa.table({"text": docs[half:], "id": list(range(len(docs) - half))}), hub / "shard_00001.parquet")
    vocabs = []
    for inputs in ([tmp_path / "a.txt"], [tmp_path / "a.jsonl"],
                   [hub / "shard_00000.parquet", hub / "shard_00001.parquet"], [f"hub:{hub}"]):
        t = train_tokenizer([str(p) for p in inputs], vocab_size=400, progress=False)
        vocabs.append(t.get_vocab())
    assert all(v == vocabs[0] for v in vocabs)
    assert len(vocabs[0]) == 400


def test_folder_input_holds_out_the_last_file(tmp_path):
    (tmp_path / "shard_0.txt").write_text("first doc\n\nsecond doc")
    (tmp_path / "shard_1.txt").write_text("validation doc")
    assert list(iter_documents([str(tmp_path)], progress=False)) == ["first doc", "second doc"]


def test_max_chars_and_doc_cap(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abcdef", "ghijkl", "mnop"]))
    assert list(iter_documents([str(tmp_path / "a.jsonl")], max_chars=100,
                               doc_cap=4, progress=False)) == ["abcd", "ghij", "mnop"]
    assert list(iter_documents([str(tmp_path / "a.jsonl")], max_chars=5,
                               doc_cap=4, progress=False)) == ["abcd", "ghij"]


def test_embedded_corpus_is_the_default():
    docs = list(iter_documents(None, max_chars=1000, progress=False))
    assert docs[0].startswith("First Citizen")


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 200}, "too small"),
    ({"inputs": ["/nonexistent/file.txt"]}, "nonexistent"),
    ({"max_chars": 0}, "positive"),
])
def test_bad_training_arguments(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_tokenizer(**{"progress": False, **kwargs})


def test_bad_input_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no 'text' column"):
        train_tokenizer([str(tmp_path / "bad.parquet")], vocab_size=300, progress=False)
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        train_tokenizer([str(tmp_path / "bad.jsonl")], vocab_size=300, progress=False)
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="unsupported data file"):
        train_tokenizer([str(tmp_path / "a.csv")], vocab_size=300, progress=False)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nanochat-hf tokenizer train"):
        load_tokenizer(tmp_path / "missing")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0}, merges=[])))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="lacks <\\|bos\\|>"):
        load_tokenizer(tmp_path / "other")


# ----------------------------------------------------------------------------- CLI


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["train", "--vocab-size", "300", "--max-chars", "5e4", "--output", str(out)]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    (out / "token_bytes.pt").unlink()
    assert main(["eval", str(out), "--max-chars", "20000", "--output", str(tmp_path / "eval.json")]) == 0
    assert (out / "token_bytes.pt").is_file()
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["vocab_size"] == 300 and result["num_bytes"] >= 20000
    assert 1.0 < result["bytes_per_token"] == pytest.approx(result["num_bytes"] / result["num_tokens"])
    printed = capsys.readouterr().out
    assert "bytes/token" in printed and "ours" in printed
    for label in ("gpt2", "gpt4"):  # either compared, or a one-line note says why not
        assert f"{label}_bytes_per_token" in result or any(n.startswith(label) for n in result["notes"])


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.txt" in err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "nanochat-hf tokenizer train" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tiktoken import


def _pickled_encoding(tmp_path, ranks):
    tiktoken = pytest.importorskip("tiktoken")
    specials = {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    path = tmp_path / "tokenizer.pkl"
    with open(path, "wb") as f:
        pickle.dump(enc, f)  # as nanochat's RustBPETokenizer.save does
    return enc, path


def _check_import(enc, path, out):
    converted = convert_tiktoken_tokenizer(path, out)
    loaded = load_tokenizer(out)
    for t in (converted, loaded):
        assert len(t) == enc.n_vocab
        for text in TRICKY + ["Zebra quixotic jumps: 1234567890 ++ --> ;;"]:
            assert t.encode(text, add_special_tokens=False) == enc.encode_ordinary(text)
        for name in SPECIAL_TOKENS:
            assert t.convert_tokens_to_ids(name) == enc.encode_single_token(name)
        assert t.decode(enc.encode_ordinary(TRICKY[1])) == TRICKY[1]
    assert (out / "token_bytes.pt").is_file()


def test_import_nanochat_tokenizer_pkl_from_our_merges(tmp_path, tok):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}

    tokens = tok.convert_ids_to_tokens(list(range(len(tok) - 9)))
    ranks = {bytes(char_to_byte[c] for c in t): i for i, t in enumerate(tokens)}
    enc, path = _pickled_encoding(tmp_path, ranks)
    _check_import(enc, path, tmp_path / "imported")


def test_import_nanochat_tokenizer_pkl_trained_by_rustbpe(tmp_path):
    rustbpe = pytest.importorskip("rustbpe")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(_docs()), 600 - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    enc, path = _pickled_encoding(tmp_path, {bytes(k): v for k, v in trainer.get_mergeable_ranks()})
    _check_import(enc, path, tmp_path / "imported")


def test_import_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.pkl"):
        convert_tiktoken_tokenizer(tmp_path, tmp_path / "out")
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(name="x", pat_str=r"\S+|\s+", mergeable_ranks={bytes([b]): b for b in range(256)},
                            special_tokens={})
    with open(tmp_path / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    with pytest.raises(ValueError, match="split pattern"):
        convert_tiktoken_tokenizer(tmp_path / "tokenizer.pkl", tmp_path / "out")

