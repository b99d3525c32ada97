"""Batch prediction larger than memory: chunked reading, output written as it goes, rows aligned with the input."""
import json

import numpy as np
import pandas as pd
import pytest

from mmfuse import MmfuseError, MultimodalPredictor
from mmfuse.batch import predict_file
from mmfuse.bundle import Predictor
from mmfuse.cli import main
from mmfuse.errors import InputError, SchemaError
from mmfuse.io import iter_table, read_table

from conftest import make_tabular_text_table


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    df = make_tabular_text_table(120)
    MultimodalPredictor(target="y", epochs=2, progress=False, log=None, contribution=False, seed=0).fit(df).save(
        d / "bundle")
    return Predictor.load(d / "bundle"), df.drop(columns=["y"])


def _write(df, path):
    {".csv": lambda: df.to_csv(path, index=False), ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path, index=False, row_group_size=16)}[path.suffix]()
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_iter_table_gives_the_whole_table_in_chunks_with_its_row_ids(tmp_path, suffix):
    df = make_tabular_text_table(50)
    path = _write(df, tmp_path / f"t{suffix}")
    chunks = list(iter_table(path, chunk_rows=7))
    assert [len(c) for c in chunks] == [7] * 7 + [1]
    whole = read_table(path).df
    joined = pd.concat([c.df for c in chunks])
    assert list(joined.index) == list(range(50))
    pd.testing.assert_frame_equal(joined.reset_index(drop=True), whole.reset_index(drop=True), check_dtype=False)
    assert all(c.root == (tmp_path).resolve() and c.source == str(path) for c in chunks)


def test_iter_table_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "long.csv").write_text("a,b\n" + "1,2\n" * 30 + "3,4,5\n")
    with pytest.raises(SchemaError, match=r"long.csv', line 32: has 3 fields but the header has 2"):
        list(iter_table(tmp_path / "long.csv", chunk_rows=10))
    (tmp_path / "short.csv").write_text("a,b\n" + "1,2\n\n" * 15 + '"3\n",4\n' + "5\n")
    with pytest.raises(SchemaError, match=r"short.csv', line 34: has 1 field but the header has 2"):
        list(iter_table(tmp_path / "short.csv", chunk_rows=10))  # (blank lines; lines 32-33 are one row)
    (tmp_path / "t.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(SchemaError, match="is not a Parquet file: its content looks like CSV"):
        list(iter_table(tmp_path / "t.parquet"))
    with pytest.raises(SchemaError, match="does not exist"):
        list(iter_table(tmp_path / "nope.csv"))
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(SchemaError, match="is empty"):
        list(iter_table(tmp_path / "h.csv"))
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(SchemaError, match="duplicate column names"):
        list(iter_table(tmp_path / "dup.csv"))
    with pytest.raises(MmfuseError, match="chunk_rows must be a whole number"):
        list(iter_table(tmp_path / "dup.csv", chunk_rows=0))


@pytest.mark.parametrize("out_suffix", [".csv", ".parquet", ".jsonl"])
def test_predict_file_matches_the_in_memory_prediction_row_for_row(bundle, tmp_path, out_suffix):
    pred, df = bundle
    src = _write(df, tmp_path / "in.parquet")
    report = predict_file(pred, src, tmp_path / f"p{out_suffix}", chunk_rows=17)
    assert (report.rows, report.predicted, report.chunks, report.skipped) == (120, 120, 8, {})
    out = read_table(tmp_path / f"p{out_suffix}").df
    expected = pred.predict_frame(df)
    assert list(out.columns) == list(expected.columns) and list(out["row"]) == list(range(120))
    assert list(out["prediction"].astype(str)) == list(expected["prediction"].astype(str))
    probas = [c for c in expected.columns if c.startswith("proba_")]
    np.testing.assert_allclose(out[probas].to_numpy(float), expected[probas].to_numpy(float), atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))


def test_skipped_rows_keep_their_line_and_are_listed_by_id_across_chunks(bundle, tmp_path):
    pred, df = bundle
    bad = df.copy()
    bad["x1"] = bad["x1"].astype(object)
    for i in (3, 40, 101):  # in three different chunks of 25
        bad.loc[i, "x1"] = "n/a?"
    src = _write(bad, tmp_path / "bad.csv")
    report = predict_file(pred, src, tmp_path / "p.parquet", chunk_rows=25, on_bad_input="skip")
    assert sorted(report.skipped) == [3, 40, 101] and report.predicted == 117 and report.rows == 120
    assert "x1" in report.skipped[40] and "row ids 3, 40, 101" in report.summary()
    out = pd.read_parquet(tmp_path / "p.parquet")
    assert len(out) == 120 and out["skipped"].notna().sum() == 3 and pd.isna(out.loc[40, "prediction"])
    good = pred.predict_frame(df.drop(index=[3, 40, 101]))
    kept = out[out["skipped"].isna()]
    assert list(kept["prediction"].astype(int)) == list(good["prediction"].astype(int))


