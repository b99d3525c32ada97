import os

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse import BadInputPolicy, MultimodalDataset, build_preprocessors, infer_schema, make_loader, read_table
from mmfuse._cache import clear_cache, list_cache
from mmfuse.errors import InputError, MmfuseError
from mmfuse.tasks import BinaryTask

OPTS = {"image": {"size": 16}, "audio": {"sample_rate": 8000, "duration": 0.25, "n_mels": 16},
        "timeseries": {"length": 16}, "text": {"min_freq": 1, "max_length": 12}}


def setup(path, **kw):
    table = read_table(path)
    schema = infer_schema(table, target="label")
    preps = build_preprocessors(schema, table, OPTS)
    target = BinaryTask("label").fit(table.df)
    return table, preps, target


def test_batches_have_inputs_masks_targets(mm_table):
    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target)
    b = next(iter(make_loader(ds, batch_size=8)))
    assert set(b["inputs"]) == {"clip", "motion", "photo", "review", "tabular"}
    assert b["inputs"]["photo"].shape == (8, 1, 16, 16) and b["inputs"]["clip"].shape[:2] == (8, 16)
    assert b["inputs"]["tabular"]["num"].shape == (8, 2) and b["inputs"]["tabular"]["cat"].shape == (8, 1)
    assert b["mask"]["review"].tolist() == [True] * 3 + [False] + [True] * 4  # row 3 has no review
    assert b["mask"]["photo"].tolist() == [True] * 7 + [False]  # row 7 has no photo
    assert (b["inputs"]["photo"][7] == 0).all() and b["target"].tolist() == [0, 1] * 4
    assert "issues" not in b


def test_workers_give_the_same_batches(mm_table):
    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target)
    a = list(make_loader(ds, batch_size=5, num_workers=0))
    b = list(make_loader(ds, batch_size=5, num_workers=2))
    for x, y in zip(a, b):
        for k in x["inputs"]:
            xa, ya = x["inputs"][k], y["inputs"][k]
            if isinstance(xa, dict):
                assert all(torch.equal(xa[j], ya[j]) for j in xa)
            else:
                assert torch.equal(xa, ya)


def test_workers_of_a_process_in_a_process_group_come_from_a_fork_server(mm_table):
    """In a process group (distributed training) a forked worker can hang at its start (see ``worker_context``):
    the workers start from a fork server, watch the process they serve, and give the same batches."""
    import torch.distributed as dist

    from mmfuse.bench import free_port

    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target)
    a = list(make_loader(ds, batch_size=5, num_workers=0))
    forked = make_loader(ds, batch_size=5, num_workers=1)
    assert len(list(forked)) == len(a) and forked._workers.multiprocessing_context is None  # one process: fork
    loader = make_loader(ds, batch_size=5, num_workers=1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        b = list(loader)
    finally:
        dist.destroy_process_group()
    assert loader._workers.multiprocessing_context.get_start_method() == "forkserver"
    assert loader._workers.worker_init_fn.args[0] == os.getpid()  # exit_with, watching this process
    assert [x["row"].tolist() for x in a] == [y["row"].tolist() for y in b]
    assert all(torch.equal(x["inputs"]["photo"], y["inputs"]["photo"]) for x, y in zip(a, b))


def _serve(pid, started):  # a loader worker's life, in a process the fork server started
    from mmfuse.data import exit_with

    exit_with(pid, started)
    import time

    time.sleep(120)


@pytest.mark.parametrize("end", ["ended", "killed, not collected", "id given to a later process"])
def test_a_worker_from_the_fork_server_ends_with_the_process_it_serves(end):
    """Its parent is the fork server, not the process whose loader it serves: killed outright, that process would
    leave it (and the fork server) running. A killed process whose parent has not collected it yet (a zombie, as
    while ``subprocess.run`` reads its output, which the worker holds) has ended too."""
    import multiprocessing
    import subprocess
    import sys

    from mmfuse.data import _started

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    started = _started(owner.pid) + (1 if end.startswith("id") else 0)
    worker = multiprocessing.get_context("forkserver").Process(target=_serve, args=(owner.pid, started))
    worker.start()
    try:
        if end != "id given to a later process":
            owner.kill()
        if end == "ended":
            owner.wait()
        worker.join(timeout=60)
        assert worker.exitcode == 1  # ended by exit_with (alive: None)
    finally:
        worker.kill()
        owner.kill()
        owner.wait()


def test_fit_called_by_a_worker_importing_the_training_script_is_a_clear_error(monkeypatch):
    """A fork-server (or spawn) worker imports the script that started training; a script without the
    ``__main__`` guard would start training again in every worker."""
    import multiprocessing

    from mmfuse import MultimodalPredictor

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(MmfuseError, match="put the script's code under 'if __name__ == \"__main__\":'"):
        MultimodalPredictor("y").fit(pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]}))


