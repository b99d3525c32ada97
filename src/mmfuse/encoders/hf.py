"""Hugging Face models as encoders, and the pass-through encoder for cached embeddings."""
from __future__ import annotations


from ..errors import MmfuseError
from ._base import Encoder, register_encoder

TRAIN_MODES = ("frozen", "full", "last", "lora")


class _AnyModality:
    """HF encoders serve text, image and audio inputs; the registry check compares modality."""


@register_encoder("hf")
class HFEncoder(Encoder):
    """A pretrained ``transformers`` model (hub id or local folder) as the encoder of one input.

    Output: the pooled embedding ``[B, D]`` (see :func:`mmfuse.hf.backbone_forward` for pooling)
    and the last hidden states as tokens ``[B, T, E]``. E is the backbone's hidden size; D is
    too, except for CLIP-style towers with ``pooling="auto"``, whose pooled output is the
    projection (``projection_dim``).

    Args:
        model: Hub id or local folder.
        modality: ``text``, ``image`` or ``audio``.
        revision: Hub revision (branch, tag or commit).
        pooling: ``auto``, ``cls``, ``mean`` or ``last``.
        train: ``frozen`` (no gradient, always in eval mode), ``full``, ``last`` (only the last
            ``last_n`` layers of the backbone's layer stack train; embeddings, other layers,
            final norms and pooler stay frozen) or ``lora`` (low-rank adapters on every linear
            layer of the backbone, Hu et al. 2021, through ``peft``: ``pip install 'mmfuse[lora]'``).
        last_n: Layers trained with ``train="last"``.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling and dropout.
    """

    modality = "any"

    def __init__(self, model: str, modality: str, revision: str | None = None, pooling: str = "auto",
                 train: str = "full", last_n: int = 1, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.05):
        super().__init__()
        from ..hf import layer_list, load_backbone, output_dim, token_dim

        if train not in TRAIN_MODES:
            raise MmfuseError(f"hf encoder: train must be one of {TRAIN_MODES}, got {train!r}")
        self.model_name, self.input_modality, self.revision = model, modality, revision
        self.pooling, self.train_mode, self.last_n = pooling, train, last_n
        self.backbone = load_backbone(model, modality, revision)
        self.token_dim = token_dim(self.backbone)
        self.output_dim = output_dim(self.backbone) if pooling == "auto" else self.token_dim
        self.has_tokens = True
        self._layers = None
        if train == "frozen":
            self.backbone.requires_grad_(False)
        elif train == "last":
            layers = layer_list(self.backbone)
            if not 1 <= last_n <= len(layers):
                raise MmfuseError(f"hf encoder: last_n must be between 1 and {len(layers)} for {model}, got {last_n}")
            self.backbone.requires_grad_(False)
            for layer in list(layers)[-last_n:]:
                layer.requires_grad_(True)
        if train == "lora":
            from ..errors import require

            peft = require("peft", "lora")
            cfg = peft.LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                  target_modules="all-linear")
            self.backbone = peft.get_peft_model(self.backbone, cfg)
        self.backbone.train(train != "frozen")  # from_pretrained returns eval mode; fine-tuning wants dropout
        if train in ("last", "full", "lora"):
            try:
                self._layers = layer_list(self.backbone)
            except MmfuseError:
                self._layers = None

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(model=preprocessor.model, modality=preprocessor.modality, revision=preprocessor.revision,
                    pooling=preprocessor.pooling)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_mode == "frozen":
            self.backbone.eval()  # no dropout in a frozen backbone
        return self

    def encode(self, x):
        from ..hf import backbone_forward

        return backbone_forward(self.backbone, x, self.pooling)

    def encode_fixed(self, x):
        """:meth:`encode` without trimming trailing padding (the trim depends on the values): the same
        outputs on the real tokens, as attention never looks at padding."""
        from ..hf import pool_output

        return pool_output(self.backbone(**x), x, self.pooling)

    def trainable_groups(self, layer_decay: float = 1.0):
        """``[(params, lr_scale, is_backbone)]``: layer-wise decay ``decay^(L - 1 - i)`` for layer i
        of L, ``decay^L`` for parameters before the layers (embeddings), 1 for the rest."""
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if self._layers is None or layer_decay == 1.0:
            return [([p for _, p in params], 1.0, True)]
        L = len(self._layers)
        owner = {}
        for i, layer in enumerate(self._layers):
            for p in layer.parameters():
                owner[id(p)] = i
        first_layer_param = next(self._layers[0].parameters())
        order = [id(p) for _, p in self.backbone.named_parameters()]
        before = set(order[: order.index(id(first_layer_param))])
        groups: dict[float, list] = {}
        for _, p in params:
            if id(p) in owner:
                scale = layer_decay ** (L - 1 - owner[id(p)])
            elif id(p) in before:
                scale = layer_decay ** L
            else:
                scale = 1.0
            groups.setdefault(scale, []).append(p)
        return [(ps, s, True) for s, ps in sorted(groups.items())]


@register_encoder("precomputed")
class PrecomputedEmbedding(Encoder):
    """Cached embeddings from a frozen backbone: ``[B, D]`` in, the same out (no parameters).

    The fusion's own projections learn on top; the backbone never runs during training.
    """

    modality = "any"
    has_tokens = False

    def __init__(self, dim: int):
        super().__init__()
        self.output_dim = dim

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(dim=preprocessor.embedding_dim_)

    def encode(self, x):
        return x.float(), None, None
