"""The GPU benchmarks are ready for the first GPU session: they import, parse, refuse a CPU in one line, and
their CPU paths run (the numbers themselves are for benchmarks/, never for timed tests)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _run(script, *args, timeout=120):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("script", ["pretrain.py", "model.py"])
def test_help_and_gpu_mode_refuses_a_cpu_in_one_line(script):
    res = _run(script, "--help")
    assert res.returncode == 0 and "--gpu" in res.stdout
    res = _run(script, "--gpu")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "needs CUDA" in res.stderr


def _load(script):
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_mode_reads_each_recipes_device_batch():
    model_bench = _load("model.py")
    assert (model_bench.recipe_batch(20), model_bench.recipe_batch(24)) == (32, 16)


def test_data_loader_per_core_measures_the_loader_and_both_encoders(tiny_tokenizer_dir):
    bench = _load("pretrain.py")
    r = bench.data_loader_per_core(str(tiny_tokenizer_dir), batch=2, seq_len=64, batches=2)
    assert r["vocab"] > 256 and all(r[k] > 0 for k in ("loader", "tokenizers", "tiktoken"))


@pytest.mark.slow
def test_cpu_paths_run():
    res = _run("pretrain.py", "--depth", "1", "--steps", "2", "--warmup", "1", timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    for line in ("model step (fixed batch)", "full loop (data + logging)", "BestFitLoader (tokenizers, packing)",
                 "encode only, to_tiktoken export", "cores per GPU to keep up (loader)"):
        assert line in res.stdout
    res = _run("model.py", "--rounds", "1", "--steps", "1", timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "classic / native" in res.stdout and "peak step memory modern" in res.stdout


def test_seams_tokenizer_converter_and_reader_sides_run(tiny_tokenizer, tmp_path):
    bench = _load("seams.py")
    r = bench.tokenizer_seam(tiny_tokenizer, tmp_path, max_docs=500)
    assert r["same_ids"] and r["same_specials"], r  # the claim docs/development.md makes about TikTokenConverter
    (tmp_path / "shards").mkdir()
    r = bench.reader_seam(tmp_path / "shards", files=3, groups=2, rows=20, world=2, repeats=1)
    assert r["ours_disjoint"] and r["theirs_disjoint"] and r["rows"] == 120 and r["n_shards"] == 3


@pytest.mark.slow
def test_seams_runs_without_compile():
    res = _run("seams.py", "--no-compile", "--repeats", "1", "--tokens", "8", "--depth", "2", timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    for line in ("[decode]", "[reader]", "[tokenizer]", "[classic]", "[sandbox]", "generate (static cache)"):
        assert line in res.stdout
