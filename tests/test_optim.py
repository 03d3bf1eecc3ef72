"""Optimizer and schedules against independent float64 NumPy references of nanochat's rules (docs/DESIGN.md §4–§7).

The references are written in torch layout (weights (out, in)); our params are Flax kernels
(in, out), so every comparison transposes the kernel.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from jaxchat.optim import (OptimConfig, base_lr_multiplier, learning_rates, make_optimizer,
                           mid_lr_multiplier, muon, muon_momentum_warmup, newton_schulz, param_group,
                           param_labels, sft_lr_multiplier)

# ----------------------------------------------------------------------------------------------------
# Independent references (NumPy, float64, torch semantics)


def ref_newton_schulz(G, steps=5):
    """nanochat zeropower_via_newtonschulz5 on a torch-layout matrix, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.astype(np.float64)
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / (np.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


class RefMuon:
    """nanochat muon.Muon.step for one torch-layout weight (out, in)."""

    def __init__(self, shape):
        self.buf = np.zeros(shape)

    def update(self, g, lr, m):
        self.buf = self.buf + (1 - m) * (g - self.buf)  # buf.lerp_(g, 1 - m)
        g = g + m * (self.buf - g)  # g.lerp_(buf, m) (nesterov)
        out, inp = g.shape
        return -lr * max(1, out / inp) ** 0.5 * ref_newton_schulz(g)


class RefAdamW:
    """torch.optim.AdamW (bias-corrected, decoupled weight decay) for one tensor."""

    def __init__(self, shape, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0):
        self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0
        self.b1, self.b2, self.eps, self.wd = *betas, eps, weight_decay

    def update(self, p, g, lr):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        step_size = lr / (1 - self.b1 ** self.t)
        denom = np.sqrt(self.v) / np.sqrt(1 - self.b2 ** self.t) + self.eps
        return -lr * self.wd * p - step_size * self.m / denom


def ref_lrm_base(it, num_iterations, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0):
    """nanochat base_train.get_lr_multiplier, verbatim."""
    warmup_iters = round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    elif it <= num_iterations - warmdown_iters:
        return 1.0
    progress = (num_iterations - it) / warmdown_iters
    return progress * 1.0 + (1 - progress) * final_lr_frac


def ref_momentum(it):
    frac = min(it / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


def rel_err(x, ref):
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


# Flax kernels (in, out): tall in Flax = wide in torch and vice versa, plus a square one.
SHAPES = {"tall": (48, 16), "wide": (16, 48), "square": (32, 32)}
STEPS = 6


def lr_schedule(count):
    return 0.02 * (1.0 - count / 10)


MOMENTUM = muon_momentum_warmup(warmup_steps=4)  # reaches 0.95 inside the run


def run_muon_vs_reference(ns_dtype):
    """Per-step (ours, reference) updates in torch layout for every shape."""
    rng = np.random.default_rng(0)
    params = {name: jnp.asarray(rng.normal(size=s), jnp.float32) for name, s in SHAPES.items()}
    grads = [{name: rng.normal(size=s).astype(np.float32) for name, s in SHAPES.items()}
             for _ in range(STEPS)]
    tx = muon(lr_schedule, MOMENTUM, ns_dtype=ns_dtype)
    update = jax.jit(tx.update)
    state = tx.init(params)
    refs = {name: RefMuon(s[::-1]) for name, s in SHAPES.items()}
    pairs = []
    for step in range(STEPS):
        updates, state = update(jax.tree.map(jnp.asarray, grads[step]), state, params)
        new_params = optax.apply_updates(params, updates)
        lr, m = 0.02 * (1.0 - step / 10), min(step / 4, 1) * 0.1 + 0.85
        for name in SHAPES:
            ref = refs[name].update(grads[step][name].T.astype(np.float64), lr, m)
            ours = (np.asarray(new_params[name], np.float64) - np.asarray(params[name], np.float64)).T
            pairs.append((name, step, np.asarray(updates[name]).T, ours, ref))
        params = new_params
    assert int(state.count) == STEPS
    return pairs


# ----------------------------------------------------------------------------------------------------
# Muon


def test_muon_float32_matches_nanochat_reference():
    for name, step, update, _, ref in run_muon_vs_reference(jnp.float32):
        assert update.dtype == np.float32
        assert rel_err(update, ref) < 1e-5, (name, step, rel_err(update, ref))
        np.testing.assert_allclose(update, ref, rtol=0, atol=1e-5 * np.abs(ref).max(),
                                   err_msg=f"{name} step {step}")


def test_muon_params_move_by_the_update():
    # Through optax.apply_updates on float32 params: exact up to the param's own rounding.
    for name, step, _, applied, ref in run_muon_vs_reference(jnp.float32):
        assert rel_err(applied, ref) < 1e-4, (name, step)


def test_muon_bfloat16_stays_close_to_reference():
    # bf16 Newton–Schulz lands ~3 % (relative Frobenius) from the float64 result, as torch's does.
    errors = [rel_err(update, ref) for _, _, update, _, ref in run_muon_vs_reference(jnp.bfloat16)]
    assert max(errors) < 0.045, errors
    assert min(errors) > 1e-3  # it really ran in bfloat16


def emulated_torch_bf16_newton_schulz(G, steps=5):
    """torch's bf16 arithmetic: every op computed in float32 (scalars unrounded), result rounded to bf16."""
    r = lambda x: np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    a, b, c = 3.4445, -4.7750, 2.0315
    X = r(G)
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = r(X / r(np.sqrt(np.sum(np.square(X, dtype=np.float64))) + 1e-7))
    for _ in range(steps):
        A = r(X @ X.T)
        B = r(r(b * A) + r(r(c * A) @ A))
        X = r(r(a * X) + r(B @ X))
    return X.T if transposed else X


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_bfloat16_newton_schulz_rounds_like_torch(shape):
    # Guards against JAX's weak typing rounding the coefficients to bf16 (3.4445 → 3.4375), which
    # nearly doubles the error; matmul accumulation order may differ, hence a (tight) tolerance.
    G = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    ours = np.asarray(newton_schulz(jnp.asarray(G), 5, jnp.bfloat16), np.float64)
    assert rel_err(ours, emulated_torch_bf16_newton_schulz(G).astype(np.float64)) < 5e-3


def test_muon_scale_uses_flax_layout():
    # c_fc is (d, 4d) in Flax: fan_out/fan_in = 4 → update scaled by 2; c_proj (4d, d) → 1.
    for shape, scale in (((8, 32), 2.0), ((32, 8), 1.0)):
        g = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
        tx = muon(1.0, momentum=0.0, ns_dtype=jnp.float32)
        update, _ = tx.update(g, tx.init(g))
        expected = -scale * newton_schulz(g, 5, jnp.float32)
        np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-6)


def test_newton_schulz_orthogonalises_and_commutes_with_transpose():
    G = jnp.asarray(np.random.default_rng(2).normal(size=(16, 40)), jnp.float32)
    X = newton_schulz(G, 5, jnp.float32)
    singular_values = np.linalg.svd(np.asarray(X), compute_uv=False)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5  # US'Vᵀ, S' ~ U(0.5, 1.5)
    np.testing.assert_allclose(newton_schulz(G.T, 5, jnp.float32), X.T, atol=1e-6)
    assert newton_schulz(G, 5, jnp.bfloat16).dtype == jnp.bfloat16


def test_muon_batches_leading_dims_and_rejects_vectors():
    g = jnp.asarray(np.random.default_rng(3).normal(size=(3, 12, 20)), jnp.float32)
    tx = muon(0.1, momentum=0.9, ns_dtype=jnp.float32)
    batched, _ = tx.update(g, tx.init(g))
    for i in range(3):
        single, _ = tx.update(g[i], tx.init(g[i]))
        np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="ndim >= 2"):
        tx.init({"bias": jnp.zeros(4)})


