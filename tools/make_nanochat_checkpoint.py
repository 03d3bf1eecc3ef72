"""Real nanochat checkpoints, made by nanochat's own scripts, for jaxchat's import/export tests.

What it does (torch, CPU; never imported by jaxchat)
    For each nanochat commit (16788ee, the Nov 2025 seed, and 92d63d4, the current one) it extracts
    ``nanochat/``, ``scripts/`` and ``tasks/`` from the local git mirror into a temp dir and runs,
    unchanged, in a fresh nanochat base dir (``NANOCHAT_BASE_DIR``):

    1. ``scripts/tok_train.py`` at vocab 300 on 3 small FineWeb-format shards
       (``tests/fixtures/fineweb.py``; the last shard is the val shard), which writes
       ``tokenizer/tokenizer.pkl`` (a pickled tiktoken Encoding) and ``tokenizer/token_bytes.pt``;
    2. ``scripts/base_train.py`` for 3 steps on CPU, which writes
       ``base_checkpoints/d2/model_000003.pt``, ``meta_000003.json`` and ``optim_000003_rank0.pt``:
       - 16788ee: ``--depth=2`` (n_embd 128, 1 head), sequence 64, batch 2 × 64;
       - 92d63d4: ``--depth=2 --aspect-ratio=32 --head-dim=32`` (n_embd 64, 2 heads), sequence 256,
         ``--window-pattern=SL`` (layer 0 sees 128 keys), LRs × 45 (undoing its batch scaling at a
         256-token batch) and no warmup, so 3 steps move the zero-initialised projections; with
         ``NANOCHAT_DTYPE=bfloat16``, so wte and the value embeddings are saved in bfloat16, as on a GPU;
    3. nanochat's ``checkpoint_manager.load_model("base", cpu, "eval")`` of that checkpoint (float32)
       and its logits on a fixed token sequence (a FineWeb-format document, ``<|bos|>`` first; 48
       tokens for 16788ee, 256 for 92d63d4 so the short window matters). 16788ee keeps its rotary
       cos/sin tables in bfloat16 whatever the compute dtype, where jaxchat's float32 CPU runtime has
       them in float32 (in bfloat16 on a GPU, like nanochat); so for 16788ee it also stores the logits
       of the same nanochat model with float32 tables (``logits_f32_rotary``; its bf16 assert skipped
       with ``python -O``), which jaxchat must match to float32 precision;
    4. the round trip: jaxchat imports that base dir (``jaxchat.interop.nanochat``), exports it to a
       new nanochat base dir, and nanochat's own ``load_model`` (and its tokenizer, unpickling
       jaxchat's ``tokenizer.pkl``) loads the export; its tokens and logits must be bit-identical to
       step 3's. Exit status 1 otherwise.

    ``torch.compile`` is replaced by the identity (a ``sitecustomize`` on the scripts' path: no C
    compiler run, the same arithmetic) and two imports nanochat has but these scripts never use are
    stubbed: ``wandb`` (``--run=dummy``) and HF ``tokenizers`` (nanochat's other tokenizer class).

    It also saves, with torch itself, ``torch_views.pt``: tensors a state_dict can hold that jaxchat's
    reader must rebuild (bfloat16, float16, int64, bool, a transposed view, a slice with a storage
    offset, two views of one storage, an expanded view, a 0-d and an empty tensor) and their values.

Golden fixture (``--write-fixture``)
    ``tests/fixtures/nanochat_16788ee/`` and ``tests/fixtures/nanochat_92d63d4_ckpt/`` each get a nanochat
    base dir (``base_checkpoints/d2/model_000003.pt`` + ``meta_000003.json``, ``tokenizer/tokenizer.pkl`` +
    ``token_bytes.pt``; the optimizer file is left out) and ``logits.npz`` (tokens, nanochat's float32
    logits); the first also gets ``torch_views.pt`` + ``torch_views.npz``. Each directory stays under
    2 MB. ``tests/test_interop_nanochat.py`` imports them without torch.

How to run (about 1 minute on 2 CPU cores)
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python tools/make_nanochat_checkpoint.py [--write-fixture] [--keep DIR]
    The venv needs torch, numpy, pyarrow, tiktoken, rustbpe, filelock, requests, psutil, pyyaml, jinja2,
    and jaxchat's own dependencies (jax, flax, orbax, grain: the round trip imports jaxchat).
    Options: --mirror PATH (git dir of the nanochat mirror), --only 16788ee|92d63d4.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TAG, STEPS, VOCAB = "d2", 3, 300
MAX_FIXTURE_BYTES = 2 << 20

RUNS = {
    "16788ee": {
        "fixture": FIXTURES / "nanochat_16788ee",
        "data_dir": "base_data",
        "env": {},
        "tok_train": [f"--vocab_size={VOCAB}", "--max_chars=2000000"],
        "base_train": ["--depth=2", "--max_seq_len=64", "--device_batch_size=2", "--total_batch_size=128",
                       f"--num_iterations={STEPS}", "--eval_every=1000", "--eval_tokens=128",
                       "--core_metric_every=-1", "--sample_every=1000", "--run=dummy"],
        "tokens": 48,
        "bf16_rotary": True,
    },
    "92d63d4": {
        "fixture": FIXTURES / "nanochat_92d63d4_ckpt",
        "data_dir": "base_data_climbmix",
        "env": {"NANOCHAT_DTYPE": "bfloat16"},  # wte / value embeds saved in bf16, as a GPU run saves them
        "tok_train": [f"--vocab-size={VOCAB}", "--max-chars=2000000"],
        "base_train": ["--depth=2", "--aspect-ratio=32", "--head-dim=32", "--max-seq-len=256",
                       "--window-pattern=SL", "--device-batch-size=1", "--total-batch-size=256",
                       f"--num-iterations={STEPS}", "--eval-every=1000", "--eval-tokens=256",
                       "--core-metric-every=-1", "--sample-every=-1", "--run=dummy", "--device-type=cpu",
                       # 92d63d4 scales its LRs by √(batch / 2¹⁹) = 0.022 here: undo that, so 3 steps move the
                       # zero-initialised projections and lm_head enough for the logits to test every block.
                       "--matrix-lr=0.9", "--unembedding-lr=0.36", "--embedding-lr=13.5", "--warmup-steps=0"],
        "tokens": 256,
        "bf16_rotary": False,
    },
}

STUBS = {
    "wandb/__init__.py": "def init(*args, **kwargs):\n    raise RuntimeError('wandb stub: use --run=dummy')\n",
    "tokenizers/__init__.py": ("Tokenizer = Regex = None\n"
                               "from tokenizers import pre_tokenizers, decoders, models, trainers\n"),
    "tokenizers/pre_tokenizers.py": "",
    "tokenizers/decoders.py": "",
    "tokenizers/models.py": "BPE = None\n",
    "tokenizers/trainers.py": "BpeTrainer = None\n",
    # torch.compile → identity (as tools/parity_optim_nanochat.py does): no C compiler run, the same
    # arithmetic; 92d63d4's optimizer compiles with fullgraph=True, which TORCH_COMPILE_DISABLE refuses.
    "sitecustomize.py": ("import torch\n"
                         "def _identity_compile(fn=None, **kwargs):\n"
                         "    return fn if fn is not None else (lambda f: f)\n"
                         "torch.compile = _identity_compile\n"),
}

# Run inside the extracted nanochat tree: load the checkpoint as nanochat does and compute logits.
LOGITS_SCRIPT = r"""
import json, sys
import numpy as np, torch
from nanochat.checkpoint_manager import load_model
out, n_tokens, text, f32_rotary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[5] == "1"
model, tokenizer, meta = load_model("base", torch.device("cpu"), phase="eval", model_tag="%s", step=%d)
if f32_rotary:  # 16788ee keeps cos/sin in bf16 (and asserts it: run with -O); jaxchat's CPU runtime has float32
    cast, torch.Tensor.bfloat16 = torch.Tensor.bfloat16, lambda self: self  # nanochat's table code minus its cast
    try:
        model.cos, model.sin = model._precompute_rotary_embeddings(model.rotary_seq_len,
                                                                   model.config.n_embd // model.config.n_head)
    finally:
        torch.Tensor.bfloat16 = cast
tokens = tokenizer.encode(text, prepend="<|bos|>")[:n_tokens]
if len(tokens) != n_tokens:  # (not an assert: this runs under -O too)
    raise SystemExit(f"the text gives {len(tokens)} tokens, {n_tokens} wanted")
with torch.no_grad():
    logits = model(torch.tensor([tokens], dtype=torch.long))
dtypes = sorted({str(v.dtype) for v in torch.load(sys.argv[4], weights_only=True).values()})
np.savez(out, tokens=np.asarray(tokens, np.int32), logits=logits.float().numpy()[0])
print(json.dumps({"logits": list(logits.shape), "cos": str(model.cos.dtype), "saved_dtypes": dtypes}))
""" % (TAG, STEPS)


def extract(mirror: str, commit: str, dest: Path) -> Path:
    """``nanochat/``, ``scripts/``, ``tasks/`` of ``commit`` into ``dest`` (git archive | tar)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", commit, "nanochat", "scripts", "tasks"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def write_stubs(dest: Path) -> Path:
    for rel, text in STUBS.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with open(log, "w") as f:
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        print(log.read_text()[-4000:])
        raise SystemExit(f"{' '.join(cmd[1:3])} failed (exit {result.returncode}); log: {log}")


def fixed_text() -> str:
    from tests.fixtures.fineweb import fineweb_documents

    return "\n\n".join(fineweb_documents(4, seed=123))  # not in the shards (seeds 0, 1, 2)


def make(commit: str, spec: dict, mirror: str, tmp: Path, stubs: Path) -> dict:
    """Train nanochat ``commit``'s tokenizer and base model; return the paths and the logits."""
    from tests.fixtures.fineweb import write_fineweb_shards

    src = extract(mirror, commit, tmp / f"src_{commit}")
    base = tmp / f"base_{commit}"
    write_fineweb_shards(base / spec["data_dir"], n_shards=3, docs_per_shard=200)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(src), str(stubs)]), **spec["env"])
    py = sys.executable
    run([py, "-m", "scripts.tok_train", *spec["tok_train"]], src, env, tmp / f"{commit}_tok_train.log")
    run([py, "-m", "scripts.base_train", *spec["base_train"]], src, env, tmp / f"{commit}_base_train.log")
    ckpt = base / "base_checkpoints" / TAG
    model = ckpt / f"model_{STEPS:06d}.pt"
    env = {**env, "NANOCHAT_DTYPE": "float32"}  # nanochat's logits in float32 (bf16 weights widened on load)
    arrays, info = {}, []
    for key, f32_rotary in (("logits", False), ("logits_f32_rotary", True)):
        if f32_rotary and not spec["bf16_rotary"]:
            continue  # 92d63d4's tables are in the compute dtype: float32 here already
        out = tmp / f"{key}_{commit}.npz"
        flags = ["-O"] if f32_rotary else []
        info.append(subprocess.run([py, *flags, "-c", LOGITS_SCRIPT, str(out), str(spec["tokens"]), fixed_text(),
                                    str(model), "1" if f32_rotary else "0"], cwd=src, env=env, check=True,
                                   capture_output=True, text=True).stdout.strip().splitlines()[-1])
        with np.load(out) as saved:
            arrays.update(tokens=saved["tokens"], **{key: saved["logits"]})
    out = tmp / f"logits_{commit}.npz"
    np.savez(out, **arrays)
    meta = json.loads((ckpt / f"meta_{STEPS:06d}.json").read_text())
    print(f"nanochat {commit}: {model} ({model.stat().st_size / 1024:.0f} KB), model_config {meta['model_config']}, "
          f"val_bpb {meta.get('val_bpb')}; logits {'; '.join(info)}")
    return {"base": base, "ckpt": ckpt, "logits": out, "src": src, "env": env}


