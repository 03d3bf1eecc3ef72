"""What an optimized HLO module computes its products in, for the kernels' bf16 tests."""

import re

import jax
import jax.numpy as jnp
import pytest


def dot_operand_dtypes(compiled_text: str) -> list[tuple[str, str]]:
    """(lhs, rhs) element types of every dot in an optimized HLO module's text."""
    types = dict(re.findall(r"%?([\w.\-]+)(?: =|:) (\w+)\[", compiled_text))
    return [(types[a], types[b]) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", compiled_text)]


def skip_unless_bf16_products_stay_bf16() -> None:
    """Skip where the backend computes even a plain, untransposed bf16 product in float32: there no
    layout of ours can keep a product in bf16, so there is nothing to check."""
    a, b = jnp.ones((64, 32), jnp.bfloat16), jnp.ones((32, 48), jnp.bfloat16)
    plain = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)).lower(a, b).compile().as_text()
    if dot_operand_dtypes(plain) != [("bf16", "bf16")]:
        pytest.skip("this backend computes bf16 products in float32 anyway")
