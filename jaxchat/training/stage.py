"""One training stage from start to report: checkpoints, resume, source weights, evals, the loop.

``Stage`` is what base, mid and SFT have in common. A stage module builds its data and evals, then
calls :meth:`Stage.run`. Everything that can refuse the run (an existing run without ``--resume``, a
missing or incompatible source checkpoint, a missing eval bundle) is checked before any work.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jaxchat import fit, host_memory, runtime, sharding, stages
from jaxchat.checkpoint import (RESUME_ITEMS, StageCheckpointer, checkpoint_dir, committed_steps, complete_steps,
                                find_checkpoint, latest_intact_step, load_opt_state, load_params, read_meta)
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.config import RunConfig
from jaxchat.data.cache import EVAL_BUNDLE_DIR, download_command
from jaxchat.data.prefetch import device_prefetch
from jaxchat.engine import Engine
from jaxchat.eval.bpb import evaluate_bpb, evaluate_loss
from jaxchat.eval.chat import DeviceEngines, build_task, chatcore, run_categorical, run_generative
from jaxchat.eval.core import evaluate_core
from jaxchat.metrics_log import MetricsLogger
from jaxchat.model import GPTConfig, estimate_flops, num_params
from jaxchat.model.load import check_compatible, check_tokenizer
from jaxchat.report import write_section
from jaxchat.optim import warm_start_2026
from jaxchat.training.build import Scaling, abstract_state, build_model, build_optimizer, checkpoint_meta
from jaxchat.training.loop import STOP, Interrupted, LoopSpec, estimate_time, format_plan, run_loop
from jaxchat.training.step import TrainState, init_train_state, make_train_step


# The tasks of nanochat 92d63d4's ChatCORE during SFT (chat_eval's six without SpellingBee).
CHATCORE_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")

# The checkpoint directory of the stage this process runs (the last one started): what an interrupt
# message describes (``checkpoint_status``).
current_directory: Path | None = None


def checkpoint_status(directory: Path | None = None) -> str:
    """Where a stage's checkpoints stand on disk right now (default: the current stage's), for the
    message of an interrupted run: the latest complete step and its path, or that there is none."""
    directory = directory or current_directory
    if directory is None:
        return "no training stage had started; nothing was saved"
    steps = complete_steps(directory)
    if not steps:
        return f"no checkpoint was saved in {directory}; the next run starts fresh"
    return (f"the latest complete checkpoint is step {steps[-1]} ({directory / str(steps[-1])}); "
            "--resume continues from it")


class Stage:
    """A stage run for ``cfg.run_tag``: writes ``checkpoints/<name>/<tag>/<step>`` and its report section.

    ``runtime`` is the plan the model runs under (default: resolved for this machine from ``cfg.model``).
    """

    def __init__(self, name: str, cfg: RunConfig, model_config: GPTConfig | None, tokenizer,
                 plan: runtime.Runtime | None = None):
        self.name, self.cfg, self.tokenizer = name, cfg, tokenizer
        self.spec = stages.get(name)
        self.runtime = plan or runtime.for_this_machine(cfg.model)
        self.model_config = model_config
        self.directory = checkpoint_dir(name, cfg.run_tag)
        # Every device of every process; each takes device_batch_size rows of a micro-batch.
        self.mesh = sharding.make_mesh(cfg.mesh.fsdp)
        self.devices = sharding.batch_devices(self.mesh)
        global current_directory
        current_directory = self.directory
        steps = committed_steps(self.directory)
        if not cfg.resume and steps:
            raise JaxchatError(f"{self.directory} already holds a run (latest step {steps[-1]}); pass --resume to "
                               f"continue it or --tag=NEW to start another")
        self.resume_step = None
        if cfg.resume:
            # The newest step that verifies with its optimizer state (newer damaged ones: a warning line each).
            self.resume_step = latest_intact_step(self.directory, None, RESUME_ITEMS,
                                                  hint=f"; delete {self.directory} to start this run over")
            if self.resume_step is None:  # e.g. the run stopped before its first save
                print(f"{name}: --resume: no checkpoint in {self.directory} yet; starting fresh", flush=True)
            else:  # the run's own tokenizer, before any work
                check_tokenizer(read_meta(name, cfg.run_tag, self.resume_step), tokenizer,
                                remedy="restore the tokenizer this run was trained with, or start a new run "
                                       "with --tag=NEW")
        self.evals: list[tuple[int, Callable[[TrainState], dict[str, float]]]] = []
        self.source: str | None = None
        self.graphdef = self.params = self.tx = None
        self.source_meta: dict[str, Any] | None = None  # the previous stage's checkpoint metadata
        self.warm_opt_state = None  # the previous stage's optimizer state, when the stage starts from it
        self.fitted: fit.Fit | None = None  # the device batch chosen by fit_to_device, when "auto"

    # ---- model and optimizer ----------------------------------------------------------------------

    def init_fresh(self, scaling: Scaling = Scaling()) -> None:
        """A newly initialised model (base training); ``scaling``: the 2026 optimizer's horizon."""
        self.graphdef, self.params = build_model(self.model_config, self.cfg, self.runtime)
        self.tx = build_optimizer(self.params, self.model_config, self.cfg, self.name, runtime=self.runtime,
                                  scaling=scaling)

    def init_from_previous_stage(self, load_optimizer: bool = False) -> None:
        """Params of the previous stage's checkpoint (latest, or ``--source_tag/--source_step``) and a
        fresh optimizer, or with ``load_optimizer`` one warm-started from that checkpoint's moments
        (2026 recipe). Refuses a missing checkpoint or one made with another tokenizer or recipe."""
        previous = self.spec.source(self.cfg.recipe)
        tag = self.cfg.source_tag or self.cfg.run_tag
        step = self.cfg.source_step if self.cfg.source_step >= 0 else None
        path, step = find_checkpoint(previous, tag, step)
        meta = read_meta(previous, tag, step)
        self.source_meta = meta
        source_recipe = meta.get("run_config", {}).get("recipe", "2025")
        if load_optimizer and source_recipe != self.cfg.recipe:
            raise JaxchatError(f"{previous}/{tag}/{step} was trained with the {source_recipe} recipe, this run uses "
                               f"{self.cfg.recipe}: its optimizer state cannot seed this one; set "
                               f"{self.name}.load_optimizer=false or --recipe={source_recipe}")
        source_config = GPTConfig(**meta["model_config"])
        # The context length is not a parameter (rotary is computed): the stage may choose its own.
        self.model_config = GPTConfig(**{**meta["model_config"], "sequence_len": self.cfg.model.sequence_len})
        check_compatible(meta, source_config, self.tokenizer)
        graphdef, abstract = build_model(self.model_config, self.cfg, self.runtime, abstract=True)
        self.graphdef = graphdef
        if self.resume_step is None:  # on resume the params come from this stage's own checkpoint
            self.params, _ = load_params(previous, tag, step, abstract_params=sharding.abstract_on(abstract, self.mesh))
        else:
            self.params = abstract
        self.tx = build_optimizer(self.params, self.model_config, self.cfg, self.name, runtime=self.runtime)
        if load_optimizer and self.resume_step is None:
            self.warm_opt_state = load_opt_state(previous, tag, step, abstract_opt_state=sharding.abstract_on(
                abstract_state(abstract, self.tx).opt_state, self.mesh))
        self.source = f"{previous}/{tag}/{step} ({path})" + (", optimizer moments too" if load_optimizer else "")

    def fit_to_device(self) -> int:
        """Rows per micro-batch: the config's, or, when it or ``model.remat`` is "auto", the most whose
        compiled step fits this device (``jaxchat.fit``; remat only if needed). Call after the model is
        built; the choice and its memory join the plan. JaxchatError when no batch fits."""
        setting = getattr(self.cfg, self.name).device_batch_size
        if setting != "auto" and self.cfg.model.remat != "auto":
            return setting
        chosen = fit.fit(self.name, self.cfg, self.model_config, fit.this_machine(self.runtime, fsdp=self.cfg.mesh.fsdp),
                         source_meta=self.source_meta)
        if chosen.remat != self.runtime.remat:  # the params are the same; only the program changes
            self.runtime = dataclasses.replace(self.runtime, remat=chosen.remat)
            self.graphdef, _ = build_model(self.model_config, self.cfg, self.runtime, abstract=True)
        self.fitted = chosen
        return chosen.rows

    def check_eval_bundle(self, needed: bool) -> None:
        """CORE needs the eval bundle: say so before training rather than at the first eval."""
        if needed and not (jaxchat_home() / EVAL_BUNDLE_DIR / "core.yaml").is_file():
            raise JaxchatError(f"CORE evaluation needs {jaxchat_home() / EVAL_BUNDLE_DIR}/core.yaml; run "
                               f"`{download_command('eval_bundle')}` or set base.core_every=0")

    # ---- evals (each returns {metric: value}) -----------------------------------------------------

    def add_eval(self, every: int, fn: Callable[[TrainState], dict[str, float]]) -> None:
        self.evals.append((every, fn))

    # Every eval splits its work over the stage's mesh (all devices of all processes) with the params
    # in their training layout, and returns the same number in every process (jaxchat.eval).

    def bpb(self, state: TrainState, batches: list[dict[str, np.ndarray]]) -> float:
        return evaluate_bpb(self.graphdef, state.params, batches, self.tokenizer.token_bytes, mesh=self.mesh)

    def loss(self, state: TrainState, batches: list[dict[str, np.ndarray]]) -> float:
        return evaluate_loss(self.graphdef, state.params, batches, mesh=self.mesh)

    def core(self, state: TrainState, max_per_task: int) -> dict[str, float]:
        result = evaluate_core(self.graphdef, state.params, self.tokenizer, max_per_task=max_per_task,
                               seq_len=self.model_config.sequence_len, progress=False, mesh=self.mesh)
        return {"core": result["core"]}

    def samples(self, state: TrainState, prompts: tuple[str, ...], max_tokens: int = 16) -> dict[str, float]:
        """Greedy completions of ``prompts``, printed (no metric) by the first process, on a whole copy
        of the params on its first device (every process takes part in gathering it)."""
        copies = sharding.full_copies(state.params, self.mesh)
        if jax.process_index() != 0:
            return {}
        engine = Engine(nnx.merge(self.graphdef, next(iter(copies.values()))), self.tokenizer)
        for prompt in prompts:
            tokens = self.tokenizer.encode(prompt, prepend="<|bos|>")
            rows, _ = engine.generate_batch(tokens, num_samples=1, max_tokens=max_tokens, temperature=0.0)
            print(f"  sample: {self.tokenizer.decode(rows[0][1:])!r}")
        return {}

    def categorical_accuracy(self, state: TrainState, task, max_problems: int) -> float:
        return run_categorical(self.graphdef, state.params, self.tokenizer, task, max_problems=max_problems,
                               mesh=self.mesh)

    def chat_metrics(self, state: TrainState, names: tuple[str, ...], *, max_categorical: int | None,
                     max_generative: int | None, batch_size: int) -> dict[str, float]:
        """Accuracy on the chat-eval tasks ``names`` (``<task>_acc``; greedy for the generative ones),
        and their ChatCORE (``chatcore``) and that of the categorical ones (``chatcore_cat``) when
        ``names`` are all of ``CHATCORE_TASKS`` (nanochat 92d63d4's ChatCORE during SFT). ``batch_size``
        prompts per device; generation shares the problems among the devices (``DeviceEngines``)."""
        # Here, not with the module's imports: this change keeps to the eval methods (it can join them).

        results, engine = {}, None
        for name in names:
            task = build_task(name)
            if task.eval_type == "categorical":
                results[name] = run_categorical(self.graphdef, state.params, self.tokenizer, task, batch_size,
                                                max_categorical, mesh=self.mesh)
            else:
                engine = engine or DeviceEngines(self.graphdef, state.params, self.tokenizer, self.mesh)
                results[name] = run_generative(engine, self.tokenizer, task, max_problems=max_generative)
        out = {f"{name.lower().replace('-', '_')}_acc": acc for name, acc in results.items()}
        if set(names) == set(CHATCORE_TASKS):
            out["chatcore"] = chatcore(results)
            categorical = ("ARC-Easy", "ARC-Challenge", "MMLU")
            out["chatcore_cat"] = chatcore({k: v for k, v in results.items() if k in categorical})
        return out

    # ---- the run ----------------------------------------------------------------------------------

    def run(self, data, *, num_steps: int | None, lr_multiplier: Callable[[int, float], float], accum: int,
            plan: list[tuple[str, Any]], total_flops: float | None = None,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume or start, print the plan, train, checkpoint, write the report section.

        A SIGINT from here on (``loop.STOP``) stops the loop at its next step boundary (the first
        one if it comes before the loop starts), which saves; the stage then raises ``Interrupted``
        saying which checkpoint is the latest complete one. ``meta``: extra keys for every checkpoint's
        metadata (e.g. base's resolved batch size)."""
        with STOP.running():
            return self._run(data, num_steps=num_steps, lr_multiplier=lr_multiplier, accum=accum, plan=plan,
                             total_flops=total_flops, extra_meta=meta or {})

    def _run(self, data, *, num_steps: int | None, lr_multiplier: Callable[[int, float], float], accum: int,
             plan: list[tuple[str, Any]], total_flops: float | None, extra_meta: dict[str, Any]) -> dict[str, Any]:
        cfg, mc = self.cfg, self.model_config
        self.checkpointer = StageCheckpointer(self.directory, max_to_keep=cfg.checkpoint.keep_last)
        state = init_train_state(self.params, self.tx) if self.resume_step is None else None
        if state is not None and self.warm_opt_state is not None:
            state = state._replace(opt_state=warm_start_2026(state.opt_state, self.warm_opt_state))
            self.warm_opt_state = None
        data_state = None
        mesh = self.mesh
        if self.resume_step is not None:  # onto this run's mesh, whatever mesh saved it
            target = sharding.abstract_on(abstract_state(self.params, self.tx), mesh)
            params, opt_state, data_state, _ = self.checkpointer.restore(self.resume_step, target.params,
                                                                            target.opt_state)
            state = TrainState(step=np.int32(self.resume_step), params=params, opt_state=opt_state)
        self.params = None  # the state owns the params now (they are donated every step)

        state = sharding.place(state, mesh)
        train_step = make_train_step(self.graphdef, self.tx, mesh=mesh,
                                     state_sharding=sharding.state_shardings(state, mesh))
        iterator = iter(data)
        if data_state is not None:
            iterator.set_state(data_state)
        batches = self._device_batches(iterator, accum, mesh)

        peak = self.runtime.peak_flops
        flops_per_token = estimate_flops(mc)
        plan_line = self.runtime.describe()
        if self.runtime.retain_host_memory and not host_memory.retained():
            plan_line += " (not applied: call jaxchat.host_memory.retain_freed_host_memory() before JAX starts)"
        header = [
            ("stage", f"{self.name} → {self.directory}"),
            ("model", f"depth {mc.n_layer}, width {mc.n_embd}, {mc.n_head} heads, vocab {mc.vocab_size:,}, "
                      f"context {mc.sequence_len}"),
            ("parameters", f"{num_params(mc):,}"),
            ("FLOPs/token", f"{flops_per_token:.3e}"),
            ("devices", self._describe_devices()),
            ("runtime", plan_line),
        ]
        if self.fitted is not None:
            header.append(("device batch", self.fitted.describe()))
        if self.source:
            header.append(("weights from", self.source))
        if self.resume_step is not None:
            header.append(("resuming at", f"step {self.resume_step}"))
        header += plan
        if total_flops:
            header.append(("estimated time", estimate_time(total_flops, peak)))
        print(format_plan(header), flush=True)

        spec = LoopSpec(stage=self.name, num_steps=num_steps, lr_multiplier=lr_multiplier,
                        flops_per_token=flops_per_token, peak_flops=peak, eval_hooks=tuple(self.evals),
                        save_every=cfg.checkpoint.save_every)
        logger = MetricsLogger(self.name, cfg.run_tag, wandb_run=cfg.wandb_run or None)
        t0 = time.perf_counter()

        def save(state: TrainState, metrics: dict[str, float], final: bool) -> None:
            step = int(state.step)
            meta = checkpoint_meta(self.name, step, mc, cfg, self.tokenizer, metrics, source=self.source,
                                   final=final, **extra_meta)
            self.checkpointer.save(step, state.params, state.opt_state, batches.get_state(), meta, force=final)
            if final:
                self.checkpointer.wait()

        stopped: Interrupted | None = None
        try:
            state, last = run_loop(spec, state, train_step, batches, save=save,
                                   log=lambda step, m: logger.log(step, **{k: v for k, v in m.items() if k != "step"}))
        except Interrupted as e:  # SIGINT: the loop stopped at a step boundary and saved
            stopped = e
        finally:
            batches.close()  # stop the prefetch threads
            logger.close()
            self.checkpointer.close()  # waits for the last save to commit
        if stopped is not None:  # said after the commit, so the step named is on disk
            raise Interrupted(f"{stopped}; {checkpoint_status(self.directory)}") from None
        self._report(header, last, time.perf_counter() - t0)
        if STOP.requested():  # SIGINT during the final evals or save: the stage finished, stop here
            raise Interrupted(f"{self.name} finished; {checkpoint_status(self.directory)}")
        return last

    def _describe_devices(self) -> str:
        text = f"{jax.devices()[0].device_kind} ×{jax.device_count()}"
        if jax.process_count() > 1:
            text += f" in {jax.process_count()} processes"
        fsdp = sharding.fsdp_size(self.mesh)
        return text + (f", parameters and optimizer state split {fsdp} ways (mesh.fsdp)" if fsdp > 1 else "")

    def per_device_text(self) -> str:
        """How the plan says the rows are per device (nothing on one device)."""
        return f" × {self.devices} devices (rows per device)" if self.devices > 1 else ""

    def micro_batches(self, rows_per_step: int, rows: int, what: str) -> int:
        """Micro-batches per step on this stage's devices (``fit.micro_batches``, which refuses a
        batch that does not divide)."""
        return fit.micro_batches(self.name, rows_per_step, rows, self.devices, what)

    def _device_batches(self, iterator, accum: int, mesh):
        """Host batches (accum·B, T) → device batches (accum, B, T), prefetched; the returned
        iterator's ``get_state()`` is the position after the batches handed out (what a checkpoint
        must record), not after the ones buffered ahead."""
        return device_prefetch(iterator, sharding=sharding.batch_sharding(mesh), microbatches=accum)

    def _report(self, header, last: dict[str, float], seconds: float) -> None:
        rows = [*header, ("training time", f"{seconds / 60:.1f} min"),
                ("final step", f"{int(last.get('step', 0)):,}")]
        for key in ("loss_ema", "val_bpb", "core", "val_loss", "mmlu_acc", "arc_easy_acc", "chatcore", "mfu",
                    "tok_per_s"):
            if key in last:
                rows.append((key, f"{last[key]:.4f}" if key not in ("tok_per_s",) else f"{last[key]:,.0f}"))
        table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        metrics = {"CORE": last["core"]} if "core" in last else {}
        write_section(self.name, f"{self.spec.title} ({self.cfg.run_tag})", table, metrics=metrics)