def test_a_failure_half_way_leaves_no_output_file(bundle, tmp_path):
    pred, df = bundle
    bad = df.copy()
    bad["x1"] = bad["x1"].astype(object)
    bad.loc[100, "x1"] = "abc"
    src = _write(bad, tmp_path / "bad.csv")
    (tmp_path / "p.csv").write_text("an older output\n")
    with pytest.raises(InputError, match="row 100, column 'x1'"):  # the row id counts across chunks
        predict_file(pred, src, tmp_path / "p.csv", chunk_rows=30)
    assert (tmp_path / "p.csv").read_text() == "an older output\n"  # untouched: the new one never completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "p.csv"]  # and no temporary file left


def test_cli_predict_streams_and_reports(bundle, tmp_path, capsys):
    pred, df = bundle
    df = df.copy()
    df.loc[[3, 70, 110], "cat"] = ["z", "z", "new"]  # categories training never saw, in two of three chunks
    src = _write(df, tmp_path / "in.jsonl")
    main(["predict", str(pred.path), str(src), "-o", str(tmp_path / "p.csv"), "--chunk-rows", "50", "--progress"])
    cap = capsys.readouterr()
    assert cap.out.strip().endswith(f"120 predictions written to {tmp_path / 'p.csv'}; categories unseen in "
                                    "training, read as 'unknown' ('cat': 3 cells)")
    assert "predict: 120 rows" in cap.err
    assert len(pd.read_csv(tmp_path / "p.csv")) == 120


@pytest.mark.parametrize("first", [True, False])
def test_a_chunk_whose_every_row_is_bad_keeps_its_lines_under_skip(bundle, tmp_path, first):
    pred, df = bundle
    bad = df.copy()
    bad["x1"] = bad["x1"].astype(object)
    rows = range(0, 10) if first else range(20, 30)
    for i in rows:
        bad.loc[i, "x1"] = "?"
    src = _write(bad, tmp_path / "bad.csv")
    report = predict_file(pred, src, tmp_path / "p.parquet", chunk_rows=10, on_bad_input="skip")
    assert sorted(report.skipped) == list(rows) and report.predicted == 110
    out = pd.read_parquet(tmp_path / "p.parquet")
    assert list(out["row"]) == list(range(120)) and out["skipped"].notna().sum() == 10
    assert out.loc[list(rows), "prediction"].isna().all() and out.drop(index=list(rows))["prediction"].notna().all()
    good = pred.predict_frame(df.drop(index=list(rows)))
    assert list(out.drop(index=list(rows))["prediction"].astype(int)) == list(good["prediction"].astype(int))


def test_predict_file_refuses_a_folder_as_output_before_reading(bundle, tmp_path):
    pred, df = bundle
    (tmp_path / "p.csv").mkdir()
    with pytest.raises(MmfuseError, match="is a folder; name the predictions file"):
        predict_file(pred, _write(df, tmp_path / "in.csv"), tmp_path / "p.csv")
    (tmp_path / "h.csv").write_text(",".join(df.columns) + "\n")
    with pytest.raises(SchemaError, match="h.csv is empty"):
        predict_file(pred, tmp_path / "h.csv", tmp_path / "q.csv")


