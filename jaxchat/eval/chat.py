"""Chat evaluation (docs/DESIGN.md §9): ``python -m jaxchat.eval.chat --chat_eval.source=sft``.

- Categorical tasks (ARC-Easy, ARC-Challenge, MMLU): render the prompt for completion, run the
  model once over a batch of prompts and, at each prompt's last position (where the answer comes
  next), take the argmax over the logits of the conversation's allowed ``letters`` only.
- Generative tasks (GSM8K, HumanEval, SpellingBee): sample through the Engine (greedy by default,
  ≤ 512 new tokens) and score the decoded completion with the task; with ``num_samples`` k a problem
  passes when any of its k completions does (pass@k).
- ChatCORE: mean centred accuracy over the six tasks, baseline 0.25 for the 4-way multiple choice
  tasks and 0 for the generative ones.

Several devices (and processes) share the work and every process gets the same accuracies, the
one-device numbers: a categorical batch has ``batch_size`` prompts per device and is split over the
mesh like a training batch; generation, one prompt at a time in the Engine, splits by problems
instead: problem i goes to the mesh's device i mod (devices), each device with its own Engine on a
whole copy of the params (``DeviceEngines``), and the processes add up their counts.

Usage::

    python -m jaxchat.eval.chat                             # latest sft checkpoint, all six tasks, ChatCORE
    python -m jaxchat.eval.chat --chat_eval.source=mid --chat_eval.tasks=ARC-Easy,MMLU --chat_eval.max_problems=500
    python -m jaxchat.eval.chat --chat_eval.tasks=GSM8K --chat_eval.num_samples=4 --chat_eval.temperature=0.7

The settings are the ``chat_eval`` section of ``train.py`` (``--stage=chat_eval`` runs the same
evaluation): ``chat_eval.source`` is the stage whose checkpoint is evaluated, ``chat_eval.tasks``
``all`` or task names separated by commas, ``chat_eval.max_problems=-1`` every problem.
``--tag=""`` and ``--step=-1`` pick the latest tag and step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxchat import cli, sharding, stages
from jaxchat.checkpoint import evaluated_checkpoint
from jaxchat.common import JaxchatError
from jaxchat.config import ChatEvalSection
from jaxchat.data.cache import require_available
from jaxchat.engine import Engine
from jaxchat.eval.core import buckets_for
from jaxchat.model import load as model_load
from jaxchat.model import split_params
from jaxchat.report import write_section
from jaxchat.tasks import ARC, GSM8K, MMLU, HumanEval, SpellingBee
from jaxchat.tasks.mixtures import CHAT_EVAL_NEEDS

logger = logging.getLogger(__name__)

ALL_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")
# Random-guess accuracy of each task, for ChatCORE's centring.
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
             "SpellingBee": 0.0}
PROG = "python -m jaxchat.eval.chat"


@dataclasses.dataclass(frozen=True)
class ChatEvalConfig:
    """What ``python -m jaxchat.eval.chat`` evaluates (``chat_eval.source``), on which tasks, and how."""

    tag: str = ""  # model tag, e.g. d20; "" = the latest written
    step: int = -1  # checkpoint step; -1 = the last
    chat_eval: ChatEvalSection = ChatEvalSection()


def build_task(name: str) -> Any:
    """The eval split of chat task ``name`` (one of ``ALL_TASKS``), read from the local cache."""
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


def parse_task_names(spec: str, key: str = "--chat_eval.tasks") -> list[str]:
    """``"all"`` or task names separated by ``,`` (or ``|``) → a list of names, checked and without repeats."""
    if spec.strip() == "all":
        return list(ALL_TASKS)
    names = [n.strip() for n in spec.replace("|", ",").split(",") if n.strip()]
    if not names:
        raise JaxchatError(f"{key}={spec!r}: expected 'all' or task names separated by commas")
    for name in names:
        if name not in ALL_TASKS:
            raise JaxchatError(f"{key}: unknown task {name!r}; expected 'all' or some of {','.join(ALL_TASKS)}")
    return list(dict.fromkeys(names))


def _num_problems(task: Any, max_problems: int | None) -> int:
    if max_problems is not None and max_problems < 1:
        raise JaxchatError(f"max_problems is {max_problems}; expected a positive number or None (all)")
    return len(task) if max_problems is None else min(len(task), max_problems)


def _progress(total: int, desc: str, enabled: bool):
    """A progress bar, shown by the first process only."""
    enabled = enabled and jax.process_index() == 0
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


# ---- categorical ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def answer_logits(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """Float32 logits (B, V) at ``positions[b]`` of each row of ``tokens`` (B, L)."""
    model = nnx.merge(graphdef, params)
    # lm_head only at the answer positions: (B, D) → (B, V), never (B, L, V).
    return model.logits(model.hidden(tokens)[jnp.arange(tokens.shape[0]), positions])


@functools.lru_cache(maxsize=None)
def _letter_picker(mesh: Mesh | None) -> Any:
    """Jitted ``logits[b, letter_ids[b]]`` (B, K): only the allowed letters' logits leave the devices,
    gathered onto every device of ``mesh`` (tiny), so that any process reads them all."""
    out = None if mesh is None else sharding.replicated(mesh)
    return jax.jit(lambda logits, ids: jnp.take_along_axis(logits, ids, axis=1), out_shardings=out)


def _letter_logits(logits: Any, letter_ids: np.ndarray, mesh: Mesh | None) -> Any:
    """The logits of each row's letters (B, K), still on the devices when they are there."""
    if not isinstance(logits, jax.Array):  # host logits (a stand-in model)
        return np.take_along_axis(np.asarray(logits), letter_ids, axis=1)
    if mesh is not None:
        letter_ids = sharding.put_batch(letter_ids, sharding.rows_sharding(mesh), axis=0)
    return _letter_picker(mesh)(logits, letter_ids)


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
                    progress: bool = False, mesh: Mesh | None = None) -> float:
    """Accuracy on a categorical task: argmax over the allowed letters' logits at the answer position.

    Prompts (``render_for_completion``) are padded with ``<|bos|>`` to the bucketed length of the
    longest in the batch (causal attention: padding after a prompt never changes it), the last batch
    is filled with dummy rows, so shapes are static. A prompt longer than ``seq_len`` (default: the
    model's context) keeps its last tokens. The predicted letter goes through ``task.evaluate``.

    ``mesh``: ``batch_size`` prompts per device, each batch split over the mesh's devices (``params``
    on it; every process calls this alike and gets the same accuracy). Batches are dispatched ahead
    of reading their letters' logits, which alone come back to the host.
    """
    if batch_size < 1:
        raise JaxchatError(f"batch_size is {batch_size}; expected a positive number")
    n = _num_problems(task, max_problems)
    if seq_len is None:
        seq_len = nnx.merge(graphdef, params).config.sequence_len
    if mesh is not None:
        params = sharding.on_mesh(params, mesh)
        batch_size *= sharding.batch_devices(mesh)
    buckets = buckets_for(seq_len)
    bos, letter_cache = tokenizer.bos_token_id, {}
    pending = []  # (first problem, conversations, their letters' logits): read after dispatching more

    def dispatch(lo: int) -> None:
        conversations = [task[i] for i in range(lo, min(n, lo + batch_size))]
        prompts = [tokenizer.render_for_completion(c)[-seq_len:] for c in conversations]
        length = buckets[int(np.searchsorted(buckets, max(len(p) for p in prompts)))]
        tokens = np.full((batch_size, length), bos, dtype=np.int32)
        positions = np.zeros(batch_size, dtype=np.int32)
        ids = [_letter_ids(tokenizer, list(c["letters"]), letter_cache) for c in conversations]
        letter_ids = np.zeros((batch_size, max(4, max(len(i) for i in ids))), dtype=np.int32)
        for r, prompt in enumerate(prompts):
            tokens[r, :len(prompt)] = prompt
            positions[r] = len(prompt) - 1  # the answer letter would be the next token
            letter_ids[r, :len(ids[r])] = ids[r]
        if mesh is not None:
            tokens, positions = sharding.put_batch((tokens, positions), sharding.rows_sharding(mesh), axis=0)
        logits = answer_logits(graphdef, params, tokens, positions)
        pending.append((lo, conversations, _letter_logits(logits, letter_ids, mesh)))

    passed = 0
    ahead = 1 if mesh is None else 4  # batches in flight (one device: as before, one at a time)
    with _progress(n, getattr(task, "name", "categorical"), progress) as bar:
        for lo in range(0, n, batch_size):
            dispatch(lo)
            while pending and (len(pending) >= ahead or pending[-1][0] + batch_size >= n):
                first, conversations, scores = pending.pop(0)
                scores = sharding.to_host(scores)
                for r, conversation in enumerate(conversations):
                    letters = list(conversation["letters"])
                    predicted = letters[int(np.argmax(scores[r, :len(letters)]))]
                    passed += int(bool(task.evaluate(conversation, predicted)))
                bar.update(len(conversations))
                bar.set_postfix(acc=f"{passed / (first + len(conversations)):.4f}")
    return passed / n if n else 0.0


