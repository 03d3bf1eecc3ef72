"""Orbax checkpoint storage of every training stage (docs/DESIGN.md §0): save, find, restore.

Layout: ``$JAXCHAT_HOME/checkpoints/<stage>/<tag>/<step>/`` (a checkpointed stage of
``jaxchat.stages``; tag e.g. ``d20``). Each step
directory is one ``ocp.CheckpointManager`` step with these items:

    params/     StandardSave of the params dict (``split_params(model)[1]``)
    opt_state/  StandardSave of the optimizer state (absent when saved with ``opt_state=None``)
    data/       JsonSave of the data iterator's ``get_state()`` (absent when there is none)
    meta/       JsonSave: model_config, stage, step, tokenizer_fingerprint, run_config, metrics, time

Params and optimizer state are separate items so the next stage restores the params only and
builds a fresh optimizer (``load_params``). The data item is plain JSON of the iterator state rather
than ``grain.checkpoint.CheckpointSave``: it is a snapshot taken when ``save`` is called (so an
async save cannot see a later position), it needs no iterator object to restore into (the loop calls
``iterator.set_state(data_state)``), and any iterator with a JSON-able (or bytes) state works.

Completeness: Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>/``, writes
``commit_success.txt`` and then renames it to ``<step>/``. A save killed midway therefore leaves a
tmp directory (or, on storage without atomic rename, a step directory without the marker).
Such a save never committed and is skipped silently: only a step directory whose name is an integer
and that holds ``commit_success.txt`` counts (``committed_steps``; ``complete_steps`` also wants the
``params`` and ``meta`` items), so the previous step stays usable. ``StageCheckpointer`` removes
leftover tmp directories when it opens.

Integrity: every step holds ``checksums.json``, the size and sha256 of every file of its items,
computed from the files themselves in Orbax's background save thread after the items are written and
BEFORE the commit marker and the rename (``AsyncOptions.post_finalization_callback``): it describes
exactly what is on disk and is part of the atomic commit. Every read verifies the items it reads
first (``damage``; results are cached per file size/mtime, so a process hashes a step once). A
damaged step (a committed step with a file truncated, changed or missing, an item or the checksums
missing) is one line naming the path and what is wrong; asked for the latest step (``step=None``),
``find_checkpoint``, ``read_meta``, ``load_params`` and ``StageCheckpointer.restore`` print a warning
line and fall back to the previous intact step, and raise one JaxchatError when none is left.
Cost (2 shared CPU cores, warm page cache): d4 (0.4 GB on disk) 0.4 s of hashing per save in the
background, 0.14 s to verify params+meta; d20 (4.8 GB) 2.8 s per save, 1.3 s for params+meta, 1.6 s
for a whole step.

Restores always pass abstract targets: without one, Orbax returns int keys as strings and optimizer
trees stop matching. Building a model from a checkpoint is ``jaxchat.model.load``'s job.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxchat import distributed, stages
from jaxchat.common import JaxchatError, jaxchat_home

log = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"  # orbax atomicity_types.COMMIT_SUCCESS_FILE
REQUIRED_ITEMS = ("params", "meta")
RESUME_ITEMS = ("params", "opt_state", "meta")  # what --resume needs (plus the data item when saved)
CHECKSUMS_FILE = "checksums.json"  # sizes and sha256 of every file of the items, written before the commit
HASH = "sha256"  # ~1.8 GB/s per core with SHA-NI; files are hashed on several threads
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written: <step>.orbax-checkpoint-tmp[-n]
# Keys ``save`` insists on: without them ``load_model`` / ``check_compatible`` cannot work later.
REQUIRED_META = ("model_config", "tokenizer_fingerprint")
_BYTES_KEY = "__jaxchat_bytes_b64__"  # how a bytes iterator state is wrapped in the JSON data item


# ---- layout ---------------------------------------------------------------------------------------


def _home(home: str | Path | None) -> Path:
    return Path(home) if home is not None else jaxchat_home()


def _check_stage(stage: str) -> None:
    stages.check_checkpointed(stage, "checkpoint stage")


def _train_command(stage: str) -> str:
    return f"python train.py --stage={stage}"


def checkpoint_dir(stage: str, tag: str, home: str | Path | None = None) -> Path:
    """``$JAXCHAT_HOME/checkpoints/<stage>/<tag>`` (it may not exist yet). Tag e.g. ``d20``."""
    _check_stage(stage)
    if not tag or "/" in tag or "\\" in tag or tag.startswith("."):
        raise JaxchatError(f"bad checkpoint tag {tag!r}: expected a plain directory name such as 'd20'")
    return _home(home) / "checkpoints" / stage / tag


def is_complete_step(path: Path) -> bool:
    """True for a committed Orbax step directory: integer name, commit marker, params and meta items."""
    path = Path(path)
    return (path.name.isdigit() and path.is_dir() and (path / COMMIT_MARKER).is_file()
            and all((path / item).is_dir() for item in REQUIRED_ITEMS))


def complete_steps(directory: Path) -> list[int]:
    """The complete steps under one stage/tag directory, ascending (incomplete saves are skipped).
    Complete says nothing of the files' integrity: ``damage`` checks that."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if is_complete_step(p))


