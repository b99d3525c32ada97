"""Tables larger than memory (mmfuse.streaming): the reader, splits, streamed fits, the sampler, training, resume."""
import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmfuse import MultimodalPredictor
from mmfuse.datasets_synthetic import write_synthetic_parquet
from mmfuse.errors import InputError, MmfuseError, SchemaError
from mmfuse.io import read_table
from mmfuse.streaming import StreamSampler, hash_split, shuffle_buffer, stream_splits


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream") / "data"
    write_synthetic_parquet(d, 900, image_size=16, row_group_size=64, files=3, split=True)
    return d


def fit_kw(**kw):
    return {**dict(stream=True, epochs=1, batch_size=32, progress=False, log=None, min_steps=0, contribution=False,
                   preprocessing={"image": {"size": 16}}, sample_rows=200, shuffle_buffer=256), **kw}


# --- the reader -----------------------------------------------------------------------------
def test_a_folder_streams_as_row_groups_numbered_across_files(table):
    s = read_table(table, stream=True)
    assert s.n_rows == 900 and len(s.files) == 3 and s.n_units == 3 * 5  # 300 rows a file, 64 a group
    assert s.start_of[5] == 300 and s.rows_of[4] == 300 - 4 * 64
    df = s.unit_frame(5, ["id", "x"])
    assert df.index[0] == 300 and df["id"].iloc[0] == "r000000300"  # row ids run on across the files
    sample = s.sample(100, seed=1)
    assert len(sample) == 100 and sample.index.is_monotonic_increasing
    assert (sample["id"] == [f"r{i:09d}" for i in sample.index]).all()


def test_streaming_refuses_what_it_cannot_read(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(SchemaError, match="streaming reads Parquet"):
        read_table(csv, stream=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="holds no .parquet files"):
        read_table(tmp_path / "empty", stream=True)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"a": [1], "y": ["u"]}), mixed / "a.parquet")
    pq.write_table(pa.table({"a": [1], "z": ["u"]}), mixed / "b.parquet")
    with pytest.raises(SchemaError, match=r"b.parquet has other columns .* adds \['z'\].* lacks \['y'\]"):
        read_table(mixed, stream=True)
    (mixed / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SchemaError, match="b.parquet is not a readable Parquet file"):
        read_table(mixed, stream=True)
    with pytest.raises(SchemaError, match="from a path"):
        read_table(pd.DataFrame({"a": [1]}), stream=True)


def test_dotted_names_many_files_and_pickling(tmp_path):
    """A column named 'a.b' is read as such; a folder of 20 files keeps at most 8 open; the stream pickles
    (spawned workers) without its open files."""
    import pickle

    for i in range(20):
        pq.write_table(pa.table({"a.b": [float(i), 2.0], "y": ["u", "v"]}), tmp_path / f"p{i:02d}.parquet")
    s = read_table(tmp_path, stream=True)
    assert s.columns == ["a.b", "y"]
    assert [s.unit_frame(u, ["a.b"])["a.b"].iloc[0] for u in range(20)] == [float(i) for i in range(20)]
    assert len(s._handles["open"]) == 8
    t = pickle.loads(pickle.dumps(s))
    assert t.unit_frame(3, ["y"])["y"].tolist() == ["u", "v"]


# --- splits ---------------------------------------------------------------------------------
def test_hash_split_is_a_function_of_the_id_alone():
    ids = [f"id{i}" for i in range(20_000)]
    codes = hash_split(ids, 0.1, 0.2, seed=3)
    assert abs((codes == 1).mean() - 0.1) < 0.01 and abs((codes == 2).mean() - 0.2) < 0.01
    # each id keeps its split whatever else is in the table, and another seed deals again
    assert (hash_split(ids[5000:6000], 0.1, 0.2, seed=3) == codes[5000:6000]).all()
    assert (hash_split(ids, 0.1, 0.2, seed=4) != codes).mean() > 0.2


