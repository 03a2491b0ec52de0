"""Data shipped inside the package: the embedded offline corpus and small fixtures."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def embedded_corpus_path() -> Path:
    """tinyshakespeare.txt (1.1 MB, public domain): the offline default for tokenizer and pretraining."""
    return ASSETS_DIR / "tinyshakespeare.txt"
