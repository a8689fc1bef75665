"""`tokenpose serve`: online pose estimation over HTTP with Ray Serve (the `serve` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokenpose.cli.common import EngineOpt, FlipOpt, friendly_errors, standalone
from tokenpose.cli.predict import (
    DetectorClassOpt,
    DetectorFormatOpt,
    DetectorOpt,
    DetectorSizeOpt,
    DetectorThrOpt,
    load_detector_option,
)


@friendly_errors
def command(
    engine: EngineOpt,
    replicas: Annotated[int, typer.Option("--replicas", help="Engine replicas (each loads the engine once).")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most requests per batch and crops per engine call.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="Longest wait for a batch to fill (ms).")] = 5.0,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join: auto or ray://HOST:10001 (default: a local Ray).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: the engine's).")] = None,
    flip: FlipOpt = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Port of Ray's Prometheus metrics endpoint (local Ray only).")
    ] = None,
    cpus: Annotated[float, typer.Option("--cpus-per-replica", help="Ray CPUs reserved per replica.")] = 1.0,
    gpus: Annotated[float, typer.Option("--gpus-per-replica", help="Ray GPUs per replica with --device cuda.")] = 1.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body (MB); larger: 413.")] = 20.0,
    max_boxes: Annotated[int, typer.Option("--max-boxes", help="Most boxes per request; more: 413.")] = 256,
    detector: DetectorOpt = None,
    detector_format: DetectorFormatOpt = None,
    detector_size: DetectorSizeOpt = None,
    detector_class: DetectorClassOpt = 0,
    detector_thr: DetectorThrOpt = 0.3,
) -> None:
    """Serve POST /v1/pose (JSON or multipart: an image and its person boxes), GET /v1/health and
    GET /v1/model until Ctrl-C or SIGTERM. Requests from all clients are batched together. With
    --detector, a request without boxes has its people found by that ONNX detector."""
    import dataclasses

    from tokenpose.errors import TokenPoseError

    try:
        import ray  # noqa: F401
    except ImportError:
        raise TokenPoseError("tokenpose serve needs Ray Serve: pip install 'tokenpose[serve]'") from None
    from tokenpose.serving.app import ServeOptions, serve_forever
    from tokenpose.serving.protocol import Limits

    found_by = load_detector_option(detector, detector_format, detector_size, detector_class, detector_thr)
    spec = None if found_by is None else dataclasses.replace(found_by.spec, path=found_by.spec.path.resolve())

    options = ServeOptions(
        engine=Path(engine), replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms, host=host,
        port=port, address=address, device=device, flip=flip, metrics_port=metrics_port, cpus_per_replica=cpus, gpus_per_replica=gpus,
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_boxes=max_boxes), detector=spec,
    )
    serve_forever(options, ready=lambda line: typer.echo(line, err=True))


main = standalone(command)
