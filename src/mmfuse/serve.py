"""``mmfuse serve``: a bundle behind an HTTP API (FastAPI on uvicorn; the ``serve`` extra).

Endpoints:

- ``POST /predict``: ``{"rows": [{column: value, ...}, ...]}``. Numbers, categories and text go in as
  JSON values; images and audio as base64 strings; a time series as a list of numbers (or of rows of
  numbers). ``{"path": "a/b.png"}`` reads a file, only when the server was started with ``allow_root``
  and only inside it. A column may be left out or null: that input is missing in that row, as in
  ``mmfuse predict``. An unknown column is refused (a typo would otherwise be a silently absent input).
- ``POST /predict/upload``: one row as a multipart form: a field ``row`` (the JSON object of the other
  columns) and one file per image or audio column, named by the column.
- ``GET /health``, ``GET /metadata`` (schema, inputs, labels, task, threshold, mmfuse version, limits),
  ``GET /metrics`` (Prometheus text: requests, latency histogram, errors by kind, batch sizes), and the
  OpenAPI spec at ``/openapi.json``, generated from request and response models typed from the bundle.

Concurrent requests are gathered into one batch (at most ``max_batch`` rows, waiting at most
``max_wait_ms`` for more); a batch whose rows fail is retried request by request, so one bad request
never fails another. Limits: body size, rows per request, image pixels, audio seconds. Bad input gets a
4xx with a JSON error naming the row and the field (``{"detail": [{"loc": ["body", "rows", 3, "age"],
"msg": ..., "type": ...}]}``), never a 500.
"""

import asyncio
import base64
import binascii
import io
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .errors import InputError, MmfuseError
from .schema import Role

