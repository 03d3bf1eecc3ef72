#!/usr/bin/env bash
# The whole nanochat recipe on ONE GPU (80 GB: H100/A100), d20 by default. Everything lands in
# $JAXCHAT_HOME (default ~/.cache/jaxchat). Safe to re-run after a crash: downloads skip what is
# complete, and `--resume` skips finished stages and continues the interrupted one exactly.
#
# Expected wall time per stage on one H100 (bf16, cuDNN attention; upstream's 8×H100 run takes
# ~4 h in all, one GPU does the same work ~8× slower):
#   download      ~30 min   240 FineWeb-Edu shards (~24 GB) + task datasets + eval bundle
#   tokenizer     ~2 min    2B characters, vocab 65,536
#   base (d20)    ~24 h     21,400 steps × 524,288 tokens at ~135K tok/s, CORE every 2000 steps
#   mid           ~1.5 h    one epoch of the 850K-conversation mixture
#   chat_eval     ~30 min   ARC, MMLU, GSM8K, HumanEval, SpellingBee (after mid and after SFT)
#   sft           ~20 min   one epoch of 23K conversations
# Pass another preset as the first argument (configs/d12.toml: ~1/6 of the time).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/d20.toml}"
shift || true

python -m pip install -e '.[cuda12]'
python train.py --stage=download --config "$CONFIG" "$@"
python train.py --stage=all --config "$CONFIG" --resume "$@"
python -m jaxchat.report
echo "chat with it: python -m jaxchat.chat --source=sft   |   web: python -m jaxchat.web --source=sft"
