"""The step loop every stage shares: dispatch, per-step log line, progress bar, evals, checkpoints.

The device is never left waiting on the host: step k+1 is dispatched before the metrics of step k are
read (the only host sync, needed for the log line), and batches arrive already on the device through
the pipeline's prefetcher. The loop stops at ``num_steps`` or when the batches run out (one epoch of
mid / SFT), saves a final checkpoint, and returns the last metrics.

Interrupts: ``STOP`` is how an entry point's SIGINT handler (``train.py``) asks a running loop to stop.
The loop checks it between steps only, so a Ctrl-C never lands inside a compile, a step or a save;
it then reads the pending metrics, saves a (non-final) checkpoint of the steps done and raises
``Interrupted``. ``STOP.request()`` returns False when no loop is running to honour it (the handler
then exits at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from jaxchat.common import JaxchatError
from jaxchat.distributed import gather, is_primary, preempted, process_count
from jaxchat.training.step import TrainState

# An eval hook: (every, fn(state) -> {metric: float}); every ≤ 0 → only at the end.
EvalHook = tuple[int, Callable[[TrainState], dict[str, float]]]


class Interrupted(KeyboardInterrupt):
    """The run stopped at a step boundary because SIGINT asked it to; the message says what was saved."""


class StopRequest:
    """A stop asked of the running training loop (set from a SIGINT handler, read between steps).

    Touched only by the main thread (signal handlers run there): plain attributes, no lock that a
    handler could find held by the code it interrupted.
    """

    def __init__(self) -> None:
        self._depth = 0  # nested ``running()`` blocks (a stage's run around its loop)
        self._requested = False

    def request(self) -> bool:
        """Ask the running loop to stop; True when one is running and this is the first request
        (the loop will stop at its next step boundary), False otherwise (the caller should exit)."""
        if self._depth and not self._requested:
            self._requested = True
            return True
        return False

    def requested(self) -> bool:
        """Was a stop requested since the outermost ``running()`` block began?"""
        return self._requested

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Requests are honoured (not refused) inside: the outermost block starts with none; the
        request stays readable after it."""
        if self._depth == 0:
            self._requested = False
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


STOP = StopRequest()


@dataclasses.dataclass
class LoopSpec:
    """What a stage hands the loop."""

    stage: str
    num_steps: int | None  # None: until the batches run out (one epoch)
    lr_multiplier: Callable[[int, float], float]  # (step, epoch progress) → LR multiplier
    flops_per_token: float
    peak_flops: float | None  # for MFU; None → not shown
    eval_hooks: tuple[EvalHook, ...] = ()
    save_every: int = -1
    ema_beta: float = 0.9


def _line(stage: str, step: int, total: int | None, m: dict[str, float]) -> str:
    progress = f"{step:05d}/{total:05d} ({100 * step / total:.1f}%)" if total else f"{step:05d}"
    parts = [f"{stage} step {progress}", f"loss {m['loss_ema']:.4f}", f"gnorm {m['grad_norm']:.3f}",
             f"lrm {m['lrm']:.3f}", f"dt {m['dt'] * 1e3:.0f}ms", f"tok/s {m['tok_per_s']:,.0f}"]
    if "mfu" in m:
        parts.append(f"mfu {m['mfu']:.1%}")
    parts.append(f"elapsed {m['elapsed'] / 60:.1f}m")
    return " | ".join(parts)


