"""mmfuse: multimodal fusion for tables of text, images, audio, time series, numbers and categories.

Names are imported lazily (PEP 562), so ``import mmfuse`` and the command line start fast and
only what is used gets imported (torch is not loaded by ``mmfuse inspect``).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "BadInputPolicy": "data", "InputReport": "data", "MultimodalDataset": "data", "build_preprocessors": "data",
    "make_loader": "data",
    "create_encoder": "encoders", "encoder_for": "encoders", "list_encoders": "encoders",
    "register_encoder": "encoders",
    "BundleError": "errors", "InputError": "errors", "MmfuseError": "errors", "NotFittedError": "errors", "SchemaError": "errors",
    "Table": "io", "read_table": "io",
    "InputSpec": "schema", "Modality": "schema", "Role": "schema", "Schema": "schema",
    "describe_schema": "schema", "infer_schema": "schema",
    "make_windows": "windowing",
    "MultimodalPredictor": "api", "Predictor": "bundle", "evaluate_predictor": "api",
    "Task": "tasks", "create_task": "tasks", "fit_task": "tasks", "list_tasks": "tasks", "register_task": "tasks",
    "select_inputs": "pipeline", "infer_task_of": "pipeline", "split_table": "pipeline", "fit_target": "pipeline", "fit_preprocessors": "pipeline",
    "make_datasets": "pipeline", "build_model": "pipeline", "train": "pipeline", "choose_threshold_and_score": "pipeline",
    "fit_fingerprint": "pipeline", "Splits": "pipeline", "FitData": "pipeline", "ModelConfig": "config", "TrainConfig": "config",
    "search_alpha": "alpha", "cross_validate": "cv", "make_folds": "cv", "CVResult": "cv", "Fold": "cv",
    "search": "tuning", "SearchResult": "tuning", "robustness": "robust", "RobustnessResult": "robust",
    "EnsemblePredictor": "ensemble", "build_ensemble": "ensemble", "ensemble_selection": "ensemble",
    "create_fusion": "fusion", "list_fusions": "fusion", "register_fusion": "fusion",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")


def __dir__():
    return __all__
