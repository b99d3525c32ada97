"""The model: encoders -> fusion -> head, with modality dropout, auxiliary unimodal heads and, optionally,
a shared embedding space (projection heads, contrastive alignment, filling in absent inputs)."""
from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._names import InputModuleDict
from .encoders import Encoder
from .fusion import Fusion

__all__ = ["MultimodalModel", "Head", "Filler", "parse_pairs"]


class Head(nn.Sequential):
    """``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, K)``."""

    def __init__(self, dim: int, n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs))


class Filler(nn.Module):
    """Estimates each input's shared embedding from the other inputs' (those present in the row).

    For input ``n`` of M, a two-layer MLP reads ``[u_m * p_m for m != n] + [p_m for m != n]`` (the other
    inputs' shared embeddings, unit-normalised and zeroed where absent, and their presence) and returns
    ``ẑ_n`` ``[B, S]`` (its direction is the estimate) and a confidence ``c_n = σ(·)`` ``[B]``, how much of the
    estimate the fusion receives (``c_n · ẑ_n / |ẑ_n|``; learned by the task's loss (of the filled-in output) alone,
    so the model can learn to trust an estimate only as far as it helps: at 0 the fusion receives zeros for the input, still marked
    present, which is not the mask a model without filling in sees; ``use_estimates = False`` gives that). It
    never reads ``n`` itself, so training it on rows where ``n`` is present teaches it with ``n`` hidden."""

    def __init__(self, names: Sequence[str], dim: int, hidden: int | None = None):
        super().__init__()
        if len(names) < 2:
            raise ValueError("filling in an absent input needs at least two inputs (one to fill from)")
        self.names = sorted(names)
        width = (len(self.names) - 1) * (dim + 1)
        hidden = hidden or dim
        self.dim = dim
        self.nets = InputModuleDict({n: nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim + 1))
                                     for n in self.names})

    def forward(self, shared: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
        """``({input: ẑ [B, S]}, {input: confidence [B]})``."""
        out, conf = {}, {}
        for n in self.names:
            others = [m for m in self.names if m != n]
            x = torch.cat([F.normalize(shared[m], dim=-1) * masks[m].unsqueeze(1).to(shared[m].dtype) for m in others]
                          + [torch.stack([masks[m] for m in others], 1).to(shared[n].dtype)], 1)
            y = self.nets[n](x)
            out[n], conf[n] = y[:, :self.dim], torch.sigmoid(y[:, self.dim])
        return out, conf


def _held(module: nn.Module, *args):
    """``module(*args)`` with its weights detached and its buffers copied: the gradient reaches the arguments only,
    and batch-norm statistics are left as they were."""
    from torch.func import functional_call

    state = {k: v.detach() for k, v in module.named_parameters()}
    state.update({k: v.clone() for k, v in module.named_buffers()})
    return functional_call(module, state, args)


def parse_pairs(pairs: Sequence[str] | None, names: Sequence[str]) -> list[tuple[str, str]]:
    """``["a:b", ...]`` as ``[("a", "b"), ...]`` over these input names (a name may hold ``:``: the split
    that gives two known names is taken); empty or None: every pair of inputs."""
    names = sorted(names)
    if not pairs:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    out = []
    for p in pairs:
        splits = [(p[:i], p[i + 1:]) for i, c in enumerate(p) if c == ":" and p[:i] in names and p[i + 1:] in names]
        if not splits:
            raise ValueError(f"alignment pair {p!r}: write INPUT_A:INPUT_B with two of the model's inputs "
                             f"({', '.join(names)})")
        a, b = splits[0]
        if a == b:
            raise ValueError(f"alignment pair {p!r}: an input cannot be aligned with itself")
        if (a, b) not in out and (b, a) not in out:
            out.append((a, b))
    return out


class MultimodalModel(nn.Module):
    """``encoders -> fusion -> head``; parts are passed in, not built from a config blob.

    Input names can be any string (``Review.Text``, ``a/b``, ``type``): modules are stored
    under :func:`mmfuse._names.safe_key` of each name, and everything else, ``names``
    included, uses the names themselves.

    Args:
        encoders: Input name -> encoder.
        fusion: A fusion over exactly those inputs (over widths ``shared_dim`` with ``fill_missing``); None
            for a model of aligned encoders only (``mmfuse align``: no fusion, no head).
        head: Maps the fused ``[B, D]`` to logits; None when the fusion produces logits (late).
        aux_heads: Input name -> head on that encoder's output alone (auxiliary unimodal losses).
        aux_from_fusion: Take the auxiliary logits from the fusion's own per-input heads
            (:meth:`Fusion.unimodal_logits`, late fusion) instead of ``aux_heads``.
        modality_dropout: During training, drop each input of each row with this probability
            (a row always keeps at least one of its present inputs).
        shared_dim: Width S of the shared space; > 0 gives every input a linear projection head
            (``out["shared"]``), 0 none.
        align_pairs: Pairs of inputs whose shared embeddings the contrastive loss aligns
            (:meth:`alignment_loss`, one :class:`~mmfuse.align.ClipLoss` per pair, with its own temperature).
        align_temperature, align_queue: Of those losses (initial temperature; past embeddings kept as negatives).
        fill_missing: Absent inputs get the :class:`Filler`'s estimate of their shared embedding.
        fill_space: Where the fusion receives an estimate. ``"features"``: the network learns as without
            filling in, and a second output reads an absent input's features as a linear map (learned) of its
            estimate, times the filler's confidence (:meth:`_fuse_filling_features`): a row with every input
            present is computed exactly as without filling in. ``"shared"`` (bundles saved before the choice): the fusion reads every input's shared
            embedding, unit-normalised and scaled by √S (present: projected; absent: estimated, times the
            confidence).
    """

    def __init__(self, encoders: Mapping[str, Encoder], fusion: Fusion | None, head: nn.Module | None = None,
                 aux_heads: Mapping[str, nn.Module] | None = None, modality_dropout: float = 0.0,
                 aux_from_fusion: bool = False, shared_dim: int = 0, align_pairs: Sequence[tuple[str, str]] = (),
                 align_temperature: float = 0.07, align_queue: int = 0, fill_missing: bool = False,
                 fill_space: str = "features"):
        super().__init__()
        self.names = sorted(encoders)
        if fusion is not None and sorted(fusion.names) != self.names:
            raise ValueError(f"fusion inputs {fusion.names} differ from encoder inputs {self.names}")
        if (align_pairs or fill_missing) and not shared_dim:
            raise ValueError("alignment and filling in need a shared space: shared_dim > 0")
        self.encoders = InputModuleDict({n: encoders[n] for n in self.names})
        self.fusion = fusion
        self.head = head
        self.aux_heads = InputModuleDict(aux_heads) if aux_heads else None
        self.modality_dropout = modality_dropout
        if aux_from_fusion and (aux_heads or fusion is None or not fusion.has_unimodal_heads):
            raise ValueError("aux_from_fusion needs a fusion with per-input heads and no aux_heads")
        self.aux_from_fusion = aux_from_fusion
        self.shared_dim = int(shared_dim)
        self.projections = (InputModuleDict({n: nn.Linear(encoders[n].output_dim, shared_dim) for n in self.names})
                            if shared_dim else None)
        from .align import ClipLoss

        self.align_pairs = [tuple(p) for p in align_pairs]
        self.align_losses = nn.ModuleList([ClipLoss(align_temperature, queue_size=align_queue, dim=shared_dim)
                                           for _ in self.align_pairs])
        if fill_space not in ("features", "shared"):
            raise ValueError(f"fill_space {fill_space!r}: 'features' or 'shared'")
        self.fill_space = fill_space
        self.filler = Filler(self.names, shared_dim) if fill_missing else None
        self.decoders = (InputModuleDict({n: nn.Linear(shared_dim, encoders[n].output_dim) for n in self.names})
                         if fill_missing and fill_space == "features" else None)
        self.use_estimates = True  # False: absent inputs reach the fusion as zeros (the filler's ablation)
        # fill_space "features": per input, the weight of the filled-in output against the input-masked one on rows
        # where that input is absent (1 where unset; training and its validation read the input-masked output
        # alone; :func:`mmfuse.pipeline.choose_fill_mix` sets it after training)
        self.fill_mix: dict[str, float] = {}

    def drop_modalities(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Randomly mark present inputs absent, keeping at least one per row that had one."""
        p = torch.stack([masks[n] for n in self.names], 1)  # (B, M)
        keep = torch.rand(p.shape, device=p.device) >= self.modality_dropout
        dropped = p & keep
        none_left = p.any(1) & ~dropped.any(1)
        dropped[none_left] = p[none_left]
        return {n: dropped[:, i] for i, n in enumerate(self.names)}

    def forward(self, inputs: Mapping, masks: Mapping[str, torch.Tensor], absent: Sequence[str] = ()) -> dict:
        """Logits ``[B, K]`` (and ``aux``: per-input logits when auxiliary heads exist; ``shared``: each
        input's shared embedding, with a shared space; ``filled``: the filler's estimates).

        Args:
            inputs: Input name -> batch tensor (or dict of tensors). Names missing here are absent.
            masks: Input name -> presence ``[B]``.
            absent: Inputs to treat as absent in every row (modality contribution analysis).
        """
        ref = next(iter(masks.values()))
        masks = observed = {n: (masks[n] if n in masks and n not in absent else torch.zeros_like(ref))
                            for n in self.names}
        if self.training and self.modality_dropout > 0:
            masks = self.drop_modalities(masks)
        # inputs dropped for the fusion are still encoded where a loss learns from them: the alignment loss, and the
        # filling loss in the shared space (a dropped input is exactly one to fill in, and its true embedding is known)
        learns_hidden = self.projections is not None and (bool(self.align_pairs) or
                                                          (self.filler is not None and self.decoders is None))
        feats, tokens = self.encode(inputs, observed if learns_hidden else masks)
        out = self.fuse(feats, tokens, masks)
        out["observed"] = observed
        if self.decoders is not None and not learns_hidden:
            hidden = {n: observed[n] & ~masks[n] for n in self.names}
            if any(bool(h.any()) for h in hidden.values()):  # the filler's targets on the inputs dropout hid:
                out["hidden_features"] = self._encode_held(inputs, hidden)  # encoded aside, as fixed targets
        return out

    def _encode_held(self, inputs: Mapping, masks: Mapping[str, torch.Tensor]) -> dict:
        """Each input's pooled output on the rows of ``masks``, in eval mode and without gradient: no batch-norm
        statistic moves and no random number is drawn, so the network trains as if this pass had not run."""
        modes = [(m, m.training) for m in self.encoders.modules()]
        self.encoders.eval()
        try:
            with torch.no_grad():
                return self.encode(inputs, masks)[0]
        finally:
            for m, mode in modes:
                m.training = mode

    def encode(self, inputs: Mapping, masks: Mapping[str, torch.Tensor], names: Sequence[str] | None = None):
        """Each input's pooled output ``[B, D_m]`` and tokens (``(None, None)`` without); an input not in
        ``inputs`` gives zeros. ``names``: only these inputs (default: all)."""
        ref = next(iter(masks.values()))
        feats, tokens = {}, {}
        for n in names or self.names:
            if n in inputs:
                pooled, tok, tmask = self.encoders[n].forward_with_tokens(inputs[n], masks[n])
            else:
                pooled, tok, tmask = torch.zeros(ref.shape[0], self.encoders[n].output_dim, device=ref.device), None, None
            feats[n], tokens[n] = pooled, (tok, tmask)
        return feats, tokens

    def project(self, feats: Mapping[str, torch.Tensor]) -> dict:
        """Each input's shared embedding ``[B, S]`` (not normalised), for the inputs in ``feats``."""
        return {n: self.projections[n](f) for n, f in feats.items()}

    def fuse(self, feats: Mapping[str, torch.Tensor], tokens: Mapping, masks: Mapping[str, torch.Tensor]) -> dict:
        """From the encoders' outputs to ``{"logits", "masks", "fused" (the head's input), "shared",
        "filled", "aux"}`` (the last three where the model has them)."""
        out = {"masks": masks}
        if self.decoders is not None:  # fill_space "features"
            return self._fuse_filling_features(feats, tokens, masks, out)
        fin_feats, fin_masks, fin_tokens = feats, masks, tokens
        if self.projections is not None:
            shared = out["shared"] = self.project(feats)
            if self.filler is not None:  # fill_space "shared" (bundles saved before the choice)
                est, conf = self.filler(shared, masks)
                if not self.use_estimates:
                    conf = {n: torch.zeros_like(c) for n, c in conf.items()}
                out["filled"], out["fill_confidence"] = est, conf
                any_present = torch.stack([masks[n] for n in self.names], 1).any(1)
                scale = math.sqrt(self.shared_dim)
                fin_feats = {n: torch.where(masks[n].unsqueeze(1), F.normalize(shared[n], dim=-1),
                                            F.normalize(est[n], dim=-1) * conf[n].unsqueeze(1)) * scale
                             for n in self.names}
                fin_masks = {n: any_present for n in self.names}  # present, or filled from the inputs present
                fin_tokens = None
        if self.fusion is not None:
            fused = self.fusion(fin_feats, fin_masks, fin_tokens if self.fusion.uses_tokens else None)
            out["fused"] = fused
            out["logits"] = fused if self.head is None else self.head(fused)
        if self.aux_heads is not None:
            out["aux"] = {n: self.aux_heads[n](feats[n]) for n in self.names}
        elif self.aux_from_fusion:
            out["aux"] = self.fusion.unimodal_logits(fin_feats)
        return out

    def _fuse_filling_features(self, feats, tokens, masks, out: dict) -> dict:
        """Filling in, in the encoders' output space: filling in is an addition that never changes what the rest of
        the network learns.

        - The input-masked output (``logits_masked``) is the fusion and head on the rows as a model without filling
          in sees them (absent inputs masked out); it alone trains the encoders, projections, fusion and head, which
          therefore learn exactly what they would learn without filling in, from the same seed.
        - The filled-in output (``logits_filled``) gives each absent input the decoded estimate of its shared
          embedding, times the filler's confidence, and marks it present. While training, it runs the fusion and head
          with their weights held (and the present inputs' features detached, the random generator forked): its loss
          (``fill_task``) trains only the filler, its confidence and the decoders.
        - ``logits``: on a row with an absent input, ``w · filled + (1 - w) · masked``, with ``w`` the mean of
          :attr:`fill_mix` over the absent inputs (chosen on the validation rows after training; 0 while training);
          on a row with every input present, the input-masked output (the same value as the filled-in one)."""
        shared = out["shared"] = self.project(feats)
        est, conf = self.filler({n: s.detach() for n, s in shared.items()}, masks)
        out["filled"], out["fill_confidence"] = est, conf
        out["features"] = feats
        plain = self.fusion(feats, masks, None)  # (a model that fills in is built to read one vector per input)
        masked = plain if self.head is None else self.head(plain)
        out["fused"], out["logits"], out["logits_masked"] = plain, masked, masked
        absent = torch.stack([~masks[n] for n in self.names], 1)  # [B, M]
        any_present = (~absent).any(1)
        if self.use_estimates:
            dec = out["decoded"] = {n: self.decoders[n](F.normalize(est[n], dim=-1)) for n in self.names}
            fin_feats = {n: torch.where(masks[n].unsqueeze(1), feats[n].detach() if self.training else feats[n],
                                        dec[n] * conf[n].unsqueeze(1)) for n in self.names}
            fin_masks = {n: masks[n] | any_present for n in self.names}
            # training: the fusion's and head's weights held, the random generator forked
            run = _held if self.training else (lambda module, *args: module(*args))
            ref = next(iter(feats.values()))
            with (torch.random.fork_rng(devices=[ref.device.index or 0] if ref.is_cuda else [])
                  if self.training else contextlib.nullcontext()):
                fused = run(self.fusion, fin_feats, fin_masks, None)
                filled = fused if self.head is None else run(self.head, fused)
            out["logits_filled"] = filled
            lam = torch.tensor([float(self.fill_mix.get(n, 1.0)) for n in self.names], dtype=filled.dtype,
                               device=filled.device)
            a = absent.to(filled.dtype)
            k = a.sum(1, keepdim=True)
            w = (a * lam).sum(1, keepdim=True) / k.clamp(min=1)
            # (selected, not multiplied by 0 where the weight is 0: a non-finite estimate cannot reach the output)
            out["logits"] = torch.where((k > 0) & (w > 0), w * filled + (1 - w) * masked, masked)
            out["fused"] = torch.where((k > 0) & (w >= 0.5), fused, plain)  # the head's input of the larger share
        if self.aux_heads is not None:
            out["aux"] = {n: self.aux_heads[n](feats[n]) for n in self.names}
        elif self.aux_from_fusion:
            out["aux"] = self.fusion.unimodal_logits(feats)
        return out

    # --- the losses of the shared space ---------------------------------------------------------------
    def alignment_loss(self, out: dict) -> torch.Tensor:
        """The mean over :attr:`align_pairs` of each pair's contrastive loss on ``out["shared"]`` (rows where
        either input of a pair is absent from the data are left out of that pair's loss; modality dropout,
        which hides inputs from the fusion only, does not)."""
        shared, masks = out["shared"], out.get("observed", out["masks"])
        return torch.stack([loss(shared[a], shared[b], masks[a], masks[b])
                            for (a, b), loss in zip(self.align_pairs, self.align_losses)]).mean()

    def fill_loss(self, out: dict) -> torch.Tensor:
        """The cosine distance ``1 - cos(ẑ_n, z_n)`` of the filler's estimate of each input to its (detached)
        shared embedding (with ``fill_space="features"``, plus the relative squared error of the decoded
        estimate to the input's detached encoder output), on rows where the input is in the data (dropped by
        modality dropout or not) and another input reaches the fusion to fill from; the mean over those rows, then over inputs. (The fusion
        reads directions, so the loss does too, and it stays in [0, 2] whatever the embeddings' scale.)"""
        shared, est, masks = out["shared"], out["filled"], out["masks"]
        observed = out.get("observed", masks)
        feats = out.get("features")
        if "hidden_features" in out:  # the inputs modality dropout hid were encoded aside (:meth:`_encode_held`)
            feats = {n: torch.where(masks[n].unsqueeze(1), feats[n], out["hidden_features"][n]) for n in self.names}
            with torch.no_grad():
                shared = self.project(feats)
        stacked = torch.stack([masks[n] for n in self.names], 1)
        terms = []
        for i, n in enumerate(self.names):
            others = stacked.sum(1) - stacked[:, i].long()
            rows = observed[n] & (others > 0)
            if bool(rows.any()):
                terms.append((1 - F.cosine_similarity(est[n][rows], shared[n][rows].detach(), dim=-1)).mean())
                if "decoded" in out:  # the map from an estimate to the encoder's output it stands for (relative
                    f = feats[n][rows].detach()  # squared error; the estimate itself is not moved)
                    d = self.decoders[n](F.normalize(est[n][rows].detach(), dim=-1))
                    terms.append(((d - f) ** 2).mean() / ((f ** 2).mean() + 1e-6))
        if not terms:
            return sum(e.sum() for e in est.values()) * 0.0
        return torch.stack(terms).mean()