__all__ = ["ServeConfig", "create_app", "serve"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class ServeConfig:
    """The server's settings.

    Args:
        max_batch: Rows gathered from concurrent requests into one model call (1: no batching).
        max_wait_ms: How long the first request of a batch waits for others.
        max_rows: Rows per request.
        max_body_bytes: Request body size.
        max_image_pixels: Width x height of one image.
        max_audio_seconds: Duration of one audio clip.
        allow_root: A folder whose files a request may name (``{"path": ...}``); None: no file is read.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_rows: int = 256
    max_body_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 60.0
    allow_root: Optional[str] = None

    def __post_init__(self):
        for k in ("max_batch", "max_rows", "max_body_bytes", "max_image_pixels"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise MmfuseError(f"{k} must be a whole number >= 1, got {getattr(self, k)!r}")
        for k in ("max_wait_ms", "max_audio_seconds"):
            if not getattr(self, k) >= 0:
                raise MmfuseError(f"{k} must be a number >= 0, got {getattr(self, k)!r}")
        if self.allow_root is not None and not Path(self.allow_root).is_dir():
            raise MmfuseError(f"allow_root {self.allow_root!r} is not a folder")


class BadRequest(Exception):
    """A request that cannot be served: its status, and ``detail`` entries naming the row and the field."""

    def __init__(self, status: int, loc: list, msg: str, kind: str):
        super().__init__(msg)
        self.status, self.loc, self.msg, self.kind = status, loc, msg, kind


# --- metrics ------------------------------------------------------------------------------------
class Metrics:
    """Prometheus counters and histograms, kept in this process (one set per uvicorn worker)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict = {}  # (endpoint, status) -> count
        self.errors: dict = {}  # kind -> count
        self.latency = {"buckets": [0] * len(LATENCY_BUCKETS), "sum": 0.0, "count": 0}
        self.batches = {"buckets": [0] * len(BATCH_BUCKETS), "sum": 0, "count": 0}
        self.rows = 0

    @staticmethod
    def _observe(h: dict, buckets, v) -> None:
        for i, b in enumerate(buckets):
            if v <= b:
                h["buckets"][i] += 1
        h["sum"] += v
        h["count"] += 1

    ENDPOINTS = ("/predict", "/predict/upload", "/health", "/metadata", "/metrics")

    def request(self, endpoint: str, status: int, seconds: float, error: str | None = None) -> None:
        endpoint = endpoint if endpoint in self.ENDPOINTS else "other"  # a client cannot add series or break lines
        with self.lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self._observe(self.latency, LATENCY_BUCKETS, seconds)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1

    def batch(self, rows: int) -> None:
        with self.lock:
            self._observe(self.batches, BATCH_BUCKETS, rows)
            self.rows += rows

    def text(self) -> str:
        with self.lock:
            out = ["# HELP mmfuse_requests_total HTTP requests by endpoint and status.",
                   "# TYPE mmfuse_requests_total counter"]
            out += [f'mmfuse_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
            out += ["# HELP mmfuse_errors_total Failed requests by kind.", "# TYPE mmfuse_errors_total counter"]
            out += [f'mmfuse_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
            out += ["# HELP mmfuse_rows_predicted_total Rows predicted.", "# TYPE mmfuse_rows_predicted_total counter",
                    f"mmfuse_rows_predicted_total {self.rows}"]
            for name, h, buckets, what in (("mmfuse_request_seconds", self.latency, LATENCY_BUCKETS, "Request latency."),
                                           ("mmfuse_batch_rows", self.batches, BATCH_BUCKETS, "Rows per model call.")):
                out += [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
                out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(buckets, h["buckets"])]
                out += [f'{name}_bucket{{le="+Inf"}} {h["count"]}', f"{name}_sum {h['sum']}", f"{name}_count {h['count']}"]
        return "\n".join(out) + "\n"


# --- the rows of a request ----------------------------------------------------------------------
def _column_roles(predictor) -> dict:
    """Each input column the bundle reads -> its role."""
    roles = predictor.schema.roles
    return {c: roles.get(c, Role.TEXT) for p in predictor.preprocessors.values() for c in p.columns}


def _field_type(role: Role):
    from pydantic import BaseModel, ConfigDict, Field

    class FileRef(BaseModel):
        """A file inside the server's allowed folder (only with ``--allow-root``)."""

        model_config = ConfigDict(extra="forbid")
        path: str = Field(min_length=1)

    if role is Role.NUMERIC:
        return Optional[float]
    if role is Role.CATEGORICAL:
        return Optional[Union[str, int, float, bool]]
    if role in (Role.IMAGE, Role.AUDIO):
        return Optional[Union[str, FileRef]]  # base64, or a file under allow_root
    if role is Role.TIMESERIES:
        return Optional[Union[List[float], List[List[float]], FileRef]]
    return Optional[str]


def request_models(predictor):
    """The pydantic models of ``/predict``'s body and answer, typed from the bundle's columns."""
    from pydantic import BaseModel, ConfigDict, Field, create_model

    fields = {}
    for i, (col, role) in enumerate(_column_roles(predictor).items()):
        fields[f"f{i}"] = (_field_type(role), Field(default=None, alias=col,
                                                     description=f"{role.value} column {col!r}"))
    Row = create_model("Row", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)
    Row.__doc__ = "One row: the bundle's input columns; any may be left out or null (that input is then missing)."

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rows: List[Row] = Field(min_length=1, description="The rows to predict.")

    class Prediction(BaseModel):
        prediction: Union[str, float, int, bool, List[str], None]
        probabilities: Optional[Dict[str, float]] = None
        missing_inputs: List[str] = Field(default_factory=list,
                                          description="Inputs missing from this row (null or left out): the model "
                                                      "predicted without them.")

    class PredictResponse(BaseModel):
        predictions: List[Prediction]
        absent_inputs: List[str] = Field(default_factory=list,
                                         description="Inputs missing from every row of the request.")

    return Row, PredictRequest, PredictResponse


class RowReader:
    """Turns request rows into a DataFrame the bundle reads: base64 decoded, files under ``allow_root``
    resolved, limits checked. A problem raises :class:`BadRequest` naming the row and the field."""

    def __init__(self, predictor, cfg: ServeConfig):
        self.roles, self.cfg = _column_roles(predictor), cfg
        self.root = Path(cfg.allow_root).resolve() if cfg.allow_root else None

    def frame(self, rows: list, loc0=("body", "rows")):
        import pandas as pd

        if len(rows) > self.cfg.max_rows:
            raise BadRequest(413, list(loc0), f"{len(rows)} rows in one request; at most {self.cfg.max_rows}",
                             "too_many_rows")
        data = {c: [self._cell(r.get(c), i, c, loc0) for i, r in enumerate(rows)] for c in self.roles}
        return pd.DataFrame(data, index=pd.RangeIndex(len(rows)), columns=list(self.roles))

    def _cell(self, v, i, col, loc0):
        role = self.roles[col]
        loc = [*loc0, i, col]
        if v is None:
            return None
        if isinstance(v, dict):  # {"path": ...}
            if self.root is None:
                raise BadRequest(422, loc, "this server reads no files: send the content (base64), or start it "
                                 "with --allow-root DIR", "file_not_allowed")
            return self._file(v["path"], loc)
        if role in (Role.IMAGE, Role.AUDIO):
            if v.startswith("data:") and "," in v[:200]:  # a data URI: its base64 part
                v = v.split(",", 1)[1]
            try:
                raw = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                hint = (' (a file name? send {"path": ...} to a server started with --allow-root, or the '
                        "file's content as base64)") if "." in v[-6:] or "/" in v else ""
                raise BadRequest(422, loc, f"the {role.value} is not valid base64{hint}", "bad_base64") from None
            if not raw:
                raise BadRequest(422, loc, f"the {role.value} is empty", "bad_input")
            self._check_size(raw, role, loc)
            return raw
        return v

    def _file(self, rel: str, loc):
        from .io import resolve_path

        try:
            path = resolve_path(rel, self.root, allow_outside_root=False)
            if not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "does not exist in the allowed folder"
                raise BadRequest(422, loc, f"{rel[:200]!r} {what}", "file_not_found")
            if path.stat().st_size > self.cfg.max_body_bytes:
                raise BadRequest(413, loc, f"file {rel!r} has {path.stat().st_size:,} bytes; at most "
                                 f"{self.cfg.max_body_bytes:,}", "file_too_large")
            role = self.roles[loc[-1]]
            if role in (Role.IMAGE, Role.AUDIO):
                raw = path.read_bytes()
                self._check_size(raw, role, loc)
                return raw
            return str(path)
        except MmfuseError:  # (its message would show the server's folders)
            raise BadRequest(422, loc, f"path {rel[:200]!r} must name a file inside the server's allowed folder",
                             "file_not_allowed") from None
        except (OSError, ValueError) as e:  # a NUL byte, a name too long, no permission ...
            raise BadRequest(422, loc, f"file {rel[:200]!r} cannot be read ({type(e).__name__})", "file_unreadable") from None

    def _check_size(self, raw: bytes, role: Role, loc) -> None:
        if role is Role.IMAGE:
            from PIL import Image

            try:
                with Image.open(io.BytesIO(raw)) as im:  # reads the header only
                    w, h = im.size
            except Exception:  # not an image: the preprocessor's error names it
                return
            if w * h > self.cfg.max_image_pixels:
                raise BadRequest(413, loc, f"the image has {w}x{h} pixels; at most {self.cfg.max_image_pixels:,}",
                                 "image_too_large")
        else:
            import soundfile as sf

            try:
                info = sf.info(io.BytesIO(raw))
            except Exception:  # not audio soundfile reads: the preprocessor's error names it
                return
            if info.duration > self.cfg.max_audio_seconds:
                raise BadRequest(413, loc, f"the audio lasts {info.duration:.1f} s; at most "
                                 f"{self.cfg.max_audio_seconds:g} s", "audio_too_long")


def _answers(predictor, frame, rows=None) -> list[dict]:
    """``predict_frame``'s rows as JSON answers; ``rows`` (the request's frame) adds each row's missing inputs."""
    probas = [c for c in frame.columns if c.startswith("proba_")]
    missing = None
    if rows is not None:
        gone = {n: np.column_stack([rows[c].isna().to_numpy() for c in p.columns if c in rows] or
                                   [np.ones(len(rows), bool)]).all(axis=1) for n, p in predictor.preprocessors.items()}
        missing = [[n for n in sorted(gone) if gone[n][i]] for i in range(len(rows))]
    out = []
    for i, (_, r) in enumerate(frame.iterrows()):
        pred = r["prediction"]
        if isinstance(pred, (np.generic,)):
            pred = pred.item()
        if isinstance(pred, (list, tuple, np.ndarray)):
            pred = [str(x) for x in pred]
        elif isinstance(pred, float) and not np.isfinite(pred):
            pred = None
        item = {"prediction": pred}
        if probas:
            item["probabilities"] = {c[len("proba_"):]: float(r[c]) for c in probas}
        if missing is not None:
            item["missing_inputs"] = missing[i]
        out.append(item)
    return out


# --- batching ----------------------------------------------------------------------------------
class Batcher:
    """Gathers the rows of concurrent requests into model calls, one at a time, on a worker thread."""

    def __init__(self, predictor, cfg: ServeConfig, metrics: Metrics):
        self.predictor, self.cfg, self.metrics = predictor, cfg, metrics
        self.queue: asyncio.Queue | None = None
        self.task = None
        self.lock = threading.Lock()  # one model call at a time (the predictor keeps per-call reports)

    def predict_now(self, frame):
        """One model call; its answers and the inputs absent from every row."""
        with self.lock:
            out = self.predictor.predict_frame(frame, root=self.cfg.allow_root or os.getcwd())
        cols = [c for c in out.columns if c.startswith("proba_")]
        if not cols and out["prediction"].dtype.kind == "f":  # regression: the values themselves
            cols = ["prediction"]
        bad = np.flatnonzero(~np.isfinite(out[cols].to_numpy(dtype=float)).all(axis=1)) if cols else []
        if len(bad):
            raise InputError(int(bad[0]), None, "gives a non-finite output (a value far outside the training range?)",
                             hint="check the row's numbers")
        self.metrics.batch(len(frame))
        return _answers(self.predictor, out, frame), self.absent(frame)

    def absent(self, frame) -> list:
        """The inputs missing from every row of ``frame``."""
        return sorted(n for n, p in self.predictor.preprocessors.items()
                      if all(c not in frame or frame[c].isna().all() for c in p.columns))

    async def submit(self, frame):
        if self.cfg.max_batch <= 1:
            return await asyncio.to_thread(self.predict_now, frame)
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((frame, fut))
        return await fut

    async def _loop(self):
        import pandas as pd

        while True:
            first = await self.queue.get()
            items, rows = [first], len(first[0])
            deadline = time.perf_counter() + self.cfg.max_wait_ms / 1000
            while rows < self.cfg.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                rows += len(item[0])
            if len(items) == 1:
                await self._one(*items[0])
                continue
            frame = pd.concat([f for f, _ in items], ignore_index=True)
            try:
                answers, _ = await asyncio.to_thread(self.predict_now, frame)
            except Exception:  # some request is bad: each on its own, so only it fails
                for f, fut in items:
                    await self._one(f, fut)
                continue
            at = 0
            for f, fut in items:
                if not fut.done():
                    fut.set_result((answers[at:at + len(f)], self.absent(f)))
                at += len(f)

    async def _one(self, frame, fut):
        try:
            res = await asyncio.to_thread(self.predict_now, frame)
        except BaseException as e:  # noqa: BLE001 - handed to the request that sent this row
            if not fut.done():
                fut.set_exception(e)
            return
        if not fut.done():
            fut.set_result(res)


# --- the app -----------------------------------------------------------------------------------
def create_app(bundle, config: ServeConfig | None = None):
    """The FastAPI app serving ``bundle`` (a path or a loaded :class:`~mmfuse.bundle.Predictor`)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, PlainTextResponse
    except ImportError:  # pragma: no cover - the extra is missing
        raise MmfuseError("mmfuse serve needs the serve extra: pip install 'mmfuse[serve]'") from None
    from . import __version__
    from .bundle import Predictor

    cfg = config or ServeConfig()
    predictor = Predictor.load(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
    if not predictor.preprocessors:
        raise MmfuseError("mmfuse serve takes one bundle, not an ensemble folder: serve one of its members")
    if getattr(predictor, "aligned_only", False):
        predictor._refuse_aligned("be served")
    Row, PredictRequest, PredictResponse = request_models(predictor)
    reader = RowReader(predictor, cfg)
    metrics = Metrics()
    batcher = Batcher(predictor, cfg, metrics)
    task = predictor.task
    meta = {
        "mmfuse_version": __version__, "task": task.name, "target": task.column,
        "labels": [str(c) for c in task.classes_] if task.classes_ else None, "threshold": task.threshold,
        "inputs": {n: {"modality": p.modality, "columns": list(p.columns)} for n, p in predictor.preprocessors.items()},
        "schema": {c: r.value for c, r in _column_roles(predictor).items()},
        "bundle": Path(str(getattr(predictor, "path", "") or "")).name,
        "limits": {k: v for k, v in asdict(cfg).items() if k != "allow_root"}, "reads_files": cfg.allow_root is not None,
    }
    app = FastAPI(title="mmfuse", version=__version__,
                  description=f"Predictions of a {task.name} model of {task.column!r} (mmfuse bundle).")
    app.state.metrics, app.state.config, app.state.predictor = metrics, cfg, predictor

    def error(status: int, loc: list, msg: str, kind: str, endpoint: str, t0: float):
        metrics.request(endpoint, status, time.perf_counter() - t0, kind)
        return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": kind}]}, status_code=status)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        t0 = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            return error(413, ["body"], f"the body has {size} bytes; at most {cfg.max_body_bytes:,}",
                         "body_too_large", request.url.path, t0)
        if request.method == "POST" and size is None:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > cfg.max_body_bytes:
                    return error(413, ["body"], f"the body is over {cfg.max_body_bytes:,} bytes",
                                 "body_too_large", request.url.path, t0)
            request._body = bytes(body)
        return await call_next(request)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug, not bad input: counted, and JSON
        metrics.request(request.url.path, 500, 0.0, "internal")
        return JSONResponse({"detail": [{"loc": [], "msg": f"internal error ({type(exc).__name__})",
                                         "type": "internal"}]}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics.request(request.url.path, 422, 0.0, "validation")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    async def run(rows: list, endpoint: str, t0: float, loc0=("body", "rows")):
        try:
            frame = reader.frame(rows, loc0)
            answers, absent = await batcher.submit(frame)
        except BadRequest as e:
            return error(e.status, e.loc, e.msg, e.kind, endpoint, t0)
        except InputError as e:
            loc = [*loc0, *([int(e.row)] if isinstance(e.row, (int, np.integer)) else []),
                   *([e.column] if e.column else [])]
            return error(422, loc, e.reason + (f"; {e.hint}" if e.hint else ""), "bad_input", endpoint, t0)
        except MmfuseError as e:
            return error(422, list(loc0), str(e), "bad_input", endpoint, t0)
        metrics.request(endpoint, 200, time.perf_counter() - t0)
        return {"predictions": answers, "absent_inputs": absent}

    @app.post("/predict", response_model=PredictResponse,
              responses={413: {"description": "Body, rows, image or audio over the limits"},
                         422: {"description": "Bad input: the detail names the row and the field"}})
    async def predict(body: PredictRequest):
        """Predict rows sent as JSON."""
        t0 = time.perf_counter()
        return await run([r.model_dump(by_alias=True) for r in body.rows], "/predict", t0)

    @app.post("/predict/upload", response_model=PredictResponse, openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"schema": {
            "type": "object", "properties": {
                "row": {"type": "string", "description": "JSON object of the row's other columns"},
                **{c: {"type": "string", "format": "binary"} for c, r in _column_roles(predictor).items()
                   if r in (Role.IMAGE, Role.AUDIO)}}}}}, "required": False}})
    async def upload(request: Request):
        """Predict one row sent as a multipart form: ``row`` (JSON of the other columns) and a file per
        image or audio column."""
        t0 = time.perf_counter()
        try:
            form = await request.form()
        except Exception:  # not multipart, or a broken one
            return error(422, ["body"], "send a multipart/form-data body", "bad_form", "/predict/upload", t0)
        if not len(form):
            return error(422, ["body"], "send a multipart/form-data body: a field 'row' (a JSON object of the "
                         "columns) and a file per image or audio column; JSON rows go to POST /predict", "bad_form",
                         "/predict/upload", t0)
        row: dict = {}
        if "row" in form:
            try:
                row = json.loads(form["row"]) if isinstance(form["row"], str) else None
            except ValueError as e:
                return error(422, ["body", "row"], f"is not valid JSON ({e})", "bad_form", "/predict/upload", t0)
            if not isinstance(row, dict):
                return error(422, ["body", "row"], "must be a JSON object of columns", "bad_form", "/predict/upload", t0)
        roles = _column_roles(predictor)
        for key in form:
            if key == "row":
                continue
            if key not in roles:
                return error(422, ["body", key], f"unknown column {key!r}; known: {', '.join(roles)}", "bad_form",
                             "/predict/upload", t0)
            item = form[key]
            if isinstance(item, str):
                row[key] = item
            else:
                row[key] = base64.b64encode(await item.read()).decode()
        try:
            checked = Row.model_validate(row)
        except Exception as e:  # pydantic's ValidationError
            errs = e.errors() if hasattr(e, "errors") else [{"loc": (), "msg": str(e), "type": "validation"}]
            return error(422, ["body", "row", *map(str, errs[0].get("loc", ()))], errs[0].get("msg", ""),
                         "validation", "/predict/upload", t0)
        return await run([checked.model_dump(by_alias=True)], "/predict/upload", t0, loc0=("body",))

    @app.get("/health")
    async def health():
        """Liveness: the model is loaded."""
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata():
        """The bundle's schema, inputs, labels, task, threshold, the mmfuse version and the server's limits."""
        return meta

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        """Prometheus metrics of this worker."""
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    return app


def _app_from_env():
    """The app of ``$MMFUSE_SERVE`` (JSON: bundle and config): what each uvicorn worker builds."""
    spec = json.loads(os.environ["MMFUSE_SERVE"])
    threads = spec.pop("torch_threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return create_app(spec.pop("bundle"), ServeConfig(**spec))


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, config: ServeConfig | None = None,
          log_level: str = "warning", echo=None) -> None:
    """Run the server (blocks). With ``workers`` > 1 each worker process loads the bundle; torch threads are
    split between them."""
    import uvicorn

    cfg = config or ServeConfig()
    from .bundle import Predictor

    loaded = Predictor.load(bundle)  # a bad bundle fails here, once, with its one-line error
    if getattr(loaded, "aligned_only", False):
        loaded._refuse_aligned("be served")
    import socket

    with socket.socket() as sock:  # a taken port or an unknown host: one line now, not uvicorn's log later
        try:
            sock.bind((host, port))
        except OSError as e:
            raise MmfuseError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port, or stop "
                              "what uses it") from None
    threads = max(1, (os.cpu_count() or 1) // workers)
    if echo is not None:
        echo(f"serving {bundle} on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}; docs at /docs)")
    os.environ["MMFUSE_SERVE"] = json.dumps({"bundle": str(Path(bundle).resolve()), **asdict(cfg),
                                             "torch_threads": threads})
    uvicorn.run("mmfuse.serve:_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
