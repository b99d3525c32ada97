"""mmfuse: multimodal fusion for tables of text, images, audio, time series, numbers and categories."""
from .data import BadInputPolicy, InputReport, MultimodalDataset, build_preprocessors, make_loader
from .encoders import create_encoder, encoder_for, list_encoders, register_encoder
from .errors import InputError, MmfuseError, NotFittedError, SchemaError
from .io import Table, read_table
from .schema import InputSpec, Modality, Role, Schema, describe_schema, infer_schema
from .windowing import make_windows

__version__ = "0.1.0"

__all__ = ["BadInputPolicy", "InputReport", "MultimodalDataset", "build_preprocessors", "make_loader",
           "create_encoder", "encoder_for", "list_encoders", "register_encoder", "InputError", "MmfuseError",
           "NotFittedError", "SchemaError", "Table", "read_table", "InputSpec", "Modality", "Role", "Schema",
           "describe_schema", "infer_schema", "make_windows", "__version__"]
