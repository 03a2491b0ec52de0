"""Shared fixtures: one tiny tokenizer trained once per test session on the embedded corpus."""

import os

import pytest
import torch

# One CPU thread everywhere (this process and the subprocesses tests start): float sums then run in the
# same order on every machine, so the tiny training runs the tests check are bit-reproducible whatever
# the core count (2 threads vs 1 changes the rounding, and a 30-step tiny run can end elsewhere).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

TINY_VOCAB_SIZE = 1024  # 256 bytes + 759 merges + 9 specials: enough merges for real words, trains in ~1 s
TINY_TRAIN_CHARS = 300_000  # the first ~quarter of tinyshakespeare


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder with a trained nanochat tokenizer (tokenizer.json, chat template, token_bytes.pt)."""
    from nanochat_hf.tokenization import save_tokenizer, train_tokenizer

    tok = train_tokenizer(None, vocab_size=TINY_VOCAB_SIZE, max_chars=TINY_TRAIN_CHARS, progress=False)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    """The tokenizer of `tiny_tokenizer_dir`, loaded as users load it (shared: do not mutate)."""
    from nanochat_hf.tokenization import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)
