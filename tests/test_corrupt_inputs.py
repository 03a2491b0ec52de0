"""Corrupt inputs through the real CLI: exit status 2 and one line naming the file (and row / key), no traceback.

Each case damages one input the way it happens in practice (a shard cut short by a failed download, a
hand-edited JSONL, a tokenizer folder copied in part, a checkpoint whose config.json belongs to another
model, a typo in a recipe, a CORE bundle row missing a field) and runs `nanochat-hf <stage> ...`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat_hf import cli

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "tests" / "fixtures" / "eval" / "eval_bundle"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def model_dirs(tiny_tokenizer_dir, tmp_path_factory):
    """{arch: folder} of a tiny saved model (config, safetensors, tokenizer) per architecture."""
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    out = {}
    for arch in ("modern", "classic"):
        torch.manual_seed(0)
        config = NanoChatConfig.from_depth(2, arch=arch, vocab_size=len(tok), max_position_embeddings=128,
                                           head_dim=32, aspect_ratio=32)
        out[arch] = tmp_path_factory.mktemp(arch)
        NanoChatForCausalLM(config).save_pretrained(out[arch])
        save_tokenizer(tok, out[arch])
    return out


def shards(folder: Path, n: int = 3, rows: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        table = pa.table({"text": [f"document {i}.{j}: " + "words and more words " * 10 for j in range(rows)]})
        pq.write_table(table, folder / f"shard_{i:05d}.parquet", row_group_size=100)
    return folder


def jsonl(path: Path, rows: list, bad_line: int, bad: str) -> Path:
    """`rows` as JSONL with `bad` (not JSON) written as line `bad_line` (1-based)."""
    lines = [json.dumps(r) for r in rows]
    lines.insert(bad_line - 1, bad)
    path.write_text("\n".join(lines) + "\n")
    return path


def copy_tokenizer(src: Path, dst: Path, drop: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if drop:
        (dst / drop).unlink()
    return dst


# ----------------------------------------------------------------------------- the cases
# Each returns (argv, the strings the error line must contain).


def truncated_shard_folder(tmp: Path) -> tuple[Path, Path]:
    folder = shards(tmp / "data")
    shard = folder / "shard_00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a download cut short
    return folder, shard


def truncated_shard(tmp, tok, models):
    folder, shard = truncated_shard_folder(tmp)
    return ["pretrain", "--tokenizer", str(tok), "--data", str(folder), "--output_dir", str(tmp / "out")], \
        [str(shard), "truncated or corrupt"]


def truncated_shard_listed(tmp, tok, models):
    folder, shard = truncated_shard_folder(tmp)
    return ["data", "list", "--data", str(folder)], [str(shard), "truncated or corrupt"]


def corrupt_row_group(tmp, tok, models):
    path = shards(tmp / "data", n=1) / "shard_00000.parquet"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = b"\xab" * 200  # a damaged page inside the file; its footer is intact
    path.write_bytes(bytes(data))
    return ["tokenizer", "train", "--input", str(path), "--output", str(tmp / "tok"), "--vocab-size", "300"], \
        [str(path), "(row group ", "truncated or corrupt"]


def bad_jsonl_line_pretraining(tmp, tok, models):
    path = jsonl(tmp / "docs.jsonl", [{"text": f"doc {i} " * 30} for i in range(200)], 101, '{"text": "cut')
    return ["pretrain", "--tokenizer", str(tok), "--data", str(path), "--output_dir", str(tmp / "out")], \
        [f"{path}:101:", "not valid JSON"]


def bad_jsonl_line_tokenizer(tmp, tok, models):
    path = jsonl(tmp / "docs.jsonl", [{"text": f"doc {i} " * 30} for i in range(50)], 7, "{text: unquoted}")
    return ["tokenizer", "train", "--input", str(path), "--output", str(tmp / "tok"), "--vocab-size", "300"], \
        [f"{path}:7:", "not valid JSON"]


def bad_jsonl_line_chat_data(tmp, tok, models):
    talk = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = jsonl(tmp / "talk.jsonl", [talk] * 40, 21, '{"messages": [')
    mixture = json.dumps({"train": [{"source": "conversations", "path": str(path)}]})
    return ["sft", "--model_name_or_path", str(models["modern"]), "--output_dir", str(tmp / "out"),
            "--mixture", mixture, "--max_length", "64", "--max_steps", "1"], [f"{path}:21:", "not valid JSON"]


def tokenizer_without_vocabulary(tmp, tok, models):
    folder = copy_tokenizer(tok, tmp / "tok", drop="tokenizer.json")
    return ["pretrain", "--tokenizer", str(folder), "--output_dir", str(tmp / "out")], \
        [str(folder / "tokenizer.json"), "missing"]


def tokenizer_without_config(tmp, tok, models):
    folder = copy_tokenizer(tok, tmp / "tok", drop="tokenizer_config.json")  # loads, but with no BOS
    return ["tokenizer", "eval", str(folder)], [str(folder / "tokenizer_config.json"), "missing"]


def truncated_token_bytes(tmp, tok, models):
    folder = copy_tokenizer(tok, tmp / "tok")
    tb = folder / "token_bytes.pt"
    tb.write_bytes(tb.read_bytes()[:100])
    return ["pretrain", "--tokenizer", str(folder), "--output_dir", str(tmp / "out")], [str(tb), "cannot be read"]


def wrong_shape_tensor(arch):
    def case(tmp, tok, models):
        from safetensors.torch import load_file, save_file

        folder = tmp / "model"
        shutil.copytree(models[arch], folder)
        weights = load_file(folder / "model.safetensors")
        name = next(k for k in sorted(weights) if k.endswith("mlp.fc1.weight") or k.endswith("mlp.up_proj.weight"))
        weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        return ["eval", "--model", str(folder), "--tasks", "bpb", "--no-progress"], \
            [str(folder / "model.safetensors"), f"tensor {name} has shape"]
    case.__name__ = f"wrong_shape_tensor_{arch}"
    return case


def recipe_typo(stage, typo, fix):
    def case(tmp, tok, models):
        recipe = tmp / f"{stage}.yaml"
        recipe.write_text(f"output_dir: {tmp / 'out'}\n{typo}: 3\n")
        return [stage, "--config", str(recipe)], [f"{recipe}:2:", f"unknown key {typo!r}", f"did you mean {fix!r}"]
    case.__name__ = f"recipe_typo_{stage}"
    return case


def core_row_missing_field(tmp, tok, models):
    bundle = tmp / "bundle"
    shutil.copytree(BUNDLE, bundle)
    path = bundle / "eval_data" / "commonsense_reasoning" / "copa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[2]["gold"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["eval", "--model", str(models["classic"]), "--tasks", "copa", "--bundle", str(bundle), "--no-progress"], \
        [f"{path}:3:", "'gold'"]


CASES = [truncated_shard, truncated_shard_listed, corrupt_row_group, bad_jsonl_line_pretraining,
         bad_jsonl_line_tokenizer,
         bad_jsonl_line_chat_data, tokenizer_without_vocabulary, tokenizer_without_config, truncated_token_bytes,
         wrong_shape_tensor("modern"), wrong_shape_tensor("classic"), recipe_typo("pretrain", "num_iteratons",
         "num_iterations"), recipe_typo("mid", "max_step", "max_steps"), recipe_typo("sft", "learning_rat",
         "learning_rate"), recipe_typo("rl", "num_generatons", "num_generations"), core_row_missing_field]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_corrupt_input_is_one_line_naming_the_file(case, tmp_path, tiny_tokenizer_dir, model_dirs, capfd):
    argv, expected = case(tmp_path, Path(tiny_tokenizer_dir), model_dirs)
    capfd.readouterr()
    assert cli.main(argv) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]  # progress bars and library notes may come before it, never after
    assert last.startswith(f"nanochat-hf {argv[0]}") and ": error: " in last, err[-3000:]
    for text in expected:
        assert text in last, (text, last)


@pytest.mark.parametrize("case", [truncated_shard_listed, recipe_typo("pretrain", "num_iteratons", "num_iterations")],
                         ids=lambda c: c.__name__)
def test_the_command_prints_exactly_one_line(case, tmp_path, tiny_tokenizer_dir, model_dirs):
    """As a user runs it: a fresh process, `python -m nanochat_hf.cli`, nothing on stderr but the error."""
    argv, expected = case(tmp_path, Path(tiny_tokenizer_dir), model_dirs)
    proc = subprocess.run([sys.executable, "-m", "nanochat_hf.cli", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert all(text in lines[0] for text in expected), lines[0]
