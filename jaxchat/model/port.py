"""nanochat state_dict ⇄ jaxchat parameter tree (docs/DESIGN.md §14), for 16788ee and 92d63d4 models.

Names map one to one: ``transformer.h.3.attn.c_q.weight`` ⇄ ``h/3/attn/c_q/kernel``,
``value_embeds.3.weight`` ⇄ ``value_embeds/'3'/embedding``, ``resid_lambdas`` ⇄ ``resid_lambdas``.
Linear weights are transposed (torch (out, in), Flax (in, out)); embeddings and scalars are copied.
Arrays are NumPy (convert torch tensors with ``.float().numpy()`` first); no torch import here.
"""

from __future__ import annotations

import numpy as np

_EMBEDDINGS = ("wte", "value_embeds")


def from_nanochat(state_dict: dict) -> dict:
    """A nanochat state_dict (name → array) as jaxchat's nested parameter dict (float32)."""
    params: dict = {}
    for name, value in state_dict.items():
        name = name.removeprefix("_orig_mod.")  # saved from a torch.compile'd module
        parts = name.split(".")
        if parts[0] == "transformer":
            parts = parts[1:]
        value = np.asarray(value, np.float32)
        if parts[-1] == "weight":
            leaf = "embedding" if parts[0] in _EMBEDDINGS else "kernel"
            parts = parts[:-1] + [leaf]
            if leaf == "kernel":
                value = value.T
        node = params
        for key in parts[:-1]:
            key = int(key) if key.isdigit() and parts[0] == "h" else key  # h is an nnx.List: int keys
            node = node.setdefault(key, {})
        node[parts[-1]] = value
    return params


def to_nanochat(params: dict) -> dict:
    """jaxchat's nested parameter dict as a nanochat state_dict of NumPy arrays."""
    state_dict = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, path + [str(key)])
            return
        value = np.asarray(node)
        if path[-1] in ("kernel", "embedding"):
            if path[-1] == "kernel":
                value = value.T
            path = path[:-1] + ["weight"]
        if path[0] in ("wte", "h"):
            path = ["transformer"] + path
        state_dict[".".join(path)] = value

    walk(params, [])
    return state_dict