def check_round_trip(commit: str, spec: dict, made: dict, tmp: Path) -> bool:
    """nanochat → jaxchat (import) → nanochat (export) → nanochat's own ``load_model``: the same
    logits, bit for bit (the weights are the same float32 values, bf16 ones widened exactly)."""
    from jaxchat.interop.nanochat import export_nanochat, import_nanochat

    home, exported = tmp / f"jaxchat_home_{commit}", tmp / f"export_{commit}"
    import_nanochat(made["base"], "base", TAG, home=home)
    export_nanochat(exported, "base", TAG, home=home)
    out = tmp / f"roundtrip_{commit}.npz"
    model = exported / "base_checkpoints" / TAG / f"model_{STEPS:06d}.pt"
    subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, str(out), str(spec["tokens"]), fixed_text(), str(model), "0"],
                   cwd=made["src"], env={**made["env"], "NANOCHAT_BASE_DIR": str(exported)}, check=True,
                   capture_output=True, text=True)
    with np.load(out) as back, np.load(made["logits"]) as original:
        same = (np.array_equal(back["tokens"], original["tokens"])
                and np.array_equal(back["logits"], original["logits"]))
        diff = float(np.abs(back["logits"] - original["logits"]).max())
    print(f"nanochat {commit} loads jaxchat's export of its import ({model}): "
          f"{'identical logits' if same else f'DIFFERENT logits (max |Δ| {diff:.3g})'}")
    return same