def committed_steps(directory: Path) -> list[int]:
    """The steps whose save committed (integer name and commit marker), ascending, damaged or not.

    A save killed midway never committed and is skipped silently; a committed step that later lost
    an item is not (``damage`` names what is wrong with it)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and p.is_dir() and (p / COMMIT_MARKER).is_file())


# ---- integrity ------------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()  # releases the GIL: threads hash in parallel


def _hash_files(paths: list[Path]) -> list[str]:
    if len(paths) < 2:
        return [_hash_file(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1, len(paths))) as pool:
        return list(pool.map(_hash_file, paths))


def write_checksums(step_dir: Path) -> dict[str, Any]:
    """Write ``<step_dir>/checksums.json``: size and sha256 of every file inside the item directories
    (the top-level files are Orbax's own, rewritten at the commit). ``StageCheckpointer`` calls it on
    each save before the commit; call it yourself only after editing a checkpoint on purpose."""
    step_dir = Path(step_dir)
    items = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
    files = sorted(p for item in items for p in (step_dir / item).rglob("*") if p.is_file())
    digests = _hash_files(files)
    record = {"algorithm": HASH, "items": items,
              "files": {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, HASH: digest}
                        for p, digest in zip(files, digests)}}
    tmp = step_dir / (CHECKSUMS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, step_dir / CHECKSUMS_FILE)
    return record


# (step dir, items, required) -> (stat signature of the files, result): a process hashes a step once.
_verified: dict[tuple, tuple[tuple, str | None]] = {}
_warned: set[tuple[str, str]] = set()


def _signature(paths: Iterable[Path]) -> tuple:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


def _read_checksums(step_dir: Path) -> tuple[dict | None, str | None]:
    path = step_dir / CHECKSUMS_FILE
    if not path.is_file():
        return None, (f"{CHECKSUMS_FILE} is missing, so its files cannot be verified (saved before jaxchat wrote "
                      f"checksums? seal it as it is with jaxchat.checkpoint.write_checksums(path))")
    try:
        record = json.loads(path.read_text())
        if not (isinstance(record.get("items"), list) and isinstance(record.get("files"), dict)
                and record.get("algorithm") == HASH):
            raise ValueError("unexpected content")
    except (OSError, ValueError, AttributeError) as e:
        return None, f"{CHECKSUMS_FILE} is unreadable ({e})"
    return record, None


def damage(step_dir: Path, items: Iterable[str] | None = None, require: Iterable[str] = REQUIRED_ITEMS) -> str | None:
    """What is wrong with the checkpoint in ``step_dir`` (one line), or None when it is intact.

    Checks the commit marker, that the ``require``d items (and ``items``) were saved and are there,
    and that every file of ``items`` (None: of every saved item) has its recorded size and sha256.
    Results are cached while the files' sizes and modification times stay the same."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return "the directory is missing"
    if not (step_dir / COMMIT_MARKER).is_file():
        return f"its save never committed (no {COMMIT_MARKER})"
    record, problem = _read_checksums(step_dir)
    if record is None:
        return problem
    wanted = sorted(set(record["items"]) if items is None else set(items))
    required = sorted(set(require) | set(wanted))
    for item in required:
        if item not in record["items"]:
            return f"it holds no {item} item"
        if not (step_dir / item).is_dir():
            return f"{item}/ is missing"
    listed = {rel: entry for rel, entry in record["files"].items() if rel.split("/", 1)[0] in wanted}
    paths = [step_dir / rel for rel in sorted(listed)]
    key = (str(step_dir), tuple(wanted), tuple(required))
    signature = _signature([step_dir / CHECKSUMS_FILE, *paths])
    cached = _verified.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    result = _check_files(step_dir, listed)
    _verified[key] = (signature, result)
    return result


def _check_files(step_dir: Path, listed: dict[str, dict]) -> str | None:
    """Sizes first (cheap: truncation and loss), then the hashes (in parallel)."""
    for rel in sorted(listed):
        path, size = step_dir / rel, listed[rel].get("size")
        if not path.is_file():
            return f"{rel} is missing"
        actual = path.stat().st_size
        if actual != size:
            return (f"{rel} is truncated ({actual:,} of {size:,} bytes)" if actual < size
                    else f"{rel} has {actual:,} bytes, {size:,} were saved")
    rels = sorted(listed)
    try:
        digests = _hash_files([step_dir / rel for rel in rels])
    except OSError as e:
        return f"a file cannot be read ({e})"
    for rel, digest in zip(rels, digests):
        if digest != listed[rel].get(HASH):
            return f"{rel} does not match its checksum (the file was altered or corrupted)"
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def latest_intact_step(directory: Path, items: Iterable[str] | None = REQUIRED_ITEMS,
                       require: Iterable[str] = REQUIRED_ITEMS, *, hint: str = "") -> int | None:
    """The newest committed step of ``directory`` whose ``items`` verify (``damage``), or None when no
    step ever committed. Each newer damaged step is reported by one warning line naming it, what is
    wrong and the step used instead; JaxchatError (one line: every damaged step) when none is intact."""
    directory = Path(directory)
    damaged: list[tuple[Path, str]] = []
    for step in reversed(committed_steps(directory)):
        problem = damage(directory / str(step), items, require)
        if problem is None:
            for path, why in damaged:
                if (str(path), why) not in _warned:
                    _warned.add((str(path), why))
                    _warn(f"checkpoint {path} is damaged: {why}; falling back to step {step} ({directory / str(step)})")
            return step
        damaged.append((directory / str(step), problem))
    if damaged:
        listing = "; ".join(f"step {path.name}: {why}" for path, why in damaged)
        raise JaxchatError(f"no intact checkpoint in {directory} ({listing}){hint}")
    return None


def check_step(step_dir: Path, items: Iterable[str] | None = REQUIRED_ITEMS,
               require: Iterable[str] = REQUIRED_ITEMS) -> None:
    """JaxchatError naming ``step_dir`` and what is wrong, unless its ``items`` verify."""
    problem = damage(step_dir, items, require)
    if problem is not None:
        raise JaxchatError(f"checkpoint {step_dir} is damaged: {problem}")


def _orbax_read(step_dir: Path, read):
    """``read()`` (an Orbax restore of ``step_dir``); any failure left after verification (an unusual
    file system error, a version mismatch) becomes one line naming the step rather than a traceback."""
    try:
        return read()
    except JaxchatError:
        raise
    except Exception as e:  # noqa: BLE001 — Orbax / TensorStore raise many types, all mean "unreadable"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise JaxchatError(f"checkpoint {step_dir} cannot be read: {type(e).__name__}: {first}") from None


def tokenizer_users(fingerprint: str, home: str | Path | None = None) -> list[Path]:
    """Step directories under ``$JAXCHAT_HOME/checkpoints/*/*/`` whose meta records the tokenizer
    ``fingerprint`` (any saved step, complete or not: whatever might be loaded later)."""
    users = []
    for meta_file in sorted((_home(home) / "checkpoints").glob("*/*/*/meta/metadata")):
        step_dir = meta_file.parent.parent
        if not step_dir.name.isdigit():
            continue
        try:
            if json.loads(meta_file.read_text()).get("tokenizer_fingerprint") == fingerprint:
                users.append(step_dir)
        except (OSError, ValueError, AttributeError):
            continue
    return users


# ---- JSON items ----------------------------------------------------------------------------------


def _jsonable(value: Any, where: str) -> Any:
    """A JSON-ready copy of ``value`` (dataclasses, numpy / jax scalars, dtypes, paths converted)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    try:  # dtypes and scalar types such as jnp.bfloat16
        return np.dtype(value).name
    except TypeError:
        pass
    raise TypeError(f"checkpoint {where} = {value!r} ({type(value).__name__}) is not JSON-serialisable")


def _encode_data_state(state: Any) -> Any:
    if isinstance(state, bytes):  # e.g. grain.DataLoader iterators serialise their state to bytes
        return {_BYTES_KEY: base64.b64encode(state).decode("ascii")}
    return _jsonable(state, "data_state")


def _decode_data_state(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {_BYTES_KEY}:
        return base64.b64decode(state[_BYTES_KEY])
    return state


# ---- abstract targets ----------------------------------------------------------------------------


def abstract_tree(tree: Any) -> Any:
    """ShapeDtypeStructs for a tree of arrays / ShapeDtypeStructs; a missing sharding becomes device 0.

    Restoring onto the given shardings lets a checkpoint written on one device be read onto a mesh
    (and the other way round); ``jax.eval_shape`` results carry no sharding, hence the default.
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf if leaf.sharding is not None else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=default)
        if isinstance(leaf, jax.Array):
            return ocp.utils.to_shape_dtype_struct(leaf)
        if isinstance(leaf, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype, sharding=default)
        return leaf

    return jax.tree.map(one, tree)


