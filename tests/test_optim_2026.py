"""nanochat 92d63d4's optimizer port (jaxchat/optim/*2026.py) against a golden fixture and unit checks.

The fixture ``tests/fixtures/nanochat_92d63d4/optim.npz`` was written by tools/parity_optim_nanochat.py
(needs torch): nanochat's own ``MuonAdamW`` on its tiny GPT (2 layers, n_embd 64, vocab 128), 5 steps
with a changing LR multiplier, Muon momentum and weight decay. Its inputs are not stored: they come
from ``tests/fixtures/optim_inputs.py``, shared with the tool (the fixture's checksums pin them). This file
replays the run through ``make_optimizer_2026`` as the train step uses it and needs no torch.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxchat.optim import (OptimConfig2026, adamw_nanochat, base_lr_multiplier_2026, base_lrs_2026,
                           hyperparams_2026, make_optimizer_2026, muon_momentum_2026, normuon, param_group_2026,
                           param_labels_2026, polar_express, set_muon_hyperparams, weight_decay_cosine)
from jaxchat.optim.muon2026 import _orthogonalise_kernels, orthogonalise, second_moment_shape
from tests.fixtures.optim_inputs import checksums, gradients, initial_params

FIXTURE = Path(__file__).parent / "fixtures" / "nanochat_92d63d4" / "optim.npz"
TOLERANCE = 1e-5  # relative Frobenius difference of the params


def flax_path(name):
    """torch state_dict name → path in our params tree (Linear weight → kernel, Embedding → embedding)."""
    parts = name.split(".")
    if parts[-1] == "weight":
        parts[-1] = "embedding" if ("wte" in name or "value_embeds" in name) else "kernel"
    return parts


def flax_tree(arrays):
    tree = {}
    for name, a in arrays.items():
        parts = flax_path(name)
        node = tree
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[parts[-1]] = jnp.asarray(a.T if parts[-1] == "kernel" else a)
    return tree


def torch_view(tree, name):
    node = tree
    for key in flax_path(name):
        node = node[key]
    a = np.asarray(node)
    return a.T if flax_path(name)[-1] == "kernel" else a


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def golden():
    data = np.load(FIXTURE)
    meta = json.loads(str(data["meta_json"]))
    shapes = {n: tuple(s) for n, s in meta["shapes"].items()}
    return data, meta, shapes


# ----------------------------------------------------------------------------------------------------
# Golden replay


def test_fixture_inputs_are_reproduced(golden):
    data, meta, shapes = golden
    assert list(data["names"]) == list(shapes)
    np.testing.assert_array_equal(checksums(initial_params(shapes, meta["seed"])), data["checksum_init"])
    for s in range(meta["steps"]):
        np.testing.assert_array_equal(checksums(gradients(shapes, s, meta["seed"])), data["checksum_grads"][s])


def test_replay_matches_nanochat(golden):
    data, meta, shapes = golden
    init = initial_params(shapes, meta["seed"])
    params = flax_tree(init)
    args = meta["args"]
    config = OptimConfig2026(ortho_dtype=jnp.float32, batch_lr_scale=meta["batch_lr_scale"],
                             init_lr_frac=meta["init_lr_frac"], embedding_lr=args["embedding_lr"],
                             unembedding_lr=args["unembedding_lr"], matrix_lr=args["matrix_lr"],
                             scalar_lr=args["scalar_lr"])
    momentum = jnp.asarray(data["momentum"], jnp.float32)
    weight_decay = jnp.asarray(data["weight_decay"], jnp.float32)
    tx = make_optimizer_2026(params, meta["n_embd"], config, lr_multiplier=1.0,
                             muon_momentum=lambda count: momentum[count],
                             muon_weight_decay=lambda count: weight_decay[count])

    @jax.jit
    def step(params, opt_state, grads, lrm):  # as jaxchat/training/step.py: updates scaled by lrm
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: (u * lrm).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    worst = []
    with jax.default_matmul_precision("highest"):
        for s in range(meta["steps"]):
            grads = flax_tree(gradients(shapes, s, meta["seed"]))
            params, opt_state = step(params, opt_state, grads, jnp.float32(data["lrm"][s]))
            errs = {}
            for name in shapes:
                ours = torch_view(params, name).reshape(-1)[data[f"sample_idx/{name}"]]
                errs[name] = rel(ours, data[f"sample/{name}"][s])
            worst.append(max(errs.values()))
            assert worst[-1] <= TOLERANCE, (s + 1, max(errs, key=errs.get), worst[-1])
    for name in shapes:  # all entries after the last step, params and their change since step 0
        ours, ref = torch_view(params, name), data[f"final/{name}"]
        assert rel(ours, ref) <= TOLERANCE, name
        assert rel(ours - init[name], ref - init[name]) <= 1e-4, name  # float32 rounding floor ~3e-5
    hp = hyperparams_2026(opt_state)
    np.testing.assert_allclose(float(hp["muon"]["momentum"]), data["momentum"][-1], rtol=1e-6)
    np.testing.assert_allclose(float(hp["muon"]["weight_decay"]), data["weight_decay"][-1], rtol=1e-6)


def test_schedules_match_base_train(golden):
    data, meta, _ = golden
    n, args = meta["run_iterations"], meta["args"]
    its = np.arange(n + 1)
    ours = {
        "lrm": base_lr_multiplier_2026(n, args["warmup_steps"], args["warmdown_ratio"], args["final_lr_frac"])(its),
        "momentum": muon_momentum_2026(n, args["warmdown_ratio"])(its),
        "weight_decay": weight_decay_cosine(args["weight_decay"], n)(its),
    }
    for key, values in ours.items():
        np.testing.assert_allclose(np.asarray(values), data[f"table_{key}"], atol=1e-6, err_msg=key)
    # the 5 values the replay used are that run's schedules at these iterations
    for key in ours:
        np.testing.assert_allclose(data[f"table_{key}"][meta["sample_its"]], data[key], atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Routing


def test_labels_match_nanochat_groups(golden):
    data, meta, shapes = golden
    expected = {}
    for group in meta["groups"]:  # nanochat's own param_groups of the tiny GPT
        for name in group["names"]:
            expected[name] = group
    for name, group in expected.items():
        ours = param_group_2026(flax_path(name))
        if group["kind"] == "muon":
            assert ours == "muon", name
        else:
            assert ours != "muon", name
    # every AdamW group of nanochat is exactly one of ours, with the same hyper-parameters
    config = OptimConfig2026(batch_lr_scale=meta["batch_lr_scale"], init_lr_frac=meta["init_lr_frac"])
    lrs = base_lrs_2026(config, meta["n_embd"])
    for group in meta["groups"]:
        ours = {param_group_2026(flax_path(n)) for n in group["names"]}
        assert len(ours) == 1, group["names"]
        (label,) = ours
        assert lrs[label] == pytest.approx(group["lr"], rel=1e-12), label
        if group["kind"] == "adamw":
            settings = getattr(config, label)
            assert tuple(group["betas"]) == settings.betas and group["eps"] == settings.eps
            assert group["weight_decay"] == settings.weight_decay, label
        else:
            assert group["beta2"] == config.muon_beta2 and group["ns_steps"] == config.ns_steps


@pytest.mark.parametrize("path,group", [
    (("transformer", "wte", "embedding"), "wte"),
    (("lm_head", "kernel"), "lm_head"),
    (("value_embeds", "3", "embedding"), "value_embeds"),
    (("value_embeds", 3, "embedding"), "value_embeds"),
    (("resid_lambdas",), "resid_lambdas"),
    (("x0_lambdas",), "x0_lambdas"),
    (("smear_gate", "kernel"), "smear"),
    (("smear_lambda",), "smear"),
    (("backout_lambda",), "smear"),
    (("transformer", "h", 0, "attn", "c_q", "kernel"), "muon"),
    (("transformer", "h", "11", "attn", "ve_gate", "kernel"), "muon"),
    (("transformer", "h", "1", "mlp", "c_proj", "kernel"), "muon"),
    # jaxchat's GPT keeps wte / h at the top (as the seed model); an nnx State adds `.value`
    (("wte", "embedding"), "wte"),
    (("h", 0, "mlp", "c_fc", "kernel"), "muon"),
    (("h", 1, "attn", "ve_gate", "kernel", "value"), "muon"),
    (("lm_head", "kernel", "value"), "lm_head"),
    (("resid_lambdas", "value"), "resid_lambdas"),
])
def test_param_group(path, group):
    assert param_group_2026(path) == group


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="no optimizer group for parameter 'transformer.ln_f.scale'"):
        param_labels_2026({"transformer": {"ln_f": {"scale": jnp.ones(4)}}})
    with pytest.raises(ValueError, match="no optimizer group"):
        param_group_2026(("transformer", "h", "x", "attn", "c_q", "kernel"))  # layer must be an index
    with pytest.raises(ValueError, match="no optimizer group"):
        param_group_2026(("value_embeds", "embedding"))
    with pytest.raises(ValueError, match="must be a matrix"):
        param_labels_2026({"transformer": {"h": {"0": {"attn": {"bias": jnp.ones(4)}}}}})
    with pytest.raises(ValueError, match="no optimizer group"):
        make_optimizer_2026({"lm_head": {"kernel": jnp.ones((4, 8))}, "extra": jnp.ones(3)}, 64)


# ----------------------------------------------------------------------------------------------------
# Pieces


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (48, 48), (3, 32, 16)])
def test_polar_express_is_near_orthogonal(shape):
    rng = np.random.default_rng(0)
    G = jnp.asarray(rng.normal(size=shape), jnp.float32)
    with jax.default_matmul_precision("highest"):
        X = np.asarray(polar_express(G, 5, jnp.float32), np.float64)
    sv = np.linalg.svd(X, compute_uv=False)
    # Polar Express (safety factor 2e-2) leaves singular values near, not at, 1
    assert sv.min() > 0.7 and sv.max() < 1.3, (sv.min(), sv.max())
    # and X is the polar factor's direction: close to U·Vᵀ of G
    U, _, Vt = np.linalg.svd(np.asarray(G, np.float64), full_matrices=False)
    assert rel(X, U @ Vt) < 0.15


def test_kernel_layout_orthogonalises_the_torch_view():
    """normuon works on Flax kernels K = Wᵀ; its MuonEq + Polar Express + Muon+ must be nanochat's on W."""
    rng = np.random.default_rng(3)
    Ws = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((96, 32), (32, 96), (32, 32), (2, 12))]

    @jax.jit
    def both(Ws):
        kernels = _orthogonalise_kernels([W.T for W in Ws], 5, jnp.float32, True, True)
        return [K.T for K in kernels], [orthogonalise(W, 5, jnp.float32) for W in Ws]

    with jax.default_matmul_precision("highest"):
        ours, refs = both(Ws)
    for W, X, ref in zip(Ws, ours, refs):
        assert rel(X, ref) < 1e-5, W.shape


