"""mmfuse serve: JSON and multipart predictions equal predict's, limits and bad input are 4xx naming the row
and field (never 5xx), concurrent requests are batched, metrics, metadata, a real server on loopback, and a
Schemathesis run over the OpenAPI spec."""
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mmfuse import MultimodalPredictor  # noqa: E402
from mmfuse.bundle import Predictor  # noqa: E402
from mmfuse.serve import ServeConfig, create_app  # noqa: E402

from conftest import make_mm_table, write_png  # noqa: E402

INPUTS = ["review", "photo", "clip", "motion", "age", "color"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    path = make_mm_table(d, n=24)
    MultimodalPredictor(target="label", epochs=1, progress=False, log=None, contribution=False, seed=0,
                        out=d / "run").fit(path)
    return d, Predictor.load(d / "run" / "bundle")


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def json_rows(d: Path, df: pd.DataFrame) -> list:
    """The table's rows as /predict sends them: files as base64, the series as lists."""
    rows = []
    for _, r in df.iterrows():
        row = {"review": r["review"] if isinstance(r["review"], str) else None,
               "age": None if pd.isna(r["age"]) else float(r["age"]), "color": r["color"],
               "photo": b64(d / r["photo"]) if isinstance(r["photo"], str) else None, "clip": b64(d / r["clip"]),
               "motion": pd.read_csv(d / r["motion"])[["ax", "ay", "az"]].to_numpy().tolist()}
        rows.append(row)
    return rows


def client(pred, **cfg):
    return TestClient(create_app(pred, ServeConfig(**cfg)), raise_server_exceptions=False)


def test_json_predictions_equal_the_bundles_own(served):
    d, pred = served
    df = pd.read_csv(d / "table.csv")
    expected = pred.predict_frame(df.drop(columns=["label"]), root=d)
    with client(pred) as c:
        r = c.post("/predict", json={"rows": json_rows(d, df)})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["prediction"] for g in got] == list(expected["prediction"])
    for g, (_, e) in zip(got, expected.iterrows()):
        assert g["probabilities"]["yes"] == pytest.approx(e["proba_yes"], abs=1e-5)


def test_an_input_may_be_absent_and_the_answer_says_so(served):
    d, pred = served
    df = pd.read_csv(d / "table.csv").iloc[:3]
    rows = [{k: v for k, v in r.items() if k not in ("photo", "clip")} for r in json_rows(d, df)]
    expected = pred.predict_frame(df.drop(columns=["label", "photo", "clip"]), root=d)
    with client(pred) as c:
        r = c.post("/predict", json={"rows": rows})
    assert r.status_code == 200 and sorted(r.json()["absent_inputs"]) == ["clip", "photo"]
    assert all(p["missing_inputs"] == ["clip", "photo"] for p in r.json()["predictions"])
    assert [g["prediction"] for g in r.json()["predictions"]] == list(expected["prediction"])


BAD = [
    ({"age": "old"}, 422, ["body", "rows", 1, "age"]),
    ({"photo": "%%%not base64%%%"}, 422, ["body", "rows", 1, "photo"]),
    ({"photo": base64.b64encode(b"junk bytes, no image").decode()}, 422, ["body", "rows", 1, "photo"]),
    ({"clip": base64.b64encode(b"RIFF....WAVEfmt ").decode()}, 422, ["body", "rows", 1, "clip"]),
    ({"motion": [[1.0, 2.0], [3.0]]}, 422, ["body", "rows", 1, "motion"]),
    ({"photo": {"path": "img/0.png"}}, 422, ["body", "rows", 1, "photo"]),
    ({"colour": "red"}, 422, ["body", "rows", 1, "colour"]),
    ({"age": float("inf")}, 422, ["body", "rows", 1, "age"]),
]


@pytest.mark.parametrize("change, status, loc", BAD, ids=[str(list(b[0])[0]) + str(i) for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_row_and_field(served, change, status, loc):
    d, pred = served
    rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:3])
    rows[1].update(change)
    with client(pred) as c:
        r = c.post("/predict", content=json.dumps({"rows": rows}, allow_nan=True),
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"][:4] == loc


def test_limits(served, tmp_path):
    d, pred = served
    rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:3])
    with client(pred, max_rows=2) as c:
        r = c.post("/predict", json={"rows": rows})
        assert r.status_code == 413 and "at most 2" in r.json()["detail"][0]["msg"]
    with client(pred, max_body_bytes=1000) as c:
        r = c.post("/predict", json={"rows": rows})
        assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"
    write_png(tmp_path / "big.png", np.random.default_rng(0), size=(300, 200))
    with client(pred, max_image_pixels=300 * 199) as c:
        r = c.post("/predict", json={"rows": [{**rows[0], "photo": b64(tmp_path / "big.png")}]})
        assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body", "rows", 0, "photo"]
    with client(pred, max_audio_seconds=0.1) as c:  # the clips last 0.25 s
        r = c.post("/predict", json={"rows": rows[:1]})
        assert r.status_code == 413 and "lasts 0.2 s" in r.json()["detail"][0]["msg"]
    with client(pred) as c:
        assert c.post("/predict", json={"rows": []}).status_code == 422


