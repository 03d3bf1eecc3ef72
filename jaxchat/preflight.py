"""What a run is checked for after its config is parsed and before any work: ``check_run(stage, cfg, ...)``.

``train.py`` calls it once, right after ``parse()`` (so before a stage builds a model, reads data or
writes anything). Each refusal is one JaxchatError line, which the CLI prints as ``error: ...``:

- **The tokenizer.** base, mid and SFT train with the tokenizer on disk (``$JAXCHAT_HOME/tokenizer``),
  whatever ``tokenizer.vocab_size`` says. A ``tokenizer.vocab_size`` that the preset or the command
  line SET and that differs from that tokenizer's is refused, naming both sizes. The default (65536)
  is not compared: a user who trained a 32K tokenizer with ``--stage=tokenizer --tokenizer.vocab_size=32768``
  need not repeat the key for every later stage. ``all`` trains a tokenizer only when none exists, so
  it is checked the same way whenever one does.
- **Memory.** A training stage whose model cannot fit is refused before it is built (a depth-200 model
  would otherwise be OOM-killed without a word). The estimate is a LOWER bound of one device's
  memory, so a refused run could never have fitted: float32 parameters, float32 gradients (summed
  over the micro-batches), the optimizer's state (AdamW's two float32 moments for the embedding and
  the unembedding, Muon's one float32 momentum buffer for every block matrix, ``jaxchat.optim``), and
  the activations the backward pass must keep for one micro-batch: each block's input (with
  ``model.remat``) or each block's input and its 4× MLP hidden (without), in the compute dtype. It is
  compared with the device's memory (``memory_stats()["bytes_limit"]``) on an accelerator, or the
  host's available RAM (``MemAvailable`` + ``SwapFree`` of ``/proc/meminfo``, capped by the cgroup's
  limit) on the CPU. When the run does not fit, the estimate is printed as a plan, then refused. A
  ``"auto"`` device batch or remat is counted at its smallest (1 row, remat on): ``jaxchat.fit``
  then compiles the step and chooses exactly, refusing with XLA's figures if nothing fits.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from jaxchat import stages
from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig, stages_run
from jaxchat.model.config import GPTConfig, num_params

TRAINING_STAGES = ("base", "mid", "sft")
ADAMW_GROUPS_MOMENTS = 2  # AdamW: first and second moment, float32, for the embedding and the unembedding
MUON_BUFFERS = 1  # Muon: one float32 momentum buffer for every block matrix
FLOAT32 = 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound of one device's memory for a training step (bytes), and how it was counted."""

    stage: str
    model: GPTConfig
    rows: int  # rows of one micro-batch on one device
    tokens_per_row: int  # the shortest row length the stage trains on
    activation_bytes: int  # bytes per element of the compute dtype
    activation_widths: int  # saved tensors per block, in units of n_embd (1 with remat, 5 without)
    params: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.activations

    @property
    def weights(self) -> int:
        """Everything but the activations: what no batch size can shrink."""
        return self.params + self.gradients + self.optimizer

    def plan(self, available: int | None, where: str) -> list[tuple[str, str]]:
        """Rows of the memory plan (label, text), as the stage plan prints them."""
        m = self.model
        n_params = num_params(m)
        adam = 2 * m.vocab_size * m.n_embd
        rows = [
            ("model", f"depth {m.n_layer}, width {m.n_embd}, vocab {m.vocab_size:,}, context {m.sequence_len}: "
                      f"{n_params:,} parameters"),
            ("parameters", f"{human(self.params)} (float32)"),
            ("gradients", f"{human(self.gradients)} (float32, summed over the micro-batches)"),
            ("optimizer", f"{human(self.optimizer)} (AdamW 2 moments × {adam:,} embedding/unembedding params, "
                          f"Muon 1 buffer × {n_params - adam:,} matrix params, float32)"),
            ("activations", f"≥ {human(self.activations)} ({m.n_layer} blocks × {self.rows} rows × "
                            f"{self.tokens_per_row} tokens × {self.activation_widths} × {m.n_embd} × "
                            f"{self.activation_bytes} B)"),
            ("total", f"≥ {human(self.total)}"),
        ]
        if available is not None:
            rows.append(("available", f"{human(available)} ({where})"))
        return rows