def break_files(tmp_path):
    (tmp_path / "img" / "2.png").write_bytes(b"not an image")
    (tmp_path / "wav" / "4.wav").unlink()


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_policy_names_row_column_file(mm_table, workers):
    table, preps, target = setup(mm_table)
    break_files(mm_table.parent)
    ds = MultimodalDataset(table, preps, target)
    with pytest.raises(InputError, match=r"^row 2, column 'photo': file 'img/2.png' is not a readable image"):
        list(make_loader(ds, batch_size=4, num_workers=workers))


def test_skip_policy_drops_rows_and_reports_them(mm_table, tmp_path):
    table, preps, target = setup(mm_table)
    break_files(mm_table.parent)
    ds = MultimodalDataset(table, preps, target, on_bad_input="skip")
    rows = torch.cat([b["row"] for b in make_loader(ds, batch_size=4, num_workers=2)]).tolist()
    assert rows == [r for r in range(24) if r not in (2, 4)]
    assert ds.report.counts() == {"clip": 1, "photo": 1} and ds.report.rows() == [2, 4]
    assert "2 rows with bad input skipped ('clip': 1, 'photo': 1)" in ds.report.summary()
    path = ds.report.write(tmp_path / "run")
    import json

    saved = json.loads(path.read_text())
    assert saved["rows"] == [2, 4] and saved["counts"] == {"clip": 1, "photo": 1} and len(saved["issues"]) == 2


def test_missing_policy_masks_the_input(mm_table):
    table, preps, target = setup(mm_table)
    break_files(mm_table.parent)
    ds = MultimodalDataset(table, preps, target, on_bad_input="missing")
    b = next(iter(make_loader(ds, batch_size=8)))
    assert len(b["row"]) == 8 and not b["mask"]["photo"][2] and not b["mask"]["clip"][4] and b["mask"]["clip"][2]
    assert ds.report.counts() == {"clip": 1, "photo": 1}


def test_eager_bad_cells_follow_the_policy(mm_table):
    table, preps, target = setup(mm_table)
    df = table.df.copy()
    df["age"] = df["age"].astype(object)
    df.loc[6, "age"] = "n/a?"
    df.loc[8, "age"] = float("inf")
    with pytest.raises(InputError, match=r"row 6, column 'age': holds 'n/a\?', which is not a number"):
        MultimodalDataset(read_table(df, root=table.root), preps, target)
    ds = MultimodalDataset(read_table(df, root=table.root), preps, target, on_bad_input="skip")
    assert len(ds) == 22 and ds.report.rows() == [6, 8]
    ds = MultimodalDataset(read_table(df, root=table.root), preps, target, on_bad_input="missing")
    assert len(ds) == 24 and not ds[6]["mask"]["tabular"][0]


def test_unseen_category_is_counted(mm_table):
    table, preps, target = setup(mm_table)
    df = table.df.copy()
    df.loc[0, "color"] = "purple"
    ds = MultimodalDataset(read_table(df, root=table.root), preps, target)
    assert ds.report.unknown_categories == {"color": 1} and "unseen categories" in ds.report.summary()
    assert ds[0]["inputs"]["tabular"]["cat"].tolist() == [[1]]


