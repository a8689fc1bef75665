"""One attention layer of a variant in every CPU kernel we can reach, beside a dense GEMM of the same run.

Issue 13's INT8 and AOTInductor targets both stop at the attention: it is 44% of the FP32 ONNX
model's kernel time and 62% of the INT8 model's (float32 in both) at batch 8, and it runs well below
the dense MatMuls' rate. This script times the attention of one transformer layer (all tokens query,
the variant's heads and head size, seeded q, k, v) in each form available here, interleaved call by
call, and the layer's qkv projection as a dense GEMM in the same rounds:

- `ort MultiHeadAttention`: the `com.microsoft` op our CPU sessions run (`tokenpose.export.fusion`);
- `ort MatMul+Softmax+MatMul`: the plain ONNX graph (the exporter's output, unfused);
- `ort Attention (opset 23)`: the standard op, where this onnxruntime has it;
- `torch sdpa (flash)`: `scaled_dot_product_attention`, what the torch / AOTInductor engines run;
- `torch matmul+softmax`: the explicit computation in eager PyTorch;
- `tokenpose::attention (fused)`: this repository's AVX-512 kernel (tokenpose/csrc/attention_cpu.cpp),
  what the torch and AOTInductor engines run on such CPUs ("fallback" where it hands over to SDPA).

GFLOP/s counts the two matmuls (4 * B * heads * S^2 * head_dim); "x dense" divides it by the GEMM
row's GFLOP/s: how far the attention is from the rate the Linear layers reach on this machine. The
same projection in INT8 (`MatMulInteger`) gives the INT8 GEMM speed-up, and a sweep of
`MultiHeadAttention` over head sizes splits its time into the matmuls and a part that no faster
matmul removes (the softmax): together, the best an INT8 attention kernel could do here.

    .venv/bin/python benchmarks/attention_kernels.py --variant s-v2 --batch 8 \
        --out benchmarks/results/attention_kernels_s-v2
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.report import machine_line
from tokenpose.bench.results import write_result_files
from tokenpose.bench.timing import interleaved_call_times
from tokenpose.models import fused_attention
from tokenpose.models.config import ModelConfig, get_config


def layer_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(tokens, heads, head size) of one transformer layer of `cfg`."""
    (fh, fw), (ph, pw) = cfg.feature_hw, cfg.patch_hw
    return cfg.num_joints + (fh // ph) * (fw // pw), cfg.heads, cfg.head_dim


def _session(nodes: list, inputs: dict[str, list], opset: int, threads: int, initializers=(),
             types=(TensorProto.FLOAT, TensorProto.FLOAT)):
    """An ONNX Runtime session of `nodes` with inputs `inputs` (name -> shape) and output "y";
    `types`: the (inputs, output) element types."""
    values = [helper.make_tensor_value_info(n, types[0], s) for n, s in inputs.items()]
    graph = helper.make_graph(nodes, "g", values, [helper.make_tensor_value_info("y", types[1], None)],
                              list(initializers))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    model = helper.make_model(graph, opset_imports=opsets)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def kernels(batch: int, tokens: int, heads: int, head: int, scale: float, threads: int) -> dict:
    """name -> (call, output as (B, S, heads * head)) for every attention form this machine runs."""
    rng = np.random.default_rng(0)
    dim = heads * head
    q, k, v = (rng.standard_normal((batch, tokens, dim)).astype(np.float32) for _ in range(3))
    split = [a.reshape(batch, tokens, heads, head).transpose(0, 2, 1, 3).copy() for a in (q, k, v)]
    flat = {"q": q, "k": k, "v": v}
    four = dict(zip("qkv", split))
    shape3, shape4 = [batch, tokens, dim], [batch, heads, tokens, head]
    merge = lambda y: y.transpose(0, 2, 1, 3).reshape(batch, tokens, dim)  # noqa: E731
    out: dict = {}

    mha = _session([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft",
                                     num_heads=heads, scale=scale)], dict.fromkeys("qkv", shape3), 17, threads)
    out["ort MultiHeadAttention"] = (lambda: mha.run(None, flat)[0], lambda y: y)
    scale_init = onnx.numpy_helper.from_array(np.array(scale, np.float32), "scale")
    plain = _session([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                      helper.make_node("MatMul", ["q", "kt"], ["s0"]),
                      helper.make_node("Mul", ["s0", "scale"], ["s"]),
                      helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                      helper.make_node("MatMul", ["p", "v"], ["y"])],
                     dict.fromkeys("qkv", shape4), 17, threads, [scale_init])
    out["ort MatMul+Softmax+MatMul"] = (lambda: plain.run(None, four)[0], merge)
    try:
        std = _session([helper.make_node("Attention", ["q", "k", "v"], ["y"], scale=scale)],
                       dict.fromkeys("qkv", shape4), 23, threads)
        out["ort Attention (opset 23)"] = (lambda: std.run(None, four)[0], merge)
    except Exception as exc:  # noqa: BLE001 - an onnxruntime without opset 23 says so in its own error types
        print(f"ort Attention (opset 23): not available here ({str(exc).splitlines()[0][:120]})")
    tq, tk, tv = (torch.from_numpy(a) for a in split)

    def sdpa():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale).numpy()

    def explicit():
        with torch.no_grad():
            return (torch.softmax(tq @ tk.transpose(-1, -2) * scale, -1) @ tv).numpy()

    out["torch sdpa (flash)"] = (sdpa, merge)
    out["torch matmul+softmax"] = (explicit, merge)
    try:
        fused_attention.ensure_loaded()
        name = "tokenpose::attention (fused)" + ("" if fused_attention.unavailable_reason() is None else ", fallback")

        def fused():
            with torch.no_grad():
                return torch.ops.tokenpose.attention(tq, tk, tv, scale).numpy()

        out[name] = (fused, merge)
    except fused_attention.FusedAttentionError as exc:
        print(f"tokenpose::attention: not available here ({str(exc).splitlines()[0][:120]})")
    return out