def test_bf16_orthogonalisation_runs():
    rng = np.random.default_rng(1)
    params = {"a": jnp.asarray(rng.normal(size=(32, 96)) * 0.05, jnp.float32),  # torch-tall
              "c": jnp.asarray(rng.normal(size=(12, 2)) * 0.05, jnp.float32)}  # torch-wide (ve_gate)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    out = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        tx = normuon(0.02, 0.95, 0.2, ortho_dtype=dtype)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        out[dtype] = updates
        assert all(u.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    X = np.asarray(polar_express(grads["a"], 5, jnp.bfloat16))
    assert X.dtype == jnp.bfloat16
    for k in params:  # bf16 Polar Express is a few % off the float32 one
        assert rel(out[jnp.bfloat16][k], out[jnp.float32][k]) < 0.1, k


def test_state_init_shapes():
    params = {"transformer": {"h": {"0": {"mlp": {"c_fc": {"kernel": jnp.zeros((64, 256))},
                                                  "c_proj": {"kernel": jnp.zeros((256, 64))}},
                                          "attn": {"c_q": {"kernel": jnp.zeros((64, 64))},
                                                   "ve_gate": {"kernel": jnp.zeros((12, 2))}}}}},
              "lm_head": {"kernel": jnp.zeros((64, 128), jnp.bfloat16)}, "resid_lambdas": jnp.zeros(2)}
    # Flax (fan_in, fan_out): torch W tall (fan_out ≥ fan_in) → reduce over fan_in → (1, fan_out)
    assert second_moment_shape((64, 256)) == (1, 256)
    assert second_moment_shape((256, 64)) == (256, 1)
    assert second_moment_shape((64, 64)) == (1, 64)
    assert second_moment_shape((12, 2)) == (12, 1)
    assert second_moment_shape((4, 64, 256)) == (4, 1, 256)
    tx = make_optimizer_2026(params, 64, OptimConfig2026())
    state = tx.init(params)
    inner = state.inner_states
    muon = inner["muon"].inner_state.inner_state
    h = muon.momentum_buffer["transformer"]["h"]["0"]
    assert h["mlp"]["c_fc"]["kernel"].shape == (64, 256) and h["mlp"]["c_fc"]["kernel"].dtype == jnp.float32
    v = muon.second_momentum_buffer["transformer"]["h"]["0"]
    assert v["mlp"]["c_fc"]["kernel"].shape == (1, 256)
    assert v["mlp"]["c_proj"]["kernel"].shape == (256, 1)
    assert v["attn"]["c_q"]["kernel"].shape == (1, 64)
    assert v["attn"]["ve_gate"]["kernel"].shape == (12, 1)
    adam = inner["lm_head"].inner_state.inner_state
    assert adam.exp_avg["lm_head"]["kernel"].shape == (64, 128)
    assert adam.exp_avg["lm_head"]["kernel"].dtype == jnp.float32  # float32 moments for bf16 params
    hp = hyperparams_2026(state)
    assert set(hp) == {"lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "smear", "muon"}
    assert set(hp["muon"]) == {"learning_rate", "momentum", "weight_decay", "beta2"}
    assert float(hp["muon"]["weight_decay"]) == pytest.approx(0.28)
    s = (64 / 768) ** -0.5
    assert float(hp["lm_head"]["learning_rate"]) == pytest.approx(0.008 * s)
    assert float(hp["smear"]["learning_rate"]) == pytest.approx(0.2)


def test_updates_are_linear_in_lr():
    """The train step's `updates · lrm` is exact: every update is linear in its LR (weight decay too)."""
    rng = np.random.default_rng(2)
    params = {"k": jnp.asarray(rng.normal(size=(32, 96)), jnp.float32)}
    grads = {"k": jnp.asarray(rng.normal(size=(32, 96)), jnp.float32)}
    for make in (lambda lr: normuon(lr, 0.9, 0.5, ortho_dtype=jnp.float32),
                 lambda lr: adamw_nanochat(lr, 0.8, 0.95, 1e-10, 0.5)):
        u1, _ = jax.jit(make(1.0).update)(grads, make(1.0).init(params), params)
        u3, _ = jax.jit(make(0.3).update)(grads, make(0.3).init(params), params)
        np.testing.assert_allclose(np.asarray(u3["k"]), 0.3 * np.asarray(u1["k"]), rtol=1e-5, atol=1e-7)


def test_set_muon_hyperparams():
    params = {"transformer": {"h": {"0": {"mlp": {"c_fc": {"kernel": jnp.ones((8, 16))}}}}},
              "lm_head": {"kernel": jnp.ones((8, 4))}}
    tx = make_optimizer_2026(params, 64, OptimConfig2026(ortho_dtype=jnp.float32))
    state = set_muon_hyperparams(tx.init(params), momentum=0.8, weight_decay=0.0)
    hp = hyperparams_2026(state)["muon"]
    assert float(hp["momentum"]) == pytest.approx(0.8) and float(hp["weight_decay"]) == 0.0
    with pytest.raises(KeyError):
        set_muon_hyperparams(state, nesterov=True)