def test_input_absent_from_table_or_every_row(mm_table):
    table, preps, _ = setup(mm_table)
    df = table.df.drop(columns=["photo", "label"])
    df["clip"] = None
    ds = MultimodalDataset(read_table(df, root=table.root), preps)
    b = next(iter(make_loader(ds, batch_size=6)))
    assert not b["mask"]["photo"].any() and not b["mask"]["clip"].any() and "target" not in b
    assert b["inputs"]["photo"].shape == (6, 1, 16, 16)
    with pytest.raises(MmfuseError, match="lacks columns 'age' \\(the input reads"):
        MultimodalDataset(read_table(table.df.drop(columns=["age"]), root=table.root), preps)
    with pytest.raises(MmfuseError, match="lacks columns 'age' \\(is it 'ages'\\?\\)"):  # renamed: a guess
        MultimodalDataset(read_table(table.df.rename(columns={"age": "ages"}), root=table.root), preps)


def test_missing_target_row(mm_table):
    table, preps, target = setup(mm_table)
    df = table.df.copy()
    df.loc[1, "label"] = None
    with pytest.raises(InputError, match="row 1, column 'label': has no target value"):
        MultimodalDataset(read_table(df, root=table.root), preps, target)
    assert len(MultimodalDataset(read_table(df, root=table.root), preps, target, on_bad_input="skip")) == 23


def count_reads(monkeypatch, prep):
    calls = []
    orig = prep.read

    def read(cells, row, ctx):
        calls.append(row)
        return orig(cells, row, ctx)

    monkeypatch.setattr(prep, "read", read)
    return calls


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_cache_decodes_each_file_once(mm_table, tmp_path, monkeypatch, kind):
    table, preps, target = setup(mm_table)
    calls = count_reads(monkeypatch, preps["photo"])
    cache = "memory" if kind == "memory" else tmp_path / "cache"
    ds = MultimodalDataset(table, preps, target, cache=cache)
    first = torch.cat([b["inputs"]["photo"] for b in make_loader(ds, batch_size=5)])  # rows 0..23 in order
    assert len(calls) == 24
    shuffled = list(make_loader(ds, batch_size=5, shuffle=True))
    assert len(calls) == 24  # nothing decoded again
    order = torch.cat([b["row"] for b in shuffled])
    second = torch.cat([b["inputs"]["photo"] for b in shuffled])
    assert not torch.equal(order, torch.arange(24))  # the rows did come in another order...
    assert torch.equal(second, first[order])  # ...and each one got its own cached image
    if kind == "disk":  # a new dataset (a new run) reuses the disk cache
        ds2 = MultimodalDataset(table, preps, target, cache=cache)
        list(make_loader(ds2, batch_size=5))
        assert len(calls) == 24


def test_cache_shared_with_workers(mm_table, tmp_path):
    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target, cache=tmp_path / "c")
    a = [b["inputs"]["clip"] for b in make_loader(ds, batch_size=6, num_workers=2)]
    assert (ds._caches["clip"].status == 1).all()  # filled by the workers
    b = [b["inputs"]["clip"] for b in make_loader(ds, batch_size=6, num_workers=2)]
    assert all(torch.allclose(x, y) for x, y in zip(a, b))


def test_disk_cache_is_invalidated_by_changed_files_and_settings(mm_table, tmp_path):
    from conftest import write_png

    table, preps, target = setup(mm_table)
    cache = tmp_path / "cache"
    d1 = MultimodalDataset(table, preps, target, cache=cache).cache_dirs["photo"]
    assert MultimodalDataset(table, preps, target, cache=cache).cache_dirs["photo"] == d1
    import os
    import time

    f = mm_table.parent / "img" / "0.png"
    write_png(f, np.random.default_rng(5), size=(30, 30))
    os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    d2 = MultimodalDataset(table, preps, target, cache=cache).cache_dirs["photo"]
    assert d2 != d1
    preps["photo"].size = 8
    assert MultimodalDataset(table, preps, target, cache=cache).cache_dirs["photo"] != d2
    entries = list_cache(cache)
    assert len(entries) >= 3 and all(e["bytes"] > 0 for e in entries)
    assert clear_cache(cache) == len(entries) and list_cache(cache) == []


