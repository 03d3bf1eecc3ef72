"""Parity of a jaxchat model exported to Hugging Face transformers' ``NanoChatForCausalLM``.

What it checks, on a tiny random jaxchat model (2 layers, GQA 4/2 heads, the suite's 1024-token
tokenizer trained on the FineWeb fixture documents; ``tests/fixtures/hf_export``):

- logits: ``AutoModelForCausalLM.from_pretrained(OUT, dtype=float32)`` vs jaxchat's GPT on several
  sequences, max |diff| relative to the largest |logit| (≤ 1e-4);
- greedy generation of 32 tokens: HF ``generate`` (its generation_config) vs jaxchat's Engine at
  temperature 0, for chat and plain-text prompts;
- the chat template: ``apply_chat_template`` ids vs ``render_for_completion`` (add_generation_prompt)
  and vs ``render_conversation``'s ids and mask (whole conversations, ``return_assistant_tokens_mask``),
  multi-turn, tool calls, system messages; special-token text in messages with
  ``sanitize_control_tokens=True``;
- plain text: ``AutoTokenizer`` ids (``split_special_tokens=True``; with ``add_special_tokens`` the
  ``<|bos|>`` in front) and decoding vs jaxchat's tokenizer on varied text;
- round trips: jaxchat → HF → jaxchat (``import_hf``) gives bit-identical params, an equal GPTConfig
  and the same tokenizer fingerprint; so does a directory re-saved by transformers' own
  ``save_pretrained``;
- a transformers ``pipeline("text-generation")`` runs on the directory.

How to run (torch and transformers are development tools only, never jaxchat dependencies)::

    python3.11 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch transformers safetensors tokenizers jinja2 pytest
    /tmp/hfvenv/bin/pip install -e .
    /tmp/hfvenv/bin/python tools/parity_hf.py [--write-fixture] [--out DIR]

Take torch's CPU build (e.g. ``torch==2.13.0+cpu``): a plain ``pip install torch`` brings the CUDA
build, gigabytes of CUDA libraries. Measured on 2 cores: the CPU torch + transformers + tokenizers +
safetensors install takes ~70 s and 1.2 GB; this script ~2 min (JAX and torch compile times,
mostly); ``tests/test_interop_hf.py``'s transformers test ~8 s.

``--write-fixture`` stores HF's outputs (logits at a few positions, greedy ids, template and text
encodings) in ``tests/fixtures/hf_export/golden.{npz,json}``, which ``tests/test_interop_hf.py``
checks jaxchat against without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local: a hub lookup would be a bug
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures

import numpy as np  # noqa: E402

from tests.fixtures import hf_export as cases  # noqa: E402

TOLERANCE = 1e-4
LOGIT_POSITIONS = [0, 1, 5, 17, -1]  # stored in the golden file (the full logits would be large)
GOLDEN_SEQUENCES = 4  # the first sequences' logits go into the golden file (~80 KB)


def logit_positions(n: int) -> list[int]:
    """LOGIT_POSITIONS within a sequence of n tokens (clipped; negative ones from the end)."""
    return [min(p, n - 1) if p >= 0 else n + p for p in LOGIT_POSITIONS]


def rel(a, b) -> float:
    """max |a - b| relative to the largest |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def build():
    """(tokenizer, GPTConfig, params, jaxchat GPT) of the tiny model."""
    from flax import nnx

    from jaxchat.model import GPT, GPTConfig
    from jaxchat.tokenizer import Tokenizer
    from tests.fixtures.fineweb import fineweb_documents

    spec = cases.TOKENIZER_DOCS
    tokenizer = Tokenizer.train_from_iterator(fineweb_documents(spec["n_docs"], seed=spec["seed"]),
                                              vocab_size=spec["vocab_size"])
    config = GPTConfig(**cases.TINY)
    params = cases.tiny_params(config)
    model = GPT(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, params)
    return tokenizer, config, params, nnx.merge(graphdef, state)