def torch_views(out_dir: Path) -> None:
    """``torch_views.pt`` (saved by torch) and ``torch_views.npz`` (the values, float32 for bf16)."""
    import collections

    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict()
    sd["bf16"] = torch.randn(3, 5, generator=g).to(torch.bfloat16)
    sd["f16"] = torch.randn(7, generator=g).to(torch.float16)
    sd["i64"] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)
    sd["bool"] = torch.tensor([True, False, True])
    sd["base"] = a
    sd["transposed"] = a.t()  # same storage, strides (1, 6)
    sd["slice"] = a[1:3, 2:5]  # storage offset 8, strides (6, 1)
    sd["column"] = a[:, 3]
    sd["expanded"] = torch.arange(4.0).expand(3, 4)  # stride 0
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["bf16_t"] = sd["bf16"].t()
    torch.save(sd, out_dir / "torch_views.pt")
    np.savez(out_dir / "torch_views.npz", **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
                                            for k, v in sd.items()})


def write_fixture(commit: str, made: dict, spec: dict, tmp: Path) -> None:
    fixture = spec["fixture"]
    if fixture.exists():
        shutil.rmtree(fixture)
    ckpt = fixture / "base_checkpoints" / TAG
    ckpt.mkdir(parents=True)
    for name in (f"model_{STEPS:06d}.pt", f"meta_{STEPS:06d}.json"):
        shutil.copy(made["ckpt"] / name, ckpt / name)
    (fixture / "tokenizer").mkdir()
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        shutil.copy(made["base"] / "tokenizer" / name, fixture / "tokenizer" / name)
    shutil.copy(made["logits"], fixture / "logits.npz")
    if commit == "16788ee":
        torch_views(fixture)
    size = sum(p.stat().st_size for p in fixture.rglob("*") if p.is_file())
    print(f"wrote {fixture} ({size / 1024:.0f} KB)")
    if size > MAX_FIXTURE_BYTES:
        raise SystemExit(f"{fixture} is {size:,} bytes, over the {MAX_FIXTURE_BYTES:,} allowed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--write-fixture", action="store_true")
    parser.add_argument("--keep", help="copy the nanochat base dirs here (for manual checks)")
    parser.add_argument("--only", choices=sorted(RUNS))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    try:
        import pytest  # noqa: F401  (tests/fixtures/fineweb.py imports it for its fixtures)
    except ImportError:  # a stand-in for that import only
        sys.modules["pytest"] = types.SimpleNamespace(
            fixture=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f))
        import tests.fixtures.fineweb  # noqa: F401
        del sys.modules["pytest"]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # jaxchat's side of the round trip
    ok = True
    with tempfile.TemporaryDirectory(prefix="nanochat_ckpt_") as tmp:
        tmp = Path(tmp)
        stubs = write_stubs(tmp / "stubs")
        for commit, spec in RUNS.items():
            if args.only and commit != args.only:
                continue
            made = make(commit, spec, args.mirror, tmp, stubs)
            ok &= check_round_trip(commit, spec, made, tmp)
            if args.keep:
                shutil.copytree(made["base"], Path(args.keep) / f"nanochat_{commit}", dirs_exist_ok=True)
                shutil.copy(made["logits"], Path(args.keep) / f"nanochat_{commit}" / "logits.npz")
            if args.write_fixture:
                write_fixture(commit, made, spec, tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
