#!/usr/bin/env bash
# The one-command GPU check (≤ 8 minutes on one H100/H200): d20 and d26 train steps (tok/s, MFU,
# peak memory), KV-cache decode, a 30-step base run with checkpoint + --resume, chat eval on 8
# problems; prints a markdown table for docs/BENCHMARKS.md. See benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh           # needs a GPU: pip install -e '.[cuda12]'
#   bash benchmarks/gpu_check.sh --smoke   # toy sizes on any machine: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
missing=$(python - <<'PY'
import importlib.util
needed = ("jax", "flax", "optax", "orbax", "grain", "tiktoken", "rustbpe", "pyarrow", "datasets", "yaml", "jaxchat")
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (pip install -e '.[cuda12]', or install their wheels offline)"
  exit 1
fi
if [[ " $* " != *" --smoke "* ]] && ! python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "gpu_check: JAX sees no GPU (pip install -e '.[cuda12]'); --smoke runs the checks at toy sizes anywhere"
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu_check.py "$@"