def human(n: float) -> str:
    """Bytes as GiB/TiB/MiB with 3 significant digits."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def estimate_memory(stage: str, model: GPTConfig, rows: int, tokens_per_row: int, *, compute_dtype: str,
                    remat: bool) -> MemoryEstimate:
    """The lower bound of one device's memory for a ``stage`` step of ``model`` on micro-batches of
    ``rows`` × ``tokens_per_row`` tokens (see the module docstring for what is counted)."""
    n_params = num_params(model)
    adam_params = 2 * model.vocab_size * model.n_embd  # wte + lm_head (untied)
    act_bytes = 2 if compute_dtype in ("bfloat16", "float16") else FLOAT32
    widths = 1 if remat else 5
    return MemoryEstimate(
        stage=stage, model=model, rows=rows, tokens_per_row=tokens_per_row, activation_bytes=act_bytes,
        activation_widths=widths,
        params=FLOAT32 * n_params,
        gradients=FLOAT32 * n_params,
        optimizer=FLOAT32 * (ADAMW_GROUPS_MOMENTS * adam_params + MUON_BUFFERS * (n_params - adam_params)),
        activations=model.n_layer * rows * tokens_per_row * widths * model.n_embd * act_bytes,
    )


# ---- memory available ----------------------------------------------------------------------------


def _meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), if any."""
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def host_memory_available() -> tuple[int | None, str]:
    """(bytes, how they were found): RAM this process can still get, None when unknown."""
    info = _meminfo()
    if "MemAvailable" in info:
        available, where = info["MemAvailable"] + info.get("SwapFree", 0), "host RAM: MemAvailable + SwapFree"
    else:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = "host RAM: free physical pages"
        except (ValueError, OSError, AttributeError):
            return None, "host RAM: unknown"
    limit = _cgroup_limit()
    if limit is not None and limit < available:
        return limit, "the cgroup's memory limit"
    return available, where


