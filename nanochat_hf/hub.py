"""Push a stage's model folder to the Hugging Face Hub with a model card.

    nanochat-hf push --run runs/tiny --stage sft --repo-id USER/nanochat-tiny [--private]

The folder each stage writes is already Hub-ready (config, safetensors, tokenizer with the chat template, generation
config); this adds a model card (`README.md`) with the training story, the evaluation table as `model-index`
metadata, usage snippets and the run's report and plots, and uploads it all in one commit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from nanochat_hf.errors import run_main
from nanochat_hf.report import MODEL_STAGES, SUMMARY_METRICS, read_json, summary_table

# How our metrics are named in `model-index` (dataset id, dataset name, metric type).
EVAL_DATASETS = {
    "CORE": ("mlfoundations/dclm-core", "DCLM CORE (22 tasks)", "core"),
    "ARC-Easy": ("allenai/ai2_arc", "ARC-Easy", "accuracy"),
    "ARC-Challenge": ("allenai/ai2_arc", "ARC-Challenge", "accuracy"),
    "MMLU": ("cais/mmlu", "MMLU", "accuracy"),
    "GSM8K": ("openai/gsm8k", "GSM8K", "accuracy"),
    "HumanEval": ("openai/openai_humaneval", "HumanEval", "pass@1"),
    "ChatCORE": ("nanochat/chatcore", "ChatCORE", "chatcore"),
}

CARD_TEMPLATE = """
# {model_name}

A small chat model trained from scratch with [nanochat_hf](https://github.com/karpathy/nanochat)
(karpathy/nanochat rebuilt on the Hugging Face stack), stage **{stage}** of run `{run_name}`.

## How it was trained

| | |
|---|---|
{training_rows}

## Evaluation

{eval_table}

## Usage

With transformers{remote_code_note}:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}"{remote_code_arg})
messages = [{{"role": "user", "content": "Why is the sky blue?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Served by `nanochat-hf serve --model {repo_id}` (Text Generation Inference-compatible routes):

```python
from text_generation import Client

print(Client("http://127.0.0.1:8000").generate("The capital of France is", max_new_tokens=16).generated_text)
```

With nanochat_hf's CLI:

```bash
nanochat-hf chat --model {repo_id} -p "Why is the sky blue?"
```
{report_section}
"""


def build_model_card(run: Path, stage: str, repo_id: str):
    """A `huggingface_hub.ModelCard` with model-index metadata from the run's eval JSON."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config, stages = read_json(run / stage / "config.json"), read_json(run / "stages.json")
    model_name, needs_remote_code = repo_id.split("/")[-1], "auto_map" in config
    training = {
        "stage": stage,
        "preset / recipe": stages.get("preset", "-"),
        "architecture": config.get("model_type", "-"),
        "layers / width": f"{config.get('num_hidden_layers', '-')} / {config.get('hidden_size', '-')}",
        "vocabulary": config.get("vocab_size", "-"),
        "hardware": stages.get("hardware", "-"),
    }
    for name, info in stages.get("stages", {}).items():
        if isinstance(info, dict) and "seconds" in info:
            training[f"time: {name}"] = f"{info['seconds'] / 60:.1f} min"
    table = summary_table(run)
    results = [EvalResult(task_type="text-generation", dataset_type=EVAL_DATASETS[metric][0],
                          dataset_name=EVAL_DATASETS[metric][1], metric_type=EVAL_DATASETS[metric][2],
                          metric_name=metric, metric_value=float(table[metric][stage]))
               for metric in SUMMARY_METRICS if table[metric].get(stage) is not None]
    rows = "\n".join(f"| {r.metric_name} | {r.metric_value:.4f} |" for r in results)
    eval_table = f"| metric | value |\n|---|---|\n{rows}" if results else "Not evaluated yet."
    report_section = ""
    if (run / "report.md").exists():
        report_section = "\n## Report card\n\nThe full report of the run is in [`report/report.md`](report/report.md)."
        for plot in sorted((run / "plots").glob("*.png")) if (run / "plots").is_dir() else []:
            report_section += f"\n\n![{plot.stem}](report/plots/{plot.name})"
    card_data = ModelCardData(language="en", license="mit", library_name="transformers",
                              pipeline_tag="text-generation", tags=["nanochat", "nanochat_hf", stage],
                              model_name=model_name, eval_results=results or None)
    content = f"---\n{card_data.to_yaml()}\n---\n" + CARD_TEMPLATE.format(
        model_name=model_name, stage=stage, run_name=run.name, repo_id=repo_id, eval_table=eval_table,
        training_rows="\n".join(f"| {k} | {v} |" for k, v in training.items()), report_section=report_section,
        remote_code_note=" (custom architecture: `trust_remote_code=True`)" if needs_remote_code else "",
        remote_code_arg=", trust_remote_code=True" if needs_remote_code else "")
    return ModelCard(content)


def push_stage(run: str | Path, stage: str, repo_id: str, private: bool = False, api=None,
               token: str | None = None) -> str:
    """Create the repo and upload the stage folder + card + report in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    run = Path(run)
    model_dir = run / stage
    if stage not in MODEL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(MODEL_STAGES)}")
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no config.json; run the {stage} stage first (or check --run)")
    if "/" not in repo_id:
        raise ValueError(f"--repo-id must look like USER/NAME, got {repo_id!r}")
    api = api or HfApi(token=token)
    card = build_model_card(run, stage, repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "upload"
        # Skip training-only state (optimizer checkpoints) that users should not download.
        shutil.copytree(model_dir, staging, ignore=shutil.ignore_patterns("checkpoint-*", "checkpoints", "*.tmp"))
        card.save(staging / "README.md")
        if (run / "report.md").exists():
            (staging / "report").mkdir(exist_ok=True)
            shutil.copy(run / "report.md", staging / "report" / "report.md")
            if (run / "plots").is_dir():
                shutil.copytree(run / "plots", staging / "report" / "plots", dirs_exist_ok=True)
        api.create_repo(repo_id=repo_id, private=private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model",
                                   commit_message=f"nanochat_hf: upload {stage} model of run {run.name}")
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf push", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (e.g. runs/tiny)")
    parser.add_argument("--stage", default="sft", choices=MODEL_STAGES, help="which model folder to upload")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the cached login / HF_TOKEN)")
    args = parser.parse_args(argv)

    def push() -> None:
        url = push_stage(args.run, args.stage, args.repo_id, private=args.private, token=args.token)
        print(f"pushed {args.run}/{args.stage} -> {url}")

    return run_main("nanochat-hf push", push)


if __name__ == "__main__":
    sys.exit(main())
