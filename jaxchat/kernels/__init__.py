"""Performance kernels of the GPT, kept apart from the architecture (``jaxchat.model.gpt``).

Each kernel computes exactly what a plain JAX expression computes, faster or in less memory, and
has a reference test in ``tests/kernels/`` comparing the two (values and gradients). Which one a
run uses is decided by the runtime plan (``jaxchat.runtime``), never by the kernel itself.

- ``attention``: causal self-attention: ``blocked`` (block-causal, FlashAttention backward; the CPU
  choice), ``xla`` and ``cudnn`` (``jax.nn.dot_product_attention``), and the KV-cache attention.
- ``dense``: x·W whose weight gradient XLA:CPU runs on its fast matmul path.
- ``head_loss``: lm_head + softcap + cross-entropy in row chunks, never materialising the logits.
"""
