"""The CORE metric (DCLM, docs/DESIGN.md §9, §12): 22 in-context tasks scored by per-option loss.

Follows nanochat's ``core_eval.py`` / ``base_eval.py`` exactly where it matters for the number:

- ``core.yaml`` lists the tasks (``num_fewshot`` is a list: its first entry is used; the continuation
  delimiter defaults to ``" "``); ``eval_meta_data.csv`` gives each task's random baseline in percent.
- A task's items are shuffled with ``Random(1337)`` and then cropped to ``max_per_task``; few-shot
  examples of item ``idx`` are ``Random(1234 + idx).sample`` of the OTHER items of the cropped list.
- Prompts are the few-shot examples, each followed by a blank line, then the item. Every prompt is
  tokenised with ``<|bos|>`` prepended.
- multiple_choice: one prompt per choice; the continuation is what follows the options' common token
  prefix. schema: one prompt per context option; the continuation is the options' common token
  suffix. The option with the lowest MEAN loss over its continuation wins (first on ties).
- language_modeling: correct when the greedy prediction equals every continuation token.
- A sequence longer than the context keeps its last tokens.
- centred accuracy = (acc − rb) / (1 − rb), rb = random baseline / 100; CORE = mean over tasks.

Two deliberate differences, both only where nanochat would crash or produce NaN: a task with fewer
than ``num_fewshot + 1`` items (e.g. a tiny ``max_per_task``) uses ``len(items) − 1`` shots, and an
option whose continuation is empty (one choice a token-prefix of another) scores +inf loss.

Scoring is batched across a task's items: every option of every item becomes one row, rows are
padded (with ``<|bos|>``; causal attention never looks right) to a few bucketed lengths, and each
bucket has a fixed number of rows per batch, so jit compiles a handful of shapes per run.

With a ``mesh`` (several devices, maybe several processes) each batch has that many rows per device
and is split over all of them (``sharding.rows_sharding``), the params in their layout: each device
scores its rows, and the per-row results come back replicated, so every process counts the same
correct answers. A row's score does not depend on which device computes it: the number is the one
device's.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxchat import sharding
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data.cache import EVAL_BUNDLE_DIR, download_command
from jaxchat.model.gpt import cross_entropy

logger = logging.getLogger(__name__)

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
# Fields each task type's items must have (DCLM formats, docs/DESIGN.md §12).
ITEM_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234
MIN_BUCKET = 64
DEFAULT_TOKENS_PER_BATCH = 8192


# ---- the bundle ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoreTask:
    """One CORE task as read from the bundle (items in file order, not yet shuffled)."""

    label: str
    task_type: str
    num_fewshot: int
    delimiter: str
    items: list[dict[str, Any]]
    random_baseline: float  # in percent, as in eval_meta_data.csv


def default_bundle_dir() -> Path:
    """``$JAXCHAT_HOME/eval_bundle``."""
    return jaxchat_home() / EVAL_BUNDLE_DIR


def _missing_bundle(path: Path, what: str) -> JaxchatError:
    return JaxchatError(f"{path} is missing ({what}); download the CORE eval bundle with "
                        f"`{download_command('eval_bundle')}`")


def read_random_baselines(path: Path) -> dict[str, float]:
    """``Eval Task`` → ``Random baseline`` (percent) from eval_meta_data.csv."""
    if not path.is_file():
        raise _missing_bundle(path, "the random baselines of the CORE tasks")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "Eval Task" not in columns or "Random baseline" not in columns:
            raise JaxchatError(f"{path}: columns {columns}; expected 'Eval Task' and 'Random baseline'")
        baselines = {}
        for line, row in enumerate(reader, start=2):
            try:
                baselines[row["Eval Task"]] = float(row["Random baseline"])
            except (TypeError, ValueError):
                raise JaxchatError(
                    f"{path} line {line}: Random baseline {row['Random baseline']!r} is not a number (percent)"
                ) from None
    return baselines


def _read_items(path: Path, label: str, task_type: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise _missing_bundle(path, f"data of CORE task {label}")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise JaxchatError(f"{path} line {line_no}: not valid JSON ({e})") from None
            missing = [k for k in ITEM_FIELDS[task_type] if not isinstance(item, dict) or k not in item]
            if missing:
                raise JaxchatError(
                    f"{path} line {line_no}: {task_type} item lacks {', '.join(missing)}; "
                    f"expected fields {', '.join(ITEM_FIELDS[task_type])}"
                )
            items.append(item)
    if not items:
        raise JaxchatError(f"{path}: no items; expected one JSON object per line")
    return items


def load_bundle(bundle_dir: str | Path | None = None) -> list[CoreTask]:
    """Read ``core.yaml``, ``eval_meta_data.csv`` and every task's ``eval_data`` file.

    Default directory ``$JAXCHAT_HOME/eval_bundle``. Raises JaxchatError, naming the file and field,
    when something is missing or malformed (with the download command for missing files). The
    result is cached per directory until its files change: training evaluates CORE many times and
    the full bundle takes seconds to parse. Treat the returned items as read-only.
    """
    root = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    config_path = root / "core.yaml"
    if not config_path.is_file():
        raise _missing_bundle(config_path, "the CORE task list")
    files = [config_path, root / "eval_meta_data.csv", *sorted((root / "eval_data").rglob("*.jsonl"))]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else (str(p),) for p in files)
    key = str(root.resolve())
    cached = _BUNDLE_CACHE.get(key)
    if cached is None or cached[0] != stamp:
        _BUNDLE_CACHE[key] = (stamp, _read_bundle(root))
    return _BUNDLE_CACHE[key][1]


_BUNDLE_CACHE: dict[str, tuple[tuple, list[CoreTask]]] = {}


def _read_bundle(root: Path) -> list[CoreTask]:
    import yaml  # lazy: only the CORE eval needs it

    config_path = root / "core.yaml"
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise JaxchatError(f"{config_path}: not valid YAML ({e})") from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise JaxchatError(f"{config_path}: expected a non-empty 'icl_tasks' list")
    baselines = read_random_baselines(root / "eval_meta_data.csv")
    tasks = []
    for n, entry in enumerate(entries):
        where = f"{config_path} icl_tasks[{n}]"
        if not isinstance(entry, dict):
            raise JaxchatError(f"{where}: expected a mapping, got {entry!r}")
        for key in ("label", "dataset_uri", "num_fewshot", "icl_task_type"):
            if key not in entry:
                raise JaxchatError(f"{where}: missing '{key}'")
        label, task_type = str(entry["label"]), entry["icl_task_type"]
        if task_type not in TASK_TYPES:
            raise JaxchatError(f"{where} ({label}): icl_task_type {task_type!r}; expected one of {TASK_TYPES}")
        shots = entry["num_fewshot"]
        shots = shots[0] if isinstance(shots, list) and shots else shots  # a LIST in DCLM's yaml: use its first
        if not isinstance(shots, int) or shots < 0:
            raise JaxchatError(f"{where} ({label}): num_fewshot {entry['num_fewshot']!r}; expected a list of ints >= 0")
        if label not in baselines:
            raise JaxchatError(f"{root / 'eval_meta_data.csv'}: no 'Eval Task' row for CORE task {label!r}")
        delimiter = entry.get("continuation_delimiter", " ")
        items = _read_items(root / "eval_data" / str(entry["dataset_uri"]), label, task_type)
        tasks.append(CoreTask(label, task_type, shots, str(delimiter), items, baselines[label]))
    return tasks


def prepare_items(items: Sequence[dict[str, Any]], max_per_task: int = -1) -> list[dict[str, Any]]:
    """Shuffle with ``Random(1337)`` (the files are often ordered), then keep the first ``max_per_task``."""
    data = list(items)
    random.Random(SHUFFLE_SEED).shuffle(data)
    return data[:max_per_task] if max_per_task > 0 else data


# ---- prompts (nanochat's Jinja templates, written out) ---------------------------------------------


def fewshot_examples(data: Sequence[dict[str, Any]], idx: int, num_fewshot: int) -> list[dict[str, Any]]:
    """``Random(1234 + idx).sample`` of the other items (capped at ``len(data) - 1``)."""
    k = min(num_fewshot, len(data) - 1)
    if k <= 0:
        return []
    available = [i for i in range(len(data)) if i != idx]
    return [data[i] for i in random.Random(FEWSHOT_SEED + idx).sample(available, k)]


def render_prompts(item: dict[str, Any], task_type: str, delimiter: str,
                   fewshot: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The prompt strings of one item (nanochat's ``render_prompts_{mc,schema,lm}``).

    multiple_choice: one per choice; schema: one per context option; language_modeling: two, the
    prompt without the continuation (stripped) and with it.
    """
    if task_type == "multiple_choice":
        shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        # Contexts are trimmed (some have trailing spaces), and the prompt without the continuation
        # is stripped so that it ends on a clean token boundary of the prompt with it.
        shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        without = f"{shots}{item['context'].strip()}{delimiter}"
        return [without.strip(), without + item["continuation"]]
    raise JaxchatError(f"unknown CORE task type {task_type!r}; expected one of {TASK_TYPES}")


