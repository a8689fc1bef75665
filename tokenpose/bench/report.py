"""Turning a `BenchResult` (or its JSON) into a README-ready markdown report and a plot.

* `markdown_report(result)`: the machine line (CPU, cores, GPU, versions, threads, load), the
  speed table (latency percentiles, throughput, ratio to PyTorch eager FP32, achieved GFLOP/s
  and its fraction of the measured matmul peak, memory), the skipped engines with reasons, the
  matmul peaks, the end-to-end pipeline table and the every-variant complexity table (the
  paper's parameters and GFLOPs beside true FLOPs and our measured batch-1 speed).
* `plot_throughput(result, path)`: images/s against batch size, one line per engine and variant.

Both accept a `BenchResult` or the dict read back from its JSON file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokenpose.files import atomic_write

__all__ = ["machine_line", "markdown_report", "plot_throughput", "profile_tables", "speed_table", "zoo_speed_table"]


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else result


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def machine_line(result: Any) -> str:
    """One paragraph naming the machine, the libraries and the thread settings of a run."""
    d = _as_dict(result)
    prov = d["provenance"]
    cpu, gpu, v, th = prov["cpu"], prov.get("gpu"), prov["versions"], prov["threads"]
    load = prov.get("load_average") or {}
    start, end = load.get("start"), load.get("end")
    parts = [
        f"CPU: {cpu['model']}, {cpu['affinity_cores']} usable of {cpu['logical_cores']} logical cores"
        + (f" ({', '.join(cpu['flags'])})" if cpu.get("flags") else ""),
        "GPU: " + (f"{gpu['name']} (driver {gpu.get('driver') or '?'}, CUDA {gpu.get('cuda')})" if gpu else "none"),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"threads: torch {th['torch_intra_op']} intra-op / {th['torch_inter_op']} inter-op, "
        f"onnxruntime {th['onnxruntime_intra_op']}" + (f", env {th['env']}" if th.get("env") else ""),
    ]
    if start:
        parts.append(f"1-min load average {start[0]:.2f} at start, {end[0]:.2f} at end" if end
                     else f"1-min load average {start[0]:.2f} at start")
    return "; ".join(parts) + "."


def _precision(row: dict) -> str:
    """The precision cell: "bf16 (emulated)" where the device has no instructions for it."""
    return f"{row['precision']} (emulated)" if row.get("emulated") else row["precision"]


def speed_table(result: Any) -> str:
    """Markdown table: one row per variant, engine and batch size."""
    d = _as_dict(result)
    head = ("| variant | engine | precision | batch | p50 ms | p90 ms | p99 ms | images/s | x torch | x ONNX FP32 | "
            "GFLOP/s | % of peak | CPU util | peak mem MiB | call +MiB |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in d["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['engine']} | {_precision(r)} | {r['batch']} | failed: "
                         f"{r['reason']} | | | | | | | | | | |")
            continue
        lat, mem = r["latency_ms"], r.get("memory") or {}
        lines.append(
            f"| {r['variant']} | {r['engine']} | {_precision(r)} | {r['batch']} | {_f(lat['p50'])} | "
            f"{_f(lat['p90'])} | {_f(lat['p99'])} | {_f(r['throughput_ips'])} | "
            f"{_f(r.get('speedup_vs_torch'), 2, 'x')} | {_f(r.get('speedup_vs_onnx'), 2, 'x')} | "
            f"{_f(r.get('achieved_gflops_per_s'), 1)} | "
            f"{_f(None if r.get('peak_fraction') is None else 100 * r['peak_fraction'], 1)} | "
            f"{_f(r.get('cpu_util'), 2)} | {_f(mem.get('peak_mb'), 0)} | {_f(mem.get('delta_mb'), 0)} |"
        )
    return "\n".join(lines)


def peaks_table(result: Any) -> str:
    d = _as_dict(result)
    lines = ["| library | precision | device | GEMM n | GFLOP/s (GOP/s int8) |", "|---|---|---|---|---|"]
    for p in d["peaks"]:
        value = _f(p["gflops_per_s"], 1) if p["gflops_per_s"] else f"failed: {p['error']}"
        lines.append(f"| {p['library']} | {p['precision']} | {p['device']} | {p['size']} | {value} |")
    return "\n".join(lines)


def pipeline_table(result: Any) -> str:
    d = _as_dict(result)
    lines = ["| variant | engine | persons/image | images | ms/image | engine ms/image | outside engine | persons/s |",
             "|---|---|---|---|---|---|---|---|"]
    for p in d["pipeline"]:
        if p["status"] != "ok":
            lines.append(f"| {p['variant']} | {p['engine']} | {p['persons_per_image']} | {p['images']} | "
                         f"failed: {p['reason']} | | | |")
            continue
        lines.append(
            f"| {p['variant']} | {p['engine']} | {p['persons_per_image']} | {p['images']} | "
            f"{_f(p['total_ms_per_image'], 1)} | {_f(p['engine_ms_per_image'], 1)} | "
            f"{_f(100 * p['outside_engine_share'], 1, '%')} | {_f(p['persons_per_s'])} |"
        )
    return "\n".join(lines)


def profile_tables(result: Any, top: int = 12) -> str:
    """One markdown table per profiled ONNX Runtime engine: kernel ms per call by op type."""
    d = _as_dict(result)
    out = []
    for p in d.get("profiles") or []:
        out += [f"{p['variant']} {p['engine']}, batch {p['batch']} ({p['runs']} profiled calls, "
                f"{p['total_ms']:.1f} ms of kernels per call):", "",
                "| op | ms per call | share | nodes |", "|---|---|---|---|"]
        out += [f"| {o['op']} | {o['ms']:.2f} | {100 * o['share']:.1f}% | {o['nodes']} |" for o in p["ops"][:top]]
        out.append("")
    return "\n".join(out)


def zoo_speed_table(result: Any, batch: int = 1) -> str:
    """The paper's parameter/GFLOP table beside true FLOPs and measured images/s at `batch`."""
    d = _as_dict(result)
    engines = list(dict.fromkeys(r["engine"] for r in d["rows"] if r["status"] == "ok" and r["batch"] == batch))
    speed = {(r["variant"], r["engine"]): r["throughput_ips"] for r in d["rows"]
             if r["status"] == "ok" and r["batch"] == batch}
    head = ["variant", "params (M)", "paper params (M)", "GFLOPs (paper convention)", "paper GFLOPs",
            "true GFLOPs"] + [f"{e} images/s (batch {batch})" for e in engines]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for c in d["complexity"]:
        cells = [c["variant"], f"{c['params'] / 1e6:.2f}", _f(c.get("paper_params_m"), 1),
                 f"{c['gflops_paper_convention']:.2f}", _f(c.get("paper_gflops"), 1), f"{c['true_gflops']:.2f}"]
        cells += [_f(speed.get((c["variant"], e))) for e in engines]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: Any, *, title: str | None = "tokenpose-bench") -> str:
    """The whole report as markdown (sections without content are left out)."""
    d = _as_dict(result)
    out = []
    if title:
        out += [f"### {title}", ""]
    out += [f"Command: `{d['command']}`", "", f"Machine: {machine_line(d)}", ""]
    s = d["settings"]
    how = (f"{s['seconds']} s per engine and batch" if s.get("seconds")
           else f"{s['warmup']} warm-up + {s['iters']} timed calls")
    out += [(f"Timing: {how}, {'interleaved rounds' if s['interleave'] else 'one engine after another'}, "
            f"seeded synthetic inputs; latency per batch call; images/s = batch / mean latency; "
            f"x torch = throughput / PyTorch eager FP32 throughput at the same batch; x ONNX FP32 = the same "
            f"against the ONNX Runtime FP32 engine; GFLOP/s from the FLOPs executed "
            f"(the last layer's visual-token rows are not computed); "
            f"% of peak against the same run's matmul peak in the engine's library and precision; "
            f"CPU util = process CPU s / wall s (at most the thread count; less means other processes had "
            f"the cores); peak mem = the process's peak {'RSS' if not d['provenance'].get('gpu') else 'memory'} "
            f"during the engine's calls (all engines stay loaded), call +MiB = its growth during one call."), ""]
    if d["rows"]:
        out += [speed_table(d), ""]
    if d.get("profiles"):
        out += ["Where the time goes (ONNX Runtime's profiler, kernel time by op type):", "", profile_tables(d)]
    if d["skipped"]:
        out += ["Skipped:", ""] + [f"- {k['engine']} ({k['variant']}): {k['reason']}" for k in d["skipped"]] + [""]
    if d["peaks"]:
        out += ["Matmul peak measured in this run:", "", peaks_table(d), ""]
    if d["pipeline"]:
        source = s.get("pipeline_data")
        scenes = f"images of {Path(source).name}" if source else "seeded synthetic images and boxes"
        out += [f"End to end (`PosePredictor.predict`: crop, engine, decode; {scenes}, decoded before timing):",
                "", pipeline_table(d), ""]
    if d["complexity"]:
        batch = 1 if 1 in s["batches"] else s["batches"][0]
        out += ["Complexity (per image) beside measured speed:", "", zoo_speed_table(d, batch), ""]
    return "\n".join(out)


