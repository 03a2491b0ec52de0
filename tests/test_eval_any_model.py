"""`nanochat-hf eval` on causal LMs that are not ours: a GPT-2-architecture model with a GPT-2-style
tokenizer (what `--model openai-community/gpt2-xl` loads when online), and the byte counts that
bits-per-byte needs for byte-level and SentencePiece-style vocabularies."""

import json
from pathlib import Path

import pytest
import torch

from nanochat_hf.evaluation import run
from nanochat_hf.tokenization import get_token_bytes

BUNDLE = Path(__file__).parent / "fixtures" / "eval" / "eval_bundle"
TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York; — naïve café ☕\n"


def _corpus():
    from nanochat_hf.assets import embedded_corpus_path

    return embedded_corpus_path().read_text(encoding="utf-8")[:200_000]


def _gpt2_like_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([_corpus()], trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def _sentencepiece_like_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="never")])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    raw.train_from_iterator([_corpus()], trainers.BpeTrainer(vocab_size=800,
                                                             special_tokens=["<s>", "</s>", *alphabet]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("make", [_gpt2_like_tokenizer, _sentencepiece_like_tokenizer])
def test_token_bytes_add_up_to_the_texts_utf8_length(make):
    tok = make()
    token_bytes = get_token_bytes(tok)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT  # the tokenizer round-trips, so the byte count must match exactly
    assert int(token_bytes[ids].sum()) == len(TEXT.encode("utf-8"))
    assert token_bytes[tok.bos_token_id] == 0 and token_bytes[tok.eos_token_id] == 0


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _gpt2_like_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    out = tmp_path_factory.mktemp("gpt2_tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_core_and_bpb_of_a_gpt2_architecture_model(gpt2_dir, tmp_path):
    outputs = []
    for batch_tokens in (64, 4096):  # one row per forward vs many: padding must not change a score
        out = tmp_path / f"gpt2_{batch_tokens}.json"
        assert run.main(["--model", str(gpt2_dir), "--tasks", "arc_easy,copa,lambada_openai,winograd,bpb",
                         "--bundle", str(BUNDLE), "--max-per-task", "12", "--batch-tokens", str(batch_tokens),
                         "--output", str(out), "--no-progress"]) == 0
        outputs.append(json.loads(out.read_text()))
    first, second = outputs
    assert set(first["tasks"]) >= {"arc_easy", "copa", "lambada_openai", "winograd"}
    for label, rows in {"arc_easy": 12, "copa": 6, "lambada_openai": 6, "winograd": 6}.items():
        result = first["tasks"][label]
        assert result["n"] == rows and 0.0 <= result["accuracy"] <= 1.0
        assert result["accuracy"] == second["tasks"][label]["accuracy"]
    assert first["core"] == pytest.approx(second["core"])
    # a random 600-token model: bits per byte near log2(600) / bytes-per-token, far from 0 and finite
    assert 0.5 < first["bpb"] < 20 and first["bpb"] == pytest.approx(second["bpb"])
