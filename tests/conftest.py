"""Shared fixtures: one tiny tokenizer trained once per test session on the embedded corpus."""

import pytest

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
