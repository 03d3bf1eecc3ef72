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
``find_checkpoint`` / ``StageCheckpointer.latest_step`` only count a step directory whose name is
an integer, that holds ``commit_success.txt`` and the ``params`` and ``meta`` items; the previous
complete step stays usable. ``StageCheckpointer`` removes leftover tmp directories when it opens.

Restores always pass abstract targets: without one, Orbax returns int keys as strings and optimizer
trees stop matching. Building a model from a checkpoint is ``jaxchat.model.load``'s job.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxchat import stages
from jaxchat.common import JaxchatError, jaxchat_home

log = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"  # orbax atomicity_types.COMMIT_SUCCESS_FILE
REQUIRED_ITEMS = ("params", "meta")
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
    """The complete steps under one stage/tag directory, ascending (incomplete saves are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if is_complete_step(p))


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
    """

    def __init__(self, directory: Path, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # leftovers of saves killed midway
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_saved: int | None = None

    # -- saving --
    def save(self, step: int, params: Any, opt_state: Any, data_state: dict | bytes | None, meta: dict, *,
             force: bool = False) -> None:
        """Save ``step``: params, optimizer state (None: not saved), data iterator state (None: not
        saved) and ``meta`` (``training.build.checkpoint_meta``; ``step`` is set here, ``time`` (ISO) added if absent).

        A step that already has a complete checkpoint is left alone (e.g. the final save landing on a
        periodic one) unless ``force``, which replaces it. An incomplete directory of that step
        (a killed save) is removed first.
        """
        step = int(step)
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"checkpoint meta lacks {missing}; build it with jaxchat.training.build.checkpoint_meta")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        meta = _jsonable({"time": now, **meta, "step": step}, "meta")  # a caller's own "time" wins
        step_dir = self.directory / str(step)
        if step == self._last_saved:  # e.g. the final save right after a periodic one of the same step:
            self._manager.wait_until_finished()  # let that one commit before looking at the directory
        if step_dir.exists():
            if is_complete_step(step_dir) and not force:
                log.info("checkpoint %s exists; not saving it again", step_dir)
                return
            self._manager.wait_until_finished()
            shutil.rmtree(step_dir)
            self._manager.reload()
        items: dict[str, Any] = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data_state is not None:
            # Encoded now: the JSON is a snapshot of the iterator at this step even if saved later.
            items["data"] = ocp.args.JsonSave(_encode_data_state(data_state))
        # force=True: the caller decides when to save; Orbax's own policy would skip a step lower
        # than one already on disk (e.g. after resuming from an earlier checkpoint).
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._last_saved = step

    # -- reading --
    def all_steps(self) -> list[int]:
        """Complete steps on disk, ascending (an async save in flight counts once it commits)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The latest COMPLETE step on disk, or None. Call ``wait()`` first to include a save in flight."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, step: int | None, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, Any, dict]:
        """Restore ``step`` (None = latest complete) → ``(params, opt_state, data_state, meta)``.

        ``abstract_params`` / ``abstract_opt_state``: trees of arrays or ShapeDtypeStructs giving the
        structure, dtypes and shardings to restore onto (e.g. the freshly initialised state). Pass
        ``abstract_opt_state=None`` to skip the optimizer state (returned as None). ``data_state`` is
        None when the checkpoint has none. Pending async saves are waited for first.
        """
        self._manager.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise JaxchatError(f"no complete checkpoint in {self.directory} to resume from")
        step_dir = self.directory / str(int(step))
        if not is_complete_step(step_dir):
            raise JaxchatError(f"{step_dir} is not a complete checkpoint; complete steps: {self.all_steps()}")
        abstract_params = abstract_tree(abstract_params)
        _check_params_shapes(step_dir, abstract_params)
        items: dict[str, Any] = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            if not (step_dir / "opt_state").is_dir():
                raise JaxchatError(f"{step_dir} holds no optimizer state (saved with opt_state=None)")
            items["opt_state"] = ocp.args.StandardRestore(abstract_tree(abstract_opt_state))
        if (step_dir / "data").is_dir():
            items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
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
    """``(stage/tag directory, step)`` of a complete checkpoint.

    ``tag`` None → the tag whose newest complete step was written last; ``step`` None → the latest
    complete step. Incomplete saves are never chosen. JaxchatError (naming the directory and the
    command that makes the checkpoint) when there is none.
    """
    _check_stage(stage)
    root = _home(home) / "checkpoints" / stage
    if tag is None:
        candidates = []
        for tag_dir in sorted(root.iterdir()) if root.is_dir() else []:
            steps = complete_steps(tag_dir)
            if steps:
                written = (tag_dir / str(steps[-1]) / COMMIT_MARKER).stat().st_mtime
                candidates.append((written, tag_dir.name))
        if not candidates:
            raise JaxchatError(f"no {stage} checkpoint in {root}; train one with `{_train_command(stage)}`")
        tag = max(candidates)[1]
    directory = checkpoint_dir(stage, tag, home)
    steps = complete_steps(directory)
    if not steps:
        raise JaxchatError(f"no complete {stage} checkpoint in {directory}; train one with "
                           f"`{_train_command(stage)}`")
    if step is None:
        return directory, steps[-1]
    if int(step) not in steps:
        raise JaxchatError(f"{directory} has no complete checkpoint at step {step}; available steps: {steps}")
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
    meta = dict(_restore_items(directory / str(step), meta=ocp.args.JsonRestore())["meta"])
    meta["checkpoint"] = str(directory / str(step))
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
    abstract_params = abstract_tree(abstract_params)
    _check_params_shapes(directory / str(step), abstract_params)
    restored = _restore_items(directory / str(step), params=ocp.args.StandardRestore(abstract_params),
                              meta=ocp.args.JsonRestore())
    meta = dict(restored["meta"])
    meta["checkpoint"] = str(directory / str(step))
    return restored["params"], meta
