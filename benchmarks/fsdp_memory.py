"""Memory per device of the seed recipe's train step with FSDP, compiled for 8 × H100 without a GPU.

    pip install -e '.[cuda12]'          # XLA's GPU compiler; no GPU needed
    python benchmarks/fsdp_memory.py [--depths 20,26] [--fsdp 1,2,4,8] [--rows 8] [--write-md]
    python benchmarks/fsdp_memory.py --muon [--write-md]   # Muon: split the stack vs gather every matrix

The d20 and d26 base steps of ``jaxchat.config.initial("2025")`` (the model of
``jaxchat.training.horizon.model_config``; seq 2048, bf16, cuDNN attention: the runtime
``fit.for_target`` resolves for the card) compiled for 8 compile-only H100s in a ``data × fsdp``
mesh (``mesh.fsdp`` = 1, 2, 4, 8; data = 8 / fsdp), ``--rows`` rows × seq per device in one
micro-batch, remat off and on. Per device (XLA's memory analysis, ``jaxchat.fit.Memory``):
arguments (parameters + optimizer state + batch), temporaries and peak. Then, for each fsdp size,
the largest depth (bisection over 20, 22, ... ``--max-depth``) whose step fits ``Machine.budget``
of an 80 GB card (``jaxchat.fit``: 95 % of the 95 % of the card JAX may use), at ``--rows`` rows
per device with remat on.

``--muon`` compiles the d20 step at fsdp = 8 four ways, swapping ``jaxchat.sharding.constrain_stack``
(which Muon calls on each stack of same-shape matrices it orthogonalises) for the length of the
compile: split the stack over ``fsdp`` (jaxchat's: each device orthogonalises a share, like nanochat's
DistMuon); replicated (``P()`` on the stack and on Newton–Schulz's result: every device gathers every
matrix and orthogonalises all of them); ``P()`` on the stack only (GSPMD then splits Newton–Schulz's
matmuls after all); no constraint (GSPMD's own choice). Per device: memory, matmul FLOPs and the
collectives of the compiled program (from ``compiled.as_text()``: each all-gather / all-to-all /
reduce-scatter / all-reduce / collective-permute, weighted by the trip count of the loops it sits
in, with its operand bytes). XLA's ``cost_analysis()`` is empty for a compile-only GPU program, so
the FLOPs are counted from the HLO too: every ``dot`` (2 × output elements × contracted size), loops
weighted; the cuDNN attention kernels (the same in every variant) are not included.

Without XLA's GPU compiler (or with ``--cpu``), everything compiles for 8 fake CPU devices instead
(``--xla_force_host_platform_device_count=8``; bf16, XLA attention, the GPU's loss chunks) and the
numbers are flagged: argument sizes are exact, but CPU temporaries overstate activations and hide
what remat saves.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import math
import os
import re
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8


def _early_platform() -> bool:
    """Before JAX starts: True to compile for the GPU (the CUDA plugin as a compiler only), False
    for 8 fake CPU devices (``--cpu``, or no GPU compiler installed)."""
    from jaxchat import targets  # no JAX

    gpu = "--cpu" not in sys.argv and targets.compiler_available()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    if not gpu:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES}".strip()
    return gpu


GPU = _early_platform()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxchat import fit, runtime as runtimes, sharding, targets  # noqa: E402
from jaxchat.common import JaxchatError  # noqa: E402
from jaxchat.config import initial, override  # noqa: E402
from jaxchat.model import num_params  # noqa: E402
from jaxchat.preflight import human  # noqa: E402
from jaxchat.training.step import make_train_step  # noqa: E402
from jaxchat.training.build import abstract_state, build_model, build_optimizer  # noqa: E402
from jaxchat.training.horizon import model_config  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Memory per device with FSDP (compiled for 8 × H100)"
MUON_SECTION = "### Muon on sharded matrices: split each stack, or gather every matrix"
TARGET = "h100-80gb"


# ---- where it compiles -------------------------------------------------------------------------


def cfg_for(depth: int):
    return override(initial("2025"), {"model.depth": str(depth)})


@functools.lru_cache(maxsize=None)  # one mesh per fsdp size: fit's compile cache then sees the same machine
def _machine(fsdp: int, model) -> fit.Machine:
    return _make_machine(fsdp, model)


def machine_for(fsdp: int, cfg) -> fit.Machine:
    return _machine(fsdp, dataclasses.replace(cfg.model, depth=1))  # the runtime does not depend on the depth


def _make_machine(fsdp: int, model) -> fit.Machine:
    """8 compile-only H100s (or 8 fake CPU devices, flagged) in a data × fsdp mesh, with the budget
    of an 80 GB card either way."""
    if GPU:
        return fit.for_target(TARGET, model, devices=DEVICES, fsdp=fsdp)
    gpu_like = dataclasses.replace(runtimes.resolve(dataclasses.replace(model, dtype="bfloat16",
                                                                        attention="xla"), "cpu"),
                                   dense="xla", loss_chunk_bytes=runtimes.GPU_LOSS_CHUNK_BYTES,
                                   retain_host_memory=False)
    target = targets.get(TARGET)
    return fit.Machine(name=f"{DEVICES} fake CPU devices", mesh=sharding.make_mesh(fsdp, jax.devices()[:DEVICES]),
                       runtime=gpu_like, limit=int(target.memory * runtimes.GPU_MEMORY_FRACTION),
                       where=f"the {TARGET}'s budget (CPU-compiled estimate)")


def _step_and_args(machine: fit.Machine, mc, cfg, *, rows: int, seq: int, accum: int, remat: bool):
    """The jitted base train step and abstract arguments, exactly as ``fit.train_step_memory`` builds them."""
    plan = dataclasses.replace(machine.runtime, remat=remat)
    graphdef, params = build_model(mc, cfg, plan, abstract=True)
    tx = build_optimizer(params, mc, cfg, "base", runtime=plan)
    mesh = machine.mesh
    state = sharding.abstract_on(abstract_state(params, tx), mesh)
    global_rows = rows * sharding.batch_devices(mesh)
    batch = fit._placed({key: jax.ShapeDtypeStruct((accum, global_rows, seq), jnp.int32)
                         for key in ("inputs", "targets")}, mesh, sharding.batch_sharding(mesh))
    lrm = fit._placed(jax.ShapeDtypeStruct((), jnp.float32), mesh)
    step = make_train_step(graphdef, tx, mesh=mesh, state_sharding=sharding.state_shardings(state, mesh))
    return step, (state, batch, lrm)


def state_bytes_per_device(machine: fit.Machine, mc, cfg) -> int:
    """Parameters + optimizer state one device holds in the fsdp layout (from the shardings)."""
    _, params = build_model(mc, cfg, machine.runtime, abstract=True)
    state = sharding.abstract_on(abstract_state(params, build_optimizer(params, mc, cfg, "base")), machine.mesh)
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))


# ---- reading the compiled program --------------------------------------------------------------

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
COLLECTIVES = ("all-gather", "all-to-all", "reduce-scatter", "all-reduce", "collective-permute")


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _SHAPE.findall(text)]


def _nbytes(text: str) -> int:
    return sum(_BYTES[dtype] * math.prod(dims) for dtype, dims in _shapes(text))


def _operands(args: str) -> list[str]:
    depth, end = 1, 0
    for end, char in enumerate(args):  # the operand list ends at the parenthesis that closes it
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            break
    return re.findall(r"%([\w.\-]+)", args[:end])


def _group_size(line: str, devices: int) -> int:
    named = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)
    if named:
        sizes = dict((k, int(v)) for k, v in re.findall(r"'(\w+)'=(\d+)", named.group(1)))
        return math.prod(sizes[axis] for axis in re.findall(r"'(\w+)'", named.group(2)))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if listed and listed.group(1):
        return len(listed.group(1).split(","))
    return devices


@dataclasses.dataclass
class Traffic:
    ops: float = 0  # executions per step
    operand_bytes: float = 0  # what each device puts in, per step
    sent_bytes: float = 0  # what each device sends (ring estimate), per step


def analyse_hlo(text: str, devices: int = DEVICES) -> tuple[float, dict[str, Traffic], bool, float]:
    """(matmul FLOPs per device per step, {collective: Traffic}, whether every loop's trip count was
    known, the operand bytes of the collectives that run more than once a step: inside loops) of a
    compiled program's HLO, each instruction weighted by how often its computation runs (while bodies ×
    their known trip count)."""
    computations: list[tuple[str, list[str]]] = []
    entry = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and line.rstrip().endswith("{"):
            computations.append((header.group(1), []))
            entry = header.group(1) if line.startswith("ENTRY ") else entry
        elif computations and line.startswith("  "):
            computations[-1][1].append(line)
    types: dict[str, str] = {}
    for _, lines in computations:
        for line in lines:
            m = _INSTRUCTION.match(line)
            if m:
                types[m.group(1)] = m.group(2)
    weight = collections.defaultdict(float)
    weight[entry or computations[-1][0]] = 1.0
    known = True
    for name, lines in reversed(computations):  # callees are printed before their callers
        w = weight[name]
        if not w:
            continue
        for line in lines:
            trips = 1.0
            if " while(" in line:
                n = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                known &= n is not None
                trips = float(n.group(1)) if n else 1.0
            for key, callee in re.findall(r"\b(calls|body|condition|to_apply)=%([\w.\-]+)", line):
                weight[callee] += w * (trips if key in ("body", "condition") else 1.0)
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                for callee in re.findall(r"%([\w.\-]+)", branches):
                    weight[callee] += w
    flops, traffic, looped = 0.0, collections.defaultdict(Traffic), 0.0
    for name, lines in computations:
        w = weight[name]
        if not w:
            continue
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            _, out_type, op, args = m.groups()
            if op == "dot":
                lhs = _shapes(types.get(_operands(args)[0], ""))
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
                if lhs and contracting:
                    k = math.prod(lhs[0][1][int(d)] for d in contracting.group(1).split(",") if d)
                    flops += w * 2 * math.prod(_shapes(out_type)[0][1]) * k
                continue
            kind = op[:-len("-start")] if op.endswith("-start") else op
            if kind not in COLLECTIVES:
                continue
            operand = sum(_nbytes(types.get(o, "")) for o in _operands(args))
            g = _group_size(line, devices)
            sent = {"all-gather": operand * (g - 1), "reduce-scatter": operand * (g - 1) / g,
                    "all-reduce": 2 * operand * (g - 1) / g, "all-to-all": operand * (g - 1) / g,
                    "collective-permute": operand}[kind]
            t = traffic[kind]
            t.ops += w
            t.operand_bytes += w * operand
            t.sent_bytes += w * sent
            looped += w * operand if w > 1 else 0.0
    return flops, dict(traffic), known, looped


# ---- the measurements --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    depth: int
    fsdp: int
    remat: bool
    state: int  # params + optimizer state per device (from the shardings)
    memory: fit.Memory
    budget: int


def measure(depth: int, fsdp: int, remat: bool, rows: int, seq: int) -> Row:
    cfg = cfg_for(depth)
    mc = model_config(cfg, cfg.tokenizer.vocab_size)
    machine = machine_for(fsdp, cfg)
    memory = fit.train_step_memory(machine, mc, cfg, "base", rows=rows, seq=seq, accum=1, remat=remat)
    return Row(depth, fsdp, remat, state_bytes_per_device(machine, mc, cfg), memory, machine.budget)


def default_peak(depth: int, fsdp: int, rows: int, seq: int) -> int | None:
    """The step's peak compiled with XLA's default options instead of ``fit.MEASURE_OPTIONS`` (its memory-
    aware scheduling and rematerialisation on): what it squeezes the program into (GPU only)."""
    if not GPU:
        return None
    cfg = cfg_for(depth)
    step, step_args = _step_and_args(machine_for(fsdp, cfg), model_config(cfg, cfg.tokenizer.vocab_size), cfg,
                                     rows=rows, seq=seq, accum=1, remat=True)
    return fit.Memory.of(step.lower(*step_args).compile()).peak


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def memory_tables(args, log) -> tuple[str, str, int, list[str]]:
    """(the memory table, the depth-search table, the budget, facts for the caveats)."""
    t0 = time.time()
    out = []
    for depth in args.depths:
        for fsdp in args.fsdp:
            for remat in (False, True):
                row = measure(depth, fsdp, remat, args.rows, args.seq)
                out.append(row)
                log(f"d{depth} fsdp {fsdp} remat {'on' if remat else 'off'}: state {human(row.state)}, "
                    f"arguments {human(row.memory.arguments)}, temporaries {human(row.memory.temporaries)}, "
                    f"peak {human(row.memory.peak)} [{time.time() - t0:.0f} s]")
    budget = machine_for(1, cfg_for(1)).budget
    lines = ["| depth (params) | fsdp × data | remat | params + opt state | arguments | temporaries | peak "
             f"| fits {gib(budget)} GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in out:
        cfg = cfg_for(r.depth)
        params = num_params(model_config(cfg, cfg.tokenizer.vocab_size))
        lines.append(f"| d{r.depth} ({params / 1e6:,.0f}M) | {r.fsdp} × {DEVICES // r.fsdp} | "
                     f"{'on' if r.remat else 'off'} | {gib(r.state)} | {gib(r.memory.arguments)} | "
                     f"{gib(r.memory.temporaries)} | {gib(r.memory.peak)} | "
                     f"{'yes' if r.memory.peak <= r.budget else 'NO'} |")
    table = "\n".join(lines)

    # the largest depth per fsdp size: peak grows with depth, so bisection (jaxchat.fit.largest_fitting)
    probes: dict[tuple[int, int], Row] = {}
    squeezed: list[tuple[int, int, int, int]] = []  # (fsdp, depth, peak by fit's rule, peak with XLA's defaults)
    search = ["| fsdp × data | largest depth that fits (params) | its peak | next depth | its peak | "
              "next depth with XLA's defaults |", "|---|---|---|---|---|---|"]
    if args.search:
        hint = None  # the previous fsdp size's answer: where this one's search starts
        for fsdp in sorted(args.fsdp):

            def fits(depth: int, fsdp: int = fsdp) -> bool:
                row = probes.get((depth, fsdp)) or measure(depth, fsdp, True, args.rows, args.seq)
                probes[(depth, fsdp)] = row
                log(f"search fsdp {fsdp}: d{depth} peak {human(row.memory.peak)} "
                    f"({'fits' if row.memory.peak <= row.budget else 'does not fit'}) [{time.time() - t0:.0f} s]")
                return row.memory.peak <= row.budget

            # peak grows with depth (at one fsdp size), not always shrinks with fsdp (measured: d68 needs more
            # at fsdp 8 than at 4), so the hint only picks the side of it to bisect
            candidates = list(range(args.min_depth, args.max_depth + 1, args.depth_step))
            if hint is not None and hint in candidates:
                candidates = ([d for d in candidates if d >= hint] if fits(hint) else
                              [d for d in candidates if d < hint])
            best = fit.largest_fitting(candidates, fits)
            if best is None:
                search.append(f"| {fsdp} × {DEVICES // fsdp} | none from d{args.min_depth} | | | | |")
                continue
            hint = best
            nxt = best + args.depth_step
            cfg = cfg_for(best)
            params = num_params(model_config(cfg, cfg.tokenizer.vocab_size))
            if nxt <= args.max_depth and (nxt, fsdp) not in probes:
                fits(nxt)
            above = probes.get((nxt, fsdp))
            default = default_peak(nxt, fsdp, args.rows, args.seq) if above else None
            if default is not None:
                squeezed.append((fsdp, nxt, above.memory.peak, default))
                log(f"search fsdp {fsdp}: d{nxt} with XLA's default options peaks at {human(default)}")
            more = "" if nxt <= args.max_depth else f" (the deepest tried: --max-depth {args.max_depth})"
            search.append(f"| {fsdp} × {DEVICES // fsdp} | **d{best}** ({params / 1e9:.2f}B){more} | "
                          f"{gib(probes[(best, fsdp)].memory.peak)} GiB | "
                          + (f"d{nxt} | {gib(above.memory.peak)} GiB | {gib(default)} GiB |" if above else "| | |"))
    return (table, "\n".join(search) if args.search else "(not searched: --no-search)", budget,
            _facts(args, out, probes) + ([_squeezed_fact(squeezed)] if squeezed else []))


def _squeezed_fact(squeezed: list[tuple[int, int, int, int]]) -> str:
    """What compiling with XLA's defaults (its memory-aware schedule and rematerialisation) does to the
    depths just above the answer: [(fsdp, depth, peak by fit's rule, peak with the defaults)]."""
    def cases(pred) -> str:
        return ", ".join(f"d{d} at fsdp {f} ({gib(b)} against {gib(a)} GiB)" for f, d, a, b in squeezed if pred(a, b))
    lower, higher = cases(lambda a, b: b < a), cases(lambda a, b: b > a)
    return ("`jaxchat.fit`'s rule compiles with XLA's memory limit lifted (`fit.MEASURE_OPTIONS`), so that XLA does "
            "not squeeze a program on its own. Near the limit XLA's default options change the peak, either way: "
            "the last column compiles the first depth that does not fit with them"
            + (f"; lower for {lower}" if lower else "") + (f"; higher for {higher}" if higher else "")
            + ". The table's answers are what the programs need "
            "unsqueezed; whether a squeezed program fits a real run is for a GPU to tell.")


def _facts(args, out: list[Row], probes: dict[tuple[int, int], Row]) -> list[str]:
    """What the measurements say beyond the tables, in words, from their own numbers."""
    by = {(r.depth, r.fsdp, r.remat): r.memory for r in out}
    facts = []
    for depth in args.depths:
        saved = {f: by[(depth, f, False)].peak - by[(depth, f, True)].peak for f in args.fsdp
                 if (depth, f, False) in by and (depth, f, True) in by}
        if 1 in saved and len(saved) > 1:
            others = [v for f, v in saved.items() if f > 1]
            facts.append(f"Remat saves less without fsdp: d{depth}'s peak drops by {gib(saved[1])} GiB with remat "
                         f"at fsdp = 1, by {gib(min(others))}–{gib(max(others))} GiB at fsdp ≥ 2. "
                         "At d20, fsdp = 1, "
                         "XLA's buffer assignment (`--xla_dump_to`, read 2026-11-30) has the recomputed MLP "
                         "activations of 17 of the 20 layers live at the peak: far below the card's limit, XLA's "
                         "scheduler runs the recomputations early and keeps them (the same peak with XLA's "
                         "default options), so a peak far from the limit is what this schedule uses, not the "
                         "least the program can run in.")
            break
    worse = [(d, by[(d, 8, True)].peak, by[(d, 4, True)].peak) for d in args.depths
             if (d, 8, True) in by and (d, 4, True) in by and by[(d, 8, True)].peak > by[(d, 4, True)].peak]
    worse += [(d, probes[(d, 8)].memory.peak, probes[(d, 4)].memory.peak) for d in sorted({d for d, _ in probes})
              if (d, 8) in probes and (d, 4) in probes and probes[(d, 8)].memory.peak > probes[(d, 4)].memory.peak]
    if worse:
        facts.append("More fsdp is not always less memory: with remat, fsdp = 8 (data = 1) peaks higher than fsdp = 4 "
                     "at " + "; ".join(f"d{d} ({gib(a)} against {gib(b)} GiB)" for d, a, b in worse)
                     + ": its parameters and optimizer state halve, its temporaries grow more (more layers' "
                     "activations live at the peak in the d26 buffer assignment read 2026-11-30: 8 MLP hidden buffers against 5).")
    return facts


MUON_VARIANTS = ("split", "replicated", "replicated-input", "unconstrained")
MUON_NAMES = {"split": "split over fsdp (jaxchat)", "replicated": "replicated `P()` in and out",
              "replicated-input": "replicated `P()` in only", "unconstrained": "none (GSPMD's choice)"}


def _fsdp_mesh() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and dict(mesh.shape).get(sharding.FSDP_AXIS, 1) > 1


def _replicated(x):
    return jax.lax.with_sharding_constraint(x, P()) if _fsdp_mesh() else x


@contextlib.contextmanager
def stack_constraint(variant: str):
    """Swap ``jaxchat.sharding.constrain_stack`` (what Muon calls on each stack before orthogonalising it)
    for the compile. "replicated" also constrains the orthogonalised stack (Newton–Schulz's result) to
    ``P()``: otherwise GSPMD propagates the parameters' layout back into Newton–Schulz and splits its
    matmuls anyway ("replicated-input" shows that), where the point is every device orthogonalising
    every matrix."""
    import importlib

    muon = importlib.import_module("jaxchat.optim.muon")  # the package exports a function of that name
    muon2026 = importlib.import_module("jaxchat.optim.muon2026")

    saved = [(sharding, "constrain_stack", sharding.constrain_stack), (muon, "newton_schulz", muon.newton_schulz),
             (muon2026, "polar_express", muon2026.polar_express)]
    sharding.constrain_stack = {"split": sharding.constrain_stack, "replicated": _replicated,
                                "replicated-input": _replicated, "unconstrained": lambda x: x}[variant]
    if variant == "replicated":
        for module, name, original in saved[1:]:
            setattr(module, name, functools.wraps(original)(
                lambda *a, _f=original, **k: _replicated(_f(*a, **k))))
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def muon_table(args, log) -> tuple[str, dict[str, tuple[fit.Memory, float, float]]]:
    """(the table, {variant: (memory, matmul FLOPs, bytes sent per device)})."""
    depth, fsdp = args.muon_depth, DEVICES
    cfg = cfg_for(depth)
    mc = model_config(cfg, cfg.tokenizer.vocab_size)
    machine = machine_for(fsdp, cfg)
    lines = ["| stack constraint | arguments | temporaries | peak | matmul TFLOP/device | all-gather | all-to-all "
             "| reduce-scatter | all-reduce | collective-permute | sent/device (ring est.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    t0 = time.time()
    unknown_loops = False
    results, in_loops = {}, []
    for variant in MUON_VARIANTS:
        with stack_constraint(variant):
            step, step_args = _step_and_args(machine, mc, cfg, rows=args.rows, seq=args.seq, accum=1, remat=True)
            compiled = step.lower(*step_args).compile(compiler_options=machine.compiler_options)
        memory = fit.Memory.of(compiled)
        text = compiled.as_text()
        flops, traffic, known, looped = analyse_hlo(text)
        unknown_loops |= not known
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        if cost and cost.get("flops"):
            log(f"  {variant}: XLA cost_analysis flops {cost['flops']:.4g}")
        cells = []
        for kind in COLLECTIVES:
            t = traffic.get(kind)
            cells.append(f"{t.ops:g} ops, {gib(t.operand_bytes)} GiB" if t else "–")
        sent = sum(t.sent_bytes for t in traffic.values())
        results[variant] = (memory, flops, sent)
        in_loops.append((looped, sum(t.operand_bytes for t in traffic.values())))
        name = MUON_NAMES[variant]
        lines.append(f"| {name} | {gib(memory.arguments)} | {gib(memory.temporaries)} | {gib(memory.peak)} | "
                     f"{flops / 1e12:.2f} | " + " | ".join(cells) + f" | {gib(sent)} GiB |")
        log(f"muon {variant}: peak {human(memory.peak)}, matmul {flops / 1e12:.2f} TFLOP/device, collectives "
            + ", ".join(f"{k} {t.ops:g}× {human(t.operand_bytes)}" for k, t in traffic.items())
            + f", sent {human(sent)} [{time.time() - t0:.0f} s]")
    note = ("\n\nSome loop's trip count was unknown: its body was counted once." if unknown_loops else "")
    note += "\n\n" + _wrap("Of the collectives' operand bytes, " + ", ".join(
        f"{gib(a)} of {gib(b)} GiB" for a, b in in_loops) + " (by row) are inside loops: the fused "
             "head+loss (`kernels/head_loss.py`) scans chunks of the whole batch's rows, and since the rows are "
             "split over the devices, GSPMD all-gathers every row's hidden state and target on every device at "
             "each chunk (the chunk's logits are then split by vocabulary).") if any(
        a > 0.1 * b for a, b in in_loops) else ""
    return "\n".join(lines) + note, results


def muon_conclusion(results: dict[str, tuple[fit.Memory, float, float]]) -> str:
    """Which layout the numbers favour, in words (split: what jaxchat's ``constrain_stack`` does)."""
    m_split, f_split, s_split = results["split"]
    verdicts = []
    for variant in ("replicated", "replicated-input"):
        if variant not in results:
            continue
        m, f, sent = results[variant]
        # Within 0.5 %: the same peak (a few buffers' alignment), not a loss.
        better = {"peak": m_split.peak <= m.peak * 1.005, "matmul FLOPs": f_split <= f, "bytes sent": s_split <= sent}
        verdicts.append((variant, better, f"{MUON_NAMES[variant]}: peak {gib(m.peak)} GiB against "
                         f"{gib(m_split.peak)}, matmul {f / 1e12:.2f} TFLOP per device against {f_split / 1e12:.2f}, "
                         f"{gib(sent)} GiB sent per device against {gib(s_split)}"))
    facts = "; ".join(text for _, _, text in verdicts)
    if all(all(b.values()) for _, b, _ in verdicts):
        return (f"**Conclusion: jaxchat keeps splitting each stack over `fsdp` (`sharding.constrain_stack`).** "
                f"No replicated variant beats it on any count ({facts}, split second). Gathering each matrix "
                f"makes every device orthogonalise every matrix and moves the whole matrices around.")
    if all(not any(b.values()) for _, b, _ in verdicts):
        return (f"**Conclusion: the replicated constraint `P()` measures better on every count** ({facts}, split "
                f"second): jaxchat's `constrain_stack` should gather each matrix instead.")
    parts = []
    for variant, better, _ in verdicts:
        wins = ", ".join(k for k, v in better.items() if v) or "nothing"
        losses = ", ".join(k for k, v in better.items() if not v) or "nothing"
        parts.append(f"against {MUON_NAMES[variant]} the split wins on {wins} and loses on {losses}")
    return "**Conclusion: mixed.** " + "; ".join(parts) + f" ({facts}, split second)."


# ---- docs/BENCHMARKS.md ------------------------------------------------------------------------


def _split_section(text: str) -> tuple[str, str, str, str]:
    """(before the section, its memory part, its Muon part, after the section)."""
    start = text.find(SECTION)
    if start < 0:
        return text.rstrip("\n") + "\n\n\n", "", "", ""
    end = text.find("\n## ", start + len(SECTION))
    end = len(text) if end < 0 else end + 1
    body = text[start:end]
    muon = body.find(MUON_SECTION)
    if muon < 0:
        return text[:start], body, "", text[end:]
    return text[:start], body[:muon], body[muon:], text[end:]


def write_md(memory_part: str | None, muon_part: str | None) -> None:
    before, memory_old, muon_old, after = _split_section(BENCHMARKS_MD.read_text())
    memory = (memory_part if memory_part is not None else memory_old or f"{SECTION}\n\n").rstrip("\n") + "\n\n"
    muon = (muon_part if muon_part is not None else muon_old).rstrip("\n")
    text = before + memory + (muon + "\n" if muon else "")
    text = text.rstrip("\n") + "\n" + (("\n" + after) if after else "")
    BENCHMARKS_MD.write_text(text)


def where_compiled() -> str:
    if GPU:
        return f"{DEVICES} compile-only H100s (XLA's GPU compiler, `jax[cuda12]`, no GPU)"
    return (f"**CPU-compiled estimate**: {DEVICES} fake CPU devices (`--xla_force_host_platform_device_count`; "
            "XLA's GPU compiler was not available); argument sizes are exact, but CPU temporaries overstate "
            "activations and hide what remat saves")


def command(args) -> str:
    parts = ["python benchmarks/fsdp_memory.py"]
    if args.muon:
        parts.append("--muon")
    if not args.muon:
        if args.depths != [20, 26]:
            parts.append(f"--depths {','.join(map(str, args.depths))}")
        if args.fsdp != [1, 2, 4, 8]:
            parts.append(f"--fsdp {','.join(map(str, args.fsdp))}")
        if not args.search:
            parts.append("--no-search")
        elif (args.min_depth, args.max_depth, args.depth_step) != (20, 96, 2):
            parts.append(f"--min-depth {args.min_depth} --max-depth {args.max_depth} --depth-step {args.depth_step}")
    elif args.muon_depth != 20:
        parts.append(f"--muon-depth {args.muon_depth}")
    if args.rows != 8:
        parts.append(f"--rows {args.rows}")
    if not GPU:
        parts.append("--cpu")
    return " ".join(parts + ["--write-md"])


def _wrap(text: str, bullet: bool = False) -> str:
    """Prose wrapped at 100 columns as the rest of BENCHMARKS.md (a bullet's lines indented under it)."""
    return textwrap.fill(text, width=100, initial_indent="- " if bullet else "",
                         subsequent_indent="  " if bullet else "",
                         break_long_words=False, break_on_hyphens=False)


def memory_markdown(args, table: str, search: str, budget: int, notes: list[str], seconds: float) -> str:
    caveats = [
        "A compile-only estimate: XLA's memory analysis of the program compiled for one device of the mesh "
        "(its buffer assignment, with XLA's own rematerialisation under memory pressure lifted: "
        "`jaxchat.fit.MEASURE_OPTIONS`). Not counted: the CUDA context, NCCL's buffers and the allocator's "
        "fragmentation, which the budget's margins are for.",
        f"Each device holds its own {args.rows} rows: the batch grows with the devices, and the temporaries "
        "(activations, gradients, the gathered weights, Muon's stacks) are those of the per-device program.",
    ]
    caveats += notes
    return "\n".join([
        SECTION, "",
        _wrap(f"The seed recipe's base train step (`jaxchat.config.initial(\"2025\")`, its model from "
        f"`training.horizon.model_config`: nanochat's Muon + AdamW, float32 parameters and optimizer state) "
        f"compiled for {where_compiled()}, in a `data × fsdp` mesh: `mesh.fsdp` devices split each parameter and "
        f"its optimizer state, the rest replicate it; every device takes {args.rows} rows × {args.seq} tokens of "
        f"each step (1 micro-batch), bf16 compute, cuDNN attention, as `jaxchat.fit.for_target` resolves the "
        f"runtime for the card. Sizes in GiB, per device; \"params + opt state\" is what the shardings put on "
        f"one device, \"arguments\" adds the batch. Measured {datetime.date.today().isoformat()} "
        f"({seconds / 60:.0f} min on 2 CPU cores):"), "",
        "```bash", command(args), "```", "",
        table, "",
        _wrap(f"The largest depth whose step fits an 80 GB H100 (`jaxchat.fit`'s budget rule, `Machine.budget`: "
        f"95 % of the 95 % of the card JAX may use, {gib(budget)} GiB), at {args.rows} rows × {args.seq} per "
        f"device, 1 micro-batch, remat on (bisection over d{args.min_depth}, d{args.min_depth + args.depth_step}, … "
        f"d{args.max_depth}; "
        f"\"next depth with XLA's defaults\": see the caveats):"), "",
        search, "",
        "Caveats:", "",
        *[_wrap(c, bullet=True) for c in caveats], "",
    ])


def muon_markdown(args, table: str, notes: list[str]) -> str:
    return "\n".join([
        MUON_SECTION, "",
        _wrap(f"Muon orthogonalises each stack of same-shape matrices in one batched Newton–Schulz "
        f"(`optim.muon.orthogonalise_batched`). Under fsdp, `sharding.constrain_stack` splits the stack over "
        f"`fsdp`: each device orthogonalises 1/fsdp of the matrices and GSPMD gathers the results (nanochat "
        f"16788ee's DistMuon). The alternative gathers every matrix on every device (constraint `P()`) and "
        f"orthogonalises all of them redundantly (constraints `P()` on the stack and on Newton–Schulz's "
        f"result); the third row constrains only the stack, and GSPMD then carries the parameters' layout back "
        f"into Newton–Schulz and splits its matmuls after all; the fourth leaves the layout to GSPMD. "
        f"d{args.muon_depth}, "
        f"fsdp = {DEVICES} × data = 1, {args.rows} rows × {args.seq} per device, remat on, compiled for "
        f"{where_compiled()} on {datetime.date.today().isoformat()}:"), "",
        "```bash", command(args), "```", "",
        table, "",
        _wrap("Matmul FLOPs are every `dot` of the per-device program (2 × output × contracted size); the cuDNN "
        "attention kernels, the same in all rows, are not in them. Collectives: executions per step × operand "
        "bytes each device puts in (all of them, loops weighted by their trip count, from "
        "`compiled.as_text()`); \"sent\" estimates what each device sends with ring algorithms (all-gather "
        "(g−1)×, reduce-scatter and all-to-all (g−1)/g×, all-reduce 2(g−1)/g× the operand)."), "",
        *[_wrap(n) if n else n for n in notes],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="20,26")
    parser.add_argument("--fsdp", default="1,2,4,8")
    parser.add_argument("--rows", type=int, default=8, help="rows per device (one micro-batch)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--min-depth", type=int, default=20, help="the shallowest model the search tries")
    parser.add_argument("--max-depth", type=int, default=96, help="the deepest model the search tries")
    parser.add_argument("--depth-step", type=int, default=2)
    parser.add_argument("--no-search", dest="search", action="store_false", help="skip the largest-depth search")
    parser.add_argument("--muon", action="store_true", help="compare Muon's stack layouts instead (d20, fsdp 8)")
    parser.add_argument("--muon-depth", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="compile for 8 fake CPU devices (flagged estimates)")
    parser.add_argument("--write-md", action="store_true", help=f"replace/append the section in {BENCHMARKS_MD.name}")
    args = parser.parse_args()
    args.depths = [int(d) for d in args.depths.split(",") if d]
    args.fsdp = [int(f) for f in args.fsdp.split(",") if f]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"compiling for {where_compiled()}")
    try:
        machine_for(DEVICES, cfg_for(1))  # the compile-only devices (or fake CPU ones) start here
    except JaxchatError as error:
        sys.exit(f"error: {error} (--cpu compiles for fake CPU devices instead, flagged as estimates)")
    t0 = time.time()
    if args.muon:
        table, results = muon_table(args, log)
        conclusion = muon_conclusion(results)
        print(table)
        print()
        print(conclusion)
        if args.write_md:
            write_md(None, muon_markdown(args, table, [conclusion]))
    else:
        table, search, budget, facts = memory_tables(args, log)
        print(table)
        print()
        print(search)
        if args.write_md:
            write_md(memory_markdown(args, table, search, budget, facts, time.time() - t0),
                     None)
    if args.write_md:
        log(f"wrote {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
