"""Preprocessing for Hugging Face encoders: their tokenizer, image processor or feature extractor.

With ``embed=True`` (a frozen backbone), the backbone itself runs in :meth:`featurize`: the
dataset then caches one embedding per row (on disk, keyed on the model, its weights, these
settings and the data), and training never touches the backbone again.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._base import PREPROCESSORS, Preprocessor, ReadContext, is_missing, read_for_fit
from .audio import AudioPreprocessor
from .image import ImagePreprocessor


class _HFBase(Preprocessor):
    """Shared: model id/path, revision, pooling, embed mode, the lazily loaded processor/backbone."""

    _config_keys = ("model", "revision", "pooling", "embed", "runtime", "fingerprint_")
    prefers_disk_cache = property(lambda self: self.embed)

    def __init__(self, columns, model: str, revision: str | None = None, pooling: str = "auto", embed: bool = False,
                 runtime: str = "torch", fingerprint_: str | None = None):
        from ..hf import RUNTIMES, resolve_model_path

        super().__init__(columns)
        self.model, self.revision, self.pooling, self.embed = resolve_model_path(model), revision, pooling, embed
        if runtime not in RUNTIMES:
            from ..errors import MmfuseError

            raise MmfuseError(f"hf encoder: runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        if runtime != "torch" and not (embed and self.modality == "text"):
            from ..errors import MmfuseError

            raise MmfuseError(f"hf encoder: runtime {runtime!r} runs a frozen text backbone whose embeddings are "
                              "cached (train: frozen, cache: true); this one is a "
                              f"{'trained' if not embed else self.modality} backbone: use runtime 'torch'")
        self.runtime = runtime
        self.fingerprint_ = fingerprint_
        self._processor = self._backbone = self._session = None

    @property
    def processor(self):
        if self._processor is None:
            from ..hf import load_processor

            self._processor = load_processor(self.model, self.modality, self.revision)
        return self._processor

    @property
    def backbone(self):
        if self._backbone is None:
            from ..hf import load_backbone

            self._backbone = load_backbone(self.model, self.modality, self.revision).eval()
            for p in self._backbone.parameters():
                p.requires_grad_(False)
        return self._backbone

    def __getstate__(self):  # processors, backbones and sessions are reloaded in each worker
        d = dict(self.__dict__)
        d["_processor"] = d["_backbone"] = d["_session"] = None
        return d

    def _run(self, inputs: dict) -> np.ndarray:
        """The pooled output of one batch (trailing padding trimmed), by torch or ONNX Runtime."""
        import torch

        from ..hf import backbone_forward, onnx_session, trim_padding

        if self.runtime == "torch":
            return backbone_forward(self.backbone, {k: torch.from_numpy(v) for k, v in inputs.items()},
                                    self.pooling)[0].float().numpy()
        if getattr(self, "_session", None) is None:
            self._session = onnx_session(self.backbone, inputs, self.pooling, self.runtime,
                                         self.fingerprint_ or self.model)
        trimmed = trim_padding({k: torch.from_numpy(v) for k, v in inputs.items()})
        return self._session.run(None, {k: v.numpy() for k, v in trimmed.items()})[0].astype(np.float32)

    def _fit_common(self, df, ctx):
        from ..hf import fingerprint

        self.fingerprint_ = fingerprint(self.model, self.revision)
        # the first readable row sets the shapes; bad cells are passed over, and when none
        # can be read the error names the column, the reasons and the first failing file
        (sample,) = read_for_fit(df[self.columns], lambda cells, row: self._raw_read(cells, row, ctx), limit=1)
        self.raw_spec_ = {k: (list(v.shape), str(v.dtype)) for k, v in sample.items()}
        if self.embed:
            emb = self.featurize({k: v[None] for k, v in sample.items()})["embedding"]
            self.embedding_dim_ = int(emb.shape[1])
        super().fit(df, ctx)

    def read(self, cells, row, ctx):
        return self._raw_read(cells, row, ctx)

    def read_spec(self):
        return {k: (tuple(s), np.dtype(d)) for k, (s, d) in self.raw_spec_.items()}

    def item_spec(self):
        if self.embed:
            return {"embedding": ((self.embedding_dim_,), np.dtype(np.float32))}
        return self.read_spec()

    def featurize(self, arrays):
        """With ``embed``: the backbone's pooled output per row. Rows are run in batches of
        :attr:`embed_batch_size`; texts sorted by length first, so that each batch is padded only to
        its own longest text (as sentence-transformers' ``encode`` does), and put back in order."""
        if not self.embed:
            return arrays
        n = len(next(iter(arrays.values())))
        mask = arrays.get("attention_mask")
        order = np.argsort(-mask.sum(1), kind="stable") if mask is not None and mask.ndim == 2 else np.arange(n)
        out = None
        step = self.embed_batch_size
        import torch

        with torch.inference_mode():
            for start in range(0, n, step):
                idx = order[start:start + step]
                pooled = self._run({k: v[idx] for k, v in arrays.items()})
                if out is None:
                    out = np.zeros((n, pooled.shape[1]), np.float32)
                out[idx] = pooled
        return {"embedding": out}

    embed_batch_size = 32  # rows per backbone call when embedding (a frozen backbone)

    def batch(self, arrays, train=False, generator=None):
        if self.embed:
            return arrays["embedding"]
        return dict(arrays)

    def extra_state(self):
        meta = {"raw_spec": self.raw_spec_}
        if self.embed:
            meta["embedding_dim"] = self.embedding_dim_
        return meta, {}

    def load_extra_state(self, meta, arrays):
        self.raw_spec_ = {k: (list(s), d) for k, (s, d) in meta["raw_spec"].items()}
        if "embedding_dim" in meta:
            self.embedding_dim_ = meta["embedding_dim"]


@PREPROCESSORS.register("hf_text")
class HFTextPreprocessor(_HFBase):
    """The model's tokenizer: ``input_ids`` and ``attention_mask``, padded to ``max_length``.
    Several columns are joined with the tokenizer's separator token; numeric and categorical
    columns of the group (``labeled``) are written as ``Name: value``."""

    modality = "text"
    _config_keys = _HFBase._config_keys + ("max_length", "labeled")

    def __init__(self, columns, model: str, max_length: int = 128, labeled=(), **kw):
        super().__init__(columns, model, **kw)
        self.max_length = max_length
        self.labeled = list(labeled)  # numeric/categorical columns written as 'Name: value'

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        from ..hf import model_config

        cfg = model_config(self.model, self.revision)
        cfg = getattr(cfg, "text_config", cfg)
        limits = [getattr(self.processor, "model_max_length", None), getattr(cfg, "max_position_embeddings", None)]
        limits = [int(x) for x in limits if x and x < 10**6]
        if limits and self.max_length > min(limits):
            self.max_length = min(limits)  # longer inputs than the model's positions cannot be encoded
        self._fit_common(df, ctx)
        return self

    def _raw_read(self, cells, row, ctx):
        from .text import render_cells

        parts = render_cells(cells, self.columns, self.labeled, row)
        if not parts:
            return None
        sep = f" {self.processor.sep_token} " if getattr(self.processor, "sep_token", None) else " "
        enc = self.processor(sep.join(parts), truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="np")
        return {"input_ids": enc["input_ids"][0].astype(np.int64),
                "attention_mask": enc["attention_mask"][0].astype(np.int64)}


@PREPROCESSORS.register("hf_image")
class HFImagePreprocessor(_HFBase):
    """Images decoded and checked like the built-in image input, then the model's image processor
    (resize, crop, normalize) gives ``pixel_values``."""

    modality = "image"
    _config_keys = _HFBase._config_keys + ("max_pixels", "min_size")

    def __init__(self, columns, model: str, max_pixels: int = 89_478_485, min_size: int = 8, **kw):
        super().__init__(columns, model, **kw)
        self.max_pixels, self.min_size = max_pixels, min_size

    def fit(self, df, ctx):
        self._fit_common(df, ctx)
        return self

    def _raw_read(self, cells, row, ctx):
        (v,) = cells
        if is_missing(v):
            return None
        dec = ImagePreprocessor(self.columns, max_pixels=self.max_pixels, min_size=self.min_size)
        im = dec.decode(v, row, ctx, "RGB")
        pix = self.processor(images=im, return_tensors="np")["pixel_values"][0]
        return {"pixel_values": np.ascontiguousarray(pix, dtype=np.float32)}


@PREPROCESSORS.register("hf_audio")
class HFAudioPreprocessor(_HFBase):
    """Audio decoded like the built-in input, resampled to the rate the model expects, padded or
    cropped to ``duration`` seconds, then the model's feature extractor."""

    modality = "audio"
    _config_keys = _HFBase._config_keys + ("duration",)

    def __init__(self, columns, model: str, duration: float = 2.0, **kw):
        super().__init__(columns, model, **kw)
        self.duration = duration

    def fit(self, df, ctx):
        self._fit_common(df, ctx)
        return self

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.processor, "sampling_rate", 16000))

    def _raw_read(self, cells, row, ctx):
        dec = AudioPreprocessor(self.columns, sample_rate=self.sample_rate, duration=self.duration)
        item = dec.read(cells, row, ctx)
        if item is None:
            return None
        feats = self.processor(item["wave"], sampling_rate=self.sample_rate, return_tensors="np")
        return {k: np.ascontiguousarray(v[0]) for k, v in feats.items() if k in ("input_values", "input_features")}
