"""`nanochat-hf chat`: one-shot prompt, interactive history / clear / quit, tool calls shown, bad input."""

import io
import subprocess
import sys

import pytest

from nanochat_hf import chat_cli as chat
from nanochat_hf.engine import load_engine
from nanochat_hf.rendering import ChatRenderer, parse_assistant


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    from test_engine import tiny_model

    from nanochat_hf.tokenization import save_tokenizer

    out = tmp_path_factory.mktemp("chat_model")
    tiny_model(tiny_tokenizer, "modern").save_pretrained(out)
    save_tokenizer(tiny_tokenizer, out)
    return out


@pytest.fixture
def recorded(monkeypatch):
    """Wrap load_engine so the test sees every prompt the CLI sends to the engine."""
    prompts = []

    def loader(path, device=None):
        engine = load_engine(path, device=device)
        real = engine.generate

        def generate(tokens, **kw):
            prompts.append(list(tokens))
            return real(tokens, **kw)

        engine.generate = generate
        return engine

    monkeypatch.setattr(chat, "load_engine", loader)
    return prompts


def test_one_shot_prompt(model_dir, recorded, capsys, tiny_tokenizer):
    assert chat.main(["--model", str(model_dir), "-p", "Hello there", "--max-new-tokens", "8", "-t", "0"]) == 0
    out = capsys.readouterr().out
    assert len(recorded) == 1
    assert tiny_tokenizer.decode(recorded[0]).endswith("Hello there<|user_end|><|assistant_start|>")
    assert out.strip()  # the streamed answer


def test_interactive_history_clear_quit(model_dir, recorded, capsys, monkeypatch, tiny_tokenizer):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\nsecond question\nclear\nthird\nquit\n"))
    assert chat.main(["--model", str(model_dir), "--max-new-tokens", "6", "-t", "0"]) == 0
    texts = [tiny_tokenizer.decode(p) for p in recorded]
    assert len(texts) == 3
    assert "first question" in texts[1] and "second question" in texts[1]  # history kept
    assert texts[1].count("<|assistant_end|>") == 1  # the first answer was closed properly
    assert "first question" not in texts[2] and "third" in texts[2]  # cleared
    assert "conversation cleared" in capsys.readouterr().out


def test_bad_input(tmp_path, capsys):
    assert chat.main(["--model", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert chat.main(["--model", str(tmp_path), "-t", "-1"]) == 2
    assert chat.main(["--model", str(tmp_path)]) == 2  # a folder without config.json
    assert "config.json" in capsys.readouterr().err


def test_cli_router_runs_chat(model_dir):
    res = subprocess.run([sys.executable, "-m", "nanochat_hf", "chat", "--model", str(model_dir), "-p", "hi",
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_tool_calls_render_and_parse(tiny_tokenizer):
    enc = lambda s: tiny_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    sp = tiny_tokenizer.convert_tokens_to_ids
    ids = enc("It is ") + [sp("<|python_start|>")] + enc("6*7") + [sp("<|python_end|>"), sp("<|output_start|>")] + \
        enc("42") + [sp("<|output_end|>")] + enc(" so 42.") + [sp("<|assistant_end|>")]
    r = ChatRenderer(tiny_tokenizer)
    assert "".join(r.push(t) for t in ids) == "It is [calculator: 6*7 = 42] so 42."
    r = ChatRenderer(tiny_tokenizer)  # a closer with no part open shows nothing: the brackets stay balanced
    assert r.push(sp("<|output_end|>")) == "" and r.kind == "text"
    assert r.push(sp("<|python_start|>")) == "[calculator: " and r.kind == "python"
    parts = parse_assistant(tiny_tokenizer, ids)
    assert parts == [{"type": "text", "text": "It is "}, {"type": "python", "text": "6*7"},
                     {"type": "python_output", "text": "42"}, {"type": "text", "text": " so 42."}]
    # the parts re-render to the same tokens through the chat template
    from nanochat_hf.chat_format import render_conversation

    full, _ = render_conversation(tiny_tokenizer, [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": parts}])
    assert full[-len(ids):] == ids