def common_length(sequences: Sequence[Sequence[int]], direction: str = "left") -> int:
    """Length of the common prefix (``left``) or suffix (``right``) of token sequences."""
    min_len = min(len(s) for s in sequences)
    for i in range(min_len):
        idx = i if direction == "left" else -1 - i
        token = sequences[0][idx]
        if any(s[idx] != token for s in sequences):
            return i
    return min_len


@dataclasses.dataclass
class Rows:
    """Scored sequences (of one item, or a whole task): tokens and each continuation span [start, end)."""

    tokens: list[list[int]] = dataclasses.field(default_factory=list)
    starts: list[int] = dataclasses.field(default_factory=list)
    ends: list[int] = dataclasses.field(default_factory=list)


def build_rows(tokenizer: Any, item: dict[str, Any], task_type: str, delimiter: str,
               fewshot: Sequence[dict[str, Any]], max_len: int) -> Rows:
    """Tokenise an item's prompts (``<|bos|>`` first), find each continuation, crop to ``max_len``.

    A sequence longer than ``max_len`` keeps its LAST ``max_len`` tokens and its span shifts left;
    a span cut at the front keeps at least one predicting token (start ≥ 1).
    """
    prompts = render_prompts(item, task_type, delimiter, fewshot)
    tokens = tokenizer.encode(prompts, prepend=tokenizer.bos_token_id)
    if task_type == "multiple_choice":
        start = common_length(tokens, "left")
        starts, ends = [start] * len(tokens), [len(t) for t in tokens]
    elif task_type == "schema":
        suffix = common_length(tokens, "right")
        ends = [len(t) for t in tokens]
        starts = [e - suffix for e in ends]
    else:
        without, with_ = tokens
        # nanochat asserts the prompt without the continuation tokenises to a prefix of the one with
        # it; where a merge crosses the boundary, score from the first token that differs instead.
        start = common_length([without, with_], "left")
        tokens, starts, ends = [with_], [start], [len(with_)]
    rows = Rows()
    for t, s, e in zip(tokens, starts, ends):
        crop = max(0, len(t) - max_len)
        rows.tokens.append(list(t[crop:]))
        rows.starts.append(max(1, s - crop))
        rows.ends.append(e - crop)
    return rows


