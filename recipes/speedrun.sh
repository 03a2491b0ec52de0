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
# This script sets up the environment; the stages (the data download behind the tokenizer, `accelerate launch`
# on NUM_GPUS GPUs, resuming a killed run) are `nanochat-hf speedrun`'s (nanochat_hf/speedrun.py).
set -euo pipefail

TIER="${TIER:-d24}"
NUM_GPUS="${NUM_GPUS:-8}"
REPORT_TO=$([ -n "${WANDB_RUN:-}" ] && echo wandb || echo none)
export OMP_NUM_THREADS=1

# --- environment: CPU-free install of the package with the GPU extras (FlashAttention-3 via `kernels`)
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
pip install -q -e ".[gpu]"

nanochat-hf speedrun --preset "${TIER}" --num-gpus "${NUM_GPUS}" --report-to "${REPORT_TO}" "$@"
echo "or talk to it in the browser: nanochat-hf serve --model runs/${TIER}/rl"