# ---- generative -----------------------------------------------------------------------------------


class DeviceEngines:
    """One ``Engine`` per device of ``mesh`` that this process holds, each on a whole copy of the
    params (gathered from their layout on the mesh: every process must build it, a collective).

    The Engine generates one prompt at a time, so generation splits by problems, not rows:
    ``run_generative`` gives problem i to the mesh's device i mod ``count``, runs this process's
    devices in threads (each waits on its own device), and adds up the processes' counts.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: Any, tokenizer: Any, mesh: Mesh, **engine_kwargs: Any):
        copies = sharding.full_copies(params, mesh)
        self.count = sharding.batch_devices(mesh)
        # (the device's rank on the mesh, its engine); Engines on one architecture share their jits.
        self.engines = [(sharding.device_rank(mesh, device), Engine(nnx.merge(graphdef, copy), tokenizer,
                                                                     **engine_kwargs))
                        for device, copy in copies.items()]
        self.max_len = self.engines[0][1].max_len


def run_generative(engine: Any, tokenizer: Any, task: Any, num_samples: int = 1, max_new_tokens: int = 512,
                   temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None, *,
                   progress: bool = False) -> float:
    """pass@``num_samples`` on a generative task, sampling through ``engine`` (an ``Engine``, or
    ``DeviceEngines`` to share the problems among the devices and processes of a mesh).

    Each problem's prompt is ``render_for_completion``; its ``num_samples`` completions (the tokens
    after the prompt, decoded) are scored with ``task.evaluate`` until one passes (pass@k: later
    samples are not run through the evaluator, which saves HumanEval sandbox runs).
    A prompt that leaves no room to generate under the engine's ``max_len`` counts as failed.
    A problem's completions do not depend on the device (the same seed), so neither does the result.
    """
    n = _num_problems(task, max_problems)
    shared = isinstance(engine, DeviceEngines)
    workers, count = (engine.engines, engine.count) if shared else ([(0, engine)], 1)
    mine = sum(len(range(rank, n, count)) for rank, _ in workers)  # the problems this process runs
    lock = threading.Lock()
    done = [0, 0]  # problems run, passed (this process)

    def solve(i: int, device_engine: Any) -> bool:
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        if len(prompt) >= device_engine.max_len:
            logger.warning("%s problem %d: prompt of %d tokens leaves no room under max_len %d; counted as "
                           "failed", getattr(task, "name", "task"), i, len(prompt), device_engine.max_len)
            return False
        results, _ = device_engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                                  temperature=temperature, top_k=top_k)
        completions = [tokenizer.decode(row[len(prompt):]) for row in results]
        return any(bool(task.evaluate(conversation, c)) for c in completions)

    with _progress(mine, getattr(task, "name", "generative"), progress) as bar:
        def work(rank: int, device_engine: Any) -> int:
            passed = 0
            for i in range(rank, n, count):
                ok = solve(i, device_engine)
                passed += ok
                with lock:
                    done[0] += 1
                    done[1] += ok
                    bar.update(1)
                    bar.set_postfix(acc=f"{done[1] / done[0]:.4f}")
            return passed

        if len(workers) == 1:
            passed = work(*workers[0])
        else:
            with ThreadPoolExecutor(len(workers), thread_name_prefix="generate") as pool:
                passed = sum(pool.map(lambda w: work(*w), workers))
    if shared:  # every process's count: the same total everywhere
        passed = int(sharding.process_sum(np.array([passed]))[0])
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
                  build: Callable[[str], Any] = build_task, mesh: Mesh | None = None) -> dict[str, Any]:
    """Run the chat eval of ``task_names`` on ``model``: ``{"tasks": {name: acc}, "chatcore": float|None}``.

    ChatCORE is computed only when all six tasks ran (it is defined over all of them). ``mesh``:
    share the work among its devices and processes (``batch_size`` prompts per device); every
    process calls this alike and gets the same result.
    """
    graphdef, params = split_params(model)
    progress = progress and jax.process_index() == 0
    if mesh is not None:
        params = sharding.on_mesh(params, mesh)
    engine = None
    results: dict[str, float] = {}
    for name in task_names:
        task = build(name)
        t0 = time.time()
        if task.eval_type == "categorical":
            acc = run_categorical(graphdef, params, tokenizer, task, batch_size, max_problems, progress=progress,
                                  mesh=mesh)
        else:
            engine = engine or (Engine(model, tokenizer) if mesh is None else
                                DeviceEngines(graphdef, params, tokenizer, mesh))
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
    metrics = dict(result["tasks"])
    if result.get("chatcore") is not None:
        metrics["ChatCORE"] = result["chatcore"]
    return str(write_section(f"chat-eval-{stage}", f"Chat evaluation ({stage})", format_markdown(result, settings),
                             metrics=metrics))


def validate(config: ChatEvalConfig) -> list[str]:
    """The task names of ``config`` if every value is usable; a one-line JaxchatError naming the key otherwise."""
    section = config.chat_eval
    stages.check_checkpointed(section.source, "--chat_eval.source")
    if config.step < -1:
        raise JaxchatError(f"--step={config.step}: expected a checkpoint step >= 0, or -1 for the last")
    if section.max_problems == 0 or section.max_problems < -1:
        raise JaxchatError(f"--chat_eval.max_problems={section.max_problems}: expected -1 (all) or a positive number")
    for key in ("max_new_tokens", "batch_size", "num_samples"):
        if getattr(section, key) < 1:
            raise JaxchatError(f"--chat_eval.{key}={getattr(section, key)}: expected a positive number")
    if not section.temperature >= 0:
        raise JaxchatError(f"--chat_eval.temperature={section.temperature:g}: expected a number >= 0 (0 = greedy)")
    if section.top_k < 0:
        raise JaxchatError(f"--chat_eval.top_k={section.top_k}: expected a number >= 1, or 0 for the whole vocabulary")
    return parse_task_names(section.tasks)


def run(config: ChatEvalConfig, mesh: Mesh | None = None) -> dict[str, Any]:
    """Load the checkpoint, evaluate it, print the table, write the report section; the result
    (``evaluate_chat``'s dict). Bad settings and missing task data are refused before the model loads.
    The work is shared among the devices of ``mesh`` (default: every device of every process, the
    params whole on each); the first process prints and writes the report."""
    names = validate(config)
    section = config.chat_eval
    require_available(CHAT_EVAL_NEEDS[name] for name in names)  # every missing file in one error
    tasks = {name: build_task(name) for name in names}  # missing data fails before the model loads

    model, tokenizer, meta = model_load.load_model(section.source, tag=config.tag or None,
                                                   step=None if config.step == -1 else config.step)
    max_problems = None if section.max_problems == -1 else section.max_problems
    result = evaluate_chat(model, tokenizer, names, batch_size=section.batch_size, num_samples=section.num_samples,
                           max_new_tokens=section.max_new_tokens, temperature=section.temperature,
                           top_k=section.top_k or None, max_problems=max_problems, build=tasks.__getitem__,
                           mesh=mesh if mesh is not None else sharding.make_mesh())
    if jax.process_index() != 0:  # the same result in every process: the first one reports it
        return result
    print(format_table(result))
    settings = {**evaluated_checkpoint(section.source, meta),
                "max_problems": max_problems or "all", "num_samples": section.num_samples,
                "temperature": section.temperature, "top_k": section.top_k or "all",
                "max_new_tokens": section.max_new_tokens}
    try:
        print(f"report section written to {write_report(section.source, result, settings)}")
    except JaxchatError as e:  # the results are printed above; say why the report has no section
        raise JaxchatError(f"report not written: {e}") from e
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (see the module docstring); the exit status (2 with one ``error:`` line)."""
    return cli.main(run, ChatEvalConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