def test_an_id_splits_alike_whatever_its_type_and_a_missing_id_is_named(tmp_path):
    assert len(set(hash_split([17, 17.0, "17", " 17"], 0.3, 0.3, seed=0).tolist())) == 1
    d = tmp_path / "t"
    d.mkdir()
    pd.DataFrame({"id": [1.0, 2.0, None, 4.0] * 10, "x": [1.0, 2.5, 3.0, 4.5] * 10,
                  "y": ["a", "b"] * 20}).to_parquet(d / "p.parquet")
    with pytest.raises(InputError, match="row 2, column 'id': has no id to hash"):
        MultimodalPredictor("y", **fit_kw(split_hash="id")).fit(d)


def test_splits_from_the_split_column_and_blank_targets_left_out(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    df = pd.DataFrame({"x": np.arange(40.0), "y": ["a", "b"] * 20, "split": ["train"] * 30 + ["val"] * 6 + ["test"] * 4})
    df.loc[3, "y"] = None
    df.to_parquet(d / "p.parquet", row_group_size=16)
    s = read_table(d, stream=True)
    from mmfuse.schema import infer_schema

    schema = infer_schema(s.sample_table(100), target="y")
    with pytest.warns(UserWarning, match="1 rows with a blank target"):
        sp = stream_splits(s, schema, "y")
    assert sp.counts() == {"train": 29, "val": 6, "test": 4} and sp.blank_target == {"train": [3]}
    assert sp.ids("val").tolist() == list(range(30, 36))
    df.loc[37, "split"] = "holdout"
    df.to_parquet(d / "p.parquet", row_group_size=16)
    with pytest.raises(InputError, match="row 37.*'split'.*holdout"):
        stream_splits(read_table(d, stream=True), schema, "y")


def test_a_hash_of_few_ids_that_misses_the_fractions_is_warned_of(tmp_path):
    from mmfuse.schema import infer_schema

    d = tmp_path / "t"
    d.mkdir()
    ids = np.arange(400) % 40  # 40 ids: near the fractions asked; 4 ids: far from them
    pd.DataFrame({"id": ids, "few": ids % 4, "x": np.arange(400.0), "y": ["a", "b"] * 200}).to_parquet(d / "p.parquet")
    s = read_table(d, stream=True)
    schema = infer_schema(s.sample_table(1000), target="y")
    codes = {n: hash_split(np.unique(ids % k), 0.2, 0.2, seed=0) for n, k in (("id", 40), ("few", 4))}
    far = {n: [abs((c == v).mean() - 0.2) > 0.1 for v in (1, 2)] for n, c in codes.items()}
    assert far == {"id": [False, False], "few": [True, True]}  # (the data of this test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream_splits(s, schema, "y", split_hash="id", val_fraction=0.2, test_fraction=0.2)
        assert not [w for w in caught if "the hash of" in str(w.message)]
        stream_splits(s, schema, "y", split_hash="few", val_fraction=0.2, test_fraction=0.2)
    said = [str(w.message) for w in caught if "the hash of" in str(w.message)]
    assert len(said) == 2 and "the hash of 'few' put" in said[0] and "the ids are few" in said[0]


def test_a_stream_without_split_column_or_split_hash_is_refused(tmp_path):
    pd.DataFrame({"x": [1.0, 2.5, 3.0, 4.5] * 10, "y": ["a", "b"] * 20}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(MmfuseError, match="--split-hash ID_COLUMN"):
        MultimodalPredictor("y", **fit_kw()).fit(tmp_path / "p.parquet")
    with pytest.raises(MmfuseError, match="split_hash column 'idd'"):
        MultimodalPredictor("y", **fit_kw(split_hash="idd")).fit(tmp_path / "p.parquet")


# --- streamed fits of the preprocessors ----------------------------------------------------------
def test_streamed_fit_learns_what_a_fit_on_all_training_rows_learns(table):
    """Numbers, categories and texts are fitted on every training row (the sample of 50 rows alone misses
    words and gets other statistics), not on the sample."""
    from mmfuse.schema import infer_schema
    from mmfuse.streaming import fit_preprocessors_stream
    from mmfuse.config import TrainConfig

    s = read_table(table, stream=True)
    schema = infer_schema(s.sample_table(200), target="label", overrides={"text": "text"})
    sp = stream_splits(s, schema, "label")
    preps = fit_preprocessors_stream(schema, ["tabular", "text"], sp, tcfg=TrainConfig(sample_rows=50, seed=0))
    train = pd.concat(sp.frames(["x", "shop", "text"], "train"))
    assert len(train) == sp.counts()["train"]
    from mmfuse.data import build_preprocessors

    whole = build_preprocessors(schema, train, inputs={"tabular", "text"})
    assert preps["text"].vocab_ == whole["text"].vocab_
    assert preps["tabular"].cat.vocab_ == whole["tabular"].cat.vocab_
    np.testing.assert_allclose(preps["tabular"].num.center_, whole["tabular"].num.center_, rtol=1e-10)
    np.testing.assert_allclose(preps["tabular"].num.scale_, whole["tabular"].num.scale_, rtol=1e-10)
    np.testing.assert_allclose(preps["tabular"].num.median_, whole["tabular"].num.median_)
    small = build_preprocessors(schema, sp.sample("train", 50, 0), inputs={"tabular", "text"})
    assert small["text"].vocab_ != whole["text"].vocab_ or \
        not np.allclose(small["tabular"].num.center_, whole["tabular"].num.center_)


# --- the sampler ----------------------------------------------------------------------------
def groups(counts):
    counts = np.asarray(counts)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]), counts


