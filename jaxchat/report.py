"""The report card (docs/DESIGN.md §11): per-stage markdown sections, assembled into ``report/report.md``.

Each stage of ``jaxchat.stages`` (tokenizer, base, mid, sft, ...) and each evaluation (``base-eval``,
``chat-eval-sft``, ...) owns two files under ``$JAXCHAT_HOME/report/``:

    <stage>.json   the source of truth: {"stage", "sections": [{"heading", "markdown"}], "metrics": {}}
    <stage>.md     the same sections rendered as markdown (``## heading`` + body), for reading

Sections are kept structurally in the JSON, so replacing a section by heading never has to parse
markdown (a body may itself contain ``## `` lines, e.g. model samples). Writes are atomic (temp file
+ rename) and serialised with a lock file, so concurrent stages cannot lose each other's sections.

``assemble()`` writes ``report.md``: a header (date, git commit, platform, devices), every stage's
sections in the registry's pipeline order with the training curves of its metrics logs
(``<stage>_<tag>.jsonl``, see ``jaxchat.metrics_log``) embedded as PNGs, and the final table
metric × stage. The table has a column per stage with checkpoints (``stages.checkpointed()``: BASE,
MID, SFT), and a report stage's metrics go to the column of the stage named in it: ``base`` and
``base-eval`` → BASE, ``mid`` and ``chat-eval-mid`` → MID, ``sft`` and ``chat-eval-sft`` → SFT.

CLI (``--help`` lists the keys)::

    python -m jaxchat.report                 # assemble report/report.md and print its path
    python -m jaxchat.report --reset         # start a new card (delete sections, logs and curves)
    python -m jaxchat.report --home=DIR      # another $JAXCHAT_HOME ("" = $JAXCHAT_HOME)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from jaxchat import cli, stages
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.distributed import is_primary
from jaxchat.metrics_log import plot_curves

PROG = "python -m jaxchat.report"
TABLE_METRICS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")
REPORT_FILE = "report.md"
STARTED_FILE = "started.txt"
_STAGE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What ``python -m jaxchat.report`` does."""

    reset: bool = False  # delete old sections, metrics logs and curves instead of assembling
    home: str = ""  # "" = $JAXCHAT_HOME


def report_dir(home: str | Path | None = None) -> Path:
    """``$JAXCHAT_HOME/report``."""
    return (Path(home) if home is not None else jaxchat_home()) / "report"