def sequences(tokenizer) -> list[list[int]]:
    """Token sequences whose logits are compared: chat prompts and bos-prefixed texts."""
    seqs = [tokenizer.render_for_completion(c) for c in cases.CONVERSATIONS]
    seqs += [tokenizer.encode(t, prepend="<|bos|>") for t in cases.TEXTS if t]
    return [s[: cases.TINY["sequence_len"]] for s in seqs]


def generation_prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.render_for_completion(cases.CONVERSATIONS[1]),
            tokenizer.encode(cases.TEXTS[0], prepend="<|bos|>"),
            tokenizer.encode("Hello", prepend="<|bos|>")]


def jaxchat_generate(model, tokenizer, prompt: list[int]) -> list[int]:
    from jaxchat.engine import Engine

    results, _ = Engine(model, tokenizer).generate_batch(prompt, max_tokens=cases.GENERATE_TOKENS, temperature=0.0)
    return results[0][len(prompt):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="export directory (default: a temporary one)")
    parser.add_argument("--write-fixture", action="store_true", help="(re)write tests/fixtures/hf_export/golden.*")
    args = parser.parse_args()

    import jax.numpy as jnp
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from jaxchat.interop.hf import export_hf, import_hf

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    tokenizer, config, params, model = build()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "hf")
        t0 = time.time()
        export_hf(out, params, config, tokenizer)
        print(f"exported to {out} in {time.time() - t0:.2f} s: {sorted(p.name for p in out.iterdir())}")
        hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        hf_tok = AutoTokenizer.from_pretrained(out)
        print(f"loaded {type(hf_model).__name__} and {type(hf_tok).__name__}")

        # ---- logits
        worst, golden_logits, golden_seqs = 0.0, [], []
        for seq in sequences(tokenizer):
            ours = np.asarray(model(jnp.asarray([seq], jnp.int32))[0])
            with torch.no_grad():
                theirs = hf_model(torch.tensor([seq])).logits[0].numpy()
            worst = max(worst, rel(ours, theirs))
            if len(golden_seqs) < GOLDEN_SEQUENCES:
                golden_seqs.append(seq)
                golden_logits.append(theirs[logit_positions(len(seq))])
        check(worst <= TOLERANCE, f"logits: max relative diff {worst:.2e} over {len(sequences(tokenizer))} sequences")

        # ---- greedy generation
        stops = set(hf_model.generation_config.eos_token_id)
        golden_generated = []
        for prompt in generation_prompts(tokenizer):
            ours = jaxchat_generate(model, tokenizer, prompt)
            with torch.no_grad():
                ids = hf_model.generate(torch.tensor([prompt]),
                                        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        max_new_tokens=cases.GENERATE_TOKENS)[0, len(prompt):].tolist()
            theirs = ids[:next((i for i, t in enumerate(ids) if t in stops), len(ids))]  # jaxchat drops the stop
            golden_generated.append(ids)
            check(ours == theirs, f"greedy generation: {len(ours)} tokens identical"
                  + ("" if ours == theirs else f" (jaxchat {ours} vs HF {theirs})"))

        # ---- chat template
        n_ok = n_total = 0
        golden_template = []
        for conv in cases.CONVERSATIONS:
            # HF tokenizes adjacent text parts as one string: compare with jaxchat's rendering of the
            # conversation with them joined, and count where that differs from jaxchat's own.
            merged = cases.merge_adjacent_text(conv)
            want = tokenizer.render_for_completion(merged)
            got = hf_tok.apply_chat_template(cases.prompt(conv)["messages"], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
            ids, mask = tokenizer.render_conversation(merged, max_tokens=None)
            full = hf_tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
            golden_template.append({"prompt": got, "full": full["input_ids"], "mask": full["assistant_masks"]})
            for ok, what in ((got == want, "render_for_completion"), (full["input_ids"] == ids, "render_conversation"),
                             (full["assistant_masks"] == mask, "mask")):
                n_total += 1
                n_ok += ok
                if not ok:
                    print(f"      {what} differs for {json.dumps(conv)[:100]}")
            if tokenizer.render_conversation(conv, max_tokens=None)[0] != ids:
                print(f"      known HF limit: adjacent text parts joined change the ids of {json.dumps(conv)[:80]}")
        for conv in cases.CONTROL_TEXT_CONVERSATIONS:
            got = hf_tok.apply_chat_template(cases.prompt(conv)["messages"], add_generation_prompt=True,
                                             tokenize=True, return_dict=False, sanitize_control_tokens=True)
            n_total += 1
            n_ok += got == tokenizer.render_for_completion(conv)
        check(n_ok == n_total, f"chat template: {n_ok}/{n_total} renderings identical "
              f"({len(cases.CONVERSATIONS)} conversations × prompt/ids/mask + special-token text)")

        # ---- plain text
        n_ok, golden_text = 0, []
        for text in cases.TEXTS:
            want = tokenizer.encode(text)
            got = hf_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            with_bos = hf_tok(text, split_special_tokens=True)["input_ids"]
            decoded = hf_tok.decode(want)
            ok = got == want and with_bos == [tokenizer.bos_token_id] + want and decoded == tokenizer.decode(want)
            golden_text.append(got)
            n_ok += ok
            if not ok:
                print(f"      text {text!r}: jaxchat {want} HF {got} decode {decoded!r}")
        check(n_ok == len(cases.TEXTS), f"plain text: {n_ok}/{len(cases.TEXTS)} texts encode and decode identically")

        # ---- round trips
        back = import_hf(out)
        same = all(np.array_equal(np.asarray(a), b) and np.asarray(a).dtype == b.dtype
                   for a, b in zip(_leaves(params), _leaves(back.params)))
        check(same and back.config == config and back.tokenizer.fingerprint() == tokenizer.fingerprint(),
              "round trip jaxchat → HF → jaxchat: params bit-identical, GPTConfig and tokenizer equal")
        resaved = Path(tmp) / "resaved"
        hf_model.save_pretrained(resaved)
        hf_tok.save_pretrained(resaved)
        again = import_hf(resaved)
        same = all(np.array_equal(np.asarray(a), b) for a, b in zip(_leaves(params), _leaves(again.params)))
        check(same and again.config == config and again.tokenizer.fingerprint() == tokenizer.fingerprint(),
              f"round trip via transformers' save_pretrained ({sorted(p.name for p in resaved.iterdir())})")

        # ---- pipeline
        generator = pipeline("text-generation", model=str(out), dtype=torch.float32)
        text = generator(cases.TEXTS[0], max_new_tokens=8)[0]["generated_text"]
        check(isinstance(text, str) and text.startswith(cases.TEXTS[0]), f"pipeline text-generation: {text!r}")

        if args.write_fixture:
            np.savez_compressed(cases.GOLDEN_NPZ, logits=np.stack([x.astype(np.float32) for x in golden_logits]),
                                positions=np.asarray(LOGIT_POSITIONS))
            cases.GOLDEN_JSON.write_text(json.dumps({
                "transformers": transformers.__version__, "torch": torch.__version__,
                "sequences": golden_seqs, "generated": golden_generated,
                "generation_prompts": generation_prompts(tokenizer),
                "template": golden_template, "texts": golden_text}) + "\n")
            print(f"wrote {cases.GOLDEN_NPZ.relative_to(REPO)} and {cases.GOLDEN_JSON.relative_to(REPO)}")
    print("ALL OK" if not failures else f"{len(failures)} FAILED")
    sys.exit(1 if failures else 0)


def _leaves(params: dict) -> list:
    import jax

    return jax.tree.leaves(params)


if __name__ == "__main__":
    main()
