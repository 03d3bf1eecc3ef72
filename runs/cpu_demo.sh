#!/usr/bin/env bash
# The whole recipe at demo size on a CPU (depth 4, 512-token context): every stage runs exactly as
# on the GPU, in well under an hour on a laptop, and the model says nothing sensible. It downloads
# 2 FineWeb-Edu shards (~200 MB), the task datasets and the eval bundle.
# Without network: put your own text in shards with `python -m jaxchat.data.download --from_text=DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAXCHAT_HOME="${JAXCHAT_HOME:-$HOME/.cache/jaxchat-cpu-demo}"

python -m pip install -e .
python train.py --stage=download --config configs/cpu_demo.toml "$@"
python train.py --stage=all --config configs/cpu_demo.toml --resume "$@"
python -m jaxchat.chat --source=sft --tag=cpu_demo --prompt="Why is the sky blue?"
