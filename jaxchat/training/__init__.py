"""Training: the jitted step (and, later, the loop around it)."""

from jaxchat.training.step import TrainState, init_train_state, make_train_step

__all__ = ["TrainState", "init_train_state", "make_train_step"]