def write_markdown(result: Any, path: str | os.PathLike, *, title: str | None = "tokenpose-bench") -> Path:
    path = Path(path)
    with atomic_write(path, "w") as f:
        f.write(markdown_report(result, title=title))
    return path


def plot_throughput(result: Any, path: str | os.PathLike) -> Path:
    """PNG of images/s against batch size (log2 x axis), one line per engine (and variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = _as_dict(result)
    rows = [r for r in d["rows"] if r["status"] == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for variant in variants:
        for engine in dict.fromkeys(r["engine"] for r in rows if r["variant"] == variant):
            pts = sorted((r["batch"], r["throughput_ips"]) for r in rows
                         if r["variant"] == variant and r["engine"] == engine)
            label = engine if len(variants) == 1 else f"{variant} {engine}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    batches = sorted({r["batch"] for r in rows})
    if batches:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
    prov = d["provenance"]
    gpu = prov.get("gpu")
    where = gpu["name"] if gpu else f"{prov['cpu']['model']}, {prov['cpu']['affinity_cores']} cores"
    load = prov.get("load_average") or {}
    if load.get("start") and load.get("end"):
        where += f"; 1-min load average {load['start'][0]:.1f} -> {load['end'][0]:.1f}"
    ax.set_title(f"TokenPose {', '.join(variants)}: throughput vs batch size\n{where}", fontsize=10)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
