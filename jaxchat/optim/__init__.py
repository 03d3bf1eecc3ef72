"""The nanochat recipe's optimizer (Muon + AdamW, docs/DESIGN.md §4) and LR / momentum schedules (docs/DESIGN.md §5–§7).

The ``*2026`` names are nanochat 92d63d4's newer optimizer (Polar Express + NorMuon + cautious weight
decay, per-group AdamW) and base_train schedules, for the 2026 model; the seed optimizer is unchanged.
"""

from jaxchat.optim.adamw2026 import AdamW2026State, adamw_nanochat
from jaxchat.optim.muon import MuonState, muon, newton_schulz
from jaxchat.optim.muon2026 import NorMuonState, normuon, orthogonalise, polar_express
from jaxchat.optim.optimizer import (OptimConfig, base_lrs, current_lrs, learning_rates, make_optimizer,
                                     param_group, param_labels)
from jaxchat.optim.optimizer2026 import (AdamWGroup, OptimConfig2026, base_lrs_2026, hyperparams_2026,
                                         make_optimizer_2026, param_group_2026, param_labels_2026,
                                         set_muon_hyperparams, warm_start_2026)
from jaxchat.optim.schedules import (base_lr_multiplier, mid_lr_multiplier, muon_momentum_warmup,
                                     sft_lr_multiplier)
from jaxchat.optim.schedules2026 import (base_lr_multiplier_2026, batch_lr_scale, muon_momentum_2026,
                                         optimal_batch_size, scaled_weight_decay, sft_lr_multiplier_2026,
                                         weight_decay_cosine)

__all__ = [
    "AdamW2026State", "AdamWGroup", "MuonState", "NorMuonState", "OptimConfig", "OptimConfig2026",
    "adamw_nanochat", "base_lr_multiplier", "base_lr_multiplier_2026", "base_lrs", "base_lrs_2026",
    "batch_lr_scale", "current_lrs", "hyperparams_2026", "learning_rates", "make_optimizer",
    "make_optimizer_2026", "mid_lr_multiplier", "muon", "muon_momentum_2026", "muon_momentum_warmup",
    "newton_schulz", "normuon", "optimal_batch_size", "orthogonalise", "param_group", "param_group_2026",
    "param_labels", "param_labels_2026", "polar_express", "scaled_weight_decay", "set_muon_hyperparams",
    "sft_lr_multiplier", "sft_lr_multiplier_2026", "warm_start_2026", "weight_decay_cosine",
]
