"""Build the small offline evaluation data shipped in nanochat_hf/evaluation/data/.

    python dev/make_offline_eval_data.py --bundle ../shared/data/eval_bundle --rows 100

- eval_bundle_mini/: the DCLM CORE bundle layout (core.yaml, eval_meta_data.csv,
  eval_data/<category>/<task>.jsonl) with the tasks present in --bundle, each cut to its first
  --rows rows after nanochat's shuffle (Random(1337)), so `--max-per-task <= rows` picks the same
  examples as the full bundle would. Few-shot examples are then drawn from these rows only.
- chat/arc_easy.jsonl, chat/arc_challenge.jsonl: the bundle's ARC rows in the Hub ARC schema
  (question, choices{text,label}, answerKey) for the offline ChatCORE of the CPU speedrun.
"""

import argparse
import json
import random
import shutil
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "nanochat_hf" / "evaluation" / "data"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    src = Path(args.bundle)
    dst = OUT / "eval_bundle_mini"
    if dst.exists():
        shutil.rmtree(dst)
    config = yaml.safe_load((src / "core.yaml").read_text())
    kept = []
    for task in config["icl_tasks"]:
        path = src / "eval_data" / task["dataset_uri"]
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        random.Random(1337).shuffle(rows)
        out = dst / "eval_data" / task["dataset_uri"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows[: args.rows]))
        kept.append(task)
    (dst / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": kept}, sort_keys=False))
    shutil.copy(src / "eval_meta_data.csv", dst / "eval_meta_data.csv")

    chat = OUT / "chat"
    chat.mkdir(parents=True, exist_ok=True)
    for name in ("arc_easy", "arc_challenge"):
        text = (src / "eval_data" / "world_knowledge" / f"{name}.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        random.Random(42).shuffle(rows)
        with open(chat / f"{name}.jsonl", "w") as f:
            for i, row in enumerate(rows[: args.rows]):
                labels = "ABCDE"[: len(row["choices"])]
                question = row["query"].removeprefix("Question: ").strip()
                f.write(json.dumps({"id": f"{name}-{i}", "question": question,
                                    "choices": {"text": row["choices"], "label": list(labels)},
                                    "answerKey": labels[row["gold"]]}) + "\n")
    print(f"wrote {OUT}: {len(kept)} CORE tasks")


if __name__ == "__main__":
    main()
