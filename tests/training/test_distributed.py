"""Distributed training: each process's share of the rows, and a 2-process DDP run on CPU (gloo) against one
process with the doubled batch. The processes are launched by torchrun as a subprocess, on a free port
(Lightning's DDP inside the pytest process would clash over ports)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse.bench import free_port
from mmfuse.data import EpochBatchSampler

#: The 2-process run and the 1-process run with the doubled batch see the same rows per step, but gloo
#: sums the two halves' gradients in another order than one backward pass over the whole batch: float32
#: rounding, grown over 3 epochs of AdamW. Measured differences are ~1e-7; this bound is 100 times that.
TOLERANCE = 1e-5


def test_the_shards_of_a_step_are_the_doubled_batch_of_one_process():
    one = EpochBatchSampler(100, 8, shuffle=True, seed=3)
    shards = []
    for rank in range(2):
        s = EpochBatchSampler(100, 4, shuffle=True, seed=3)
        s.set_shard(rank, 2)
        shards.append(s)
    for epoch in (0, 1):
        for s in (one, *shards):
            s.set_epoch(epoch)
        whole, halves = list(one), [list(s) for s in shards]
        assert len(whole) == len(halves[0]) == len(halves[1]) == 13
        for k, batch in enumerate(whole):
            assert sorted(batch) == sorted(halves[0][k] + halves[1][k])
    # an odd number of rows: the last process is padded with the first row of the order (as DistributedSampler)
    odd = [EpochBatchSampler(5, 2, shuffle=False) for _ in range(2)]
    for r, s in enumerate(odd):
        s.set_shard(r, 2)
    assert [list(s) for s in odd] == [[[0, 2], [4]], [[1, 3], [0]]]
    with pytest.raises(ValueError, match="rank 2"):
        odd[0].set_shard(2, 2)


def _table(n_train=256, n_val=64, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_train + n_val + 32
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    y = (a[:, 0] + b[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame(np.hstack([a, b]), columns=["a0", "a1", "a2", "b0", "b1"]).assign(
        y=np.where(y == 1, "yes", "no"), split=["train"] * n_train + ["val"] * n_val + ["test"] * 32)
    return df


SCRIPT = textwrap.dedent('''
    import json, os, sys
    import lightning as L
    from safetensors.torch import save_file
    from mmfuse import MultimodalPredictor

    out, batch, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "full"  # full, kill (every process dies in epoch 2), resume

    class Kill(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                os._exit(3)

    class Weights(L.Callback):  # every process's weights at the end of training (before the best epoch's load)
        def on_train_end(self, trainer, module):
            state = {k: v.detach().clone().contiguous() for k, v in module.model.state_dict().items()}
            save_file(state, os.path.join(out, f"weights_rank{trainer.global_rank}.safetensors"))

    m = MultimodalPredictor("y", groups={"A": ["a0", "a1", "a2"], "B": ["b0", "b1"]}, out=out + "/run",
                            encoders={"tabular": {"name": "tabular_mlp", "dropout": 0.0}}, dropout=0.0,
                            fusion_kwargs={"dropout": 0.0}, modality_dropout=0.0,
                            epochs=3, min_steps=0, batch_size=batch, class_weight=None, accelerator="cpu",
                            devices=devices, strategy="ddp" if devices > 1 else "auto", contribution=False,
                            log=None, progress=False, seed=0, resume=mode == "resume")
    m.fit(os.path.join(out, "..", "table.csv"), callbacks=[Weights()] + ([Kill()] if mode == "kill" else []))
    with open(os.path.join(out, f"result_rank{m.rank_}.json"), "w") as f:
        json.dump({"rank": m.rank_, "history": m.history_, "world": m.metrics_.get("world_size")}, f)
''')


def _torchrun(script, out, *args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(out), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_as_if_never_stopped(tmp_path):
    _table().to_csv(tmp_path / "table.csv", index=False)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("epochs=3", "epochs=4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    for d in (full, cut):
        d.mkdir()
    assert _torchrun(script, full, 16, 2, "full", env=env).returncode == 0
    killed = _torchrun(script, cut, 16, 2, "kill", env=env)
    assert killed.returncode != 0 and not (cut / "result_rank0.json").exists()  # died in epoch 3 of 4
    p = _torchrun(script, cut, 16, 2, "resume", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = (json.loads((d / "result_rank0.json").read_text()) for d in (full, cut))
    assert len(b["history"]) == 4
    assert json.loads((cut / "run" / "metrics.json").read_text())["resumed_from_epoch"] == 1  # after epoch 2
    for h1, h2 in zip(a["history"], b["history"]):
        for key in ("val_loss", "val_accuracy", "train_loss"):
            assert h1[key] == h2[key], (h1["epoch"], key)


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_doubled_batch(tmp_path):
    from safetensors.torch import load_file

    _table().to_csv(tmp_path / "table.csv", index=False)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = {}
    for name, cmd in {
        "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), "OUT", "16", "2"],
        "one": [sys.executable, str(script), "OUT", "32", "1"],
    }.items():
        out = tmp_path / name
        out.mkdir()
        cmd = [str(out) if c == "OUT" else c for c in cmd]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = out
    two = [json.loads((runs["two"] / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((runs["one"] / "result_rank0.json").read_text())
    assert [t["rank"] for t in two] == [0, 1] and two[0]["world"] == 2 and one["world"] == 1
    # only the first process wrote the run folder
    assert (runs["two"] / "run" / "metrics.json").exists() and (runs["two"] / "run" / "bundle").exists()
    # the same validation metrics, epoch by epoch, on both processes and against one process
    assert len(one["history"]) == len(two[0]["history"]) == 3
    for h1, h2, h2b in zip(one["history"], two[0]["history"], two[1]["history"]):
        for key in ("val_loss", "val_accuracy", "train_loss"):
            assert h2[key] == h2b[key], key  # every process validates on every row: the same numbers
            assert abs(h1[key] - h2[key]) <= TOLERANCE, (key, h1[key], h2[key])
    # identical weights on both processes, and the 1-process weights within the tolerance
    w0, w1 = (load_file(runs["two"] / f"weights_rank{r}.safetensors") for r in (0, 1))
    w = load_file(runs["one"] / "weights_rank0.safetensors")
    assert w0.keys() == w1.keys() == w.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
        assert torch.allclose(w0[k].float(), w[k].float(), atol=TOLERANCE * 10), k
    # the bundle the first process wrote predicts
    from mmfuse import Predictor

    p = Predictor.load(runs["two"] / "run" / "bundle")
    assert len(p.predict(_table().tail(5))) == 5


CACHE_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import pandas as pd
    from mmfuse import MultimodalPredictor
    from mmfuse.data import MultimodalDataset

    out, cache, model, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    read, real = [], MultimodalDataset._read_rows

    def counting(self, name, pos, issues):  # the rows whose note this process embeds
        if name == "note":
            read.extend(int(i) for i in self.table.df.index[pos])
        return real(self, name, pos, issues)

    MultimodalDataset._read_rows = counting
    m = MultimodalPredictor("y", encoders={"note": {"name": "hf", "model": model, "train": "frozen"}}, cache=cache,
                            epochs=1, min_steps=0, batch_size=8, accelerator="cpu", devices=devices,
                            contribution=False, log=None, progress=False, out=os.path.join(out, "run"))
    m.fit(pd.read_csv(os.path.join(out, "..", "words.csv")))
    with open(os.path.join(out, f"read_rank{m.rank_}.json"), "w") as f:
        json.dump({"read": read, "embedded": m.metrics_["embedded_rows"]}, f)
''')


@pytest.mark.slow
def test_two_processes_build_one_embedding_cache_that_one_process_then_reads(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    import hf_fixtures as H
    from conftest import word_table

    word_table(120).to_csv(tmp_path / "words.csv", index=False)
    model = H.tiny_bert(tmp_path / "bert")
    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    shared, alone = tmp_path / "shared_cache", tmp_path / "alone_cache"
    two, later, ref = tmp_path / "two", tmp_path / "later", tmp_path / "ref"
    for d in (two, later, ref):
        d.mkdir()
    p = _torchrun(script, two, shared, model, 2, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    reads = [json.loads((two / f"read_rank{r}.json").read_text())["read"] for r in (0, 1)]
    assert not set(reads[0]) & set(reads[1])  # no row embedded twice
    # every row once, by one of the two; a row whose text another split's row also holds may instead be copied
    # from that split's cache entry, if it was built first (timing): such rows are read at most once
    words = pd.read_csv(tmp_path / "words.csv")
    shared_text = set(words.index[words["note"].duplicated(keep=False)])
    assert set(range(120)) - set(reads[0] + reads[1]) <= shared_text
    assert set(reads[0] + reads[1]) <= set(range(120))
    assert abs(len(reads[0]) - len(reads[1])) <= 3  # an even share (one split's odd row each, at most)
    for d, cache in ((later, shared), (ref, alone)):  # one process: on the shared cache, and on its own
        p = subprocess.run([sys.executable, str(script), str(d), str(cache), str(model), "1"], env=env,
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((later / "read_rank0.json").read_text())["read"] == []  # it read the cache the two built
    assert len(json.loads((ref / "read_rank0.json").read_text())["read"]) == 120
    # one consistent cache: the entries the two processes wrote hold what one process computes alone
    files = sorted(f.relative_to(shared) for f in shared.rglob("*.npy") if f.name != "rowkeys.npy")
    assert files and files == sorted(f.relative_to(alone) for f in alone.rglob("*.npy") if f.name != "rowkeys.npy")
    for f in files:
        a, b = np.load(shared / f), np.load(alone / f)
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5), f
        if f.name == "__status__.npy":
            assert (a == 1).all()


def test_a_launch_that_does_not_match_devices_is_refused_and_ranks_are_read(monkeypatch):
    from mmfuse.config import TrainConfig
    from mmfuse.errors import MmfuseError
    from mmfuse.training.trainer import check_launch, launch_rank, launched_world, local_shard

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(k, raising=False)
    assert launched_world() is None and launch_rank() == 0 and local_shard() is None
    check_launch(TrainConfig(devices=1))  # one process: nothing to check
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launched_world()[:2] == (1, 2) and launch_rank() == 1 and local_shard() == (1, 2)
    with pytest.raises(MmfuseError, match="started 2 processes but --devices 1"):
        check_launch(TrainConfig(devices=1))  # each process would train alone and write the same folder
    check_launch(TrainConfig(devices=2))
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher, the second machine's first process: not first
    assert launch_rank() > 0
