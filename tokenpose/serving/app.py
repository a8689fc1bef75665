"""`tokenpose serve`: a Ray Serve application that batches pose requests from many clients.

Each replica loads the engine once and runs a `PosePredictor`. Requests are parsed on the replica's
event loop, then queued by Ray Serve's `serve.batch`: up to `max_batch` requests wait at most
`batch_wait_ms` and run as one `PosePredictor.predict` call, whose crops are chunked at `max_batch`
per engine call. The engine runs in a worker thread so health checks and parsing stay responsive.

Ray, Ray Serve and Starlette are the `serve` extra: they are imported inside the functions here,
so the rest of the package imports without them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpose.engines.base import load_engine
from tokenpose.engines.predictor import PosePredictor
from tokenpose.errors import TokenPoseError
from tokenpose.predict.detectors import DetectorSpec
from tokenpose.serving.protocol import (
    Limits,
    PoseRequest,
    RequestError,
    decode_image,
    parse_boxes,
    parse_json_request,
    prediction_to_json,
)

__all__ = ["PoseService", "ServeOptions", "model_info", "serve_forever"]

APP_NAME = "tokenpose"
SHUTDOWN_SECONDS = 25.0  # the whole stop, Serve and Ray, stays under the 30 s promised


@dataclass(frozen=True)
class ServeOptions:
    """What `tokenpose serve` runs: the engine, replicas, batching and where to listen."""

    engine: Path
    replicas: int = 1
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": join a cluster
    device: str | None = None  # "cpu" / "cuda"; None: the engine's default
    flip: bool = False
    metrics_port: int | None = None  # Ray's Prometheus endpoint on this node (None: Ray picks a port)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 1.0  # only with device "cuda"
    limits: Limits = field(default_factory=Limits)
    detector: DetectorSpec | None = None  # finds the people of requests without boxes (None: they get a 400)

    def check(self) -> None:
        if self.replicas < 1:
            raise TokenPoseError(f"--replicas must be >= 1, got {self.replicas}")
        if self.max_batch < 1:
            raise TokenPoseError(f"--max-batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise TokenPoseError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms}")
        if not 0 < self.port < 65536:
            raise TokenPoseError(f"--port must be in 1..65535, got {self.port}")
        if self.device not in (None, "cpu", "cuda"):
            raise TokenPoseError(f"--device must be cpu or cuda, got {self.device!r}")


def model_info(engine: Any, path: Path) -> dict[str, Any]:
    """The `model` block of every response: variant, precision, backend and artifact name."""
    return {"variant": engine.meta.variant, "precision": engine.precision, "engine": engine.name,
            "artifact": path.name}


class PoseService:
    """The deployment's body (wrapped by `serve.deployment` in `serve_forever`)."""

    def __init__(self, engine: str, device: str | None, flip: bool, max_batch: int, batch_wait_ms: float,
                 limits: Limits, detector: DetectorSpec | None = None) -> None:
        from ray import serve
        from ray.serve.metrics import Counter, Histogram

        path = Path(engine)
        self.engine = load_engine(path, **({"device": device} if device else {}))
        self.predictor = PosePredictor(self.engine, flip_test=flip, batch_size=max_batch)
        self.limits = limits
        self.detector = detector.load() if detector is not None else None
        self.info = model_info(self.engine, path)
        self.manifest = dict(self.engine.manifest)  # every engine's manifest is JSON data (the Engine protocol)
        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1000.0)(
            self._run_batch)
        self.requests = Counter("tokenpose_requests", description="pose requests by HTTP status",
                                tag_keys=("status",))
        self.latency = Histogram("tokenpose_request_latency_ms", description="pose request latency (ms)",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000])
        self.crops = Histogram("tokenpose_crops_per_batch", description="person crops per batched predict call",
                               boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])

    def _predict(self, items: list[PoseRequest]) -> list:
        """The requests without boxes go to the detector in one batch, then every crop to the engine."""
        waiting = [it for it in items if it.boxes is None]
        for item, rows in zip(waiting, self.detector.detect([it.image for it in waiting]) if waiting else []):
            item.boxes = rows
        # (N, 5) rows: the fifth column is the box score, as in the request
        return self.predictor.predict([it.image for it in items], [it.boxes for it in items])

    async def _run_batch(self, items: list[PoseRequest]) -> list[dict[str, Any] | Exception]:
        """One batched call for up to max_batch requests; an engine failure fails each of them."""
        try:
            predictions = await asyncio.get_running_loop().run_in_executor(None, self._predict, items)
        except Exception as exc:  # noqa: BLE001 - reported per request as a 500 with one line
            return [exc] * len(items)
        crops = sum(len(it.boxes) for it in items)
        self.crops.observe(crops)
        calls = -(-crops // self.predictor.batch_size) if crops else 0
        batch = {"requests": len(items), "crops": crops, "engine_calls": calls}
        return [{**prediction_to_json(p), "image_hw": list(p.image_hw), "model": self.info, "batch": batch}
                for p in predictions]

    async def _read_body(self, request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {self.limits.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise RequestError(413, f"body exceeds the limit of {self.limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _parse(self, request) -> PoseRequest:
        from starlette.requests import Request

        raw = await self._read_body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        optional = self.detector is not None
        if kind != "multipart/form-data":
            return parse_json_request(raw, self.limits, boxes_optional=optional)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        form = await Request(request.scope, receive).form()
        image, boxes = form.get("image"), form.get("boxes")
        if image is None or (boxes is None and not optional):
            raise RequestError(400, "multipart request needs an 'image' file part and a 'boxes' JSON part")
        data = await image.read() if hasattr(image, "read") else str(image).encode()
        if hasattr(boxes, "read"):
            boxes = await boxes.read()
        return PoseRequest(decode_image(data, self.limits), None if boxes is None else parse_boxes(boxes, self.limits))

    async def _pose(self, request) -> tuple[int, dict[str, Any]]:
        try:
            parsed = await self._parse(request)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        result = await self._batched(parsed)
        if isinstance(result, Exception):
            first = str(result).splitlines()[0] if str(result) else ""
            return 500, {"error": f"engine failed: {type(result).__name__}: {first}"}
        return 200, result

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        path, method = request.url.path.rstrip("/"), request.method
        if path == "/v1/pose" and method == "POST":
            status, body = await self._pose(request)
        elif path == "/v1/health" and method == "GET":
            status, body = 200, {"status": "ok", "model": self.info, "pid": os.getpid()}
        elif path == "/v1/model" and method == "GET":
            status, body = 200, {**self.manifest, "model": self.info}
        elif path in ("/v1/pose", "/v1/health", "/v1/model"):
            status, body = 405, {"error": f"{method} is not allowed on {path}"}
        else:
            status, body = 404, {"error": f"no route {path}; use POST /v1/pose, GET /v1/health or GET /v1/model"}
        self.requests.inc(tags={"status": str(status)})
        self.latency.observe((time.perf_counter() - start) * 1000.0)
        return JSONResponse(body, status_code=status)


def _deployment(options: ServeOptions):
    from ray import serve

    actor = {"num_cpus": options.cpus_per_replica}
    if options.device == "cuda":
        actor["num_gpus"] = options.gpus_per_replica
    deployment = serve.deployment(
        PoseService, name=APP_NAME, num_replicas=options.replicas, ray_actor_options=actor,
        # enough requests in flight per replica for a full batch to form while one runs
        max_ongoing_requests=max(2 * options.max_batch, 8),
    )
    return deployment.bind(str(options.engine.resolve()), options.device, options.flip, options.max_batch,
                           options.batch_wait_ms, options.limits, options.detector)


def start(options: ServeOptions, after_ray_init: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """Start Ray (or join `options.address`) and the application; return the function that stops both.

    after_ray_init runs as soon as Ray is up (`ray.init` installs signal handlers of its own, which
    the caller may want to replace before the application starts). Blocks until every replica has
    loaded its engine (the health route answers from then on)."""
    import ray
    from ray import serve

    options.check()
    started_ray = not ray.is_initialized() and options.address is None
    try:
        if not ray.is_initialized():
            extra = {} if options.metrics_port is None else {"_metrics_export_port": options.metrics_port}
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **extra)
        after_ray_init()
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(_deployment(options), name=APP_NAME, route_prefix="/")
    except Exception as exc:  # noqa: BLE001 - Ray's errors (port taken, no cluster, replica failed)
        if started_ray:
            ray.shutdown()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TokenPoseError(f"cannot start Ray Serve on {options.host}:{options.port}: "
                             f"{type(exc).__name__}: {first}") from None

    def stop() -> None:
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:  # someone else's cluster: remove only our application
            serve.delete(APP_NAME)

    return stop


def serve_forever(options: ServeOptions, ready: Callable[[str], None] = print) -> None:
    """Run the application until SIGINT or SIGTERM, then stop it within SHUTDOWN_SECONDS."""
    options.check()
    engine = load_engine(options.engine, **({"device": options.device} if options.device else {}))
    PosePredictor(engine, batch_size=options.max_batch)  # the engine's batch limits fit --max-batch
    del engine
    if options.detector is not None:
        options.detector.load()  # a bad detector fails here, in one line, not in every replica
    stop_requested = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def catch_stop_signals() -> None:  # after ray.init, which puts in handlers of its own
        for sig in previous:
            signal.signal(sig, lambda *_: stop_requested.set())

    catch_stop_signals()
    try:
        stop = start(options, after_ray_init=catch_stop_signals)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        ready(f"serving {options.engine.name} at http://{options.host}:{options.port}/v1/pose "
              f"({options.replicas} replica(s), batches of up to {options.max_batch}); Ctrl-C to stop")
        while not stop_requested.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    stopper.join(SHUTDOWN_SECONDS)
    if stopper.is_alive():
        raise TokenPoseError(f"Ray Serve did not stop within {SHUTDOWN_SECONDS:.0f} s; exiting anyway")
