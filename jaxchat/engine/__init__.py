"""Inference: the KV-cache generation Engine with sampling and calculator tool use (docs/DESIGN.md §10).

    from jaxchat.engine import Engine
    engine = Engine(model, tokenizer)
    for column, masks in engine.generate(prompt_ids, num_samples=1, max_tokens=256, temperature=0.6, top_k=50):
        ...
"""

from jaxchat.engine.calculator import use_calculator
from jaxchat.engine.engine import Engine, bucket_length, sample_next_token

__all__ = ["Engine", "bucket_length", "sample_next_token", "use_calculator"]