def device_memory_available(device: Any) -> tuple[int | None, str]:
    """(bytes, how they were found) of an accelerator: XLA's ``bytes_limit``; None when not reported."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory stats: nothing to compare with
        stats = {}
    limit = stats.get("bytes_limit")
    return (int(limit), f"{device.device_kind} memory: bytes_limit") if limit else (None, "device memory: unknown")


def memory_available(plan: Any) -> tuple[int | None, str]:
    """The memory one device of this machine has for a run under ``plan`` (a ``runtime.Runtime``)."""
    if plan.backend == "cpu":
        return host_memory_available()
    import jax  # lazy: only a training stage's preflight asks the devices

    return device_memory_available(jax.devices()[0])


# ---- the checks ----------------------------------------------------------------------------------


def check_vocab(stage: str, cfg: RunConfig, explicit: Collection[str], tokenizer_dir: Path | None = None) -> None:
    """Refuse a ``tokenizer.vocab_size`` the user set that the training stages would ignore."""
    if "tokenizer.vocab_size" not in explicit or not set(stages_run(stage, cfg.recipe)) & set(TRAINING_STAGES):
        return
    from jaxchat.tokenizer import default_tokenizer_dir, load_tokenizer  # lazy: tiktoken, only when needed

    directory = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    if not (directory / "tokenizer.json").is_file():
        return  # `all` trains one with this size; base says itself that it has none
    have, want = load_tokenizer(directory).get_vocab_size(), cfg.tokenizer.vocab_size
    if have != want:
        raise JaxchatError(
            f"tokenizer.vocab_size={want} is set, but the tokenizer in {directory} has {have} tokens and {stage} "
            f"would train with it; retrain the tokenizer with `python train.py --stage=tokenizer "
            f"--tokenizer.vocab_size={want}` (it replaces that one), or drop tokenizer.vocab_size to use it")


def _stage_shape(stage: str, cfg: RunConfig, vocab_size: int) -> tuple[GPTConfig, int, int]:
    """(model, rows per micro-batch, shortest row) of a training stage. mid and sft take the model of
    their source checkpoint when it exists (it may differ from ``cfg.model.depth``)."""
    model = GPTConfig.for_recipe(cfg.recipe, cfg.model.depth, vocab_size, cfg.model.sequence_len,
                                 cfg.model.window_pattern)
    if stage != "base":
        model = _source_model(stage, cfg) or model
    seq = cfg.model.sequence_len
    if stage == "sft" and cfg.sft.packing == "rows":  # rows are padded to the shortest bucket that holds them: 1/8 of the context at least
        from jaxchat.data.chat import default_buckets  # lazy: the chat data pipeline

        return model, _rows(cfg.sft.device_batch_size), default_buckets(seq)[0]
    return model, _rows(getattr(cfg, stage).device_batch_size), seq


def _rows(setting: int | str) -> int:
    """The fewest rows a stage may run with: "auto" (jaxchat.fit) may go down to 1."""
    return 1 if setting == "auto" else setting


def _source_model(stage: str, cfg: RunConfig) -> GPTConfig | None:
    from jaxchat.checkpoint import read_meta  # lazy: Orbax, only for mid/sft

    previous = stages.get(stage).source(cfg.recipe)
    if previous is None:
        return None
    try:
        meta = read_meta(previous, cfg.source_tag or cfg.run_tag, cfg.source_step if cfg.source_step >= 0 else None)
        return GPTConfig(**{**meta["model_config"], "sequence_len": cfg.model.sequence_len})
    except (JaxchatError, KeyError, TypeError, ValueError):
        return None  # no source yet (the stage refuses that itself) or an unreadable one: use the config


def check_memory(stage: str, cfg: RunConfig, plan: Any = None, available: tuple[int | None, str] | None = None,
                 vocab_size: int | None = None, n_devices: int | None = None) -> list[MemoryEstimate]:
    """Refuse a training stage (or ``all``) whose lower-bound estimate exceeds the memory available;
    the estimates otherwise. ``plan`` (a ``runtime.Runtime``), ``available`` ((bytes, where)), the
    vocabulary and the device count default to this machine's, the tokenizer's and the config's."""
    training = [name for name in stages_run(stage, cfg.recipe) if name in TRAINING_STAGES]
    if not training:
        return []
    if plan is None:
        from jaxchat import runtime  # lazy: starts JAX, which only a training stage needs

        plan = runtime.for_this_machine(cfg.model)
    if available is None:
        available = memory_available(plan)
    if n_devices is None:
        import jax  # lazy, as above

        n_devices = jax.device_count()
    vocab_size = vocab_size or _tokenizer_vocab() or cfg.tokenizer.vocab_size
    estimates = []
    for name in training:
        model, rows, tokens = _stage_shape(name, cfg, vocab_size)
        estimates.append(estimate_memory(name, model, max(1, rows // n_devices), tokens,
                                         compute_dtype=plan.compute_dtype,
                                         remat=plan.remat or cfg.model.remat == "auto"))
    limit, where = available
    worst = max(estimates, key=lambda e: e.total)
    if limit is not None and worst.total > limit:
        print(f"{worst.stage}: memory plan (one device; a lower bound)", flush=True)
        rows = worst.plan(limit, where)
        width = max(len(label) for label, _ in rows)
        print("\n".join(f"  {label:<{width}}  {text}" for label, text in rows), flush=True)
        section = f"{worst.stage}.device_batch_size"
        advice = (f"lower model.depth (the weights and optimizer state alone need {human(worst.weights)})"
                  if worst.weights > limit else
                  f"lower {section} (accumulation keeps {worst.stage}'s total batch)"
                  + ("" if plan.remat else " or set model.remat=true"))
        raise JaxchatError(
            f"{worst.stage}: depth {worst.model.n_layer} with {worst.rows} rows × {worst.tokens_per_row} tokens "
            f"needs at least {human(worst.total)} of memory (parameters {human(worst.params)}, gradients "
            f"{human(worst.gradients)}, optimizer {human(worst.optimizer)}, "
            f"activations ≥ {human(worst.activations)}), "
            f"but this machine has {human(limit)} ({where}); {advice}")
    return estimates


def _tokenizer_vocab() -> int | None:
    from jaxchat.tokenizer import default_tokenizer_dir, load_tokenizer  # lazy: tiktoken

    if not (default_tokenizer_dir() / "tokenizer.json").is_file():
        return None
    return load_tokenizer().get_vocab_size()


def check_run(stage: str, cfg: RunConfig, *, explicit: Collection[str], plan: Any = None,
              available: tuple[int | None, str] | None = None) -> list[MemoryEstimate]:
    """Every preflight check of ``train.py --stage=STAGE`` with ``cfg`` (validated for ``stage``).

    ``explicit``: the keys the preset or the command line set (``jaxchat.config.explicit_keys(argv)``).
    ``plan`` / ``available`` default to this machine's (tests pass their own). Returns the memory
    estimates of the training stages it runs (empty for the others); JaxchatError on a refusal.
    """
    check_vocab(stage, cfg, explicit)
    return check_memory(stage, cfg, plan, available)
