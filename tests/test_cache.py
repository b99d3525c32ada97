"""Cache keys (mmfuse._cache): a changed file or library never reuses a stale entry."""
import importlib.metadata
import os

import numpy as np
import pandas as pd
import pytest
import torch

import mmfuse
from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, read_table
from mmfuse._cache import cache_key, file_stamp


def dict_cell_dataset(tmp_path, cache):
    """Images given as Hugging Face datasets cells ``{"bytes": None, "path": ...}``."""
    from conftest import write_png

    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / f"{i}.png", rng)
    df = pd.DataFrame({"photo": [{"bytes": None, "path": f"{i}.png"} for i in range(6)], "label": ["a", "b"] * 3})
    table = read_table(df, root=tmp_path)
    schema = infer_schema(table, target="label", overrides={"photo": "image"})
    preps = build_preprocessors(schema, table, {"image": {"size": 8}})
    return lambda: MultimodalDataset(table, preps, cache=cache)  # no target: only the cache matters here


def test_disk_cache_of_dict_cells_is_invalidated_by_an_edited_file(tmp_path):
    from conftest import write_png

    make = dict_cell_dataset(tmp_path, tmp_path / "cache")
    d1 = make().cache_dirs["photo"]
    assert make().cache_dirs["photo"] == d1  # same files: the entry is reused
    write_png(tmp_path / "0.png", np.random.default_rng(5), size=(30, 30))
    assert make().cache_dirs["photo"] != d1


def test_dict_cell_stamp_records_the_file_mtime(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"0123456789")
    os.utime(f, ns=(10**18, 10**18))
    cell = {"bytes": None, "path": "a.png"}
    before = cache_key([file_stamp(cell, tmp_path)])
    f.write_bytes(b"9876543210")  # same size, new content and mtime
    os.utime(f, ns=(2 * 10**18, 2 * 10**18))
    assert cache_key([file_stamp(cell, tmp_path)]) != before
    assert file_stamp(cell, tmp_path) == {"bytes": "None", "path": ["a.png", 10, 2 * 10**18]}


@pytest.mark.parametrize("library", ["mmfuse", "torch", "transformers"])
def test_cache_key_changes_with_library_versions(monkeypatch, library):
    before = cache_key({"prep": {"size": 8}})
    if library == "mmfuse":
        monkeypatch.setattr(mmfuse, "__version__", "99.0")
    elif library == "torch":
        monkeypatch.setattr(torch, "__version__", "99.0")
    else:
        real = importlib.metadata.version
        monkeypatch.setattr(importlib.metadata, "version",
                            lambda name: "99.0" if name == "transformers" else real(name))
    assert cache_key({"prep": {"size": 8}}) != before


def test_a_disk_cache_entry_reuses_the_rows_other_entries_hold(tmp_path, monkeypatch):
    """CV folds and search trials read other subsets of one table: a row decoded (or embedded) for one
    subset is copied, not decoded again, for the next; a changed file is decoded again."""
    from conftest import write_png

    from mmfuse.data import MultimodalDataset as DS

    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / f"{i}.png", rng)
    df = pd.DataFrame({"photo": [f"{i}.png" for i in range(6)], "label": ["a", "b"] * 3})
    table = read_table(df, root=tmp_path)
    preps = build_preprocessors(infer_schema(table, target="label", overrides={"photo": "image"}), table,
                                {"image": {"size": 8}})
    read = []
    real = DS._read_rows

    def counting(self, name, pos, issues):
        read.extend(self.table.df.index[pos].tolist())
        return real(self, name, pos, issues)

    monkeypatch.setattr(DS, "_read_rows", counting)

    def load(rows):
        ds = DS(read_table(df.loc[rows], root=tmp_path), preps, cache=tmp_path / "cache")
        return ds, ds.__getitems__(list(range(len(ds))))["inputs"]["photo"]

    first, x_first = load([0, 1, 2, 3])
    assert sorted(read) == [0, 1, 2, 3]
    read.clear()
    second, x_second = load([2, 3, 4, 5])
    assert sorted(read) == [4, 5]  # rows 2 and 3 came from the first entry
    assert second.cache_dirs["photo"] != first.cache_dirs["photo"]
    assert second.cache_dirs["photo"].parent == first.cache_dirs["photo"].parent
    assert torch.equal(x_second[:2], x_first[2:])  # the copies are the decoded items themselves
    read.clear()
    write_png(tmp_path / "2.png", np.random.default_rng(9), size=(30, 30))  # an edited file
    load([1, 2, 3])
    assert sorted(read) == [2]