def test_files_only_inside_the_allowed_root(served):
    d, pred = served
    rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:1])
    with client(pred, allow_root=str(d)) as c:
        ok = c.post("/predict", json={"rows": [{**rows[0], "photo": {"path": "img/0.png"}}]})
        inline = c.post("/predict", json={"rows": rows})
        assert ok.status_code == 200 and ok.json()["predictions"] == inline.json()["predictions"]
        write_png(d.parent / "outside.png", np.random.default_rng(1))
        (d / "link.png").unlink(missing_ok=True)
        (d / "link.png").symlink_to(d.parent / "outside.png")
        for bad in ("../outside.png", str(d.parent / "outside.png"), "img/../../outside.png", "img/none.png",
                    "link.png", "img/\x00.png", "x" * 5000, "x" * 300 + "/y.png", ""):
            r = c.post("/predict", json={"rows": [{**rows[0], "photo": {"path": bad}}]})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "rows", 0], (bad, r.text)


def test_multipart_upload_equals_json(served):
    d, pred = served
    df = pd.read_csv(d / "table.csv").iloc[:1]
    row = json_rows(d, df)[0]
    with client(pred) as c:
        j = c.post("/predict", json={"rows": [row]}).json()
        other = {k: v for k, v in row.items() if k not in ("photo", "clip")}
        r = c.post("/predict/upload", data={"row": json.dumps(other)},
                   files={"photo": ("p.png", (d / df["photo"].iloc[0]).read_bytes()),
                          "clip": ("c.wav", (d / df["clip"].iloc[0]).read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == j["predictions"]
        r = c.post("/predict/upload", data={"row": "{not json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "row"]
        r = c.post("/predict/upload")  # nothing sent: not a prediction from nothing
        assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"][0]["msg"]
        r = c.post("/predict/upload", files={"fhoto": ("p.png", b"x")})
        assert r.status_code == 422 and "unknown column 'fhoto'" in r.json()["detail"][0]["msg"]


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(served):
    d, pred = served
    rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:8])
    single = {}
    with client(pred, max_batch=1) as c:
        for i, row in enumerate(rows):
            single[i] = c.post("/predict", json={"rows": [row]}).json()["predictions"]
    results = {}
    with client(pred, max_batch=64, max_wait_ms=200) as c:
        def send(i):
            row = dict(rows[i]) if i != 3 else {**rows[i], "age": "old?"}
            results[i] = c.post("/predict", json={"rows": [row]})
        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = c.get("/metrics").text
    assert results[3].status_code == 422
    for i in set(range(8)) - {3}:
        assert results[i].status_code == 200 and results[i].json()["predictions"][0]["prediction"] == \
            single[i][0]["prediction"]
        assert results[i].json()["predictions"][0]["probabilities"]["yes"] == pytest.approx(
            single[i][0]["probabilities"]["yes"], abs=1e-5)
    count = int(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mmfuse_batch_rows_count")))
    assert count < 7  # 7 good single-row requests went through fewer model calls: they were batched
    assert 'mmfuse_errors_total{kind="validation"} 1' in metrics


def test_health_metadata_metrics_and_openapi(served):
    d, pred = served
    with client(pred) as c:
        assert c.get("/health").json() == {"status": "ok"}
        m = c.get("/metadata").json()
        assert m["task"] == "binary" and m["labels"] == ["no", "yes"] and m["threshold"] == pred.threshold
        assert set(m["schema"]) == set(INPUTS) and m["schema"]["photo"] == "image" and m["mmfuse_version"]
        c.post("/predict", json={"rows": [{"age": 30.0}]})
        text = c.get("/metrics").text
        assert 'mmfuse_requests_total{endpoint="/predict",status="200"} 1' in text
        assert "mmfuse_request_seconds_bucket" in text and "mmfuse_batch_rows_sum 1" in text
        spec = c.get("/openapi.json").json()
        row = spec["components"]["schemas"]["Row"]["properties"]
        assert set(row) == set(INPUTS) and spec["paths"]["/predict"]["post"]["responses"]["413"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mmfuse_serve_on_loopback(served):
    """The real command: uvicorn on a free loopback port, one HTTP request, then stopped."""
    import httpx

    d, pred = served
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmfuse.cli", "serve", str(d / "run" / "bundle"), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("the server did not start: " + (proc.stdout.read() if proc.poll() is not None else ""))
        rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:2])
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_schemathesis_finds_no_server_error(served):
    """Generated requests from the OpenAPI spec (MMFUSE_SCHEMATHESIS_EXAMPLES each, default 60): no 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    d, pred = served
    app = create_app(pred, ServeConfig(max_batch=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    n = int(os.environ.get("MMFUSE_SCHEMATHESIS_EXAMPLES", "60"))
    calls, statuses = [], []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            calls.append(op.label)
            statuses.append(response.status_code)
            assert response.status_code < 500, (op.label, case.body, response.text[:300])

        check()
    print(f"schemathesis: {len(calls)} requests; statuses "
          f"{dict(sorted(pd.Series(statuses).value_counts().to_dict().items()))}; by operation "
          f"{pd.Series(calls).value_counts().to_dict()}")
    assert len(calls) >= n and not [s for s in statuses if s >= 500]
    assert statuses.count(200) >= 0.1 * n  # valid rows are generated too, not only malformed ones


def test_a_client_cannot_break_the_metrics_or_get_a_made_up_answer(served):
    d, pred = served
    rows = json_rows(d, pd.read_csv(d / "table.csv").iloc[:2])
    with client(pred, max_body_bytes=100) as c:
        r = c.post('/x%22%7D%20999%0Afoo', content=b"z" * 500)
        assert r.status_code == 413
        text = c.get("/metrics").text
    assert 'endpoint="other",status="413"' in text and "foo" not in text
    with client(pred) as c:
        r = c.post("/predict", json={"rows": [rows[0], {**rows[1], "age": 1e308}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "rows", 1], r.text
