"""The LightningModule around a MultimodalModel: one training loop for every strategy and task."""
from __future__ import annotations

import math
import random
import time

import lightning as L
import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..tasks import Task

__all__ = ["LitMultimodal", "cosine_with_warmup"]


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR multiplier: linear 0 -> 1 over the warm-up, then cosine 1 -> 0."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class LitMultimodal(L.LightningModule):
    """Training, validation, optimizer and schedule for a :class:`~mmfuse.model.MultimodalModel`.

    The history of per-epoch metrics and the RNG states are stored in checkpoints, so a run
    resumed after a crash continues exactly where the last checkpoint left it.
    """

    def __init__(self, model, task: Task, train_loader, val_loader, tcfg: TrainConfig, mcfg: ModelConfig,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model, self.task, self.tcfg, self.mcfg = model, task, tcfg, mcfg
        self.train_loader, self.val_loader = train_loader, val_loader
        if hasattr(train_loader, "yield_empty"):  # a batch whose rows were all skipped still counts as a batch done
            train_loader.yield_empty = True
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.history: list[dict] = []
        self.extra_checkpoint_state: dict = {}  # added to every checkpoint as is (the run's fingerprint)
        self.epoch_seconds: dict[int, float] = {}
        self._train_sum, self._train_n = 0.0, 0
        self._val: list = []
        self._batches_done = 0  # training batches of the current epoch done (saved in mid-epoch checkpoints)
        self._resume_position: dict | None = None
        self.resumed_after_steps: int | None = None  # a run resumed mid-epoch: the steps of that epoch done before

    def setup(self, stage: str) -> None:
        # several processes: each trains on its share of the rows; every one validates on all of them, so
        # the metrics, early stopping and the best epoch are the same everywhere without gathering
        if self.trainer is not None and self.trainer.world_size > 1:
            self.train_loader.set_shard(self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self):
        return self.train_loader

    def val_dataloader(self):
        return self.val_loader

    def loss(self, out: dict, y: torch.Tensor | None) -> torch.Tensor:
        """The task's loss (with class weights), plus ``aux_weight`` × the mean unimodal auxiliary loss,
        ``align_weight`` × the alignment loss and ``fill_weight`` × the filler's loss, where the model has
        them. Without a task (contrastive pretraining, :func:`mmfuse.align.align`): the alignment loss."""
        parts = self.loss_parts(out, y)
        return sum(w * parts[k] for k, w in self.weights.items() if k in parts)

    @property
    def weights(self) -> dict:
        return {"task": 1.0, "aux": self.mcfg.aux_weight, "fill": self.mcfg.fill_weight, "fill_task": 1.0,
                "align": self.mcfg.align_weight if self.task is not None else 1.0}

    def loss_parts(self, out: dict, y: torch.Tensor | None) -> dict:
        """Each term of the objective, unweighted: ``task``, ``aux``, ``align``, ``fill`` and, filling in the
        encoders' output space, ``fill_task`` (the task's loss of the filled-in output, which trains the filler)."""
        parts = {}
        if self.model.align_pairs:
            parts["align"] = self.model.alignment_loss(out)
        if self.model.filler is not None:
            parts["fill"] = self.model.fill_loss(out)
        if self.task is None or y is None:  # no task (pretraining), or the shared space's terms only
            return parts
        if "logits_masked" in out:  # filling in (fill_space "features"): the input-masked output trains the network,
            parts["task"] = self.task.loss(out["logits_masked"], y, self.class_weights)  # as without filling in
            if "logits_filled" in out:  # the filled-in one, on the rows with an input to fill in, only the filler
                absent = torch.stack([~out["masks"][n] for n in self.model.names], 1).any(1)
                parts["fill_task"] = (self.task.loss(out["logits_filled"][absent], y[absent], self.class_weights)
                                      if bool(absent.any()) else out["logits_filled"].sum() * 0.0)
        else:
            parts["task"] = self.task.loss(out["logits"], y, self.class_weights)
        if "aux" in out and self.mcfg.aux_weight > 0:
            aux = []
            for n, lg in out["aux"].items():
                m = out["masks"][n]
                if bool(m.any()):
                    aux.append(self.task.loss(lg[m], y[m], self.class_weights))
            if aux:
                parts["aux"] = torch.stack(aux).mean()
        return parts

    def on_train_start(self):
        # the learning rate of the first step, from the schedule of this run: a checkpoint holds the rate its run
        # had reached, which a resume with a larger --epochs (a longer schedule) would otherwise use for one step
        # (for a finished run, its last rate: 0); unchanged epochs give the same rate
        sched = self.lr_schedulers() if self.trainer is not None else None
        if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            for g, base, lam in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                g["lr"] = base * lam(sched.last_epoch)
        # a checkpoint saved mid-epoch (``checkpoint_every``): Lightning (2.6) continues that epoch without calling
        # ``on_train_epoch_start``; the loader starts after the batches done (its iterator, made before this hook,
        # is a generator that reads the sampler only when the first batch is asked for), and the epoch's loss
        # goes on from its sum (the sum of every process's rows, kept by the first)
        pos, self._resume_position = self._resume_position, None
        if pos and pos["epoch"] == self.current_epoch and 0 < pos["batches"] <= len(self.train_loader):
            self.train_loader.set_epoch(self.current_epoch)
            if pos["batches"] < len(self.train_loader):  # (all done: killed during validation; nothing to skip)
                self.train_loader.skip(pos["batches"], pos.get("layout"))
                self.resumed_after_steps = pos["batches"]
            self._batches_done = pos["batches"]
            first = self.trainer is None or self.trainer.global_rank == 0
            self._train_sum = torch.tensor(pos["train_sum"] if first else 0.0, dtype=torch.float32)
            self._train_n = pos["train_n"] if first else 0
            self._epoch_t0, self._continued = None, True  # the epoch's wall time is not known

    def on_train_epoch_start(self):
        if getattr(self, "_continued", False):  # a Lightning that calls this hook on a mid-epoch restart too
            self._continued = False
            return
        self._train_sum, self._train_n, self._batches_done = 0.0, 0, 0
        self._epoch_t0 = time.perf_counter()
        self.train_loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self):
        self._continued = False

    def training_step(self, batch, batch_idx):
        self._batches_done += 1  # counted first, before the callbacks' batch-end hooks save a checkpoint
        if len(batch["row"]) == 0:  # every row of this batch was skipped as bad input: no step, but it counts
            return None  # as done, so that a resume starts after it
        out = self.model(batch["inputs"], batch["mask"])
        loss = self.loss(out, batch.get("target"))
        n = len(batch["row"])
        self._train_sum = self._train_sum + loss.detach() * n  # stays on the device: no sync per step
        self._train_n += n
        if self.tcfg.progress or self.tcfg.log:  # Lightning's per-step logging costs even with nothing to show it
            self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self):
        self._val = []
        if self.trainer.world_size > 1:  # buffers (batch-norm statistics) from the first process: every process
            import torch.distributed as dist  # then validates the same model (on CPU they are not synchronised)

            for b in self.model.buffers():
                dist.broadcast(b, 0)

    def validation_step(self, batch, batch_idx):
        out = self.model(batch["inputs"], batch["mask"])
        n = len(batch["row"])
        # the shared space's terms, per batch (a contrastive loss depends on the batch: validation batches are fixed)
        extra = {k: float(v) * n for k, v in self.loss_parts(out, None).items()} if self.task is None or \
            self.model.align_pairs or self.model.filler is not None else {}
        if self.task is None:
            self._val.append((None, None, extra, n))
        else:  # filling in: the input-masked output, which training learns alone (the mix is chosen after training)
            logits = out.get("logits_masked", out["logits"])
            self._val.append((logits.float().cpu(), batch["target"].cpu(), extra, n))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        total = sum(v[3] for v in self._val)
        extra = {f"val_{k}_loss": sum(v[2].get(k, 0.0) for v in self._val) / total for k in self._val[0][2]}
        if self.task is None:  # contrastive pretraining: early stopping watches the alignment loss
            metrics = {"val_loss": extra.pop("val_align_loss"), **extra}
        else:
            logits = torch.cat([v[0] for v in self._val])
            y = torch.cat([v[1] for v in self._val])
            # the training objective's main term, class weights included, so that early stopping watches it
            weights = None if self.class_weights is None else self.class_weights.cpu()
            metrics = {"val_loss": float(self.task.loss(logits, y, weights))}
            metrics.update({f"val_{k}": v for k, v in self.task.quick_metrics(logits, y).items()})
            metrics.update(extra)
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k in ("val_loss", "val_accuracy", "val_rmse"))
        train_sum, train_n = self._train_sum, self._train_n
        if self.trainer.world_size > 1:  # the training loss over every process's rows
            both = self.trainer.strategy.reduce(torch.tensor([float(train_sum), float(train_n)],
                                                             dtype=torch.float64, device=self.device), reduce_op="sum")
            train_sum, train_n = float(both[0]), int(both[1])
        entry = {"epoch": self.current_epoch, "train_loss": float(train_sum) / max(1, train_n), **metrics,
                 "lr": self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else None}
        if getattr(self, "_epoch_t0", None) is not None and not self.trainer.sanity_checking:
            # the epoch's wall time (training and validation), kept apart from the history, which a seed fixes
            self.epoch_seconds[self.current_epoch] = round(time.perf_counter() - self._epoch_t0, 3)
        if not self.trainer.sanity_checking:
            self.history = [h for h in self.history if h["epoch"] != self.current_epoch] + [entry]

    def param_groups(self) -> list[dict]:
        """AdamW groups: backbones at ``backbone_lr`` (with layer-wise decay), the rest at ``lr``;
        no weight decay on biases and norms."""
        scale_of: dict[int, float] = {}
        for enc in self.model.encoders.values():
            if hasattr(enc, "trainable_groups"):
                for params, scale, _ in enc.trainable_groups(self.tcfg.layer_decay):
                    for p in params:
                        scale_of[id(p)] = scale * self.tcfg.backbone_lr / self.tcfg.lr
        groups: dict[tuple, list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            wd = 0.0 if p.ndim <= 1 or name.endswith(".bias") else self.tcfg.weight_decay
            groups.setdefault((scale_of.get(id(p), 1.0), wd), []).append(p)
        return [{"params": ps, "lr": self.tcfg.lr * s, "weight_decay": wd} for (s, wd), ps in sorted(groups.items())]

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.param_groups(), lr=self.tcfg.lr)
        total = max(1, self.tcfg.epochs * len(self.train_loader))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(self.tcfg.warmup * total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's clipping, but, filling in the encoders' output space, the gradient norm of the filler and its
        decoders is clipped apart from the rest's: filling in does not change how far the network's step goes."""
        if not gradient_clip_val or gradient_clip_algorithm == "value" or self.model.decoders is None:
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        held = {id(p) for m in (self.model.filler, self.model.decoders) for p in m.parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"]]  # the order Lightning's clipping sees
        for part in ([p for p in params if id(p) not in held], [p for p in params if id(p) in held]):
            torch.nn.utils.clip_grad_norm_(part, gradient_clip_val)

    # --- exact resume -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        """Keep the history and every random generator: CPU (torch, numpy, Python) and, on a
        GPU machine, each CUDA device's (dropout on a GPU draws from those)."""
        checkpoint.update(self.extra_checkpoint_state)
        checkpoint["mmfuse"] = {
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": _cuda_states(),
            "numpy_rng": _numpy_state(),
            "python_rng": _python_state(),
            # where training is in its epoch: a checkpoint saved mid-epoch resumes after the batches done
            "position": {"epoch": int(self.current_epoch), "batches": int(self._batches_done),
                         "layout": self.train_loader.layout() if hasattr(self.train_loader, "layout") else {},
                         **self._loss_sums()},
        }

    def _loss_sums(self) -> dict:
        """The epoch's training loss sum and row count so far, over every process (each process saves a checkpoint
        together; the first one's file is kept)."""
        total, n = float(self._train_sum), int(self._train_n)
        if self.trainer is not None and self.trainer.world_size > 1:
            both = self.trainer.strategy.reduce(torch.tensor([total, float(n)], dtype=torch.float64,
                                                             device=self.device), reduce_op="sum")
            total, n = float(both[0]), int(both[1])
        return {"train_sum": total, "train_n": n}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("mmfuse", {})
        self.history = list(state.get("history", []))
        pos = self._resume_position = state.get("position")
        if "torch_rng" in state:
            if pos and 0 < pos["batches"] < len(self.train_loader):  # mid-epoch: restored just before the next
                self._pending_rng = state  # batch, after the loader's iterator has drawn its seed (as it had)
            else:
                _set_rng_states(state)

    def on_train_batch_start(self, batch, batch_idx):
        state, self._pending_rng = getattr(self, "_pending_rng", None), None
        if state is not None:
            _set_rng_states(state)


def _set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(_numpy_from(state["numpy_rng"]))
    random.setstate(_python_from(state["python_rng"]))
    _set_cuda_states(state.get("cuda_rng") or [])


def _cuda_states() -> list[torch.Tensor]:
    """One generator state per CUDA device; empty without CUDA."""
    return list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []


def _set_cuda_states(states: list[torch.Tensor]) -> None:
    """Restore the saved CUDA generators on the devices present (none without CUDA)."""
    if states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states[:torch.cuda.device_count()])


def _numpy_state():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_from(d):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _python_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_from(d):
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])
