"""Weights in and out of jaxchat: nanochat checkpoints (``nanochat.py``, read safely by
``safe_pickle.py``) and Hugging Face transformers' ``NanoChatForCausalLM`` (``hf.py``).
``python -m jaxchat.convert`` is the command line (docs/DESIGN.md §16)."""