def test_muon_state_is_float32_and_update_keeps_param_dtype():
    params = {"w": jnp.zeros((8, 16), jnp.bfloat16)}
    tx = muon(0.02)
    state = tx.init(params)
    assert state.momentum_buffer["w"].dtype == jnp.float32 and state.count.dtype == jnp.int32
    updates, state = tx.update({"w": jnp.ones((8, 16), jnp.bfloat16)}, state)
    assert updates["w"].dtype == jnp.bfloat16 and state.momentum_buffer["w"].dtype == jnp.float32


def test_matches_optax_contrib_muon_where_semantics_coincide():
    # optax.contrib.muon bias-corrects its momentum, so the rules coincide only without
    # momentum (beta = 0: every step) and on the first step (where the momentum only rescales g,
    # which the normalisation removes). Its eps is 1e-8 instead of 1e-7: negligible at |g| ~ 10.
    rng = np.random.default_rng(4)
    params = {name: jnp.zeros(s, jnp.float32) for name, s in SHAPES.items()}
    grads = [{name: jnp.asarray(rng.normal(size=s), jnp.float32) for name, s in SHAPES.items()}
             for _ in range(3)]
    for beta, steps in ((0.0, 3), (0.95, 1)):
        ours, theirs = muon(0.02, momentum=beta, ns_dtype=jnp.float32), optax.contrib.muon(0.02, beta=beta)
        s_ours, s_theirs = ours.init(params), theirs.init(params)
        for step in range(steps):
            u_ours, s_ours = ours.update(grads[step], s_ours, params)
            u_theirs, s_theirs = theirs.update(grads[step], s_theirs, params)
            for name in SHAPES:
                err = rel_err(u_ours[name], np.asarray(u_theirs[name], np.float64))
                assert err < 1e-5, (beta, step, name, err)