def dense_gemm(batch: int, tokens: int, dim: int, threads: int):
    """The layer's qkv projection, (B * S, dim) x (dim, 3 * dim), as one ONNX Runtime MatMul."""
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((dim, 3 * dim)).astype(np.float32), "w")
    session = _session([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [batch * tokens, dim]}, 17, threads, [w])
    x = rng.standard_normal((batch * tokens, dim)).astype(np.float32)
    return lambda: session.run(None, {"x": x}), 2.0 * batch * tokens * dim * 3 * dim


def dense_gemm_int8(batch: int, tokens: int, dim: int, threads: int):
    """The same projection as `dense_gemm` in INT8: uint8 activations x int8 weights -> int32
    (`MatMulInteger`, the MLAS u8s8 kernel under the INT8 model's MatMulIntegerToFloat)."""
    rng = np.random.default_rng(2)
    w = onnx.numpy_helper.from_array(rng.integers(-127, 128, (dim, 3 * dim)).astype(np.int8), "w")
    session = _session([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], {"x": [batch * tokens, dim]}, 17,
                       threads, [w], types=(TensorProto.UINT8, TensorProto.INT32))
    x = rng.integers(0, 256, (batch * tokens, dim)).astype(np.uint8)
    return lambda: session.run(None, {"x": x})