def _key_str(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _check_params_shapes(step_dir: Path, abstract_params: Any) -> None:
    """JaxchatError, before reading any array, when the saved params do not match the target's shapes."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved_tree = handler.metadata(step_dir / "params")
    finally:
        handler.close()
    saved = {_key_str(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    wanted = {_key_str(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    problems = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}" for k in sorted(saved.keys() & wanted.keys())
                if saved[k] != wanted[k]]
    problems += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - wanted.keys())]
    problems += [f"{k}: only in the model" for k in sorted(wanted.keys() - saved.keys())]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise JaxchatError(f"checkpoint {step_dir} does not fit the model's parameters: "
                           f"{'; '.join(problems[:3])}{more}")


# ---- one stage's checkpoints ---------------------------------------------------------------------


class StageCheckpointer:
    """Saves and restores the checkpoints of one stage/tag (wraps ``ocp.CheckpointManager``).

    ``max_to_keep`` most recent steps are kept (None = all). With ``async_save`` (default) ``save``
    returns once the arrays are copied off the device, so donated train steps may follow at once;
    the files are written in the background. Call ``wait()`` (or ``close()``, or leave the ``with``
    block) before the process exits.

    Several processes (``jax.distributed``; the directory on a file system they all share): every
    process makes the same calls (``save``, ``restore``, ``wait``, ``close``) with the same arguments.
    Orbax coordinates them (its ``multiprocessing_options.primary_host`` is process 0): each process
    writes the shards of the arrays it holds, process 0 alone writes the JSON items (meta, and the
    data iterator's state: the same in every process, ``jaxchat.sharding.put_batch``), the commit
    marker, and runs the callback writing ``checksums.json`` once every process's writes are done,
    while the others wait. jaxchat's own file system changes (the directory, replacing a step) are
    process 0's too, decided there and followed by all, with a barrier before anyone goes on.
    """

    def __init__(self, directory: Path, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        if distributed.is_primary():  # Orbax's manager makes every process wait for it
            self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Always Orbax's async path: only it runs the callback that writes checksums.json into the
            # step before the commit. ``async_save=False`` waits for the commit in ``save``.
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums),
            cleanup_tmp_directories=True,  # leftovers of saves killed midway
        )
        self._async = async_save
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_saved: int | None = None
        self._saving: int | None = None  # the step whose save is in flight (one at a time)

    def _write_checksums(self) -> None:
        """Orbax's post-finalization callback (its background thread): the items of step
        ``self._saving`` are written, the commit marker and the rename come next. Orbax runs it on
        process 0 only, after every process's writes, and the others wait for it to finish."""
        if not distributed.is_primary():
            return
        step = self._saving
        candidates = [p for p in self.directory.glob(f"{step}{_TMP_SUFFIX}*") if p.is_dir()]
        if candidates:
            step_dir = max(candidates, key=lambda p: p.stat().st_mtime_ns)
        else:  # storage without atomic rename: Orbax writes in place and commits with the marker
            step_dir = self.directory / str(step)
        write_checksums(step_dir)

    # -- saving --
    def save(self, step: int, params: Any, opt_state: Any, data_state: dict | bytes | None, meta: dict, *,
             force: bool = False) -> None:
        """Save ``step``: params, optimizer state (None: not saved), data iterator state (None: not
        saved) and ``meta`` (``training.build.checkpoint_meta``; ``step`` is set here, ``time`` (ISO) added if absent).

        A step that already has a complete, intact checkpoint is left alone (e.g. the final save
        landing on a periodic one) unless ``force``, which replaces it. An incomplete or damaged
        directory of that step (a killed save; a resume that fell back before it) is replaced.
        ``checksums.json`` is written into the step by Orbax's background thread before the commit.
        """
        step = int(step)
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"checkpoint meta lacks {missing}; build it with jaxchat.training.build.checkpoint_meta")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        meta = _jsonable({"time": now, **meta, "step": step}, "meta")  # a caller's own "time" wins
        step_dir = self.directory / str(step)
        # One save in flight at a time (Orbax waits too): the previous one commits, with its checksums,
        # before this one starts and before the directory is looked at.
        self._manager.wait_until_finished()
        # Process 0 looks at the directory and decides; every process follows (all must call Orbax's save).
        keep, replace = 1, 2
        action = 0
        if distributed.is_primary() and step_dir.exists():
            # Our own save of this step (e.g. periodic, then final) is trusted; another is kept only intact.
            keep_it = not force and (step == self._last_saved or damage(step_dir) is None)
            action = keep if keep_it else replace
        action = distributed.from_primary(action)
        if action == keep:
            log.info("checkpoint %s exists; not saving it again", step_dir)
            return
        if action == replace:
            if distributed.is_primary():
                shutil.rmtree(step_dir)
            distributed.barrier(f"jaxchat checkpoint: replaced {step_dir}")  # gone before anyone looks again
            self._manager.reload()
        items: dict[str, Any] = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data_state is not None:
            # Encoded now: the JSON is a snapshot of the iterator at this step even if saved later.
            items["data"] = ocp.args.JsonSave(_encode_data_state(data_state))
        # force=True: the caller decides when to save; Orbax's own policy would skip a step lower
        # than one already on disk (e.g. after resuming from an earlier checkpoint).
        self._saving = step
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._last_saved = step
        if not self._async:
            self._manager.wait_until_finished()

    # -- reading --
    def all_steps(self) -> list[int]:
        """Complete steps on disk, ascending (an async save in flight counts once it commits)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The latest COMPLETE step on disk, or None. Call ``wait()`` first to include a save in flight."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def latest_resumable_step(self) -> int | None:
        """The newest step that verifies with its optimizer state (``restore(None, ...)``'s choice):
        a warning line for each newer damaged step; None when no step ever committed; JaxchatError
        when steps committed but none is intact."""
        self._manager.wait_until_finished()
        return latest_intact_step(self.directory, None, RESUME_ITEMS,
                                  hint=f"; delete {self.directory} to start this run over")

    def restore(self, step: int | None, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, Any, dict]:
        """Restore ``step`` (None = latest complete) → ``(params, opt_state, data_state, meta)``.

        ``abstract_params`` / ``abstract_opt_state``: trees of arrays or ShapeDtypeStructs giving the
        structure, dtypes and shardings to restore onto (e.g. the freshly initialised state). Pass
        ``abstract_opt_state=None`` to skip the optimizer state (returned as None). ``data_state`` is
        None when the checkpoint has none. Pending async saves are waited for first.
        """
        self._manager.wait_until_finished()
        require = RESUME_ITEMS if abstract_opt_state is not None else REQUIRED_ITEMS
        if step is None:
            step = latest_intact_step(self.directory, None, require)
            if step is None:
                raise JaxchatError(f"no complete checkpoint in {self.directory} to resume from")
        step_dir = self.directory / str(int(step))
        chosen = distributed.gather(int(step))  # several processes restore together: the same step
        if len(set(chosen)) > 1:
            raise JaxchatError(f"the processes would restore different steps of {self.directory} ({chosen}, in "
                               "process order); they must all see the same files (a shared file system)")
        if int(step) not in committed_steps(self.directory):
            raise JaxchatError(f"{step_dir} is not a complete checkpoint; complete steps: {self.all_steps()}")
        record, _ = _read_checksums(step_dir)
        if abstract_opt_state is not None and record is not None and "opt_state" not in record["items"]:
            raise JaxchatError(f"{step_dir} holds no optimizer state (saved with opt_state=None)")
        check_step(step_dir, None, require)  # every saved item: what a resume reads
        abstract_params = abstract_tree(abstract_params)
        _orbax_read(step_dir, lambda: _check_params_shapes(step_dir, abstract_params))
        items: dict[str, Any] = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_tree(abstract_opt_state))
        if (step_dir / "data").is_dir():
            items["data"] = ocp.args.JsonRestore()
        restored = _orbax_read(step_dir, lambda: self._manager.restore(int(step), args=ocp.args.Composite(**items)))
        data = _decode_data_state(restored["data"]) if "data" in items else None
        opt_state = restored["opt_state"] if "opt_state" in items else None
        return restored["params"], opt_state, data, dict(restored["meta"])

    # -- lifetime --
    def wait(self) -> None:
        """Block until every pending async save is committed (raises its error, if any)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager's threads (also when a save failed)."""
        try:
            self._manager.wait_until_finished()
        finally:
            self._manager.close()

    def __enter__(self) -> "StageCheckpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- finding and loading finished checkpoints ----------------------------------------------------


def find_checkpoint(stage: str, tag: str | None = None, step: int | None = None,
                    home: str | Path | None = None) -> tuple[Path, int]:
    """``(stage/tag directory, step)`` of a complete, intact checkpoint (its params and meta verify).

    ``tag`` None → the tag whose newest committed step was written last; ``step`` None → the latest
    intact step: a newer damaged one is skipped with a warning line naming it and what is wrong.
    Incomplete saves are never chosen. JaxchatError (one line naming the directory, and the command
    that makes the checkpoint) when there is none, or when the ``step`` asked for is damaged.
    """
    _check_stage(stage)
    root = _home(home) / "checkpoints" / stage
    train_hint = f"; train one with `{_train_command(stage)}`"
    if tag is None:
        candidates = []
        for tag_dir in sorted(root.iterdir()) if root.is_dir() else []:
            steps = committed_steps(tag_dir)
            if steps:
                written = (tag_dir / str(steps[-1]) / COMMIT_MARKER).stat().st_mtime
                candidates.append((written, tag_dir.name))
        if not candidates:
            raise JaxchatError(f"no {stage} checkpoint in {root}{train_hint}")
        tag = max(candidates)[1]
    directory = checkpoint_dir(stage, tag, home)
    if step is None:
        latest = latest_intact_step(directory, hint=train_hint)
        if latest is None:
            raise JaxchatError(f"no complete {stage} checkpoint in {directory}{train_hint}")
        return directory, latest
    steps = committed_steps(directory)
    if int(step) not in steps:
        raise JaxchatError(f"{directory} has no complete checkpoint at step {step}; available steps: {steps}")
    check_step(directory / str(int(step)))
    return directory, int(step)


def _restore_items(step_dir: Path, **items: Any) -> Any:
    """Restore some items of one complete step directory (a plain Checkpointer: no manager, no
    read-only warnings, nothing written)."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(step_dir.absolute(), args=ocp.args.Composite(**items))


def read_meta(stage: str, tag: str | None = None, step: int | None = None,
              home: str | Path | None = None) -> dict:
    """The ``meta`` item of a checkpoint (see ``find_checkpoint``), plus ``checkpoint``: its path."""
    directory, step = find_checkpoint(stage, tag, step, home)
    step_dir = directory / str(step)
    meta = dict(_orbax_read(step_dir, lambda: _restore_items(step_dir, meta=ocp.args.JsonRestore()))["meta"])
    meta["checkpoint"] = str(step_dir)
    return meta


def evaluated_checkpoint(stage: str, meta: dict) -> dict[str, Any]:
    """Which checkpoint a ``read_meta`` / ``load_model`` meta describes: {source, tag, step} (for reports)."""
    checkpoint = meta.get("checkpoint")
    return {"source": stage, "tag": Path(checkpoint).parent.name if checkpoint else "?", "step": meta.get("step", "?")}


def load_params(stage: str, tag: str | None = None, step: int | None = None, *, abstract_params: Any,
                home: str | Path | None = None) -> tuple[Any, dict]:
    """Restore ONLY the params item of a checkpoint (the next stage builds a fresh optimizer).

    Returns ``(params, meta)``; ``abstract_params`` gives structure, dtypes and shardings.
    """
    directory, step = find_checkpoint(stage, tag, step, home)
    step_dir = directory / str(step)
    abstract_params = abstract_tree(abstract_params)
    _orbax_read(step_dir, lambda: _check_params_shapes(step_dir, abstract_params))
    restored = _orbax_read(step_dir, lambda: _restore_items(
        step_dir, params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    meta["checkpoint"] = str(step_dir)
    return restored["params"], meta


def load_opt_state(stage: str, tag: str | None = None, step: int | None = None, *, abstract_opt_state: Any,
                   home: str | Path | None = None) -> Any:
    """Restore ONLY the optimizer state of a checkpoint (a stage warm-starting its optimizer from the
    previous stage's); ``abstract_opt_state`` gives its structure. JaxchatError when the checkpoint has
    none or it does not match (another recipe's optimizer)."""
    directory, step = find_checkpoint(stage, tag, step, home)
    step_dir = directory / str(step)
    record, _ = _read_checksums(step_dir)
    if record is not None and "opt_state" not in record["items"]:
        raise JaxchatError(f"{step_dir} holds no optimizer state to start from; set sft.load_optimizer=false")
    check_step(step_dir, None, RESUME_ITEMS)
    try:
        restored = _orbax_read(step_dir, lambda: _restore_items(
            step_dir, opt_state=ocp.args.StandardRestore(abstract_tree(abstract_opt_state))))
    except (ValueError, KeyError, TypeError) as e:
        raise JaxchatError(f"{step_dir}: its optimizer state does not match this stage's optimizer ({e}); "
                           "it was trained with another recipe's optimizer, so set sft.load_optimizer=false") from None
    return restored["opt_state"]
