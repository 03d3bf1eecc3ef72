"""The jitted train step: overfitting, accumulation equivalence, donation, data-parallel equivalence."""

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxchat import GPT, GPTConfig
from jaxchat.model import split_params
from jaxchat.optim import OptimConfig, make_optimizer, muon_momentum_warmup, param_group
from jaxchat.training import init_train_state, make_train_step

TINY = GPTConfig(sequence_len=32, vocab_size=128, n_layer=2, n_head=2, n_kv_head=1, n_embd=64)


def random_batch(key, accumulation, batch, seq=32, vocab=128):
    tokens = jax.random.randint(key, (accumulation, batch, seq + 1), 0, vocab)
    return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}


def nanochat_optimizer(params, lr_multiplier=1.0):
    # float32 Newton–Schulz: bf16 rounding (≈ 2.5 %) would swamp the float32 differences compared here.
    config = OptimConfig(ns_dtype=jnp.float32)
    return make_optimizer(params, TINY.n_embd, config, lr_multiplier, muon_momentum_warmup())


def test_tiny_model_overfits_a_fixed_batch():
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(0)))
    tx = nanochat_optimizer(params)
    step = make_train_step(graphdef, tx)
    state = init_train_state(params, tx)
    batch = random_batch(jax.random.key(0), 1, 4)
    losses = []
    for _ in range(60):
        state, metrics = step(state, batch, 1.0)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(math.log(TINY.vocab_size), rel=1e-5)  # zero-init lm_head
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert int(state.step) == 60


@pytest.mark.parametrize("tx_name", ["sgd", "nanochat"])
def test_accumulation_equals_one_big_batch(tx_name):
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(1)))
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(9), a.shape), params)
    big = random_batch(jax.random.key(1), 1, 8)
    # Uneven masking across micro-batches: normalisation must be by total target count.
    big["targets"] = big["targets"].at[0, :3, 5:].set(-1)
    split = jax.tree.map(lambda a: a.reshape(4, 2, -1), big)

    def run(batch):
        tx = optax.sgd(0.5) if tx_name == "sgd" else nanochat_optimizer(params)
        step = make_train_step(graphdef, tx)
        state = init_train_state(jax.tree.map(jnp.copy, params), tx)
        for _ in range(2):
            state, metrics = step(state, batch, 1.0)
        return state.params, metrics

    (p_big, m_big), (p_split, m_split) = run(big), run(split)
    assert int(m_big["tokens"]) == int(m_split["tokens"]) == 8 * 32 - 3 * 27
    assert float(m_big["loss"]) == pytest.approx(float(m_split["loss"]), rel=1e-5)
    assert float(m_big["grad_norm"]) == pytest.approx(float(m_split["grad_norm"]), rel=1e-4)
    # The sgd case pins the gradients themselves. Under the nanochat optimizer, Muon's normalised
    # updates keep float32 summation-order noise tiny, but AdamW (eps 1e-10) divides each element
    # by its own magnitude, so a near-zero embedding gradient turns that noise into ~1e-3.
    def close(path, a, b):
        adamw = param_group(path) != "matrix" and tx_name == "nanochat"
        np.testing.assert_allclose(a, b, atol=5e-3 if adamw else 2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(close, p_big, p_split)


def test_state_is_donated_and_metrics_stay_on_device():
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(0)))
    tx = nanochat_optimizer(params)
    step = make_train_step(graphdef, tx)
    state = init_train_state(params, tx)
    old_leaf = jax.tree.leaves(state.params)[0]
    state, metrics = step(state, random_batch(jax.random.key(0), 1, 2), 1.0)
    assert old_leaf.is_deleted()
    assert isinstance(metrics["loss"], jax.Array)
    state, metrics = step(state, random_batch(jax.random.key(1), 1, 2), 0.9)
    assert float(metrics["lrm"]) == pytest.approx(0.9)
    assert set(metrics) == {"loss", "grad_norm", "lrm", "tokens"}


def test_lrm_scales_every_groups_learning_rate():
    """Scaling the updates by lrm is the same as building the optimizer with that LR multiplier."""
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(3)))
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(4), a.shape), params)
    batch = random_batch(jax.random.key(5), 1, 4)

    def run(tx_multiplier, lrm):
        tx = make_optimizer(params, TINY.n_embd, OptimConfig(ns_dtype=jnp.float32, weight_decay=0.1),
                            tx_multiplier, muon_momentum_warmup())
        state = init_train_state(jax.tree.map(jnp.copy, params), tx)
        step = make_train_step(graphdef, tx)
        for _ in range(2):
            state, _ = step(state, batch, lrm)
        return state.params

    by_lrm, by_schedule = run(1.0, 0.3), run(0.3, 1.0)
    # (Step 2 sees slightly different params, and AdamW magnifies noise on near-zero gradients.)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5), by_lrm, by_schedule)


def test_default_bfloat16_newton_schulz_step_runs_and_learns():
    """The shipped optimizer (bf16 Newton–Schulz through float32-accumulating bf16 dots, batched by
    shape) on square and non-square kernels, end to end through the jitted step."""
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(0)))
    tx = make_optimizer(params, TINY.n_embd, OptimConfig(), 1.0, muon_momentum_warmup())
    step = make_train_step(graphdef, tx)
    state = init_train_state(params, tx)
    batch = random_batch(jax.random.key(0), 1, 4)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch, 1.0)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses[::5]