def test_shuffle_buffer_draws_a_permutation_that_mixes_within_its_reach():
    rng = np.random.default_rng(0)
    x = np.arange(10_000)
    y = shuffle_buffer(x, 100, rng)
    assert sorted(y.tolist()) == x.tolist() and (y != x).mean() > 0.9
    pos = np.empty_like(y)
    pos[y] = np.arange(len(y))
    assert (np.abs(pos - x) < 100).all()  # a row moves less than the buffer's size
    assert np.abs(pos - x).mean() > 25  # and does move: uniformly within its fill of the buffer (mean 33)


def test_sampler_order_depends_on_seed_and_epoch_only_and_covers_every_row_once():
    g = groups([64, 64, 64, 10, 64])
    s = StreamSampler(g, 32, shuffle=True, seed=1, buffer=50)
    a, b = s.order(0), s.order(1)
    assert sorted(a.tolist()) == list(range(266)) and sorted(b.tolist()) == list(range(266))
    assert (a != b).any() and (s.order(0) == a).all()
    assert (StreamSampler(g, 32, shuffle=True, seed=2, buffer=50).order(0) != a).any()
    assert len(s) == 9 and sum(len(x) for x in s) == 266  # the last batch holds the 10 rows over
    ordered = StreamSampler(g, 100, shuffle=False)
    assert [list(x) for x in ordered][0] == list(range(100)) and len(ordered) == 3