def _check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE.match(stage) or stage == "report":
        raise JaxchatError(f"bad report stage name {stage!r}: expected lowercase letters, digits, '-' or '_' "
                           "(e.g. 'base', 'chat-eval-sft')")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise read-modify-write of the report files across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_stage(path: Path) -> dict:
    if not path.is_file():
        return {"sections": [], "metrics": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise JaxchatError(f"report file {path} is not valid JSON ({e.msg}); delete it or run "
                           "`python -m jaxchat.report --reset`") from e
    if not isinstance(data, dict) or not isinstance(data.get("sections"), list):
        raise JaxchatError(f"report file {path} has no 'sections' list; delete it or run "
                           "`python -m jaxchat.report --reset`")
    data.setdefault("metrics", {})
    return data


def _render_stage(sections: list[dict]) -> str:
    return "\n".join(f"## {s['heading']}\n\n{s['markdown'].strip()}\n" for s in sections)


def _metric_value(name: str, value: Any) -> float | int | str | None:
    """A JSON-ready metric: numbers (numpy / jax scalars included), strings; NaN/inf → None ('-')."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    try:
        number = np.asarray(value).item()
    except (TypeError, ValueError) as e:
        raise JaxchatError(f"report metric {name}={value!r} is not a number") from e
    if not isinstance(number, (int, float)):
        raise JaxchatError(f"report metric {name}={value!r} is not a number")
    return number if not isinstance(number, float) or math.isfinite(number) else None


def write_section(stage: str, heading: str, markdown: str, metrics: dict | None = None,
                  home: str | Path | None = None, *, fresh: bool = False) -> Path:
    """Put section ``## heading`` with body ``markdown`` into ``report/<stage>.md``; returns that path.

    A section with the same heading is replaced in place (not duplicated); a new one is appended.
    ``metrics`` (e.g. ``{"CORE": 0.22}``) are merged into the stage's metrics for the final table.
    ``fresh=True`` drops the stage's earlier sections and metrics first (e.g. a new tokenizer).
    Several processes (``jax.distributed``): only process 0 writes; the others return the path.
    """
    _check_stage(stage)
    heading = " ".join(str(heading).split())
    if not heading:
        raise JaxchatError(f"report section of stage {stage!r} needs a non-empty heading")
    directory = report_dir(home)
    sidecar, page = directory / f"{stage}.json", directory / f"{stage}.md"
    if not is_primary():
        return page
    with _locked(directory):
        data = {"sections": [], "metrics": {}} if fresh else _read_stage(sidecar)
        section = {"heading": heading, "markdown": str(markdown).strip()}
        for i, old in enumerate(data["sections"]):
            if old["heading"] == heading:
                data["sections"][i] = section
                break
        else:
            data["sections"].append(section)
        for name, value in (metrics or {}).items():
            data["metrics"][str(name)] = _metric_value(name, value)
        data["stage"] = stage
        _atomic_write(sidecar, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        _atomic_write(page, _render_stage(data["sections"]))
    return page


def _stage_tokens(stage: str) -> list[str]:
    return re.split(r"[-_]", stage)


def _names(stage: str, name: str) -> bool:
    """Whether report stage ``stage`` (``chat-eval-sft``) names registry stage ``name`` (``sft``)."""
    tokens, wanted = _stage_tokens(stage), _stage_tokens(name)
    return any(tokens[i:i + len(wanted)] == wanted for i in range(len(tokens) - len(wanted) + 1))


def stage_order(stage: str) -> tuple:
    """Sort key: the pipeline order of ``jaxchat.stages`` (the first registry stage ``stage`` names),
    the stage itself before its evals; stages naming none come last."""
    pipeline = stages.names()
    for rank, name in enumerate(pipeline):
        if _names(stage, name):
            return (rank, stage != name, stage)
    return (len(pipeline), True, stage)


def table_columns() -> list[str]:
    """The final table's stage columns: the stages with checkpoints, in pipeline order."""
    return stages.checkpointed()


def table_column(stage: str) -> str | None:
    """The table column a report stage's metrics belong to (a stage with checkpoints) or None."""
    return next((c for c in table_columns() if _names(stage, c)), None)


def read_stages(home: str | Path | None = None) -> dict[str, dict]:
    """Every stage's sections and metrics, in pipeline order."""
    directory = report_dir(home)
    found = {}
    for path in directory.glob("*.json") if directory.is_dir() else []:
        if _STAGE.match(path.stem):
            found[path.stem] = _read_stage(path)
    return {name: found[name] for name in sorted(found, key=stage_order)}


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(report_stages: dict[str, dict]) -> str:
    """The final markdown table: metric × stage with checkpoints (BASE, MID, SFT), '-' where absent.

    The docs/DESIGN.md §11 metrics come first, then any other metric a stage recorded.
    """
    shown = table_columns()
    columns: dict[str, dict] = {c: {} for c in shown}
    for name, data in report_stages.items():
        column = table_column(name)
        if column is not None:
            columns[column].update(data.get("metrics", {}))
    extra = [m for c in shown for m in columns[c] if m not in TABLE_METRICS]
    rows = list(TABLE_METRICS) + list(dict.fromkeys(extra))
    lines = ["| Metric | " + " | ".join(c.upper() for c in shown) + " |",
             "|" + "---|" * (len(shown) + 1)]
    lines += [f"| {m} | " + " | ".join(_format(columns[c].get(m)) for c in shown) + " |" for m in rows]
    return "\n".join(lines)


def _git_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _devices() -> str:
    try:
        devices = jax.devices()
        kinds = sorted({d.device_kind for d in devices})
        return f"{devices[0].platform}: {len(devices)} × {', '.join(kinds)} (jax {jax.__version__})"
    except Exception as e:  # a broken accelerator setup must not stop the report
        return f"unavailable ({type(e).__name__}: {e})"


def _header(directory: Path) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["# jaxchat report card", "", f"- Generated: {now}"]
    started = directory / STARTED_FILE
    if started.is_file():
        lines.append(f"- Run started: {started.read_text(encoding='utf-8').strip()}")
    lines += [f"- Git commit: {_git_commit()}",
              f"- Platform: {platform.platform()}, Python {platform.python_version()}",
              f"- Devices: {_devices()}"]
    return "\n".join(lines)


def _curves(directory: Path) -> tuple[dict[str, list[str]], list[str]]:
    """PNG per metrics log ``<stage>_<tag>.jsonl``: ({stage: [markdown image lines]}, notes)."""
    images: dict[str, list[str]] = {}
    notes = []
    for log in sorted(directory.glob("*.jsonl")):
        try:
            png = plot_curves([log], directory / f"{log.stem}.png")
        except JaxchatError as e:  # matplotlib missing or a damaged log: the report still gets written
            notes.append(f"_No curves for {log.name}: {e}_")
            continue
        stage = log.stem.split("_", 1)[0]
        images.setdefault(stage, []).append(f"![{log.stem} curves]({png.name})")
    return images, notes


def assemble(home: str | Path | None = None) -> Path:
    """Write ``report/report.md`` (header, stage sections with curves, final table); return its path.
    Several processes: only process 0 writes it."""
    directory = report_dir(home)
    if not is_primary():
        return directory / REPORT_FILE
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        report_stages = read_stages(home)
        images, notes = _curves(directory)
        parts = [_header(directory)]
        for name, data in report_stages.items():
            parts += [f"## {s['heading']}\n\n{s['markdown']}" for s in data["sections"]]
            if images.get(name):
                parts.append("\n".join(images.pop(name)))
        for stage in sorted(images, key=stage_order):  # logs of stages without a section
            parts.append(f"## Training curves: {stage}\n\n" + "\n".join(images[stage]))
        parts += notes
        parts.append("## Summary\n\n" + metrics_table(report_stages))
        out = directory / REPORT_FILE
        _atomic_write(out, "\n\n".join(parts).rstrip() + "\n")
    return out


def reset(home: str | Path | None = None) -> list[Path]:
    """Start a new report card: delete every stage's sections and metrics, the metrics logs and their
    PNGs and the assembled report; record the start time. Returns the deleted paths (none outside
    process 0 of several)."""
    directory = report_dir(home)
    if not is_primary():
        return []
    removed = []
    with _locked(directory):
        for pattern in ("*.json", "*.md", "*.jsonl", "*.png"):
            for path in sorted(directory.glob(pattern)):
                path.unlink()
                removed.append(path)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        _atomic_write(directory / STARTED_FILE, now + "\n")
    return removed


def run(config: ReportConfig) -> Path:
    """Assemble the report card and print its path, or with ``reset`` clear it for a new run (the
    report directory's path is returned then)."""
    home = config.home or None
    if config.reset:
        removed = reset(home)
        print(f"report reset: removed {len(removed)} file(s) from {report_dir(home)}")
        return report_dir(home)
    path = assemble(home)
    print(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; the exit status (2 with a one-line ``error: ...``)."""
    return cli.main(run, ReportConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
