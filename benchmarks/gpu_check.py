"""The one-command GPU check: does every GPU program run, how fast, and in how much memory.

    bash benchmarks/gpu_check.sh            # on a machine with one H100/H200 (≤ 8 minutes)
    bash benchmarks/gpu_check.sh --smoke    # the same checks at toy sizes, on any machine (plumbing)

Each check runs in its own process (so peak device memory is its own) and prints a markdown row:

1. d20 train step, bf16, 32 × 2048 tokens, no remat: tok/s, MFU against the datasheet, peak memory
   measured and as XLA's compiled analysis planned it (what ``jaxchat.fit`` chooses batches by).
2. d26 train step, 16 × 2048, no remat (configs/d26.toml): the same; and the 2026 recipe's d24
   (configs/gpt2_1gpu.toml: its model and optimizer, cuDNN with sliding windows), 16 × 2048: its
   measured MFU is what runs/gpt2_1gpu.sh's expected time should use instead of the assumed 40 %.
3. ``python -m jaxchat.plan --target=this`` for d20 with ``device_batch_size=auto``: the batch and remat
   jaxchat.fit picks on this GPU and the compiled peak (compare with check 1's measured peak).
4. KV-cache decode at d20 (vocab 65,536, context 2048), batch 1 and 32: decode tok/s, TTFT.
5. ``train.py --stage=base`` for 30 steps on generated FineWeb-format shards (d12, tokenizer trained
   first), a checkpoint at step 15; then step 30 is deleted and ``--resume`` redoes 15 → 30: the
   resumed step-30 loss must match the straight run's.
6. Chat evaluation (ARC-Easy categorical + GSM8K generative) on 8 problems each, through the real
   evaluation code on that base checkpoint and generated task files.

Everything is written under a temporary ``$JAXCHAT_HOME``; nothing needs the network. Record the
table in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# (depth, seq, rows, vocab, remat) of the train-step checks; --smoke shrinks them.
FULL = {"d20": (20, 2048, 32, 65536, False), "d26": (26, 2048, 16, 65536, False),
        "d24_2026": (24, 2048, 16, 32768, False),
        "decode": (20, 65536, 2048), "base": ("configs/d12.toml", 2048, 32, 8192)}
SMOKE = {"d20": (2, 128, 4, 1024, False), "d26": (2, 128, 2, 1024, True), "d24_2026": (2, 128, 2, 1024, False),
         "decode": (2, 1024, 256), "base": ("configs/tiny.toml", 64, 4, 1024)}
GIB = 1 << 30


def sh(args: list[str], env: dict, timeout: int) -> str:
    """Run a command, echo its output, raise with its tail on failure."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    print(f"$ {' '.join(args)}  ({time.perf_counter() - start:.0f} s, exit {proc.returncode})", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}… failed:\n{out[-3000:]}")
    return out


def train_step(name: str, sizes, env, tmp: Path, recipe: str = "2025") -> str:
    depth, seq, rows, vocab, remat = sizes
    out = tmp / f"{name}.json"
    sh([PY, "benchmarks/train_step.py", "--depth", str(depth), "--seq", str(seq), "--batch", str(rows),
        "--vocab", str(vocab), "--steps", "5", "--rounds", "1", "--json", str(out), "--recipe", recipe,
        *(["--remat"] if remat else [])], env, timeout=600)
    r = json.loads(out.read_text())
    memory = (f"{r['peak_bytes'] / GIB:.1f} GiB (planned {r['planned_bytes'] / GIB:.1f})" if r["peak_bytes"]
              else f"n/a (CPU; planned {r['planned_bytes'] / GIB:.2f} GiB)")
    return (f"| d{depth}{' (2026 recipe)' if recipe == '2026' else ''} train step, {rows}×{seq}"
            f"{', remat' if remat else ''} | {r['tok_s']:,.0f} tok/s, "
            f"MFU {r['mfu']:.1%}, peak {memory} | {r['step_ms']:.0f} ms/step; compile+2 steps "
            f"{r['compile_s']:.0f} s; {r['runtime']} |")


def decode(sizes, env, tmp: Path) -> str:
    depth, vocab, seq = sizes
    out = tmp / "decode.json"
    sh([PY, "benchmarks/engine.py", "--depth", str(depth), "--vocab", str(vocab), "--seq", str(seq),
        "--prompt", "64", "--tokens", "128", "--batch", "1", "32", "--naive-steps", "2", "--repeats", "1",
        "--json", str(out)], env, timeout=600)
    r = json.loads(out.read_text())
    cells = ", ".join(f"batch {rows}: {v['decode_tok_s']:,.0f} tok/s (TTFT {v['ttft'] * 1e3:.0f} ms)"
                      for rows, v in r.items())
    return f"| d{depth} KV-cache decode | {cells} | prompt 64, 128 tokens, temperature 1 |"


