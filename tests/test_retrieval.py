"""Retrieval: exact search, its metrics by hand, FAISS against exact search, saved indexes, the commands."""
import json

import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import MmfuseError
from mmfuse.retrieval import RetrievalIndex, exact_search, retrieval_metrics


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_is_the_brute_force_order():
    rng = np.random.default_rng(0)
    q, x = unit(rng.standard_normal((50, 8))), unit(rng.standard_normal((300, 8)))
    pos, val = exact_search(q, x, 7)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(pos, want)
    np.testing.assert_allclose(val, np.take_along_axis(q @ x.T, want, 1), rtol=1e-6)
    assert exact_search(q, x[:3], 10)[0].shape == (50, 3)  # k above the index size: all of it


def test_metrics_have_their_hand_computed_values():
    # paired: query 0 ranks its match 1st, query 1 ranks it 2nd (index row 0 scores higher)
    q = np.array([[1.0, 0.0], [0.8, 0.6]])
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(q, x, ks=(1, 2))
    assert m["recall@1"] == 0.5 and m["recall@2"] == 1.0 and m["median_rank"] == 1.5
    assert m["mean_reciprocal_rank"] == pytest.approx((1 + 0.5) / 2)
    # keyed: index labels [a, a, b]; a query of label a closest to the b row: first hit at rank 2
    x = unit(np.array([[1.0, 0.1], [1.0, 0.2], [0.0, 1.0]]))
    q = unit(np.array([[0.1, 1.0], [1.0, 0.0], [0.5, 0.5]]))
    m = retrieval_metrics(q, x, np.array(["a", "a", "c"], object), np.array(["a", "a", "b"], object), ks=(1, 2))
    # query 0 (a): order b, a, a -> P@1 0, P@2 0.5, first hit 2; query 1 (a): a, a, b -> P@1 1, P@2 1, rank 1;
    # query 2 (c): no c in the index -> left out
    assert m["queries"] == 2 and m["queries_without_hit"] == 1
    assert m["precision@1"] == 0.5 and m["precision@2"] == 0.75 and m["recall@1"] == 0.5 and m["recall@2"] == 1.0
    assert m["median_rank"] == 1.5 and m["chance_precision"] == pytest.approx(2 / 3)


def test_faiss_agrees_with_exact_search():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x, q = unit(rng.standard_normal((2000, 16))).astype(np.float32), unit(rng.standard_normal((200, 16)))
    flat = RetrievalIndex.from_embeddings(x, faiss="flat")
    np.testing.assert_array_equal(flat.search(q, 10)[0], exact_search(q, x, 10)[0])
    for kind in ("hnsw", "ivf"):
        idx = RetrievalIndex.from_embeddings(x, faiss=kind)
        assert idx.recall_against_exact(q, 10) >= 0.8, kind
        np.testing.assert_array_equal(idx.search(q, 10, exact=True)[0], exact_search(q, x, 10)[0])


def test_a_saved_index_loads_as_saved_and_damage_is_one_line(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((100, 8))).astype(np.float32)
    idx = RetrievalIndex.from_embeddings(x, [f"r{i}" for i in range(100)], "img", faiss="hnsw")
    idx.save(tmp_path / "ix")
    back = RetrievalIndex.load(tmp_path / "ix")
    assert back.row_ids == idx.row_ids and back.faiss_kind == "hnsw"
    np.testing.assert_array_equal(back.search(x[:5], 3)[0], idx.search(x[:5], 3)[0])
    (tmp_path / "ix" / "faiss.index").write_bytes(b"\0" * 10)
    with pytest.raises(MmfuseError, match="faiss.index cannot be read"):
        RetrievalIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "index.json").write_text("{")
    with pytest.raises(MmfuseError, match="damaged"):
        RetrievalIndex.load(tmp_path / "ix")
    with pytest.raises(MmfuseError, match="not a retrieval index"):
        RetrievalIndex.load(tmp_path)


