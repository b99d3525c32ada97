"""Built-in encoders: small, trained from scratch, fast on CPU. Created by name from a registry."""
from ._base import DEFAULT_ENCODERS, Encoder, create_encoder, encoder_for, list_encoders, register_encoder
from .audio_cnn import AudioCNN
from .image_cnn import ImageCNN
from .tabular_mlp import TabularMLP
from .text_bilstm import TextBiLSTM
from .timeseries_cnn import TimeseriesCNN
from .hf import HFEncoder, PrecomputedEmbedding

__all__ = ["DEFAULT_ENCODERS", "Encoder", "create_encoder", "encoder_for", "list_encoders", "register_encoder",
           "AudioCNN", "ImageCNN", "TabularMLP", "TextBiLSTM", "TimeseriesCNN", "HFEncoder", "PrecomputedEmbedding"]