def loss_at(home: Path, tag: str, step: int) -> float:
    lines = (home / "report" / f"base_{tag}.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if json.loads(line).get("step") == step
              and "loss" in json.loads(line)]
    return losses[-1]


def base_and_resume(sizes, env, home: Path) -> str:
    preset, seq, rows, vocab = sizes
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.fineweb import write_fineweb_shards

    write_fineweb_shards(home / "base_data", n_shards=3, docs_per_shard=1500 if seq > 64 else 200)
    common = ["--config", preset, "--tag", "gpucheck", f"--tokenizer.vocab_size={vocab}",
              "--tokenizer.max_chars=4000000", f"--model.sequence_len={seq}"]
    sh([PY, "train.py", "--stage=tokenizer", *common], env, timeout=300)
    base = [PY, "train.py", "--stage=base", *common, "--base.num_iterations=30", f"--base.device_batch_size={rows}",
            f"--base.total_batch_size={rows * seq}", "--base.eval_every=15", f"--base.eval_tokens={rows * seq}",
            "--base.core_every=0", "--checkpoint.save_every=15", "--checkpoint.keep_last=5"]
    start = time.perf_counter()
    sh(base, env, timeout=600)
    straight_s = time.perf_counter() - start
    straight = loss_at(home, "gpucheck", 30)
    shutil.rmtree(home / "checkpoints" / "base" / "gpucheck" / "30")
    sh([*base, "--resume"], env, timeout=600)
    resumed = loss_at(home, "gpucheck", 30)
    verdict = "match" if abs(resumed - straight) <= 1e-3 * abs(straight) else "MISMATCH"
    return (f"| base, 30 steps + resume from 15 | step-30 loss {straight:.4f} straight, {resumed:.4f} resumed: "
            f"{verdict} | {preset}, {rows}×{seq} a step; straight run {straight_s:.0f} s with compile |")


def chat_eval(env, home: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tasks import write_task_cache

    write_task_cache(home)
    code = ("import json, sys; from jaxchat.model.load import load_model; from jaxchat.eval.chat import evaluate_chat; "
            "m, t, _ = load_model('base', 'gpucheck'); "
            "r = evaluate_chat(m, t, ['ARC-Easy', 'GSM8K'], max_problems=8, max_new_tokens=64); "
            "print('RESULT', json.dumps(r['tasks']))")
    out = sh([PY, "-c", code], env, timeout=300)
    tasks = json.loads(out.split("RESULT", 1)[1].strip().splitlines()[0])
    cells = ", ".join(f"{name} {acc:.3f}" for name, acc in tasks.items())
    return f"| chat eval, 8 problems a task | ran: {cells} | base checkpoint (accuracy is not the point) |"


def plan_auto(preset: str, env) -> str:
    """``python -m jaxchat.plan --target=this`` with an automatic batch: what jaxchat.fit picks on this device."""
    out = sh([PY, "-m", "jaxchat.plan", "--config", preset, "--target=this", "--stages=base", "--inference=false",
              "--base.device_batch_size=auto", "--model.remat=auto"], env, timeout=600)
    row = next(line for line in out.splitlines() if line.startswith("| base |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return (f"| auto batch ({preset}) on this device | {cells[1]}, remat {cells[2]}, compiled peak {cells[4]} | "
            f"{next(line.split('memory', 1)[1].strip() for line in out.splitlines() if line.strip().startswith('memory'))} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any machine (checks the script itself)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    rows = ["| check | result | details |", "|---|---|---|"]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="jaxchat-gpu-check-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "JAXCHAT_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1",
               "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        checks = [("d20", lambda: train_step("d20", sizes["d20"], env, tmp)),
                  ("d26", lambda: train_step("d26", sizes["d26"], env, tmp)),
                  ("d24_2026", lambda: train_step("d24_2026", sizes["d24_2026"], env, tmp, recipe="2026")),
                  ("plan", lambda: plan_auto("configs/tiny.toml" if args.smoke else "configs/d20.toml", env)),
                  ("decode", lambda: decode(sizes["decode"], env, tmp)),
                  ("base", lambda: base_and_resume(sizes["base"], env, tmp / "home")),
                  ("chat_eval", lambda: chat_eval(env, tmp / "home"))]
        for name, check in checks:
            try:
                rows.append(check())
            except Exception as e:  # one broken check must not hide the others' results
                failures += 1
                rows.append(f"| {name} | FAILED | {str(e).strip().splitlines()[-1][:200]} |")
                print(e, file=sys.stderr)
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