def test_policy_names_are_checked():
    with pytest.raises(MmfuseError, match="unknown bad-input policy 'skipp'.*Did you mean 'skip'"):
        BadInputPolicy.parse("skipp")


def test_order_and_augmentation_depend_only_on_seed_and_epoch(mm_table):
    table, preps, target = setup(mm_table)
    preps["photo"].augment = ("crop", "flip")
    ds = MultimodalDataset(table, preps, target, train=True)

    def run(workers, epoch):
        ld = make_loader(ds, batch_size=5, shuffle=True, num_workers=workers, seed=1)
        ld.set_epoch(epoch)
        bs = list(ld)
        return torch.cat([b["row"] for b in bs]), torch.cat([b["inputs"]["photo"] for b in bs])

    r0, x0 = run(0, 0)
    r2, x2 = run(2, 0)
    assert torch.equal(r0, r2) and torch.equal(x0, x2)  # same batches, same augmentation, any workers
    r1, x1 = run(0, 1)
    assert not torch.equal(r0, r1) and sorted(r1.tolist()) == list(range(24))
    ld = make_loader(ds, batch_size=5, shuffle=True, seed=1)
    first, second = [torch.cat([b["row"] for b in ld]) for _ in range(2)]
    assert torch.equal(first, r0) and torch.equal(second, r1)  # epochs advance by themselves


def test_fully_cached_dataset_skips_the_workers(mm_table):
    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target, cache="memory")
    assert not ds.fully_cached()
    ld = make_loader(ds, batch_size=6, num_workers=2)
    cold = list(ld)
    assert ds.fully_cached()
    warm = list(ld)
    assert all(torch.equal(a["inputs"]["clip"], b["inputs"]["clip"]) for a, b in zip(cold, warm))


def test_group_by_length_batches_similar_lengths_and_stays_seeded():
    from mmfuse.data import EpochBatchSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=1000)

    def epochs(**kw):
        s = EpochBatchSampler(1000, 10, shuffle=True, seed=3, **kw)
        return [list(s) for _ in range(2)]

    grouped, plain = epochs(lengths=lengths, group_size=20), epochs()
    for batches in grouped:
        assert sorted(i for b in batches for i in b) == list(range(1000))  # every row once per epoch
    spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
    assert spread(grouped[0]) < spread(plain[0]) / 5  # short texts batched with short ones
    assert grouped == epochs(lengths=lengths, group_size=20)  # same seed, same batches
    assert grouped[0] != grouped[1]  # a new order each epoch
    assert [len(b) for b in grouped[0]].count(10) == 100
    dropped = list(EpochBatchSampler(1000, 30, shuffle=True, drop_last=True, lengths=lengths))
    assert len(dropped) == 33 and {len(b) for b in dropped} == {30}
    with pytest.raises(ValueError, match="lengths has 3 entries for 1000 rows"):
        EpochBatchSampler(1000, 10, shuffle=True, lengths=[1, 2, 3])


def test_text_lengths_count_characters_of_text_inputs(mm_table):
    table, preps, target = setup(mm_table)
    ds = MultimodalDataset(table, preps, target)
    want = [0 if not isinstance(v, str) or not v.strip() else len(v) for v in table.df["review"]]
    assert ds.text_lengths().tolist() == want
    ld = make_loader(ds, batch_size=5, shuffle=True, group_by_length=True)
    assert sorted(torch.cat([b["row"] for b in ld]).tolist()) == list(range(len(ds)))


def bad_table(mm_table):
    """The test table with good, missing and bad cells in eager and lazy inputs: row 2's image
    is not an image, row 4's audio file is gone, row 6's age is not a number; row 3 has no
    review and row 7 no photo."""
    table, preps, target = setup(mm_table)
    break_files(mm_table.parent)
    df = table.df.copy()
    df["age"] = df["age"].astype(object)
    df.loc[6, "age"] = "n/a?"
    return read_table(df, root=table.root), preps, target


