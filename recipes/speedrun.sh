#!/bin/bash
# The 8xH100 speedrun of nanochat_hf: raw text -> tokenizer -> base -> mid -> SFT -> RL -> report.
#
#   bash recipes/speedrun.sh                      # TIER=d24 by default (the GPT-2 tier)
#   TIER=d20 bash recipes/speedrun.sh             # the original "$100" tier
#   screen -L -Logfile runs/speedrun.log -S speedrun bash recipes/speedrun.sh
#   WANDB_RUN=d24 TIER=d24 bash recipes/speedrun.sh   # log to wandb (after `wandb login`)
#
# Expected sizes, tokens, wall time and cost on one 8xH100 node at $24/hour: `nanochat-hf plan --preset TIER`
# prints them from the recipes (pretraining at 45% MFU; nanochat measures 47-51%):
#   tier  params (scaling)   pretrain tokens    pretrain time   cost
#   d20   897M (435M)        5.2B (ratio 12)    ~1.2 h          ~$28
#   d24   1.38B (730M)       5.8B (ratio 8)     ~2.2 h (bf16)   ~$52   (CORE ~0.26, GPT-2 1.5B = 0.2565)
#   d26   1.68B (918M)       7.6B (ratio 8.25)  ~3.5 h          ~$85
#   d32   2.82B (1.68B)      20B (ratio 12)     ~17 h           ~$406
# The exact numbers of each tier are in recipes/<tier>/*.yaml (every key is also a flag).
set -euo pipefail

TIER="${TIER:-d24}"
NUM_GPUS="${NUM_GPUS:-8}"
RUN="runs/${TIER}"
REPORT_TO=$([ -n "${WANDB_RUN:-}" ] && echo wandb || echo none)
export OMP_NUM_THREADS=1
mkdir -p "${RUN}"

# --- environment: CPU-free install of the package with the GPU extras (FlashAttention-3 via `kernels`)
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
pip install -q -e ".[gpu]"

LAUNCH=(accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --num_processes "${NUM_GPUS}")

# --- data: the first 8 shards (~2B chars) for the tokenizer now, the rest in the background
nanochat-hf data download -n 8
SHARDS=$(python -c "from nanochat_hf.speedrun import PRESETS; print(PRESETS['${TIER}'].data_shards)")
nanochat-hf data download -n "${SHARDS}" -w 8 &
DOWNLOAD_PID=$!

# --- tokenizer: 32768 tokens on 2B characters, then compression vs GPT-2/GPT-4
nanochat-hf tokenizer train --data climbmix --vocab-size 32768 --output "${RUN}/tokenizer"
nanochat-hf tokenizer eval "${RUN}/tokenizer" --data climbmix --output "${RUN}/tokenizer/tokenizer_eval.json"

# --- pretraining (resumable: re-running this script continues from the last checkpoint)
echo "waiting for the data download..."; wait "${DOWNLOAD_PID}"
RESUME=$(ls -d "${RUN}"/base/checkpoint-* >/dev/null 2>&1 && echo "--resume_from_checkpoint latest" || true)
"${LAUNCH[@]}" -m nanochat_hf.pretrain --config "recipes/${TIER}/pretrain.yaml" \
    --tokenizer "${RUN}/tokenizer" --data climbmix --output_dir "${RUN}/base" --report_to "${REPORT_TO}" ${RESUME}
nanochat-hf eval --model "${RUN}/base" --tasks core --output "${RUN}/eval/base.json"

# --- mid-training, SFT, RL (TRL trainers), each from the previous stage's folder
"${LAUNCH[@]}" -m nanochat_hf.sft --config "recipes/${TIER}/mid.yaml" --model_name_or_path "${RUN}/base" --output_dir "${RUN}/mid"
"${LAUNCH[@]}" -m nanochat_hf.sft --config "recipes/${TIER}/sft.yaml" --model_name_or_path "${RUN}/mid" --output_dir "${RUN}/sft"
"${LAUNCH[@]}" -m nanochat_hf.rl --config "recipes/${TIER}/grpo.yaml" --model_name_or_path "${RUN}/sft" --output_dir "${RUN}/rl"
for STAGE in mid sft rl; do
    nanochat-hf eval --model "${RUN}/${STAGE}" --tasks chatcore --output "${RUN}/eval/${STAGE}.json"
done

# --- the report card, then talk to it
nanochat-hf report --run "${RUN}"
echo "report: ${RUN}/report.md"
echo "chat:   nanochat-hf chat --model ${RUN}/rl -p 'Why is the sky blue?'   (or: nanochat-hf serve --model ${RUN}/rl)"
