import json

from mmfuse.demo import make_demo_table, run_demo


def test_demo_table_has_five_modalities(tmp_path):
    from mmfuse.schema import infer_schema

    s = infer_schema(make_demo_table(tmp_path), target="digit")
    assert {i.modality.value for i in s.inputs()} == {"image", "audio", "text", "tabular", "timeseries"}


def test_demo_writes_the_comparison(tmp_path):
    rows = run_demo(tmp_path, epochs=2, fusions=["concat"], echo=lambda *a: None)
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved == rows and len(rows) == 6  # five single inputs and one fusion
    assert set(rows[0]) == {"model", "inputs", "fusion", "accuracy", "macro_f1", "train_seconds", "best_epoch"}
    assert rows[-1]["fusion"] == "concat" and len(rows[-1]["inputs"]) == 5
    assert (tmp_path / "models" / "fusion_concat" / "report.md").exists()
