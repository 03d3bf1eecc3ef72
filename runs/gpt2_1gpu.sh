#!/usr/bin/env bash
# nanochat 92d63d4's speedrun (GPT-2's CORE in 1.65 h on 8×H100) on ONE 80 GB GPU, with jaxchat's
# 2026 recipe (configs/gpt2_1gpu.toml, docs/DESIGN.md §15): download → tokenizer → base → sft →
# chat_eval → report, no midtraining. Safe to re-run after a crash (--resume continues exactly).
#
# Expected wall time on one H100 SXM — ESTIMATES from FLOPs at an assumed 40 % MFU (bf16; nanochat
# trains in FP8, which jaxchat does not have), not yet measured on a GPU:
#   download      ~20 min   165 ClimbMix shards + val shard + task datasets + eval bundle
#   tokenizer     ~2 min    2B characters, vocab 32,768
#   base (d24)    ~20 h     5,568 steps × 1,048,576 tokens (4.8 GFLOP/token; `python -m jaxchat.plan
#                           --config configs/gpt2_1gpu.toml` prints the plan and its memory: 68.5 GiB)
#   sft           ~1 h      one epoch of the 856K-conversation mixture, packed into 2048-token rows
#   chat_eval     ~30 min   ARC, MMLU, GSM8K, HumanEval, SpellingBee
#
#   bash runs/gpt2_1gpu.sh            # everything
#   bash runs/gpt2_1gpu.sh --check    # only check the GPU against the preset
#   bash runs/gpt2_1gpu.sh --base.device_batch_size=8   # any --key=value goes to train.py
set -euo pipefail
cd "$(dirname "$0")/.."
check=()
if [ "${1:-}" = "--check" ]; then check=(--check); shift; fi
exec bash runs/speedrun_1gpu.sh ${check[@]+"${check[@]}"} configs/gpt2_1gpu.toml "$@"
