"""Preprocessors: one per modality, fit on the training split, state in JSON + safetensors."""
from ._base import PREPROCESSORS, Preprocessor, ReadContext, is_missing, load_preprocessors, save_preprocessors
from .audio import AudioPreprocessor, LogMel, mel_filterbank
from .image import ImagePreprocessor
from .tabular import CategoricalPreprocessor, NumericPreprocessor, TabularPreprocessor
from .text import TextPreprocessor
from .timeseries import TimeseriesPreprocessor
from .hf import HFAudioPreprocessor, HFImagePreprocessor, HFTextPreprocessor

__all__ = ["PREPROCESSORS", "Preprocessor", "ReadContext", "is_missing", "load_preprocessors", "save_preprocessors",
           "AudioPreprocessor", "LogMel", "mel_filterbank", "ImagePreprocessor", "CategoricalPreprocessor",
           "NumericPreprocessor", "TabularPreprocessor", "TextPreprocessor",
           "TimeseriesPreprocessor", "default_preprocessor", "HFAudioPreprocessor", "HFImagePreprocessor",
           "HFTextPreprocessor"]


def default_preprocessor(spec, schema, hf: dict | None = None, **options) -> Preprocessor:
    """The preprocessor for an input (:class:`~mmfuse.schema.InputSpec`).

    ``options`` are passed to its constructor (for example ``size=32`` for images). With ``hf``
    (``{"model": id_or_path, "embed": bool, ...}``) a Hugging Face model's own preprocessing
    replaces the built-in one.
    """
    from ..errors import MmfuseError
    from ..schema import Modality, Role

    m = spec.modality
    if not hf:
        _check_options(spec, options)
    if m is Modality.TEXT:  # numeric/categorical columns of a text group are written as 'Name: value'
        roles = spec.roles(schema)
        labeled = [c for c in spec.columns if roles[c] in (Role.NUMERIC, Role.CATEGORICAL)]
        if labeled:
            options = {**options, "labeled": labeled}
    if hf:
        cls = {Modality.TEXT: HFTextPreprocessor, Modality.IMAGE: HFImagePreprocessor,
               Modality.AUDIO: HFAudioPreprocessor}.get(m)
        if cls is None:
            raise MmfuseError(f"input {spec.name!r} is {m.value}; Hugging Face encoders take text, image or audio")
        return cls(spec.columns, **{**options, **hf})
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


_BUILTIN = {"text": TextPreprocessor, "image": ImagePreprocessor, "audio": AudioPreprocessor,
            "timeseries": TimeseriesPreprocessor, "tabular": TabularPreprocessor}


def _check_options(spec, options: dict) -> None:
    """Refuse an option the input's preprocessor does not take, naming it and suggesting the closest."""
    import inspect

    from .._registry import unknown_name_message
    from ..errors import MmfuseError

    cls = _BUILTIN[spec.modality.value]
    set_by_mmfuse = {"columns", "numeric", "categorical", "labeled"}
    allowed = [p for p in inspect.signature(cls).parameters if p not in set_by_mmfuse and not p.endswith("_")]
    for k in options:
        if k not in allowed:
            raise MmfuseError(f"input {spec.name!r}: " + unknown_name_message(f"{cls.__name__} option", k, allowed))
