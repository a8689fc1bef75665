"""`tokenpose export` / `tokenpose-export`: ONNX (FP32, FP16, INT8 Q/DQ) and TensorRT engines with manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tokenpose.cli.common import (
    CheckpointOpt,
    JsonFlag,
    VariantOpt,
    fail,
    friendly_errors,
    standalone,
)


@friendly_errors
def command(
    variant: VariantOpt = "s-v2",
    checkpoint: CheckpointOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write an FP16 ONNX model (LayerNorm/Softmax kept FP32).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write an INT8 Q/DQ ONNX model (needs --calib-data).")] = False,
    calib_data: Annotated[
        Path | None,
        typer.Option("--calib-data", help="Folder of person images, or a COCO keypoints json with person boxes."),
    ] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Number of calibration crops.")] = 64,
    int8_gpu: Annotated[
        bool | None,
        typer.Option("--int8-gpu/--no-int8-gpu", help="Also write the GPU INT8 model, Q/DQ on the FP16 model "
                     "(tokenpose_<variant>_int8-fp16.onnx; the INT8 engine is built from it). "
                     "Default: when TensorRT engines are built."),
    ] = None,
    int8_method: Annotated[
        str, typer.Option("--int8-method", help="Calibration: minmax, percentile or entropy.")
    ] = "minmax",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (>= 17).")] = 17,
    batch: Annotated[str, typer.Option("--batch", help="Batch range min:opt:max for engines and manifests.")] = "1:8:32",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("engines"),
    engine: Annotated[
        bool | None,
        typer.Option("--engine/--no-engine", help="Build TensorRT engines (default: when tensorrt imports)."),
    ] = None,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="onnxslim pass when it shrinks the graph.")] = True,
    fp16_head_fp32: Annotated[
        bool, typer.Option("--fp16-head-fp32", help="Keep the final heatmap projection in FP32 in the FP16 model.")
    ] = False,
    workspace: Annotated[float, typer.Option("--workspace", help="TensorRT workspace limit, GiB.")] = 4.0,
    timing_cache: Annotated[
        Path | None, typer.Option("--timing-cache", help="TensorRT timing cache file (default: OUT/tokenpose.timing.cache).")
    ] = None,
    aoti: Annotated[
        bool, typer.Option("--aoti", help="Also write an AOTInductor package (.pt2) for libtorch and the C++ example (needs a C++ compiler).")
    ] = False,
    aoti_sdpa: Annotated[
        bool, typer.Option("--aoti-sdpa", help="The AOTInductor package's attention through scaled_dot_product_attention "
                           "instead of the fused CPU operator: one file, no .attention.so beside it (slower).")
    ] = False,
    tf32: Annotated[
        bool, typer.Option("--tf32", help="Let FP32 layers of TensorRT engines use TF32 (default off: FP32 is FP32).")
    ] = False,
    triton: Annotated[
        bool, typer.Option("--triton", help="Also write a Triton model repository: OUT/triton/<model>/config.pbtxt.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Export a variant to ONNX (+ FP16 / INT8) and TensorRT engines, each verified and with a manifest."""
    from tokenpose.export.pipeline import ExportOptions, export_model
    from tokenpose.export.precision import Int8Settings
    from tokenpose.export.tensorrt import TensorRTError
    from tokenpose.manifest import BatchRange

    options = ExportOptions(
        variant=variant, out_dir=out, checkpoint=checkpoint, fp16=fp16, int8=int8, calib_data=calib_data,
        calib_size=calib_size, opset=opset, batch=BatchRange.parse(batch), engine=engine, simplify=simplify,
        fp16_keep_head_fp32=fp16_head_fp32, int8_settings=Int8Settings(method=int8_method),
        workspace_gib=workspace, timing_cache=timing_cache, aoti=aoti, int8_gpu=int8_gpu, tf32=tf32, triton=triton,
        aoti_fused_attention=False if aoti_sdpa else None,
    )
    log = (lambda _msg: None) if as_json else (lambda msg: typer.echo(msg, err=msg.startswith("warning")))
    try:
        summary = export_model(options, log=log)
    except TensorRTError as exc:
        typer.echo(str(exc), err=True)  # the TensorRT log, then the one-line error
        raise fail(str(exc).splitlines()[0]) from None
    if as_json:
        typer.echo(json.dumps({
            "artifacts": [{"path": str(a.path), "manifest": str(a.manifest), "format": a.format,
                           "precision": a.precision, "report": a.report} for a in summary.artifacts],
            "notes": summary.notes, "engine_skipped": summary.engine_skipped,
        }, indent=2))


main = standalone(command)
