"""The shared step loop: lagged metrics, eval and checkpoint cadence, stopping on divergence."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.common import JaxchatError
from jaxchat.training.loop import STOP, Interrupted, LoopSpec, run_loop
from jaxchat.training.step import TrainState


def fake_step(losses):
    """A 'train step' that counts steps and reports the given losses in turn."""

    def step(state, batch, lrm):
        loss = losses[int(state.step)]
        metrics = {"loss": jnp.float32(loss), "grad_norm": jnp.float32(1.0), "lrm": jnp.float32(lrm),
                   "tokens": jnp.int32(batch["inputs"].size)}
        return TrainState(state.step + 1, state.params, state.opt_state), metrics

    return step


def batches(n, progress=False):
    for i in range(n):
        batch = {"inputs": np.zeros((1, 2, 4), np.int32), "targets": np.zeros((1, 2, 4), np.int32)}
        if progress:
            batch["progress"] = (i + 1) / n
        yield batch


def run(losses, *, num_steps, n_batches, evals=(), save_every=-1, progress=False, saves=None):
    spec = LoopSpec(stage="test", num_steps=num_steps, lr_multiplier=lambda step, p: 1.0 - 0.1 * step,
                    flops_per_token=1.0, peak_flops=None, eval_hooks=evals, save_every=save_every)
    saves, logs = [] if saves is None else saves, []
    state = TrainState(jnp.int32(0), {}, ())
    state, last = run_loop(spec, state, fake_step(losses), batches(n_batches, progress),
                           save=lambda s, m, final: saves.append((int(s.step), final)),
                           log=lambda step, m: logs.append((step, dict(m))))
    return state, last, saves, logs


def test_every_step_logged_in_order_with_evals_and_saves_on_cadence():
    evaluated = []
    hook = (2, lambda s: evaluated.append(int(s.step)) or {"val": float(s.step)})
    state, last, saves, logs = run([3.0, 2.0, 1.0, 0.5, 0.25], num_steps=5, n_batches=10, evals=(hook,),
                                   save_every=2)
    assert int(state.step) == 5
    train_logs = [(step, m) for step, m in logs if "loss" in m]
    assert [step for step, _ in train_logs] == [1, 2, 3, 4, 5]
    assert [m["lrm"] for _, m in train_logs] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert evaluated == [2, 4, 5]  # on cadence, and once more at the end
    assert saves == [(2, False), (4, False), (5, True)]
    assert last["val"] == 5.0 and last["step"] == 5
    # Debiased EMA: the first value is the loss itself.
    assert train_logs[0][1]["loss_ema"] == pytest.approx(3.0)


def test_stops_when_the_batches_run_out_with_progress():
    state, last, saves, _ = run([1.0] * 10, num_steps=None, n_batches=3, progress=True)
    assert int(state.step) == 3 and saves == [(3, True)] and last["progress"] == 1.0


def test_divergence_stops_before_anything_is_saved():
    saves = []
    with pytest.raises(JaxchatError, match="step 3: loss nan.*diverged"):
        run([2.0, 1.5, float("nan"), 1.0, 1.0], num_steps=5, n_batches=5, save_every=2, saves=saves)
    assert saves == [(2, False)]  # the step-2 checkpoint stays the newest; nothing after it is written


def test_a_stop_request_ends_the_loop_at_the_next_step_boundary_with_a_save():
    """What train.py's SIGINT handler asks: the step in flight finishes, a (non-final) checkpoint of
    it is saved, the final evals and final save do not run, and Interrupted says where the loop stopped."""
    assert not STOP.request()  # no loop running: the handler must exit at once instead
    losses = [3.0, 2.0, 1.0, 0.5, 0.25]
    step = fake_step(losses)

    def step_then_ctrl_c(state, batch, lrm):
        if int(state.step) == 2:
            assert STOP.request() and not STOP.request()  # the first request is taken, a second one is not
        return step(state, batch, lrm)

    spec = LoopSpec(stage="test", num_steps=5, lr_multiplier=lambda s, p: 1.0, flops_per_token=1.0, peak_flops=None,
                    eval_hooks=((1, lambda s: {"val": 1.0}),))
    saves, logs = [], []
    with pytest.raises(Interrupted, match="test stopped after step 3"):
        run_loop(spec, TrainState(jnp.int32(0), {}, ()), step_then_ctrl_c, batches(5),
                 save=lambda s, m, final: saves.append((int(s.step), final)), log=lambda s, m: logs.append(s))
    assert saves == [(3, False)]  # the steps done are kept; the step in flight was reported first
    assert logs[-1] == 3 and STOP.requested() and not STOP.request()


def test_a_stop_requested_before_the_first_step_saves_nothing():
    saves = []
    with STOP.running():
        assert STOP.request()  # e.g. Ctrl-C while the stage restored its state
        with pytest.raises(Interrupted, match="before its first step"):
            run([1.0] * 3, num_steps=3, n_batches=3, saves=saves)
    assert saves == []


def test_several_processes_agree_on_a_stop_every_few_steps(monkeypatch):
    """With several processes every one must stop after the same step: a stop asked in any of them
    is agreed on (a gather over the processes) at the steps divisible by STOP_CHECK_EVERY only."""
    from jaxchat.training import loop

    gathered = []
    monkeypatch.setattr(loop, "process_count", lambda: 2)

    def gather(flag):
        gathered.append(flag)
        return [flag, 0]  # the other process was not asked

    monkeypatch.setattr(loop, "gather", gather)
    every = loop.STOP_CHECK_EVERY
    with loop.STOP.running():
        assert not loop._stop_agreed(every) and gathered == [0]
        assert loop.STOP.request()
        assert not loop._stop_agreed(every + 1) and gathered == [0]  # between agreements: keep going
        assert loop._stop_agreed(2 * every) and gathered == [0, 1]
    monkeypatch.setattr(loop, "gather", lambda flag: [0, 1])  # asked in the other process only
    with loop.STOP.running():
        assert loop._stop_agreed(0)