# ----------------------------------------------------------------------------------------------------
# The full optimizer: routing, AdamW groups, clipping

D, V, LAYERS = 8, 16, 2


def tiny_params(rng=None):
    """The model's params dict shape (see jaxchat.model.gpt), numpy zeros or random values."""
    make = (lambda *s: np.zeros(s, np.float32)) if rng is None else (
        lambda *s: rng.normal(size=s).astype(np.float32))
    block = lambda: {  # noqa: E731
        "attn": {"c_q": {"kernel": make(D, D)}, "c_k": {"kernel": make(D, D // 2)},
                 "c_v": {"kernel": make(D, D // 2)}, "c_proj": {"kernel": make(D, D)}},
        "mlp": {"c_fc": {"kernel": make(D, 4 * D)}, "c_proj": {"kernel": make(4 * D, D)}},
    }
    return {"wte": {"embedding": make(V, D)}, "h": {i: block() for i in range(LAYERS)},
            "lm_head": {"kernel": make(D, V)}}


def test_routing_sends_each_leaf_to_its_group():
    labels = param_labels(tiny_params())
    assert labels["wte"]["embedding"] == "embedding"
    assert labels["lm_head"]["kernel"] == "unembedding"
    matrix_labels = jax.tree.leaves(labels["h"])
    assert matrix_labels == ["matrix"] * (6 * LAYERS)
    assert param_group(("h", 1, "mlp", "c_fc", "kernel")) == "matrix"


def _add_norm(p):
    p["norm"] = {"scale": np.zeros(D, np.float32)}


def _add_bias(p):
    p["h"][0]["attn"]["c_q"]["bias"] = np.zeros(D, np.float32)


def _rename_wte(p):
    p["wte"] = {"kernel": p["wte"].pop("embedding")}


def _vector_in_block(p):
    p["h"][1]["mlp"]["c_fc"]["kernel"] = np.zeros(D, np.float32)


@pytest.mark.parametrize("corrupt, message", [
    (_add_norm, "norm/scale"),
    (_add_bias, "h/0/attn/c_q/bias"),
    (_rename_wte, "wte/kernel"),
    (_vector_in_block, "must be a 2-D matrix"),
])
def test_routing_rejects_foreign_params(corrupt, message):
    params = tiny_params()
    corrupt(params)
    with pytest.raises(ValueError, match=message):
        make_optimizer(params, D, OptimConfig(), 1.0, 0.95)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_make_optimizer_matches_references_for_all_groups(weight_decay):
    config = OptimConfig(grad_clip=None, ns_dtype=jnp.float32, weight_decay=weight_decay)
    lrm = lambda step: 1.0 - 0.25 * step  # noqa: E731
    rng = np.random.default_rng(5)
    params = jax.tree.map(jnp.asarray, tiny_params(rng))
    tx = make_optimizer(params, D, config, lrm, muon_momentum_warmup())
    state = tx.init(params)
    update = jax.jit(tx.update)
    s = (D / 768) ** -0.5
    adam = {"wte": RefAdamW((V, D), weight_decay=weight_decay),
            "lm_head": RefAdamW((D, V), weight_decay=weight_decay)}
    block_leaves = jax.tree_util.tree_leaves_with_path(params["h"])
    muons = {path: RefMuon(leaf.shape[::-1]) for path, leaf in block_leaves}
    for step in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        updates, state = update(grads, state, params)
        lrs = learning_rates(state)
        assert float(lrs["embedding"]) == pytest.approx(0.2 * s * lrm(step), rel=1e-6)
        assert float(lrs["unembedding"]) == pytest.approx(0.004 * s * lrm(step), rel=1e-6)
        assert float(lrs["matrix"]) == pytest.approx(0.02 * lrm(step), rel=1e-6)  # not scaled by s
        for name, key, base in (("wte", "embedding", 0.2), ("lm_head", "kernel", 0.004)):
            p, g = (np.asarray(t[name][key], np.float64) for t in (params, grads))
            ref = adam[name].update(p, g, base * s * lrm(step))
            assert rel_err(updates[name][key], ref) < 1e-5, (name, step)
        for path, g in jax.tree_util.tree_leaves_with_path(grads["h"]):
            ref = muons[path].update(np.asarray(g, np.float64).T, 0.02 * lrm(step), ref_momentum(step))
            ours = dict(jax.tree_util.tree_leaves_with_path(updates["h"]))[path]
            assert rel_err(np.asarray(ours).T, ref) < 1e-5, (path, step)
        params = optax.apply_updates(params, updates)


def test_init_lr_frac_scales_every_group():
    params = jax.tree.map(jnp.asarray, tiny_params())
    full = learning_rates(make_optimizer(params, D, OptimConfig(), 0.5, 0.95).init(params))
    sft = learning_rates(make_optimizer(params, D, OptimConfig(init_lr_frac=0.02), 0.5, 0.95).init(params))
    for name in ("embedding", "unembedding", "matrix"):
        assert float(sft[name]) == pytest.approx(0.02 * float(full[name]), rel=1e-6)


def test_clipping_is_global_and_optional():
    rng = np.random.default_rng(6)
    params = jax.tree.map(jnp.asarray, tiny_params(rng))

    def grads_with_norm(norm):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        return jax.tree.map(lambda x: x * norm / optax.tree.norm(g), g)

    # Two steps (norm 10, then 0.5): Adam and Muon are scale-invariant on a single step, so only the
    # relative scale between steps shows whether the first one was clipped.
    g1, g2 = grads_with_norm(10.0), grads_with_norm(0.5)
    g1_clipped = jax.tree.map(lambda x: x / 10.0, g1)
    assert float(optax.tree.norm(g1_clipped)) == pytest.approx(1.0, rel=1e-5)

    def run(config, grads):
        tx = make_optimizer(params, D, config, 1.0, 0.95)
        state, out = tx.init(params), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            out.append(updates)
        return out

    f32 = dict(ns_dtype=jnp.float32)
    clipped = run(OptimConfig(grad_clip=1.0, **f32), [g1, g2])
    by_hand = run(OptimConfig(grad_clip=None, **f32), [g1_clipped, g2])
    unclipped = run(OptimConfig(grad_clip=None, **f32), [g1, g2])
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(by_hand)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # grad_clip=None really leaves the norm-10 gradients alone: step 2 then differs.
    diffs = [rel_err(a, np.asarray(b, np.float64)) for a, b in zip(jax.tree.leaves(unclipped[1]),
                                                                  jax.tree.leaves(by_hand[1]))]
    assert max(diffs) > 1e-2


# ----------------------------------------------------------------------------------------------------
# Schedules


def test_base_lr_multiplier_key_steps():
    lrm = base_lr_multiplier(100)
    for step, expected in ((0, 1.0), (79, 1.0), (80, 1.0), (81, 0.95), (90, 0.5), (99, 0.05), (100, 0.0)):
        assert float(lrm(step)) == pytest.approx(expected, abs=1e-6), step
    warm = base_lr_multiplier(100, warmup_ratio=0.1, final_lr_frac=0.1)
    assert float(warm(0)) == pytest.approx(0.1) and float(warm(9)) == pytest.approx(1.0)
    assert float(warm(90)) == pytest.approx(0.5 + 0.5 * 0.1)
    assert float(base_lr_multiplier(100, warmdown_ratio=0.0)(100)) == 1.0


@pytest.mark.parametrize("kwargs", [{}, {"warmup_ratio": 0.1, "final_lr_frac": 0.1}, {"warmdown_ratio": 0.5}])
def test_base_lr_multiplier_matches_nanochat_under_jit(kwargs):
    lrm = base_lr_multiplier(100, **kwargs)
    steps = jnp.arange(101, dtype=jnp.int32)
    traced = jax.jit(jax.vmap(lrm))(steps)
    expected = [ref_lrm_base(i, 100, **kwargs) for i in range(101)]
    np.testing.assert_allclose(traced, expected, rtol=1e-6, atol=1e-7)


def test_mid_lr_multiplier_decays_after_80_percent():
    lrm = mid_lr_multiplier(100)
    for step, expected in ((0, 1.0), (79, 1.0), (80, 1.0), (90, 0.5), (100, 0.0), (120, 0.0)):
        assert float(lrm(step)) == pytest.approx(expected, abs=1e-6), step
        assert float(jax.jit(lrm)(jnp.int32(step))) == pytest.approx(expected, abs=1e-6)


def test_sft_lr_multiplier_linear_to_zero():
    lrm = sft_lr_multiplier(100)
    for step, expected in ((0, 1.0), (50, 0.5), (99, 0.01), (100, 0.0), (150, 0.0)):
        assert float(lrm(step)) == pytest.approx(expected, abs=1e-6), step
        assert float(jax.jit(lrm)(jnp.int32(step))) == pytest.approx(expected, abs=1e-6)


def test_muon_momentum_warmup():
    momentum = muon_momentum_warmup()
    for step, expected in ((0, 0.85), (150, 0.90), (300, 0.95), (1000, 0.95)):
        assert float(momentum(step)) == pytest.approx(expected, abs=1e-6), step
        assert float(jax.jit(momentum)(jnp.int32(step))) == pytest.approx(ref_momentum(step), abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# Fast bf16 Newton–Schulz: float32 accumulation, one rounding, batched by shape

from jaxchat.optim.muon import _einsum, orthogonalise_batched  # noqa: E402


def test_bf16_matmul_accumulates_in_float32_and_rounds_once():
    # Integers below 2^4: every product and partial sum is exact in float32, so the only rounding
    # left is the final one to bf16 (8 significant bits): the result must equal the exact product
    # rounded once. A bf16 accumulator would round the partial sums (they exceed 2^8) and differ.
    rng = np.random.default_rng(0)
    x = rng.integers(-15, 16, size=(64, 512)).astype(np.float32)
    y = rng.integers(-15, 16, size=(512, 96)).astype(np.float32)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    # Both spellings Newton–Schulz uses: X·Y and the Gram form X·Xᵀ (contracting the last axes).
    for ours, exact in ((_einsum("...ij,...jk->...ik", xb, yb, jnp.bfloat16), x.astype(np.float64) @ y),
                        (_einsum("...ij,...kj->...ik", xb, xb, jnp.bfloat16), x.astype(np.float64) @ x.T)):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(ours), exact.astype(np.float32).astype(ml_dtypes.bfloat16))


def test_orthogonalise_batched_equals_one_matrix_at_a_time():
    rng = np.random.default_rng(5)
    shapes = [(16, 48), (48, 16), (16, 48), (32, 32), (32, 32), (3, 12, 20), (40, 24)]
    mats = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    batched = jax.jit(lambda ms: orthogonalise_batched(ms, 5, jnp.float32))(mats)
    for m, b in zip(mats, batched):
        assert b.shape == m.shape and b.dtype == jnp.float32
        np.testing.assert_allclose(b, jax.jit(lambda x: newton_schulz(x, 5, jnp.float32))(m), atol=1e-6)
    # In bf16 a batched matmul may sum in another order, and NS amplifies a last-bit difference to
    # the bf16 noise level (≈ 3 %): check the batched result is as accurate as the per-matrix one.
    batched = jax.jit(lambda ms: orthogonalise_batched(ms, 5, jnp.bfloat16))(mats)
    for m, b in zip(mats, batched):
        assert b.shape == m.shape and b.dtype == jnp.bfloat16
        m64 = np.asarray(m, np.float64).reshape(-1, *m.shape[-2:])
        exact = np.stack([ref_newton_schulz(x) for x in m64]).reshape(m.shape)
        assert rel_err(b, exact) < 0.045, (m.shape, rel_err(b, exact))


def test_model_sized_bfloat16_newton_schulz_is_as_accurate_as_torch():
    # At model sizes float32 accumulation order differs from NumPy's, so compare errors against the
    # float64 result: ours must be as close to it as torch's bf16 arithmetic (emulated) is.
    G = np.random.default_rng(8).normal(size=(256, 1024)).astype(np.float32)
    exact = ref_newton_schulz(G)
    ours = rel_err(np.asarray(jax.jit(newton_schulz)(jnp.asarray(G)), np.float64), exact)
    torch_like = rel_err(emulated_torch_bf16_newton_schulz(G).astype(np.float64), exact)
    assert 0.5 * torch_like < ours < 1.2 * torch_like, (ours, torch_like)
