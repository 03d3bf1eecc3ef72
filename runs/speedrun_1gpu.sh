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
# Pass another preset as the first argument (configs/d12.toml: ~1/6 of the time); --check first
# only checks the GPU against the preset.
# Smaller cards: configs/d20_24gb.toml (24 GB), configs/d16_16gb.toml (16 GB), configs/d12_12gb.toml
# (12 GB); `python -m jaxchat.plan --config PRESET --target=...` shows what any preset needs on any card.
set -euo pipefail
cd "$(dirname "$0")/.."
check_only=""
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi  # check the GPU against the preset, then stop
CONFIG="${1:-configs/d20.toml}"
shift || true

# Before anything is installed or downloaded: a GPU, and as much memory as the preset is sized for.
if ! gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1) || [ -z "$gpu" ]; then
  echo "speedrun_1gpu: no NVIDIA GPU found (nvidia-smi); on a CPU run the same recipe at demo size: bash runs/cpu_demo.sh"
  exit 1
fi
gpu_name="${gpu%,*}"
gpu_mib="${gpu##*, }"
need_mib=$(python3 - "$CONFIG" <<'PY'
import re, sys, tomllib
from pathlib import Path
try:
    target = tomllib.loads(Path(sys.argv[1]).read_text()).get("target") or "h100-80gb"
    spec = Path("jaxchat/targets") / f"{target}.txtpb"
    print(int(re.search(r"device_memory_size: (\d+)", spec.read_text()).group(1)) >> 20, target)
except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
    sys.exit(f"speedrun_1gpu: cannot read the preset {sys.argv[1]}: {e}")
PY
)
gib() { echo $(( ($1 + 512) / 1024 )); }
if [ "${gpu_mib%.*}" -lt $(( ${need_mib%% *} * 95 / 100 )) ]; then
  echo "speedrun_1gpu: $CONFIG is sized for ${need_mib#* } ($(gib "${need_mib%% *}") GiB) but this $gpu_name has $(gib "${gpu_mib%.*}") GiB; pick the preset for your card (README: which preset for my GPU) or add --base.device_batch_size=auto --mid.device_batch_size=auto --sft.device_batch_size=auto --model.remat=auto"
  exit 1
fi
echo "speedrun_1gpu: $gpu_name, $(gib "${gpu_mib%.*}") GiB; preset $CONFIG (sized for ${need_mib#* })"
[ -n "$check_only" ] && exit 0

python -m pip install -e '.[cuda12]'
python train.py --stage=download --config "$CONFIG" "$@"
python train.py --stage=all --config "$CONFIG" --resume "$@"
python -m jaxchat.report
echo "chat with it: python -m jaxchat.chat --source=sft   |   web: python -m jaxchat.web --source=sft"