def read_all(table, preps, target, eager: bool, policy: str):
    for p in preps.values():
        p.eager = eager  # every input read the eager way, or every one the lazy way
    ds = MultimodalDataset(table, preps, target, on_bad_input=policy)
    batches = list(make_loader(ds, batch_size=5))

    def cat(xs):
        return {k: cat([x[k] for x in xs]) for k in xs[0]} if isinstance(xs[0], dict) else torch.cat(xs)

    out = {k: cat([b[k] for b in batches]) for k in ("inputs", "mask", "row", "target")}
    report = ds.report.to_dict()
    report["issues"] = sorted(report["issues"], key=lambda i: (i["row"], i["column"]))
    return out, report


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("policy", ["skip", "missing"])
def test_eager_and_lazy_reading_agree(mm_table, policy, monkeypatch):
    monkeypatch.setattr("mmfuse.data._FEATURIZE_AT_MOST", 7)  # eager reading featurizes 24 rows in 4 parts
    table, preps, target = bad_table(mm_table)
    eager, eager_report = read_all(table, preps, target, True, policy)
    lazy, lazy_report = read_all(table, preps, target, False, policy)
    assert_same(eager, lazy)
    assert eager_report == lazy_report
    assert eager_report["counts"] == {"age": 1, "clip": 1, "photo": 1} and eager_report["rows"] == [2, 4, 6]
    rows = eager["row"].tolist()
    if policy == "skip":
        assert rows == [r for r in range(24) if r not in (2, 4, 6)]
    else:
        assert rows == list(range(24))
        absent = lambda name: [r for r, m in zip(rows, eager["mask"][name].tolist()) if not m]  # noqa: E731
        assert absent("photo") == [2, 7] and absent("clip") == [4] and absent("review") == [3]
        assert absent("tabular") == [6]  # the whole input, though its other column (color) is fine


def test_eager_and_lazy_reading_raise_the_same_error(mm_table):
    table, preps, target = setup(mm_table)
    (mm_table.parent / "img" / "2.png").write_bytes(b"not an image")  # the one bad cell
    for eager in (True, False):
        with pytest.raises(InputError, match=r"^row 2, column 'photo': file 'img/2.png' is not a readable image"):
            read_all(table, preps, target, eager, "raise")


def test_fit_reads_files_outside_the_root_only_when_allowed(tmp_path):
    import soundfile as sf
    from PIL import Image

    from mmfuse.schema import Role, Schema

    outside, root = tmp_path / "elsewhere", tmp_path / "root"
    outside.mkdir(), root.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), 51).save(outside / f"{i}.png")  # every pixel 51 / 255 = 0.2
        sf.write(outside / f"{i}.wav", np.zeros(2000, np.float32), 8000)  # silence: log(0 + 1e-6) in every band
    df = pd.DataFrame({"photo": [str(outside / f"{i}.png") for i in range(3)],
                       "clip": [str(outside / f"{i}.wav") for i in range(3)]})
    schema = Schema({"photo": Role.IMAGE, "clip": Role.AUDIO})
    table = read_table(df, root=root)
    for name in ("photo", "clip"):
        with pytest.raises(MmfuseError, match=rf"^no value of column '{name}' could be read while fitting \(3 tried; "
                                              rf"is outside the data root {root}: 3\)\. First failure: row 0.*"
                                              r"allow_outside_root=True \(--allow-outside-root\)"):
            build_preprocessors(schema, table, OPTS, inputs={name})
    preps = build_preprocessors(schema, table, OPTS, allow_outside_root=True)
    assert preps["photo"].channels == 1 and preps["photo"].mean_.tolist() == pytest.approx([0.2])
    assert preps["photo"].std_.tolist() == pytest.approx([1e-3])  # no spread: the floor
    assert preps["clip"].mean_ == pytest.approx(np.full(16, np.log(1e-6)), rel=1e-5)
    assert preps["clip"].std_ == pytest.approx(np.full(16, 1e-3))


def test_unknown_preprocessing_option_is_a_clear_error(mm_table):
    table = read_table(mm_table)
    schema = infer_schema(table, target="label")
    with pytest.raises(MmfuseError, match=r"input 'photo': unknown ImagePreprocessor option 'sise'.*"
                                          r"Did you mean 'size'"):
        build_preprocessors(schema, table, {"image": {"sise": 32}})
