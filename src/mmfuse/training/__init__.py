"""Training on Lightning (the ``train`` extra). Not imported on the prediction path."""
from .trainer import train_model

__all__ = ["train_model"]
