"""Which depth fits which GPU: the base train step of d12–d32 fitted (device batch and remat, as
``base.device_batch_size=auto`` and ``model.remat=auto`` choose them) to 12/16/24/40/80 GB cards,
compiled for each card without a GPU. The table in docs/BENCHMARKS.md comes from here.

    pip install -e '.[cuda12]'          # XLA's GPU compiler; no GPU needed
    JAX_PLATFORMS=cpu python benchmarks/plan_table.py [--depths 12,16,20,24,26,32] [--mfu 0.4]

The bisection's probes are compiled for the H100 and shared by every card (the same program for
compute capability 8.0, 8.9 and 9.0 needs the same bytes: checked by the last column, which compiles
each card's choice for that card itself). The expected base time is the recipe's default horizon
(20 tokens per parameter, 524,288-token steps) at the assumed MFU of the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CUDA plugin as a compiler only (jaxchat.targets)

from jaxchat import fit, targets  # noqa: E402
from jaxchat.common import JaxchatError  # noqa: E402
from jaxchat.config import RunConfig, override  # noqa: E402
from jaxchat.model import GPTConfig, estimate_flops, num_params  # noqa: E402
from jaxchat.preflight import human  # noqa: E402
from jaxchat.training.horizon import horizon  # noqa: E402

CARDS = ("rtx4070-12gb", "rtx4080-16gb", "rtx4090-24gb", "a100-40gb", "h100-80gb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="12,16,20,24,26,32")
    parser.add_argument("--cards", default=",".join(CARDS))
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    cards = args.cards.split(",")
    reference = fit.for_target("h100-80gb")
    rows_out = []
    t0 = time.time()
    for depth in depths:
        cfg = override(RunConfig(), {"model.depth": str(depth), "base.device_batch_size": "auto",
                                     "model.remat": "auto"})
        model_config = GPTConfig.from_depth(depth, vocab_size=cfg.tokenizer.vocab_size,
                                            sequence_len=cfg.model.sequence_len)

        def measure(rows: int, remat: bool) -> fit.Memory:
            return fit.train_step_memory(reference, model_config, cfg, "base", rows=rows, seq=cfg.model.sequence_len,
                                         accum=cfg.base.total_batch_size // (rows * cfg.model.sequence_len),
                                         remat=remat)

        steps, _ = horizon(cfg, model_config)
        cells = []
        for card in cards:
            machine = dataclasses.replace(fit.for_target(card), runtime=reference.runtime)
            target = targets.get(card)
            try:
                chosen = fit.fit("base", cfg, model_config, machine, measure)
            except JaxchatError:
                cells.append("does not fit")
                continue
            own = fit.train_step_memory(fit.for_target(card), model_config, cfg, "base", rows=chosen.rows,
                                        seq=chosen.seq, accum=chosen.accum, remat=chosen.remat)
            seconds = estimate_flops(model_config) * steps * cfg.base.total_batch_size / (target.peak_flops * args.mfu)
            cells.append(f"{chosen.rows}{' R' if chosen.remat else ''} · {human(own.peak)} · {seconds / 3600:.0f} h")
            print(f"d{depth} {card}: {chosen.describe()} (own compile {human(own.peak)}) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
        rows_out.append((f"d{depth} ({num_params(model_config) / 1e6:.0f}M)", *cells))
    print()
    print("| depth | " + " | ".join(cards) + " |")
    print("|---|" + "---|" * len(cards))
    for row in rows_out:
        print("| " + " | ".join(row) + " |")
    print(f"\ncell: rows per micro-batch (R = remat on) · compiled peak on that card · base time at {args.mfu:.0%} MFU")


if __name__ == "__main__":
    main()