# --- the commands, on two inputs that share a latent --------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from typer.testing import CliRunner

    from mmfuse.cli import app
    from tests.test_shared_space import paired_table

    d = tmp_path_factory.mktemp("ret")
    paired_table(400).to_csv(d / "t.csv", index=False)
    runner = CliRunner()

    def call(*args):
        return runner.invoke(app, [str(a) for a in args])

    r = call("align", d / "t.csv", "--pairs", "A:B", "-g", "A=a0,a1,a2,a3", "-g", "B=b0,b1,b2,b3", "-c", "y=ignore",
             "-o", d / "al", "--epochs", "15", "--shared-dim", "16", "--no-progress")
    assert r.exit_code == 0, r.output
    return call, d


def test_align_then_retrieve_and_evaluate_from_the_command_line(run):
    call, d = run
    r = call("evaluate-retrieval", d / "al/bundle", "--query", d / "t.csv", "--from", "A", "--to", "B",
             "-o", d / "m.json")
    assert r.exit_code == 0, r.output
    m = json.loads((d / "m.json").read_text())
    assert m["queries"] == 400 and m["recall@10"] > 0.5  # chance 10/400
    r = call("evaluate-retrieval", d / "al/bundle", "--query", d / "t.csv", "--from", "A", "--to", "B",
             "--match", "y", "-o", d / "m2.json")
    assert r.exit_code == 0, r.output
    m2 = json.loads((d / "m2.json").read_text())
    assert m2["precision@10"] > m2["chance_precision"] + 0.2
    r = call("retrieve", d / "al/bundle", "--query", d / "t.csv", "--index", d / "t.csv", "--from", "A", "--to", "B",
             "--k", "3", "-o", d / "res.csv")
    assert r.exit_code == 0, r.output
    res = pd.read_csv(d / "res.csv")
    assert len(res) == 1200 and list(res.columns) == ["query_row", "rank", "index_row", "score"]
    assert (res.groupby("query_row")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    r = call("inspect", d / "al/bundle")  # aligned encoders have no target: described, not a traceback
    assert r.exit_code == 0, r.output
    assert "aligned encoders (mmfuse align), pairs" in r.output and "task:" not in r.output


def test_a_saved_faiss_index_is_reused_and_measured(run):
    pytest.importorskip("faiss")
    call, d = run
    r = call("index", d / "al/bundle", d / "t.csv", "--input", "B", "-o", d / "ix", "--faiss", "hnsw", "--match", "y")
    assert r.exit_code == 0, r.output
    assert "recall@10 against exact search" in r.output
    r = call("retrieve", d / "al/bundle", "--query", d / "t.csv", "--index", d / "ix", "--from", "A", "--to", "B",
             "-o", d / "r2.csv")
    assert r.exit_code == 0, r.output
    r = call("retrieve", d / "al/bundle", "--query", d / "t.csv", "--index", d / "ix", "--from", "A", "--to", "B",
             "--exact", "-o", d / "r3.csv")
    a, b = pd.read_csv(d / "r2.csv"), pd.read_csv(d / "r3.csv")
    assert (a["index_row"] == b["index_row"]).mean() > 0.9
    r = call("evaluate-retrieval", d / "al/bundle", "--query", d / "t.csv", "--index", d / "ix", "--from", "A",
             "--to", "B", "--match", "y")
    assert r.exit_code == 0 and "approx_recall@10_vs_exact" in r.output, r.output


@pytest.mark.parametrize("args, words", [
    (["--from", "A", "--to", "C"], "--to 'C': the bundle has no such input; its inputs: A, B"),
    (["--from", "A", "--to", "B", "--index", "{d}/missing.csv"], "does not exist"),
    (["--from", "A", "--to", "B", "-o", "{d}/out.txt"], "write predictions to a .csv, .parquet or .jsonl file"),
    (["--from", "A", "--to", "B", "--index", "{d}"], "is not a retrieval index"),
])
def test_retrieve_refuses_bad_options_in_one_line(run, capsys, args, words):
    from tests.test_cli_errors import cli_error

    call, d = run
    args = [a.format(d=d) for a in args]
    if "--index" not in args:
        args += ["--index", str(d / "t.csv")]
    assert words in cli_error(capsys, "retrieve", d / "al/bundle", "--query", d / "t.csv", *args)


def test_the_aligned_bundle_says_what_it_can_do(run, capsys):
    from tests.test_cli_errors import cli_error

    call, d = run
    line = cli_error(capsys, "predict", d / "al/bundle", d / "t.csv", "-o", d / "p.csv")
    assert "aligned encoders" in line and "--init-from" in line
    line = cli_error(capsys, "fit", d / "t.csv", "--init-from", d / "al/bundle", "-o", d / "f")
    assert "--target" in line


def test_a_model_without_a_shared_space_says_how_to_get_one(run, tmp_path):
    from mmfuse import MultimodalPredictor
    from mmfuse.retrieval import retrieve
    from tests.test_shared_space import GROUPS, paired_table

    df = paired_table(100)
    m = MultimodalPredictor("y", groups=GROUPS, epochs=1, min_steps=0, progress=False, log=None).fit(df)
    with pytest.raises(MmfuseError, match="no shared space"):
        retrieve(m.predictor_, df, df, "A", "B")


def test_collapsed_embeddings_do_not_score_as_perfect():
    x = np.ones((20, 4)) / 2  # every item the same: no ordering at all
    m = retrieval_metrics(x, x, ks=(1,))
    assert m["median_rank"] == 20 and m["mean_reciprocal_rank"] == pytest.approx(1 / 20)
    keys = np.array(list("ab") * 10, object)
    m = retrieval_metrics(x, x, keys, keys, ks=(1,))
    assert m["median_rank"] == 11  # ten items of the other key tie with the best hit


def test_faiss_finding_fewer_than_k_gives_no_made_up_rows(run):
    pytest.importorskip("faiss")
    from mmfuse import Predictor
    from mmfuse.retrieval import build_index, retrieve

    call, d = run
    pred = Predictor.load(d / "al/bundle")
    df = pd.read_csv(d / "t.csv")
    idx = build_index(pred, df, "B", faiss="ivf")
    idx._faiss.nprobe = 1  # one list: far fewer than k candidates for most queries
    res = retrieve(pred, df.head(20), idx, "A", "B", k=300)
    assert res["index_row"].isin(df.index).all() and np.isfinite(res["score"]).all()
    assert res.groupby("query_row").size().max() <= 300


def test_blank_and_numeric_match_values(run):
    from mmfuse import Predictor
    from mmfuse.retrieval import build_index, evaluate_retrieval

    call, d = run
    pred = Predictor.load(d / "al/bundle")
    df = pd.read_csv(d / "t.csv")
    df["k"] = np.where(df["y"] == "pos", 1, 0)
    q = df.assign(k=df["k"].astype(float))  # 1.0 in the queries, 1 in the index: the same key
    q.loc[:9, "k"] = np.nan  # no known match: left out, counted
    m = evaluate_retrieval(pred, q, df, "A", "B", match=["k"])
    assert m["queries"] == len(df) - 10 and m["rows_left_out"] == 10
    idx = build_index(pred, q, "B", match=["k", "y"])  # blank values kept as unknown in the saved index
    m2 = evaluate_retrieval(pred, df, idx, "A", "B", match=["y", "k"])  # any order, any subset of the kept columns
    assert m2["queries"] == len(df)
    with pytest.raises(MmfuseError, match="keeps the values of"):
        evaluate_retrieval(pred, df, idx, "A", "B", match=["a0"])


def test_the_command_line_protects_the_tables_and_the_groups(run, capsys):
    from tests.test_cli_errors import cli_error

    call, d = run
    line = cli_error(capsys, "retrieve", d / "al/bundle", "--query", d / "t.csv", "--index", d / "t2.csv", "--from",
                     "A", "--to", "B", "-o", d / "t2.csv") if (d / "t2.csv").write_text((d / "t.csv").read_text()) else ""
    assert "is the --index table" in line
    line = cli_error(capsys, "align", d / "t.csv", "-g", "A=a0,a1", "-g", "A=b0,b1", "-o", d / "dup")
    assert "given twice" in line


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".ndjson"])
def test_retrieve_writes_every_output_format(run, suffix):
    call, d = run
    out = d / f"res{suffix}"
    r = call("retrieve", d / "al/bundle", "--query", d / "t.csv", "--index", d / "t.csv", "--from", "A", "--to", "B",
             "--k", "2", "-o", out)
    assert r.exit_code == 0, r.output
    back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_json(out, lines=True)
    assert list(back.columns) == ["query_row", "rank", "index_row", "score"] and len(back) == 800
