"""Chat evaluation (SPEC §9): ``python -m jaxchat.eval.chat -i sft -a all``.

- Categorical tasks (ARC-Easy, ARC-Challenge, MMLU): render the prompt for completion, run the
  model once over a batch of prompts and, at each prompt's last position (where the answer comes
  next), take the argmax over the logits of the conversation's allowed ``letters`` only.
- Generative tasks (GSM8K, HumanEval, SpellingBee): sample through the Engine (greedy by default,
  ≤ 512 new tokens) and score the decoded completion with the task; with ``num_samples`` k a problem
  passes when any of its k completions does (pass@k).
- ChatCORE: mean centred accuracy over the six tasks, baseline 0.25 for the 4-way multiple choice
  tasks and 0 for the generative ones.

Usage::

    python -m jaxchat.eval.chat -i sft                      # all six tasks, ChatCORE
    python -m jaxchat.eval.chat -i mid -a "ARC-Easy|MMLU" --max-problems 500
    python -m jaxchat.eval.chat -i sft -a GSM8K --num-samples 4 --temperature 0.7
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxchat.common import JaxchatError
from jaxchat.eval.core import buckets_for

logger = logging.getLogger(__name__)

ALL_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")
# Random-guess accuracy of each task, for ChatCORE's centring.
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
             "SpellingBee": 0.0}
STAGES = ("base", "mid", "sft", "rl")


def build_task(name: str) -> Any:
    """The eval split of chat task ``name`` (one of ``ALL_TASKS``), read from the local cache."""
    from jaxchat.tasks import ARC, GSM8K, MMLU, HumanEval, SpellingBee

    factories: dict[str, Callable[[], Any]] = {
        "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
        "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
        "MMLU": lambda: MMLU("all", "test"),
        "GSM8K": lambda: GSM8K("main", "test"),
        "HumanEval": lambda: HumanEval(),
        "SpellingBee": lambda: SpellingBee(size=256, split="test"),
    }
    if name not in factories:
        raise JaxchatError(f"unknown chat eval task {name!r}; expected one of {', '.join(ALL_TASKS)} or 'all'")
    return factories[name]()


def parse_task_names(spec: str) -> list[str]:
    """``"all"`` or ``"|"``-separated task names → a list of names, checked and without repeats."""
    if spec.strip() == "all":
        return list(ALL_TASKS)
    names = [n.strip() for n in spec.split("|") if n.strip()]
    if not names:
        raise JaxchatError(f"-a {spec!r}: expected task names separated by '|', or 'all'")
    for name in names:
        if name not in ALL_TASKS:
            raise JaxchatError(f"-a: unknown task {name!r}; expected one of {', '.join(ALL_TASKS)} or 'all'")
    return list(dict.fromkeys(names))


def _num_problems(task: Any, max_problems: int | None) -> int:
    if max_problems is not None and max_problems < 1:
        raise JaxchatError(f"max_problems is {max_problems}; expected a positive number or None (all)")
    return len(task) if max_problems is None else min(len(task), max_problems)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


# ---- categorical ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def answer_logits(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """Float32 logits (B, V) at ``positions[b]`` of each row of ``tokens`` (B, L)."""
    model = nnx.merge(graphdef, params)
    # lm_head only at the answer positions: (B, D) → (B, V), never (B, L, V).
    return model.logits(model.hidden(tokens)[jnp.arange(tokens.shape[0]), positions])


def _letter_ids(tokenizer: Any, letters: Sequence[str], cache: dict[str, int]) -> list[int]:
    ids = []
    for letter in letters:
        if letter not in cache:
            encoded = tokenizer.encode(letter)
            if len(encoded) != 1:
                raise JaxchatError(f"answer letter {letter!r} encodes to {len(encoded)} tokens; expected exactly 1")
            cache[letter] = encoded[0]
        ids.append(cache[letter])
    return ids


def run_categorical(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, task: Any, batch_size: int = 8,
                    max_problems: int | None = None, *, seq_len: int | None = None,
                    progress: bool = False) -> float:
    """Accuracy on a categorical task: argmax over the allowed letters' logits at the answer position.

    Prompts (``render_for_completion``) are padded with ``<|bos|>`` to the bucketed length of the
    longest in the batch (causal attention: padding after a prompt never changes it), the last batch
    is filled with dummy rows, so shapes are static. A prompt longer than ``seq_len`` (default: the
    model's context) keeps its last tokens. The predicted letter goes through ``task.evaluate``.
    """
    if batch_size < 1:
        raise JaxchatError(f"batch_size is {batch_size}; expected a positive number")
    n = _num_problems(task, max_problems)
    if seq_len is None:
        seq_len = nnx.merge(graphdef, params).config.sequence_len
    buckets = buckets_for(seq_len)
    bos, letter_cache = tokenizer.bos_token_id, {}
    passed = 0
    with _progress(n, getattr(task, "name", "categorical"), progress) as bar:
        for lo in range(0, n, batch_size):
            conversations = [task[i] for i in range(lo, min(n, lo + batch_size))]
            prompts = [tokenizer.render_for_completion(c)[-seq_len:] for c in conversations]
            length = buckets[int(np.searchsorted(buckets, max(len(p) for p in prompts)))]
            tokens = np.full((batch_size, length), bos, dtype=np.int32)
            positions = np.zeros(batch_size, dtype=np.int32)
            for r, prompt in enumerate(prompts):
                tokens[r, :len(prompt)] = prompt
                positions[r] = len(prompt) - 1  # the answer letter would be the next token
            logits = np.asarray(answer_logits(graphdef, params, tokens, positions))
            for r, conversation in enumerate(conversations):
                letters = list(conversation["letters"])
                letter_ids = _letter_ids(tokenizer, letters, letter_cache)
                predicted = letters[int(np.argmax(logits[r, letter_ids]))]
                passed += int(bool(task.evaluate(conversation, predicted)))
            bar.update(len(conversations))
            bar.set_postfix(acc=f"{passed / (lo + len(conversations)):.4f}")
    return passed / n if n else 0.0


# ---- generative -----------------------------------------------------------------------------------


def run_generative(engine: Any, tokenizer: Any, task: Any, num_samples: int = 1, max_new_tokens: int = 512,
                   temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None, *,
                   progress: bool = False) -> float:
    """pass@``num_samples`` on a generative task, sampling through ``engine`` (an ``Engine``).

    Each problem's prompt is ``render_for_completion``; its ``num_samples`` completions (the tokens
    after the prompt, decoded) are scored with ``task.evaluate`` until one passes (pass@k: later
    samples are not run through the evaluator, which saves HumanEval sandbox runs).
    A prompt that leaves no room to generate under the engine's ``max_len`` counts as failed.
    """
    n = _num_problems(task, max_problems)
    passed = 0
    with _progress(n, getattr(task, "name", "generative"), progress) as bar:
        for i in range(n):
            conversation = task[i]
            prompt = tokenizer.render_for_completion(conversation)
            if len(prompt) >= engine.max_len:
                logger.warning("%s problem %d: prompt of %d tokens leaves no room under max_len %d; counted as "
                               "failed", getattr(task, "name", "task"), i, len(prompt), engine.max_len)
            else:
                results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                                   temperature=temperature, top_k=top_k)
                completions = [tokenizer.decode(row[len(prompt):]) for row in results]
                passed += int(any(bool(task.evaluate(conversation, c)) for c in completions))
            bar.update(1)
            bar.set_postfix(acc=f"{passed / (i + 1):.4f}")
    return passed / n if n else 0.0


# ---- ChatCORE and the whole evaluation ------------------------------------------------------------


def chatcore(results: dict[str, float]) -> float:
    """Mean centred accuracy (acc − b) / (1 − b): b = 0.25 for ARC-Easy/ARC-Challenge/MMLU, 0 otherwise."""
    if not results:
        raise JaxchatError("chatcore() needs at least one task result")
    unknown = [name for name in results if name not in BASELINES]
    if unknown:
        raise JaxchatError(f"chatcore(): unknown task(s) {unknown}; expected names among {', '.join(ALL_TASKS)}")
    return sum((acc - BASELINES[name]) / (1.0 - BASELINES[name]) for name, acc in results.items()) / len(results)


def evaluate_chat(model: Any, tokenizer: Any, task_names: Sequence[str], *, batch_size: int = 8,
                  num_samples: int = 1, max_new_tokens: int = 512, temperature: float = 0.0,
                  top_k: int | None = 50, max_problems: int | None = None, progress: bool = True,
                  build: Callable[[str], Any] = build_task) -> dict[str, Any]:
    """Run the chat eval of ``task_names`` on ``model``: ``{"tasks": {name: acc}, "chatcore": float|None}``.

    ChatCORE is computed only when all six tasks ran (it is defined over all of them).
    """
    from jaxchat.engine import Engine
    from jaxchat.model import split_params

    graphdef, params = split_params(model)
    engine = None
    results: dict[str, float] = {}
    for name in task_names:
        task = build(name)
        t0 = time.time()
        if task.eval_type == "categorical":
            acc = run_categorical(graphdef, params, tokenizer, task, batch_size, max_problems, progress=progress)
        else:
            engine = engine or Engine(model, tokenizer)
            acc = run_generative(engine, tokenizer, task, num_samples, max_new_tokens, temperature, top_k,
                                 max_problems, progress=progress)
        results[name] = acc
        if progress:
            print(f"{name}: {100 * acc:.2f}% ({time.time() - t0:.1f}s)", flush=True)
    complete = set(ALL_TASKS) <= set(results)
    return {"tasks": results, "chatcore": chatcore({k: results[k] for k in ALL_TASKS}) if complete else None}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of task accuracies (and ChatCORE)."""
    lines = [f"{'Task':<16}{'Accuracy':>10}", "-" * 26]
    lines += [f"{name:<16}{acc:>10.4f}" for name, acc in result["tasks"].items()]
    if result.get("chatcore") is not None:
        lines += ["-" * 26, f"{'ChatCORE':<16}{result['chatcore']:>10.4f}"]
    return "\n".join(lines)