def test_sampler_shards_give_each_process_disjoint_rows_and_the_same_number_of_batches():
    g = groups([64, 63, 64, 5, 64])
    shards = []
    for r in range(2):
        s = StreamSampler(g, 16, shuffle=True, seed=0, buffer=40)
        s.set_shard(r, 2)
        shards.append([list(x) for x in s])
    # 260 rows: 260 // (2 * 16) = 8 full batches a process, the 4 rows over left out of this epoch
    assert len(shards[0]) == len(shards[1]) == 8 and all(len(b) == 16 for b in shards[0] + shards[1])
    a, b = set(sum(shards[0], [])), set(sum(shards[1], []))
    assert not a & b and len(a | b) == 16 * 8 * 2


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 2), (3, 1)])
def test_each_row_group_is_read_by_one_worker_of_one_process_but_at_the_cuts(world, workers):
    """Over an epoch, the row groups each (process, worker) loads: every row group once, and no more than
    one extra reader at each cut between pieces (world * workers - 1 cuts). Reading every other row of every
    row group in each process and worker (as a sampler that deals rows in turn would) reads each group
    world * workers times."""
    g = groups([37] * 30 + [5, 90, 12])
    loads, rows = 0, []
    for r in range(world):
        s = StreamSampler(g, 16, shuffle=True, seed=4, buffer=60, workers=workers)
        s.set_shard(r, world)
        readers = {}
        for k, b in enumerate(s):
            for u in b.load:
                readers.setdefault((k % workers, u), 0)
                readers[(k % workers, u)] += 1
            rows += list(b)
        loads += len(readers)
    n = sum(g[1])
    assert len(rows) == len(set(rows)) and len(rows) == (n if world == 1 else n // (16 * world) * 16 * world)
    assert 33 <= loads <= 33 + world * workers - 1


def test_sampler_tells_each_worker_every_row_it_will_need_once():
    g = groups([50, 50, 50, 50])
    s = StreamSampler(g, 16, shuffle=True, seed=0, buffer=30, workers=3)
    s.skip(2)
    held = {w: set() for w in range(3)}
    batches = list(s)
    assert len(batches) == len(s) - 2
    for k, b in enumerate(batches):
        w = k % 3
        assert b.fresh == (k < 3)
        for u, pos in b.load.items():
            assert not set(pos.tolist()) & held[w]
            held[w] |= set(pos.tolist())
        assert set(b) <= held[w]  # every row of the batch was loaded by its own worker, now or before
        held[w] -= set(b)
    assert all(not h for h in held.values())  # and nothing loaded is left over
    full = list(StreamSampler(g, 16, shuffle=True, seed=0, buffer=30, workers=3))
    assert [list(b) for b in batches] == [list(b) for b in full[2:]]  # skipping resumes the same order


def test_each_piece_shuffles_by_its_own_seed_and_a_resume_keeps_the_order_whatever_the_workers():
    one = groups([200])  # one row group: no permutation of row groups to hide the pieces' shuffles
    s = StreamSampler(one, 10, shuffle=True, seed=0, buffer=100, workers=2)
    p0, p1 = s.pieces(0)
    assert sorted(p0) == list(range(100)) and not (p1 - 100 == p0).all()  # each piece, its own draw
    assert not (s.pieces(1)[0] == p0).all()  # and each epoch
    g = groups([100] * 7)
    killed = StreamSampler(g, 16, shuffle=True, seed=5, buffer=100, workers=2)
    done = [r for b in list(killed)[:7] for r in b]
    for workers in (0, 2, 3):  # resumed with fewer, as many, more workers
        resumed = StreamSampler(g, 16, shuffle=True, seed=5, buffer=100, workers=workers)
        resumed.skip(7, killed.layout())
        seen = done + [r for b in resumed for r in b]
        assert sorted(seen) == list(range(700))
    after = StreamSampler(g, 16, True, 5, 100, 3)
    after.set_epoch(1)
    assert [list(b) for b in resumed] == [list(b) for b in after]  # the next epoch: in its own workers' order


def test_a_worker_holds_about_the_buffer_and_a_row_group_whatever_the_table():
    """The rows read ahead and not yet batched, at the worst moment of a pass over 200 row groups of 500 rows
    with a buffer of 2,000 rows, 2 workers: no more than the worker's share of the buffer, the rest of the row
    group read last (the rows of a row group are read together) and a batch."""
    g = groups([500] * 200)
    s = StreamSampler(g, 64, shuffle=True, seed=0, buffer=2000, workers=2)
    held, worst = [0, 0], 0
    for k, b in enumerate(s):
        w = k % 2
        held[w] += sum(len(p) for p in b.load.values())
        worst = max(worst, held[w])
        held[w] -= len(b)
    assert worst <= 2000 // 2 + 500 + 64


# --- training -------------------------------------------------------------------------------
def test_streamed_fit_trains_scores_and_saves_a_bundle_that_predicts_the_parquet_table(table, tmp_path, monkeypatch):
    import mmfuse.data

    started, context = [], mmfuse.data.worker_context
    monkeypatch.setattr(mmfuse.data, "worker_context", lambda: started.append(1) or context())
    m = MultimodalPredictor("label", out=tmp_path / "run", **fit_kw(epochs=2, num_workers=2))
    m.fit(table)
    assert started  # its workers came from the fork server (not forked from a process with pyarrow's threads)
    assert m.metrics_["rows"] == {"train": 720, "val": 90, "test": 90}  # the split column, as written
    assert m.metrics_["split_source"].startswith("validation: rows with split column 'split' = val")
    assert len(m.history_) == 2 and m.metrics_["test"]["n"] == 90
    assert m.metrics_["val"]["accuracy"] > 0.6  # three classes: chance is 1/3
    assert sorted(m.splits_["ids"]["val"]) == m.splits_["ids"]["val"] and len(m.splits_["ids"]["train"]) == 720
    from mmfuse.batch import predict_file
    from mmfuse.bundle import Predictor

    pred = Predictor.load(tmp_path / "run" / "bundle")
    files = sorted(table.glob("*.parquet"))
    rep = predict_file(pred, files[0], tmp_path / "p.csv")
    out = pd.read_csv(tmp_path / "p.csv")
    assert rep.predicted == 300 and len(out) == 300
    # the bundle reads the rows as training read them: its predictions on the validation rows score as fit did
    val = pd.concat([pd.read_parquet(f) for f in files])
    val = val[val["split"] == "val"]
    from mmfuse.api import evaluate_predictor

    assert abs(evaluate_predictor(pred, val.reset_index(drop=True))["accuracy"] - m.metrics_["val"]["accuracy"]) < 1e-9


def test_streamed_fit_with_bad_images_names_the_row_or_counts_what_it_skipped(tmp_path):
    d = tmp_path / "t"
    write_synthetic_parquet(d, 200, image_size=16, row_group_size=50, split=True)
    f = next(d.glob("*.parquet"))
    df = pd.read_parquet(f)
    df.loc[[120, 171], "image"] = b"\x89PNG broken"
    f.unlink()  # two files: a row is named by its number across them and where it is in its file
    df.iloc[:100].to_parquet(d / "a.parquet", row_group_size=50)
    df.iloc[100:].to_parquet(d / "b.parquet", row_group_size=50)
    train = set(df.index[df["split"] == "train"])
    bad = [r for r in (120, 171) if r in train]
    assert bad, "the broken rows must include a training row"
    where = "|".join(f"{r} \\(row {r - 100} of b.parquet\\)" for r in bad)
    for workers in (0, 1):  # raised in the main process, and in a loader worker
        with pytest.raises(InputError, match=f"row ({where}), column 'image': is not a readable image"):
            MultimodalPredictor("label", **fit_kw(num_workers=workers)).fit(d)
    m = MultimodalPredictor("label", on_bad_input="skip", **fit_kw()).fit(d)
    print(m.metrics_["bad_input"])
    assert f"train: {len(bad)} rows with bad input skipped ('image': {len(bad)})" in m.metrics_["bad_input"]
    assert m.metrics_["rows"]["train"] == len(train)  # counted in the split, skipped (and listed) when read


def test_a_bad_number_is_skipped_under_skip_and_named_under_raise(tmp_path):
    """A bad cell of an input read up front (numbers, categories, texts): the row leaves its batch."""
    d = tmp_path / "t"
    write_synthetic_parquet(d, 200, image_size=16, row_group_size=50, split=True)
    f = next(d.glob("*.parquet"))
    df = pd.read_parquet(f)
    df["x"] = df["x"].astype(str)  # numbers as text, as a CSV export writes them
    row = int(df.index[df["split"] == "train"][7])
    df.loc[row, "x"] = "abc"
    df.to_parquet(f, row_group_size=50)
    with pytest.raises(InputError, match=f"row {row} \\(row {row} of {f.name}\\), column 'x'"):
        MultimodalPredictor("label", columns={"x": "numeric"}, **fit_kw()).fit(d)
    m = MultimodalPredictor("label", columns={"x": "numeric"}, on_bad_input="skip", **fit_kw()).fit(d)
    assert "train: 1 rows with bad input skipped ('x': 1)" in m.metrics_["bad_input"]


def test_stream_with_options_it_does_not_support_is_refused(table, tmp_path):
    with pytest.raises(MmfuseError, match="val is not supported"):
        MultimodalPredictor("label", **fit_kw()).fit(table, val=table)
    with pytest.raises(MmfuseError, match="group_by_length"):
        MultimodalPredictor("label", group_by_length=True, **fit_kw()).fit(table)


# --- resume ---------------------------------------------------------------------------------
RUNNER = """
import json, os, sys
import lightning as L
from mmfuse import MultimodalPredictor

data, out, log, kill_at, resume = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"

class Record(L.Callback):  # each trained batch's rows, in order; the victim dies after step kill_at
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        with open(log, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "rows": batch["row"].tolist()}) + "\\n")
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), 9)

if __name__ == "__main__":  # (a streamed table's loader workers import this script, as spawn does)
    m = MultimodalPredictor("label", stream=os.environ["STREAM"] == "1", epochs=2, batch_size=16, progress=False,
                            log=None, min_steps=0, contribution=False, preprocessing={"image": {"size": 16}},
                            sample_rows=200, shuffle_buffer=100, checkpoint_every=7,
                            num_workers=int(os.environ.get("WORKERS", "0")), out=out, resume=resume, seed=5)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(data, callbacks=[Record()])
    print(json.dumps([str(w.message) for w in caught if "resum" in str(w.message)]))
    print(json.dumps(m.metrics_["resumed_after_steps"]))
    print(json.dumps(m.metrics_["history"]))
"""


def run_steps(log):
    return [json.loads(x) for x in log.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("workers,stream", [(0, True), (2, True), (0, False)])
def test_a_run_killed_mid_epoch_resumes_after_the_rows_it_had_trained_on(table, tmp_path, workers, stream):
    """Killed after step 10 with checkpoints every 7 steps: the resumed run trains steps 8.. of the first epoch
    on the rows the killed run had not reached at its checkpoint. In the interrupted epoch every training row
    is trained on exactly once (steps 1-7 before the kill, 8.. after), and the run ends as one that never stopped.
    Streamed (the shuffle-buffer sampler, in the main process and in 2 workers) and in memory (one file of the
    table, read whole)."""
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    env = {**os.environ, "WORKERS": str(workers), "STREAM": "1" if stream else "0"}
    if not stream:
        table = sorted(table.glob("*.parquet"))[0]
    n_train = 720 if stream else 240
    ref = subprocess.run([sys.executable, str(script), str(table), str(tmp_path / "ref"), str(tmp_path / "ref.log"),
                          "-1", "0"], capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    victim = subprocess.run([sys.executable, str(script), str(table), str(tmp_path / "run"), str(tmp_path / "a.log"),
                             "10", "0"], capture_output=True, text=True, env=env)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, str(script), str(table), str(tmp_path / "run"),
                              str(tmp_path / "b.log"), "-1", "1"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref_steps, a, b = run_steps(tmp_path / "ref.log"), run_steps(tmp_path / "a.log"), run_steps(tmp_path / "b.log")
    per_epoch = n_train // 16
    assert len(ref_steps) == 2 * per_epoch and [s["step"] for s in a] == list(range(1, 11))
    assert b[0]["step"] == 8 and b[0]["epoch"] == 0  # after the checkpoint of step 7, in the same epoch
    seen = [r for s in a if s["step"] <= 7 for r in s["rows"]] + [r for s in b if s["epoch"] == 0 for r in s["rows"]]
    assert len(seen) == len(set(seen)) == n_train  # no row twice, none skipped
    assert [s["rows"] for s in b] == [s["rows"] for s in ref_steps[7:]]  # the batches of a run that never stopped
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == json.loads(ref.stdout.strip().splitlines()[-1])
    warned, after = (json.loads(x) for x in resumed.stdout.strip().splitlines()[-3:-1])
    assert after == 7 and warned == []  # resumed after step 7 of its epoch, without Lightning's false alarm


def test_a_script_without_the_main_guard_is_told_to_add_it(table, tmp_path):
    """A streamed table's workers start from the fork server and import the script that started training: fit()
    at the script's top level runs again in the worker, which refuses it; the script ends with that advice."""
    script = tmp_path / "s.py"
    script.write_text("from mmfuse import MultimodalPredictor\n"
                      "MultimodalPredictor('label', stream=True, epochs=1, num_workers=1, progress=False, log=None, "
                      f"preprocessing={{'image': {{'size': 16}}}}, sample_rows=100, out={str(tmp_path / 'run')!r})"
                      f".fit({str(table)!r})\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode != 0 and "fit() was called while a loader worker imported the script" in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("mmfuse.errors.MmfuseError: DataLoader worker") and \
        "a script keeps its code under 'if __name__ == \"__main__\":'" in last


# --- the command line -----------------------------------------------------------------------
def test_the_command_line_streams_and_refuses_careless_options_in_one_line(table, tmp_path, capsys):
    from test_cli_errors import cli_error

    from mmfuse.cli import main

    csv = tmp_path / "t.csv"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_csv(csv, index=False)
    assert "streaming reads Parquet" in cli_error(capsys, "fit", csv, "--target", "b", "--stream", "-o", tmp_path / "r")
    assert "add stream=True (--stream)" in cli_error(capsys, "fit", table, "--target", "label", "--split-hash", "id",
                                                     "-o", tmp_path / "r")
    assert "or train on the folder's Parquet files without loading them (mmfuse fit --stream, stream=True)" in \
        cli_error(capsys, "fit", table, "--target", "label", "-o", tmp_path / "r")
    assert "must be an integer >= 1" in cli_error(capsys, "fit", table, "--target", "label", "--stream",
                                                  "--shuffle-buffer", "0", "-o", tmp_path / "r")
    assert "--shuffle-buffer and --sample-rows set how a streamed table is read: add --stream, or leave them out" in \
        cli_error(capsys, "fit", csv, "--target", "b", "--shuffle-buffer", "64", "--sample-rows", "10", "-o",
                  tmp_path / "r")
    main(["fit", str(table), "--target", "label", "--stream", "--split-hash", "id", "--epochs", "1",
          "--image-size", "16", "--sample-rows", "100", "-o", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    # the hash decides, not the table's split column (which has 90 validation rows)
    assert "(10% of the ids of 'id' by hash)" in out and "validation 90 " not in out
    assert (tmp_path / "run" / "bundle" / "config.json").exists()
    # it keeps no fingerprints of its rows: evaluate says it cannot tell its training rows, and where the test is
    main(["evaluate", str(tmp_path / "run" / "bundle"), str(sorted(table.glob("*.parquet"))[0]), "--no-contribution"])
    assert "note: this model trained on a streamed table, of whose rows it keeps no fingerprint" in \
        capsys.readouterr().out


DDP = """
import json, os, sys
import lightning as L
from mmfuse import MultimodalPredictor

data, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]  # mode: full, kill (both die after step 9), resume

class Record(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        with open(os.path.join(out, f"rows_{mode}_{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "rows": batch["row"].tolist()}) + "\\n")
        if mode == "kill" and trainer.global_step == 9:
            os._exit(3)

if __name__ == "__main__":  # (a loader worker of a distributed run imports this script, as spawn does)
    m = MultimodalPredictor("label", stream=True, epochs=2, batch_size=16, progress=False, log=None, min_steps=0,
                            contribution=False, preprocessing={"image": {"size": 16}}, sample_rows=200,
                            shuffle_buffer=100, devices=2, accelerator="cpu", out=os.path.join(out, "run"),
                            num_workers=1, checkpoint_every=6, resume=mode == "resume")
    m.fit(data, callbacks=[Record()], echo=print if os.environ["RANK"] == "0" else None)
    if m.rank_ == 0:
        print("RESULT", json.dumps({"history": m.history_, "after": m.metrics_["resumed_after_steps"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_two_processes_stream_disjoint_rows_in_step_and_resume_mid_epoch(table, tmp_path, resume):
    """torchrun, 2 CPU processes (gloo), one worker each: each process reads its half of the row groups
    (each epoch's), both take the same number of steps, and only the first writes the run folder. With ``resume``,
    killed after step 9 with checkpoints every 6 steps, the run resumes at step 7 of epoch 1 on each process,
    trains on the rows of the run that never stopped, each once, and ends with its history. (Forked, a worker
    of a process in a process group could hang at its start: :func:`mmfuse.data.worker_context`.)"""
    from mmfuse.bench import free_port

    script = tmp_path / "ddp.py"
    script.write_text(DDP)

    def torchrun(mode):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(table),
               str(tmp_path), mode]
        return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)

    def steps(mode, r):
        return [json.loads(x) for x in (tmp_path / f"rows_{mode}_{r}.jsonl").read_text().splitlines()]

    def result(p):
        return json.loads([x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])

    p = torchrun("full")
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [steps("full", r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * (360 // 16)  # 720 training rows, 360 a process, 22 steps
    for epoch in (0, 1):
        a, b = ({r for s in st if s["epoch"] == epoch for r in s["rows"]} for st in ranks)
        assert not a & b and len(a) == len(b) == 22 * 16  # disjoint shares; 16 rows of 720 left out this epoch
    assert "16 training rows an epoch left out" in p.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2
    full_history = result(p)["history"]
    if not resume:
        return
    import shutil

    shutil.rmtree(tmp_path / "run")
    assert torchrun("kill").returncode != 0 and not (tmp_path / "run" / "metrics.json").exists()
    p = torchrun("resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert result(p)["after"] == 6
    for r in (0, 1):
        killed, resumed, full = steps("kill", r), steps("resume", r), ranks[r]
        assert [s["step"] for s in killed] == list(range(1, 10)) and resumed[0]["step"] == 7
        seen = [x for s in killed if s["step"] <= 6 for x in s["rows"]] + \
            [x for s in resumed if s["epoch"] == 0 for x in s["rows"]]
        assert sorted(seen) == sorted(x for s in full if s["epoch"] == 0 for x in s["rows"])
        assert len(seen) == len(set(seen)) == 22 * 16
        assert [s["rows"] for s in resumed] == [s["rows"] for s in full[6:]]
    resumed_history = result(p)["history"]
    # the same epochs, the training loss within float32 rounding (the first process holds both processes'
    # partial sums of the interrupted epoch after the resume: the sum is added in another order)
    assert [{k: v for k, v in h.items() if k != "train_loss"} for h in resumed_history] == \
        [{k: v for k, v in h.items() if k != "train_loss"} for h in full_history]
    assert [h["train_loss"] for h in resumed_history] == pytest.approx([h["train_loss"] for h in full_history],
                                                                       rel=1e-6)


def test_the_split_hash_column_is_not_an_input_and_unseen_categories_are_counted_once(tmp_path):
    """Ids shared by rows (a product id): the column decides the splits and is not read as a category, whose
    every validation value would be unseen. An unseen category is counted once per row, however many passes
    read the validation rows (each epoch and the scoring)."""
    d = tmp_path / "t"
    write_synthetic_parquet(d, 300, image_size=16, row_group_size=50)
    f = next(d.glob("*.parquet"))
    df = pd.read_parquet(f)
    df["product"] = np.arange(300) // 3
    codes = hash_split(df["product"].to_numpy(), 0.1, 0.1, seed=0)
    val = np.flatnonzero(codes == 1)
    df.loc[val[:4], "shop"] = "brand-new shop"
    df.to_parquet(f, row_group_size=50)
    m = MultimodalPredictor("label", **fit_kw(split_hash="product", epochs=2)).fit(d)
    assert "product" not in {c for p in m.predictor_.preprocessors.values() for c in p.columns}
    assert m.metrics_["rows"]["val"] == len(val)
    assert "val: unseen categories mapped to 'unknown' ('shop': 4)" in m.metrics_["bad_input"]
    with pytest.raises(MmfuseError, match="--split-hash shop"):
        MultimodalPredictor("label", columns={"shop": "group"}, **fit_kw(split_hash="product")).fit(d)


def test_a_split_column_with_odd_values_names_only_those_and_an_unseen_label_names_its_row(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    split = ["Train"] * 30 + ["validation"] * 6 + ["holdout"] * 4
    x = np.random.default_rng(0).normal(size=40)
    pd.DataFrame({"x": x, "y": ["a", "b"] * 20, "split": split}).to_parquet(d / "p.parquet")
    with pytest.raises(MmfuseError) as e:
        MultimodalPredictor("y", **fit_kw()).fit(d)
    assert "('holdout')" in str(e.value)
    y = ["a", "b"] * 20
    y[38] = "c"  # a test row's label that no training row has: named by its row in the table
    pd.DataFrame({"x": x, "y": y, "split": ["train"] * 30 + ["val"] * 6 + ["test"] * 4}
                 ).to_parquet(d / "p.parquet")
    with pytest.raises(InputError, match="row 38, column 'y': has the label 'c'"):
        MultimodalPredictor("y", **fit_kw()).fit(d)
