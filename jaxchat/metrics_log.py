"""Training metrics as JSON lines (``$JAXCHAT_HOME/report/<stage>_<tag>.jsonl``), optional W&B, and plots.

One line per ``log`` call: ``{"step": N, "time": unix_seconds, **metrics}``. Lines are appended and
flushed one by one, so a crash loses at most the line being written and a resumed run simply keeps
appending; ``MetricsLogger.read`` drops what a resume made stale (see there).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.distributed import is_primary

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def metrics_path(stage: str, tag: str, directory: str | Path | None = None) -> Path:
    """``<directory or $JAXCHAT_HOME/report>/<stage>_<tag>.jsonl``."""
    for what, value in (("stage", stage), ("tag", tag)):
        if not _NAME.match(str(value)):
            raise JaxchatError(f"bad metrics log {what} {value!r}: expected letters, digits, '.', '_' or '-'")
    return Path(directory if directory is not None else jaxchat_home() / "report") / f"{stage}_{tag}.jsonl"


def _scalar(name: str, value: Any) -> Any:
    """A JSON-ready scalar (jax / numpy 0-d arrays become Python numbers; NaN/inf become null)."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    try:
        number = np.asarray(value).item()
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {name}={value!r} is not a scalar") from e
    if isinstance(number, float) and not math.isfinite(number):
        return None  # strict JSON; a diverged loss shows as a gap in the curves
    return number


class MetricsLogger:
    """Appends one JSON line per ``log(step, **metrics)`` and optionally mirrors it to Weights & Biases.

    ``wandb_run``: an existing run object (anything with ``.log(dict, step=)``), or a run name (str),
    in which case ``wandb.init(project="jaxchat", name=...)`` is called here and the run is finished
    by ``close()``. wandb is imported only then.

    Several processes (``jax.distributed``): only process 0 writes (and logs to W&B); the others'
    ``log`` returns the record and writes nothing, so a shared log holds each line once.
    """

    def __init__(self, stage: str, tag: str, directory: str | Path | None = None, wandb_run: Any = None):
        self.path = metrics_path(stage, tag, directory)
        self._primary = is_primary()
        self._owns_run = isinstance(wandb_run, str) and self._primary
        self._run = None
        self._file = None
        if self._primary:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._run = _start_wandb(wandb_run, stage, tag) if self._owns_run else wandb_run
            self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict | None = None, /, **more: Any) -> dict:
        """Write ``{"step", "time", **metrics}`` (scalars) as one flushed line; returns the record.

        Metrics come as keywords (``log(10, loss=2.3)``), a dict (``log(10, {"loss": 2.3})``) or both.
        """
        values = {name: _scalar(name, value) for name, value in {**(metrics or {}), **more}.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **values}
        if self._file is None:  # not process 0
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._run is not None:
            self._run.log({k: v for k, v in values.items() if v is not None}, step=int(step))
        return record

    def close(self) -> None:
        """Close the file (and finish the W&B run if this logger started it)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._owns_run and self._run is not None:
            self._run.finish()
            self._run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def read(path: str | Path, upto_step: int | None = None) -> list[dict]:
        """The records of a log, as one consistent history.

        A resumed run restarts at its checkpoint's step and appends: when a step appears that is
        lower than one already seen, the earlier records from that step on are dropped (they belong
        to the abandoned part of the run). Several records of the same step (a train line and a val
        line) are kept. A truncated last line (crash mid-write) is ignored; ``upto_step`` drops later
        records.
        """
        path = Path(path)
        if not path.is_file():
            raise JaxchatError(f"metrics log {path} does not exist")
        records: list[dict] = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines):
                    break  # the process died while writing it
                raise JaxchatError(f"{path}:{number}: not a JSON line ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise JaxchatError(f"{path}:{number}: expected an object with an int 'step', got {line[:80]!r}")
            if records and record["step"] < records[-1]["step"]:
                records = [r for r in records if r["step"] < record["step"]]
            records.append(record)
        return [r for r in records if upto_step is None or r["step"] <= upto_step]


def _start_wandb(name: str, stage: str, tag: str) -> Any:
    try:
        import wandb  # lazy: optional, only for --wandb_run
    except ImportError as e:
        raise JaxchatError("wandb logging was asked for but wandb is not installed; `pip install wandb` "
                           "(or run without a W&B run name)") from e
    return wandb.init(project="jaxchat", name=name, group=tag, job_type=stage)


def _pyplot() -> Any:
    try:
        import matplotlib  # lazy: heavy, only the report's curves need it
    except ImportError as e:
        raise JaxchatError("plotting the training curves needs matplotlib; `pip install matplotlib`") from e
    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    return plt


def plot_curves(jsonl_paths: Sequence[str | Path] | str | Path, out_png: str | Path,
                keys: Iterable[str] = ("loss", "val_bpb")) -> Path:
    """Plot ``keys`` against step, one panel per key and one line per log file, into ``out_png``.

    A key absent from every log gets an empty panel saying so. Returns ``out_png``.
    """
    plt = _pyplot()
    paths = [Path(jsonl_paths)] if isinstance(jsonl_paths, (str, Path)) else [Path(p) for p in jsonl_paths]
    keys = list(keys)
    if not keys:
        raise ValueError("plot_curves needs at least one metric key")
    histories = {p.stem: MetricsLogger.read(p) for p in paths}
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        plotted = False
        for label, records in histories.items():
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
                      and not isinstance(r.get(key), bool)]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
                plotted = True
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{key}' logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
