"""Preprocessors: one per modality, fit on the training split, state in JSON + safetensors."""
from ._base import PREPROCESSORS, Preprocessor, ReadContext, is_missing, load_preprocessors, save_preprocessors
from .audio import AudioPreprocessor, LogMel, mel_filterbank
from .image import ImagePreprocessor
from .tabular import CategoricalPreprocessor, NumericPreprocessor, TabularPreprocessor
from .target import TargetEncoder, Task, infer_task
from .text import TextPreprocessor
from .timeseries import TimeseriesPreprocessor

__all__ = ["PREPROCESSORS", "Preprocessor", "ReadContext", "is_missing", "load_preprocessors", "save_preprocessors",
           "AudioPreprocessor", "LogMel", "mel_filterbank", "ImagePreprocessor", "CategoricalPreprocessor",
           "NumericPreprocessor", "TabularPreprocessor", "TargetEncoder", "Task", "infer_task", "TextPreprocessor",
           "TimeseriesPreprocessor", "default_preprocessor"]


def default_preprocessor(spec, schema, **options) -> Preprocessor:
    """The built-in preprocessor for an input (:class:`~mmfuse.schema.InputSpec`).

    ``options`` are passed to its constructor (for example ``size=32`` for images).
    """
    from ..schema import Modality, Role

    m = spec.modality
    if m is Modality.TEXT:
        return TextPreprocessor(spec.columns, **options)
    if m is Modality.IMAGE:
        return ImagePreprocessor(spec.columns, **options)
    if m is Modality.AUDIO:
        return AudioPreprocessor(spec.columns, **options)
    if m is Modality.TIMESERIES:
        return TimeseriesPreprocessor(spec.columns, **options)
    roles = spec.roles(schema)
    return TabularPreprocessor(spec.columns, numeric=[c for c in spec.columns if roles[c] is Role.NUMERIC],
                               categorical=[c for c in spec.columns if roles[c] is Role.CATEGORICAL], **options)