def run_loop(spec: LoopSpec, state: TrainState, train_step: Callable, batches: Iterator[dict[str, Any]],
             *, save: Callable[[TrainState, dict[str, float], bool], None],
             log: Callable[[int, dict[str, float]], None]) -> tuple[TrainState, dict[str, float]]:
    """Train from ``state.step`` until done; returns the final state and the last metrics.

    ``batches`` yields dicts with "inputs"/"targets" (already shaped (accum, B, T) and on device) and
    optionally "progress" (fraction of the epoch consumed after this batch, a Python float).
    ``save(state, metrics, final)`` writes a checkpoint; ``log(step, metrics)`` records metrics (the
    train metrics of every step, and the eval metrics of the steps that ran evals).
    """
    start_step = int(state.step)
    total = spec.num_steps
    primary = is_primary()  # several processes: only process 0 shows progress, step lines and evals
    bar = tqdm(total=total, initial=start_step, desc=spec.stage, unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=None if primary else True)

    def say(line: str) -> None:
        if primary:
            bar.write(line)
    t_start = t_last = time.perf_counter()
    ema = 0.0
    last: dict[str, float] = {}

    def report(step: int, device_metrics: dict, progress: float, tokens: int) -> None:
        """Read the metrics of optimizer step ``step`` (the one host sync), print and log them."""
        nonlocal ema, t_last, last
        host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        ema = spec.ema_beta * ema + (1 - spec.ema_beta) * host["loss"]
        done = step + 1
        m = {**host, "loss_ema": ema / (1 - spec.ema_beta ** (done - start_step)), "dt": dt,
             "tok_per_s": tokens / dt, "elapsed": now - t_start, "progress": progress, "step": done}
        if spec.peak_flops:
            m["mfu"] = spec.flops_per_token * m["tok_per_s"] / spec.peak_flops
        say(_line(spec.stage, done, total, m))
        log(done, m)
        last = {**last, **m}
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            # Stop before a diverged state reaches a checkpoint: the last saved one stays the newest.
            raise JaxchatError(f"{spec.stage} step {done}: loss {host['loss']}, grad norm {host['grad_norm']} — "
                               "training diverged; nothing was saved after the last checkpoint. Lower the "
                               "learning rates or check the data, then --resume.")

    def evaluate_and_save(state: TrainState, done: int, final: bool) -> None:
        nonlocal last, t_last
        extra: dict[str, float] = {}
        for every, hook in spec.eval_hooks:
            if final or (every > 0 and done % every == 0):
                extra.update(hook(state))
        if extra:
            say(f"{spec.stage} step {done:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in extra.items()))
            log(done, extra)
            last = {**last, **extra}
        if final or (spec.save_every > 0 and done % spec.save_every == 0):
            save(state, last, final)
        t_last = time.perf_counter()  # the next step's dt should not include evals and saves

    step, progress = start_step, 0.0
    host_cpu = jax.local_devices(backend="cpu")[0]
    pending: tuple[int, dict, float, int] | None = None  # the step in flight whose metrics are unread
    stopped = False
    try:
        with STOP.running():
            while spec.num_steps is None or step < spec.num_steps:
                if _stop_agreed(step):  # a step boundary: nothing is being computed or saved
                    stopped = True
                    break
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                progress = float(batch.pop("progress", progress))
                # Schedules are jnp functions; evaluated on the host CPU, reading one never waits for the
                # accelerator's queue (which would be a host sync per step).
                with jax.default_device(host_cpu):
                    lrm = np.float32(spec.lr_multiplier(step, progress))
                arrays = {"inputs": batch["inputs"], "targets": batch["targets"]}
                state, device_metrics = train_step(state, arrays, lrm)
                if pending is not None:
                    report(*pending)  # step k-1's metrics are read while step k runs
                # tok/s counts what the device computes (padding included): the batch's size, no sync.
                pending = (step, device_metrics, progress, int(np.prod(batch["inputs"].shape)))
                step += 1
                bar.update(1)
                if step != spec.num_steps and _due(spec, step):  # the last step gets the final round below
                    # Evals and saves need the params after `step` steps: read the metrics now.
                    report(*pending)
                    pending = None
                    evaluate_and_save(state, step, final=False)
        if pending is not None:
            report(*pending)
        if stopped:
            if step > start_step:  # keep the steps done (a step already saved is not written again)
                save(state, last, False)
            raise Interrupted(f"{spec.stage} stopped after step {step}" if step > start_step else
                              f"{spec.stage} stopped before its first step")
        evaluate_and_save(state, step, final=True)
    finally:
        bar.close()
    return state, last


# With several processes a stop is agreed on every this many steps: all must stop after the same
# step (each saves its shards), and agreeing is a collective that waits for the step in flight.
STOP_CHECK_EVERY = 16


def _stop_agreed(step: int) -> bool:
    """Stop before ``step``? One process: when asked. Several: when any was asked, checked every
    ``STOP_CHECK_EVERY`` steps (every process reaches the same steps, so they agree at the same one),
    or at the step they agreed on after a SIGTERM (``distributed.preempted``, asked at every step)."""
    if process_count() == 1:
        return STOP.requested()
    if preempted(step):
        return True
    return step % STOP_CHECK_EVERY == 0 and any(gather(int(STOP.requested())))


def _due(spec: LoopSpec, done: int) -> bool:
    """Does an eval hook or a periodic save fall on ``done`` completed steps?"""
    if spec.save_every > 0 and done % spec.save_every == 0:
        return True
    return any(every > 0 and done % every == 0 for every, _ in spec.eval_hooks)


def estimate_time(total_flops: float, peak: float | None, mfu: float = 0.4) -> str:
    """Wall-time estimate for the plan, at ``mfu`` of a known peak."""
    if peak is None:
        return "unknown on this device (watch tok/s in the first steps)"
    seconds = total_flops / (peak * mfu)
    return f"~{seconds / 3600:.1f} h at {mfu:.0%} MFU" if seconds > 3600 else f"~{seconds / 60:.1f} min at {mfu:.0%} MFU"


def format_plan(rows: list[tuple[str, Any]]) -> str:
    """The plan table printed before a stage starts."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