# ---- batched scoring -----------------------------------------------------------------------------


def _score_rows(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, starts: jax.Array,
                ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: mean loss over the continuation tokens [start, end) and whether greedy gets them all.

    ``tokens`` (R, L) int32; token p is predicted at position p − 1. An empty span scores +inf loss
    (never the best option) and is never correct for language modelling.
    """
    model = nnx.merge(graphdef, params)
    logits = model(tokens)  # (R, L, V) float32
    pos = jnp.arange(tokens.shape[1])[None, :]
    in_span = (pos >= starts[:, None] - 1) & (pos < ends[:, None] - 1)
    next_tokens = jnp.roll(tokens, -1, axis=1)  # the last column wraps around but is never in a span
    nll = cross_entropy(logits, jnp.where(in_span, next_tokens, -1), reduction="none")
    count = in_span.sum(axis=1)
    mean_loss = jnp.where(count > 0, nll.sum(axis=1) / jnp.maximum(count, 1), jnp.inf)
    greedy_ok = jnp.all((jnp.argmax(logits, axis=-1) == next_tokens) | ~in_span, axis=1) & (count > 0)
    return mean_loss, greedy_ok


score_rows = jax.jit(_score_rows, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _score_rows_on(mesh: Mesh) -> Any:
    """``score_rows`` for rows split over ``mesh``, its (R,) results gathered onto every device (tiny)
    so that any process reads them all without a collective."""
    return jax.jit(_score_rows, static_argnums=0, out_shardings=sharding.replicated(mesh))


def buckets_for(max_len: int) -> list[int]:
    """Padded lengths: powers of two from 64 below ``max_len``, then ``max_len`` itself."""
    out, length = [], MIN_BUCKET
    while length < max_len:
        out.append(length)
        length *= 2
    return out + [max_len]


def score_all(graphdef: nnx.GraphDef, params: Any, rows: Rows, pad_id: int, max_len: int,
              tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH, mesh: Mesh | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Score every row of ``rows`` (any number, lengths ≤ max_len): ``(mean_loss, greedy_ok)`` arrays.

    Rows are grouped by bucketed length; a bucket of length L runs ``max(1, tokens_per_batch // L)``
    rows per call and device, padding the last call with empty rows. All calls are dispatched before
    the host reads the results. ``mesh``: split each call's rows over its devices (``params`` on it).
    """
    n = len(rows.tokens)
    lengths = np.array([len(t) for t in rows.tokens], dtype=np.int64)
    if n and lengths.max() > max_len:
        raise JaxchatError(f"score_all: a row has {lengths.max()} tokens, expected at most max_len={max_len} "
                           "(crop with build_rows)")
    buckets = buckets_for(max_len)
    which = np.searchsorted(buckets, lengths)  # first bucket >= length
    devices = 1 if mesh is None else sharding.batch_devices(mesh)
    pending = []  # (row indices, device results)
    for b, length in enumerate(buckets):
        members = np.flatnonzero(which == b)
        per_call = max(1, tokens_per_batch // length) * devices
        for lo in range(0, len(members), per_call):
            chunk = members[lo:lo + per_call]
            tokens = np.full((per_call, length), pad_id, dtype=np.int32)
            starts = np.ones(per_call, dtype=np.int32)
            ends = np.ones(per_call, dtype=np.int32)  # padding rows: empty span
            for r, i in enumerate(chunk):
                tokens[r, :lengths[i]] = rows.tokens[i]
                starts[r], ends[r] = rows.starts[i], rows.ends[i]
            if mesh is None:
                pending.append((chunk, score_rows(graphdef, params, tokens, starts, ends)))
            else:
                batch = sharding.put_batch((tokens, starts, ends), sharding.rows_sharding(mesh), axis=0)
                pending.append((chunk, _score_rows_on(mesh)(graphdef, params, *batch)))
    mean_loss, greedy_ok = np.zeros(n, np.float32), np.zeros(n, bool)
    results = jax.device_get(pending) if mesh is None else jax.tree.map(sharding.to_host, pending)
    for chunk, result in results:
        mean_loss[chunk] = result[0][:len(chunk)]
        greedy_ok[chunk] = result[1][:len(chunk)]
    return mean_loss, greedy_ok


# ---- tasks and CORE ------------------------------------------------------------------------------


def evaluate_task(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, task: CoreTask, max_len: int,
                  max_per_task: int = -1, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
                  mesh: Mesh | None = None) -> float:
    """Accuracy of the model on one CORE task (after shuffling and cropping to ``max_per_task``);
    ``mesh``: its rows split over those devices (``params`` on it)."""
    data = prepare_items(task.items, max_per_task)
    if task.num_fewshot > len(data) - 1:
        logger.warning("%s: %d-shot needs %d items, only %d: using %d-shot", task.label, task.num_fewshot,
                       task.num_fewshot + 1, len(data), max(0, len(data) - 1))
    all_rows, offsets = Rows(), [0]  # item idx owns rows offsets[idx]:offsets[idx + 1]
    for idx, item in enumerate(data):
        rows = build_rows(tokenizer, item, task.task_type, task.delimiter,
                          fewshot_examples(data, idx, task.num_fewshot), max_len)
        all_rows.tokens.extend(rows.tokens)
        all_rows.starts.extend(rows.starts)
        all_rows.ends.extend(rows.ends)
        offsets.append(len(all_rows.tokens))
    on_mesh = {} if mesh is None else {"mesh": mesh}  # a one-device stand-in for score_all need not take it
    mean_loss, greedy_ok = score_all(graphdef, params, all_rows, tokenizer.bos_token_id, max_len, tokens_per_batch,
                                     **on_mesh)
    correct = 0
    for idx, item in enumerate(data):
        lo, hi = offsets[idx], offsets[idx + 1]
        if task.task_type == "language_modeling":
            correct += bool(greedy_ok[lo])
        else:
            correct += int(np.argmin(mean_loss[lo:hi])) == int(item["gold"])  # argmin: first on ties
    return correct / len(data)


def centered(accuracy: float, random_baseline_percent: float) -> float:
    """Centred accuracy (acc − rb) / (1 − rb), the random baseline given in percent."""
    rb = 0.01 * random_baseline_percent
    return (accuracy - rb) / (1.0 - rb)


def evaluate_core(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, bundle_dir: Path | None = None,
                  max_per_task: int = -1, seq_len: int | None = None, progress: bool = True,
                  tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH, mesh: Mesh | None = None) -> dict[str, Any]:
    """The CORE metric of a model (docs/DESIGN.md §9).

    Args:
      graphdef, params: the model (``jaxchat.model.split_params``).
      tokenizer: its tokenizer.
      bundle_dir: the eval bundle (default ``$JAXCHAT_HOME/eval_bundle``).
      max_per_task: items per task after the shuffle (−1: all).
      seq_len: context length; longer sequences keep their last tokens (default: the model's).
      progress: print one line per task (the first process only).
      tokens_per_batch: tokens per forward call and device (rows × padded length); bounds logits memory.
      mesh: split the work over its devices and processes (every process calls this alike, and
        gets the same result); None: one device, the params as they are.

    Returns ``{"core": float, "tasks": {label: {"accuracy": a, "centered": c}}}``.
    """
    if max_per_task == 0 or max_per_task < -1:
        raise JaxchatError(f"max_per_task is {max_per_task}; expected -1 (all) or a positive number")
    if seq_len is None:
        seq_len = nnx.merge(graphdef, params).config.sequence_len
    if mesh is not None:
        params = sharding.on_mesh(params, mesh)
    progress = progress and jax.process_index() == 0
    tasks = load_bundle(bundle_dir)
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        t0 = time.time()
        accuracy = evaluate_task(graphdef, params, tokenizer, task, seq_len, max_per_task, tokens_per_batch, mesh)
        results[task.label] = {"accuracy": accuracy, "centered": centered(accuracy, task.random_baseline)}
        if progress:
            print(f"CORE {task.label:<32} ({task.num_fewshot}-shot, {task.task_type}): "
                  f"accuracy {accuracy:.4f} | centered {results[task.label]['centered']:.4f} | "
                  f"{time.time() - t0:.1f}s", flush=True)
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"core": core, "tasks": results}