def test_reading_a_parquet_file_in_chunks_does_not_accumulate_memory(tmp_path):
    """With pre-buffering, pyarrow's pool grows with every row group read (1.4 GB after 100 batches of the
    batch_predict table); iter_table's stays at one chunk."""
    import pyarrow as pa

    from mmfuse.bench.batch_predict import write_table

    info = write_table(tmp_path / "t.parquet", 0.05, 0, lambda s: None, row_group=10_000)  # 12 row groups, 66 columns
    pools = []
    for chunk in iter_table(tmp_path / "t.parquet", chunk_rows=10_000):
        del chunk
        pools.append(pa.total_allocated_bytes())
    assert len(pools) == info["rows"] // 10_000 >= 10
    assert max(pools) - pools[0] < 8 * 2**20, [p // 2**20 for p in pools]


def test_a_jsonl_chunk_without_an_inputs_key_is_read_as_missing_values(bundle, tmp_path):
    pred, df = bundle
    lines = [json.dumps({"id": i, **({} if i >= 60 else r)})  # rows 60+ hold no input's key at all
             for i, r in enumerate(df.to_dict("records"))]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    report = predict_file(pred, tmp_path / "t.jsonl", tmp_path / "p.csv", chunk_rows=30)
    out = pd.read_csv(tmp_path / "p.csv")
    expected = pred.predict_frame(pd.read_json(tmp_path / "t.jsonl", lines=True))
    assert report.predicted == 120 and list(out["prediction"]) == list(expected["prediction"])


def test_keep_copies_an_id_column_into_every_line_including_skipped_ones(bundle, tmp_path, capsys):
    pred, df = bundle
    ids = df.assign(order_id=[f"o-{1000 - i}" for i in range(len(df))])  # ids that are not the row numbers
    ids["x1"] = ids["x1"].astype(object)
    for i in range(20, 30):  # a whole chunk skipped, and its ids still written
        ids.loc[i, "x1"] = "?"
    src = _write(ids, tmp_path / "in.csv")
    main(["predict", str(pred.path), str(src), "-o", str(tmp_path / "p.csv"), "--chunk-rows", "10",
          "--on-bad-input", "skip", "--keep", "order_id, note"])
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns[:3]) == ["row", "order_id", "note"]
    assert list(out["order_id"]) == list(ids["order_id"]) and list(out["note"]) == list(ids["note"])
    assert out.loc[20:29, "skipped"].notna().all() and out.loc[20:29, "order_id"].tolist()[0] == "o-980"
    frame = pred.predict_frame(ids.iloc[:5], keep=["order_id"])  # the API says the same
    assert frame["order_id"].tolist() == ["o-1000", "o-999", "o-998", "o-997", "o-996"]
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a misspelt name fails before any prediction, with a guess
        main(["predict", str(pred.path), str(src), "-o", str(tmp_path / "q.csv"), "--keep", "orderid"])
    err = capsys.readouterr().err
    assert "'orderid' (is it 'order_id'?)" in err and not (tmp_path / "q.csv").exists()
    with pytest.raises(SchemaError, match="'prediction' in the predictions: they have a column of that name"):
        pred.predict_frame(ids.assign(prediction=1).iloc[:5], keep=["prediction"])


def test_kept_columns_are_copied_as_stored_in_every_format(bundle, tmp_path):
    """Ids that pandas would turn into floats or blanks (an integer column with a blank, 2**53 + 1, 'NA', '007')
    come out as written; a kept column empty in the first chunk and text later, or of mixed JSON types, does not
    break a Parquet output; --keep may repeat; a name with a comma is taken whole."""
    pred, df = bundle
    ids = ["1000", "", "NA", "9007199254740993", "007"] + [str(2000 + i) for i in range(len(df) - 5)]
    t = df.assign(order_id=ids, **{"note, v2": [None] * 60 + ["rush"] * (len(df) - 60)})
    t.to_csv(tmp_path / "in.csv", index=False)
    for suffix in (".csv", ".jsonl", ".parquet"):
        main(["predict", str(pred.path), str(tmp_path / "in.csv"), "-o", str(tmp_path / f"p{suffix}"),
              "--chunk-rows", "50", "--keep", "order_id", "--keep", "note, v2"])
    raw = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns[:3]) == ["row", "order_id", "note, v2"] and raw["order_id"].tolist() == ids
    assert pd.read_parquet(tmp_path / "p.parquet")["order_id"].tolist() == ids
    assert [json.loads(x)["order_id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == ids
    big = 2 ** 53 + 1  # Parquet: an integer column with a null stays integer
    import pyarrow as pa
    import pyarrow.parquet as pq

    tab = pa.Table.from_pandas(df.iloc[:3], preserve_index=False).append_column(
        "order_id", pa.array([big, None, 7], pa.int64()))
    pq.write_table(tab, tmp_path / "in.parquet")
    main(["predict", str(pred.path), str(tmp_path / "in.parquet"), "-o", str(tmp_path / "q.parquet"), "--keep",
          "order_id"])
    got = pq.read_table(tmp_path / "q.parquet").column("order_id")
    assert got.type == pa.int64() and got.to_pylist() == [big, None, 7]
    # JSON Lines: an integer beside a null stays one; mixed types into Parquet as text; a key first seen late
    lines = [dict(r, order_id=v) if i >= 60 else dict(r) for i, (r, v) in
             enumerate(zip(df.to_dict("records"), [big, None, "X-9"] * 40))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    main(["predict", str(pred.path), str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "j.parquet"),
          "--chunk-rows", "50", "--keep", "order_id"])
    kept = pq.read_table(tmp_path / "j.parquet").column("order_id").to_pylist()
    assert kept[:60] == [None] * 60 and kept[60:63] == [str(big), None, "X-9"]
    with pytest.raises(SchemaError, match="'orderid' .is it 'order_id'.."):  # a key in no line: no output
        predict_file(pred, tmp_path / "in.jsonl", tmp_path / "none.csv", chunk_rows=50, keep=["orderid"])
    assert not (tmp_path / "none.csv").exists()
    frame = pred.predict_frame(tmp_path / "in.csv", keep="order_id")  # the API: a str is one name; the file as stored
    assert frame["order_id"].tolist() == ids
    with pytest.raises(MmfuseError, match="names no column"):
        predict_file(pred, tmp_path / "in.csv", tmp_path / "e.csv", keep=[",,", " "])
