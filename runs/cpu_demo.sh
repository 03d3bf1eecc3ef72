#!/usr/bin/env bash
# The whole recipe at demo size on a CPU (depth 4, 512-token context): every stage runs exactly as
# on the GPU, in well under an hour on a laptop, and the model says nothing sensible.
#
#   bash runs/cpu_demo.sh                    # online: 2 FineWeb-Edu shards (~200 MB), the task datasets, the eval bundle
#   bash runs/cpu_demo.sh --offline          # no network needed (also chosen by itself when the network is unreachable)
#   bash runs/cpu_demo.sh --from_text=DIR    # pretrain on your own .txt/.md/.jsonl files (online or offline)
#   bash runs/cpu_demo.sh --config=configs/cpu_demo_2026.toml   # the 2026 recipe (nanochat 92d63d4) at demo size
#   bash runs/cpu_demo.sh --base.num_iterations=50   # any other --key=value goes to train.py
#
# Offline mode (jaxchat/data/offline.py): pretraining text from --from_text=DIR, else from the
# documentation of the Python running this script (help topics + standard-library docstrings, ~2.7M
# characters); chat stages on what can be made here (jaxchat's own identity conversations, spelling
# tasks on a local word list, your CustomJSON files with --data.custom_json=a.jsonl,b.jsonl); the
# tasks and the CORE evaluation that need the network are skipped with one line each. One 3-second
# probe decides, instead of minutes of download retries. A JAXCHAT_HOME prepared offline stays offline.
set -euo pipefail
cd "$(dirname "$0")/.."

offline=""
from_text=""
config="configs/cpu_demo.toml"
args=()
for arg in "$@"; do
  case "$arg" in
    --offline) offline=1 ;;
    --from_text=*|--from-text=*) from_text="${arg#*=}" ;;
    --config=*) config="${arg#*=}" ;;
    *) args+=("$arg") ;;
  esac
done
tag=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("tag", "cpu_demo"))' "$config")

# Install only when needed: jaxchat is not installed, its dependencies are missing, or pyproject.toml
# changed since the install (a reinstall needs the package index, which an offline machine lacks).
if ! problem=$(python - <<'EOF' 2>&1
import importlib.metadata as md, re, sys, tomllib
try:
    dist = md.distribution("jaxchat")
except md.PackageNotFoundError:
    sys.exit("jaxchat is not installed")
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
norm = lambda r: re.sub(r"\s+", "", r).lower()
installed = sorted(norm(r) for r in dist.requires or [] if "extra==" not in norm(r))
if dist.version != project["version"] or installed != sorted(norm(r) for r in project["dependencies"]):
    sys.exit("the installed jaxchat is older than pyproject.toml")
for requirement in project["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"{name} is not installed")
EOF
); then
  echo "installing jaxchat ($problem)"
  python -m pip install -e .
fi

if [[ -z "$offline" ]]; then
  if [[ -n "${JAXCHAT_HOME:-}" && -f "$JAXCHAT_HOME/offline.json" ]]; then
    offline=1
    echo "offline mode: $JAXCHAT_HOME was prepared offline (use another JAXCHAT_HOME for the online demo)"
  elif ! python -m jaxchat.data.offline --check_network; then  # prints one line when nothing answers
    offline=1
  fi
fi

if [[ -n "$offline" ]]; then
  export JAXCHAT_HOME="${JAXCHAT_HOME:-$HOME/.cache/jaxchat-cpu-demo-offline}"
  python -m jaxchat.data.offline ${from_text:+"--from_text=$from_text"}
  mode=(--data.offline=true --data.corpus=fineweb)  # the local text is made into base_data/, whatever the recipe reads online
  prompt="Who are you?"
else
  export JAXCHAT_HOME="${JAXCHAT_HOME:-$HOME/.cache/jaxchat-cpu-demo}"
  if [[ -n "$from_text" ]]; then  # your shards first; the download then leaves base_data alone
    python -m jaxchat.data.download --from_text="$from_text"
  fi
  python train.py --stage=download --config "$config" ${args[@]+"${args[@]}"}
  mode=()
  prompt="Why is the sky blue?"
fi

python train.py --stage=all --config "$config" --resume ${mode[@]+"${mode[@]}"} ${args[@]+"${args[@]}"}
python -m jaxchat.chat --source=sft --tag="$tag" --prompt="$prompt"