def format_markdown(result: dict[str, Any], settings: dict[str, Any]) -> str:
    """The report section body: the settings, then a metric table."""
    lines = [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", "| Task | Accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.4f} |" for name, acc in result["tasks"].items()]
    if result.get("chatcore") is not None:
        lines.append(f"| ChatCORE | {result['chatcore']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(stage: str, result: dict[str, Any], settings: dict[str, Any]) -> str:
    """Write the ``chat-eval-<stage>`` report section; its accuracies (named as in the report card's
    table: ARC-Easy, …, ChatCORE) go to the stage's column of the final table. Returns the file."""
    from jaxchat.report import write_section

    metrics = dict(result["tasks"])
    if result.get("chatcore") is not None:
        metrics["ChatCORE"] = result["chatcore"]
    return str(write_section(f"chat-eval-{stage}", f"Chat evaluation ({stage})", format_markdown(result, settings),
                             metrics=metrics))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m jaxchat.eval.chat", description="Chat evaluation (SPEC §9)")
    p.add_argument("-i", "--source", required=True, choices=STAGES, help="checkpoint stage to evaluate")
    p.add_argument("-a", "--task-name", default="all",
                   help="'all' or task names separated by '|': " + "|".join(ALL_TASKS))
    p.add_argument("-g", "--tag", default=None, help="model tag, e.g. d20 (default: the only/largest)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("-x", "--max-problems", type=int, default=None, help="problems per task (default: all)")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="samples per generative problem (pass@k)")
    p.add_argument("-t", "--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("-k", "--top-k", type=int, default=50, help="top-k sampling")
    p.add_argument("-m", "--max-new-tokens", type=int, default=512, help="generation limit per completion")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="prompts per batch (categorical tasks)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: load the checkpoint, evaluate, print the table, write the report section."""
    args = parse_args(argv)
    try:
        names = parse_task_names(args.task_name)
        tasks = {name: build_task(name) for name in names}  # missing data fails before the model loads
        from jaxchat.checkpoint import evaluated_checkpoint, load_model

        model, tokenizer, meta = load_model(args.source, tag=args.tag, step=args.step)
        result = evaluate_chat(model, tokenizer, names, batch_size=args.batch_size, num_samples=args.num_samples,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, max_problems=args.max_problems, build=tasks.__getitem__)
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    settings = {**evaluated_checkpoint(args.source, meta),
                "max_problems": args.max_problems or "all", "num_samples": args.num_samples,
                "temperature": args.temperature, "top_k": args.top_k, "max_new_tokens": args.max_new_tokens}
    try:
        print(f"report section written to {write_report(args.source, result, settings)}")
    except JaxchatError as e:  # the results are printed above; say why the report has no section
        print(f"error: report not written: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
