"""The nanochat recipe's optimizer (Muon + AdamW, docs/DESIGN.md §4) and LR / momentum schedules (docs/DESIGN.md §5–§7)."""

from jaxchat.optim.muon import MuonState, muon, newton_schulz
from jaxchat.optim.optimizer import (OptimConfig, base_lrs, current_lrs, learning_rates, make_optimizer,
                                     param_group, param_labels)
from jaxchat.optim.schedules import (base_lr_multiplier, mid_lr_multiplier, muon_momentum_warmup,
                                     sft_lr_multiplier)

__all__ = [
    "MuonState", "OptimConfig", "base_lr_multiplier", "base_lrs", "current_lrs", "learning_rates",
    "make_optimizer", "mid_lr_multiplier", "muon", "muon_momentum_warmup", "newton_schulz", "param_group",
    "param_labels", "sft_lr_multiplier",
]
