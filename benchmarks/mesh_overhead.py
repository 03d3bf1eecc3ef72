"""One device: the train step as stages run it (on the 1-device mesh, sharding.py) against a plain
jit of the same step, alternated in one process (best of 6 each). d4, 2026 recipe, 8 × 512 × 2.

    PYTHONPATH=$PWD python benchmarks/mesh_overhead.py
"""
import time, jax, numpy as np
from flax import nnx
from jaxchat import runtime, sharding
from jaxchat.config import initial
from jaxchat.model import GPT, GPTConfig, split_params
from jaxchat.training import init_train_state, make_train_step
from jaxchat.training.build import Scaling, build_optimizer
cfg = initial("2026"); plan = runtime.for_this_machine(cfg.model)
config = GPTConfig.for_recipe("2026", 4, 8192, 512, "SSSL")
g, p = split_params(GPT(config, runtime=plan, rngs=nnx.Rngs(0)))
tx = build_optimizer(p, config, cfg, "base", runtime=plan, scaling=Scaling(num_steps=1000))
t = np.asarray(jax.random.randint(jax.random.key(0), (2, 8, 513), 0, 8192))
batch = {"inputs": t[..., :-1], "targets": t[..., 1:]}
mesh = sharding.make_mesh()
plain_state = init_train_state(jax.tree.map(np.copy, p), tx); plain = make_train_step(g, tx)
mesh_state = sharding.place(init_train_state(p, tx), mesh)
on_mesh = make_train_step(g, tx, mesh=mesh, state_sharding=sharding.state_shardings(mesh_state, mesh))
mb = sharding.put_batch(batch, sharding.batch_sharding(mesh), axis=1)
best = {"plain": 1e9, "mesh": 1e9}
for _ in range(2):
    plain_state, m = plain(plain_state, batch, 1.0); jax.block_until_ready(m)
    mesh_state, m = on_mesh(mesh_state, mb, 1.0); jax.block_until_ready(m)
for _ in range(6):
    for name in ("plain", "mesh"):
        t0 = time.perf_counter()
        if name == "plain":
            plain_state, m = plain(plain_state, batch, 1.0)
        else:
            mesh_state, m = on_mesh(mesh_state, mb, 1.0)
        jax.block_until_ready(m); best[name] = min(best[name], time.perf_counter() - t0)
print({k: f"{v*1e3:.0f} ms" for k, v in best.items()}, f"mesh/plain {best['mesh']/best['plain']:.3f}")
