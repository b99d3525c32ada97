"""Lightning Trainer setup: callbacks, logging, precision, resume."""
from __future__ import annotations

import datetime
import logging
import os
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ..config import ModelConfig, TrainConfig
from ..tasks import Task
from .._fingerprint import fingerprint_differences, normalize
from ..errors import MmfuseError
from .checkpoint_io import SafetensorsCheckpointIO, load_checkpoint_file
from .module import LitMultimodal

def resolve_accelerator(accelerator: str) -> str:
    """The device training runs on: ``auto`` takes the GPU when there is one, else the CPU."""
    if accelerator != "auto":
        return accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def train_model(model, task: Task, train_loader, val_loader, tcfg: TrainConfig, mcfg: ModelConfig, run_dir: Path,
                class_weights: torch.Tensor | None = None, resume: bool = False, callbacks=(),
                fingerprint: dict | None = None) -> dict:
    """Train with AdamW + cosine warm-up, early stopping and best-checkpoint selection.

    Early stopping waits for ``tcfg.min_steps`` optimizer steps (Lightning's ``min_steps``), within
    ``tcfg.epochs``: on a small table an epoch is a few steps, and ``patience`` epochs alone would
    stop training before the model has settled.

    Checkpoints (safetensors, no pickle) go to ``run_dir/checkpoints``: ``last.ckpt`` after
    every epoch (and every ``tcfg.checkpoint_every`` steps, with the position in the epoch) and ``best.ckpt``. With ``resume=True`` training continues from ``last.ckpt``.
    The model ends holding the best epoch's weights.

    Args:
        fingerprint: What this run trains on (:func:`mmfuse._fingerprint.run_fingerprint`), kept
            in every checkpoint. With ``resume=True``, a checkpoint whose fingerprint differs is
            refused with an :class:`MmfuseError` naming what differs.

    Returns:
        ``{"history": [...], "best_epoch": int, "best_score": float, "epochs_run": int, "stopped_early": bool,
        "epoch_seconds": [...]}`` (each history epoch's wall time; None for epochs run before a resume)
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    fingerprint = normalize(fingerprint) if fingerprint is not None else None
    resumed_from = _check_resume(last, fingerprint, run_dir) if resume and last.exists() else None
    # early stopping and best-checkpoint selection (contrastive pretraining, without a task: its loss)
    monitor, mode = task.monitor_for(tcfg.monitor) if task is not None else ("val_loss", "min")
    lit = LitMultimodal(model, task, train_loader, val_loader, tcfg, mcfg, class_weights)
    lit.extra_checkpoint_state = {_FINGERPRINT_KEY: fingerprint}  # in every checkpoint (a hook, not a callback,
    # which Lightning would call on every one of its per-step events)
    # best.ckpt holds the weights only (the optimizer's moments would double or triple every write); last.ckpt
    # holds everything a resume needs, the state of the best-checkpoint callback included
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           save_weights_only=True, enable_version_counter=False)
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    # checkpoint_every: last.ckpt also every N steps, holding the position in the epoch (a long epoch killed
    # half-way resumes from its last such step, not from the epoch's start)
    steps = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=tcfg.checkpoint_every,
                             save_top_k=1, enable_version_counter=False)] if tcfg.checkpoint_every else []
    early = EarlyStopping(monitor=monitor, mode=mode, patience=tcfg.patience)
    logger = False
    if tcfg.log == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(run_dir), name="logs", version="")
    elif tcfg.log == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(run_dir), name="logs", version="")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    accelerator = resolve_accelerator(tcfg.accelerator)
    strategy, sync_bn = resolve_strategy(tcfg, accelerator)
    trainer = L.Trainer(
        max_epochs=tcfg.epochs, min_steps=tcfg.min_steps or None, accelerator=accelerator,
        devices=tcfg.devices, num_nodes=tcfg.num_nodes, strategy=strategy, sync_batchnorm=sync_bn,
        precision=resolve_precision(tcfg.precision, accelerator),
        gradient_clip_val=tcfg.grad_clip or None,
        callbacks=[early, *([_EpochFromOne()] if tcfg.progress else []), *callbacks, best, latest, *steps],
        logger=logger,
        enable_progress_bar=tcfg.progress, enable_model_summary=False, num_sanity_val_steps=0,
        max_time=datetime.timedelta(seconds=tcfg.max_time) if tcfg.max_time else None,
        default_root_dir=str(run_dir), plugins=[SafetensorsCheckpointIO()], deterministic="warn",
        log_every_n_steps=max(1, min(10, len(train_loader) // world_size(tcfg))))
    if not resume and ckpt_dir.exists() and trainer.global_rank == 0:  # a new run in an old folder starts from nothing
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_path = str(last) if resumed_from is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*is an invalid type.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen backbones stay in eval
        warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)`.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")  # resuming
        # a mid-epoch checkpoint: the module keeps the position and its loaders skip the batches done (tested)
        warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
        # every process validates on every row, so epoch-level values are the same everywhere without a sync
        warnings.filterwarnings("ignore", ".*sync_dist=True.*")
        trainer.fit(lit, ckpt_path=ckpt_path)
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        # every process leaves the group together: one that exits while another still holds it aborts in gloo
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    best_path = best.best_model_path
    if best_path and os.path.exists(best_path) and trainer.global_rank == 0:  # the others return now (their
        # folder may be the first process's temporary one, removed when it finishes)
        state = load_checkpoint_file(best_path)["state_dict"]
        lit.load_state_dict(state)
    best_entry = None
    if lit.history:
        key = monitor
        pick = min if mode == "min" else max
        best_entry = pick(lit.history, key=lambda h: h[key])
    return {"history": lit.history, "best_epoch": best_entry["epoch"] if best_entry else None,
            "best_score": float(best.best_model_score) if best.best_model_score is not None else None,
            "monitor": monitor, "epochs_run": trainer.current_epoch,
            "stopped_early": bool(early.stopped_epoch), "interrupted": trainer.interrupted,
            "resumed_from_epoch": resumed_from, "resumed_after_steps": lit.resumed_after_steps,
            "epoch_seconds": [lit.epoch_seconds.get(h["epoch"]) for h in lit.history],
            "global_rank": trainer.global_rank, "world_size": trainer.world_size}


def world_size(tcfg: TrainConfig) -> int:
    """Processes that train together: ``devices * num_nodes`` (``devices="auto"``: every GPU when training
    on GPUs, else 1)."""
    gpus = resolve_accelerator(tcfg.accelerator) in ("gpu", "cuda")
    devices = tcfg.devices if tcfg.devices != "auto" else (max(1, torch.cuda.device_count()) if gpus else 1)
    return devices * tcfg.num_nodes


def launch_rank() -> int:
    """This process's rank as its launcher set it (torchrun's ``RANK``, SLURM's ``SLURM_PROCID``, Lightning's
    own launcher's ``LOCAL_RANK`` with ``NODE_RANK``), before training starts: 0 in a single process. Lets a
    command print and check its run folder once, from the first process."""
    env = os.environ
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    node = int(env["NODE_RANK"]) if env.get("NODE_RANK", "").isdigit() else 0
    local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else 0
    return local + (1 if node > 0 else 0)  # > 0 on any other process than the first machine's first


def launched_world() -> tuple[int, int, str] | None:
    """``(rank, world size, launch token)`` when an outside launcher started every process at once (torchrun:
    ``RANK``/``WORLD_SIZE``; SLURM: ``SLURM_PROCID``/``SLURM_NTASKS``), else None (one process, or Lightning's
    own launcher, which starts the other processes only when training begins). The token is the same in every
    process of one launch and differs between launches (job and step, or rendezvous address and restart)."""
    env = os.environ
    if env.get("WORLD_SIZE", "").isdigit() and env.get("RANK", "").isdigit():
        token = "-".join(env.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT",
                                                    "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID"))
        return int(env["RANK"]), int(env["WORLD_SIZE"]), _token(token)
    if env.get("SLURM_NTASKS", "").isdigit() and env.get("SLURM_PROCID", "").isdigit() and int(env["SLURM_NTASKS"]) > 1:
        return (int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                _token(f"{env.get('SLURM_JOB_ID')}-{env.get('SLURM_STEP_ID')}"))
    return None


def local_shard() -> tuple[int, int] | None:
    """``(local rank, processes on this machine)`` of a launch by torchrun or SLURM, else None: the processes
    that share a local disk (an embedding cache is built in parallel by those only)."""
    env = os.environ
    for rank, size in (("LOCAL_RANK", "LOCAL_WORLD_SIZE"), ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")):
        if env.get(rank, "").isdigit() and env.get(size, "").isdigit():
            return int(env[rank]), int(env[size])
    return None


def check_launch(tcfg: TrainConfig) -> None:
    """Refuse a launch whose number of processes differs from ``devices x num_nodes``: Lightning would run
    each process alone (each believing it is the first, all writing the same run folder) or wait forever."""
    launched = launched_world()
    if launched is not None and launched[1] != world_size(tcfg):
        raise MmfuseError(f"the launcher started {launched[1]} processes but --devices {tcfg.devices} x --num-nodes "
                          f"{tcfg.num_nodes} = {world_size(tcfg)}; give --devices (per machine) and --num-nodes so "
                          "that they multiply to the number of processes")


def _token(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_strategy(tcfg: TrainConfig, accelerator: str):
    """Lightning's ``strategy`` and ``sync_batchnorm`` for ``tcfg``: one process needs none; several (``devices``
    or ``num_nodes`` over 1) train with DDP (gloo on CPU, nccl on GPUs; Lightning chooses), ``auto`` with
    ``find_unused_parameters`` (an input absent from a whole batch leaves its encoder without a gradient).
    Batch norm statistics are synchronised across GPUs; on CPU each process keeps its own."""
    if world_size(tcfg) == 1:
        return "auto", False
    if tcfg.strategy == "auto":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    else:
        strategy = tcfg.strategy
    return strategy, accelerator in ("gpu", "cuda")


_FINGERPRINT_KEY = "mmfuse_fingerprint"


def _check_resume(last: Path, fingerprint: dict | None, run_dir: Path) -> int:
    """The epoch ``last`` was saved in, after checking it belongs to this run.

    Raises:
        MmfuseError: when the checkpoint's fingerprint and ``fingerprint`` differ (a checkpoint
            or a run without one is not checked).
    """
    saved = load_checkpoint_file(last)
    if fingerprint is not None and saved.get(_FINGERPRINT_KEY) is not None:
        diffs = fingerprint_differences(saved[_FINGERPRINT_KEY], fingerprint)
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise MmfuseError(f"--resume: the checkpoint in {run_dir} was trained {'; '.join(diffs[:3])}{more}; "
                              "start a new --out folder or drop --resume")
    return saved["epoch"]


class _EpochFromOne(TQDMProgressBar):
    """The progress bar counts epochs from 1, as the run report and the resume message do."""

    def on_train_epoch_start(self, trainer, *args):
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