def head_size_sweep(batch: int, tokens: int, heads: int, sizes: list[int], scale: float, threads: int,
                    rounds: int) -> dict:
    """ONNX Runtime's MultiHeadAttention at several head sizes (same tokens and heads), interleaved,
    and the least-squares line ms = fixed + per_dim * head size through them. The two matmuls grow
    with the head size; the softmax over the (tokens x tokens) logits and the loop around it do not,
    so `fixed_ms` is what the kernel costs however fast its matmuls were."""
    rng = np.random.default_rng(3)
    calls = {}
    for d in sizes:
        session = _session([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft",
                                             num_heads=heads, scale=scale)],
                           {n: [batch, tokens, heads * d] for n in "qkv"}, 17, threads)
        feeds = {n: rng.standard_normal((batch, tokens, heads * d)).astype(np.float32) for n in "qkv"}
        calls[d] = lambda s=session, f=feeds: s.run(None, f)
    times, _ = interleaved_call_times(calls, rounds)
    ms = np.array([1e3 * statistics.median(times[d]) for d in sizes])
    per_dim, fixed = np.polyfit(np.array(sizes, float), ms, 1)
    return {"rows": [{"head_dim": d, "median_ms": float(m)} for d, m in zip(sizes, ms)],
            "fixed_ms": float(fixed), "ms_per_head_dim": float(per_dim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="s-v2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--head-sizes", default="8,16,24,32,48",
                    help="head sizes of the MultiHeadAttention sweep ('' to skip it)")
    ap.add_argument("--out", type=Path, required=True, help="results prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_config(args.variant)
    tokens, heads, head = layer_shape(cfg)
    forms = kernels(args.batch, tokens, heads, head, cfg.attn_scale, args.threads)
    reference = forms["ort MultiHeadAttention"][0]()
    for name, (call, as_bsd) in forms.items():
        diff = float(np.abs(as_bsd(call()) - reference).max())
        if diff > 1e-4:
            raise SystemExit(f"{name}: differs from MultiHeadAttention by {diff:.3g}: not the same attention")
    gemm, gemm_flop = dense_gemm(args.batch, tokens, heads * head, args.threads)
    calls = {"dense GEMM (qkv projection)": gemm,
             "dense GEMM, INT8 (MatMulInteger)": dense_gemm_int8(args.batch, tokens, heads * head, args.threads),
             **{name: call for name, (call, _) in forms.items()}}
    times, _ = interleaved_call_times(calls, args.rounds)
    attention_flop = 4.0 * args.batch * heads * tokens * tokens * head
    gemm_rate = gemm_flop / statistics.median(times["dense GEMM (qkv projection)"]) / 1e9
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rate = (gemm_flop if name.startswith("dense") else attention_flop) / median / 1e9
        rows.append({"kernel": name, "median_ms": 1e3 * median, "min_ms": 1e3 * min(seconds), "gflops": rate,
                     "x_dense": rate / gemm_rate})
        print(f"{name:<30} {1e3 * median:8.2f} ms  {rate:7.1f} GFLOP/s  x dense {rate / gemm_rate:.2f}")
    result = {"variant": cfg.name, "batch": args.batch, "tokens": tokens, "heads": heads, "head_dim": head,
              "threads": args.threads, "rounds": args.rounds, "rows": rows,
              "provenance": collect_provenance(threads=args.threads)}
    sizes = [int(d) for d in args.head_sizes.split(",") if d]
    if len(sizes) >= 2:
        sweep = head_size_sweep(args.batch, tokens, heads, sizes, cfg.attn_scale, args.threads, args.rounds)
        int8_speedup = (statistics.median(times["dense GEMM (qkv projection)"])
                        / statistics.median(times["dense GEMM, INT8 (MatMulInteger)"]))
        # The fastest INT8 attention this machine's kernels allow: the head-size-independent part as
        # it is, the matmul part at the INT8 GEMM's speed-up (no such fused kernel exists in ORT).
        sweep["int8_gemm_speedup"] = float(int8_speedup)
        sweep["int8_attention_bound_ms"] = sweep["fixed_ms"] + sweep["ms_per_head_dim"] * head / int8_speedup
        result["head_size_sweep"] = sweep
        print(f"MultiHeadAttention: {sweep['fixed_ms']:.2f} ms + {sweep['ms_per_head_dim']:.3f} ms x head size; "
              f"with INT8 matmuls ({int8_speedup:.2f}x) at best {sweep['int8_attention_bound_ms']:.2f} ms")
    write_result_files(args.out, result, markdown(result))


def markdown(result: dict) -> str:
    lines = [f"One attention layer of {result['variant']}: batch {result['batch']}, {result['tokens']} tokens, "
             f"{result['heads']} heads of {result['head_dim']}; {result['threads']} threads, {result['rounds']} "
             "interleaved rounds, median.", "",
             f"Machine: {machine_line(result)}", "",
             "| kernel | ms | GFLOP/s | x dense GEMM rate |", "|---|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['median_ms']:.2f} | {r['gflops']:.1f} | {r['x_dense']:.2f} |"
              for r in result["rows"]]
    sweep = result.get("head_size_sweep")
    if sweep:
        lines += ["", (f"`MultiHeadAttention` at other head sizes ({result['heads']} heads, {result['tokens']} "
                       "tokens), interleaved:"), "", "| head size | ms |", "|---:|---:|"]
        lines += [f"| {r['head_dim']} | {r['median_ms']:.2f} |" for r in sweep["rows"]]
        head = result["head_dim"]
        lines += ["", (f"Least-squares line: {sweep['fixed_ms']:.2f} ms + {sweep['ms_per_head_dim']:.3f} ms x head "
                       f"size. At head size {head} the matmuls are {sweep['ms_per_head_dim'] * head:.2f} ms and the "
                       f"rest (softmax, loop) {sweep['fixed_ms']:.2f} ms. With the matmuls at the INT8 GEMM's "
                       f"speed-up ({sweep['int8_gemm_speedup']:.2f}x) and the rest unchanged, an INT8 attention "
                       f"would take at best {sweep['int8_attention_bound_ms']:.2f} ms.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
