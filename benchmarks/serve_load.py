"""Throughput and latency of `tokenpose serve` under 1, 4, 16 and 64 concurrent clients, beside the
same engine called directly at the same batch size, in one run on one machine.

    python benchmarks/serve_load.py [--variant s-v2] [--replicas 1] [--max-batch 8] [--seconds 20]

Exports the variant to ONNX FP32 (random weights: speed does not depend on them) unless `--engine` is
given, starts the real `tokenpose serve` in a subprocess, and lets each client post one image with one
person box (a coco_mini person) per request, as fast as answers come back. "direct" runs
`PosePredictor.predict` in this process on batches of `--max-batch` such requests. Prints a table and
writes `benchmarks/results/serve_load_<variant>.json` and `.md`. Goal: at 16 clients the server's
throughput is >= 80% of the direct engine's (dynamic batching pays for its own overhead).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "fixtures" / "coco_mini"
RESULTS = ROOT / "benchmarks" / "results"


def person_requests() -> list[tuple[Path, list[float]]]:
    ann = json.loads((COCO / "annotations" / "person_keypoints_mini.json").read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    return [(COCO / "images" / names[a["image_id"]], a["bbox"]) for a in ann["annotations"]
            if a["num_keypoints"] > 0]


def export(variant: str, folder: Path) -> Path:
    from tokenpose.export.pipeline import ExportOptions, export_model

    summary = export_model(ExportOptions(variant=variant, out_dir=folder, engine=False, simplify=False,
                                         verify_batches=(1,)), log=lambda _m: None)
    return summary.artifacts[0].path


def direct(engine_path: Path, requests: list, batch: int, seconds: float) -> dict:
    import cv2

    from tokenpose.engines import PosePredictor, load_engine

    predictor = PosePredictor(load_engine(engine_path), batch_size=batch)
    images = {p: cv2.imread(str(p)) for p in {r[0] for r in requests}}
    done, latencies, i = 0, [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [requests[(i + k) % len(requests)] for k in range(batch)]
        i += batch
        t = time.perf_counter()
        predictor.predict([images[p] for p, _ in chunk], [np.array([b]) for _, b in chunk])
        latencies.append(time.perf_counter() - t)
        done += batch
    elapsed = time.perf_counter() - start
    return {"mode": "direct", "clients": None, "requests": done, "throughput": done / elapsed,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def load(url: str, requests: list, clients: int, seconds: float) -> dict:
    bodies = [json.dumps({"image": base64.b64encode(p.read_bytes()).decode(), "boxes": [b]}).encode()
              for p, b in requests]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            req = urllib.request.Request(f"{url}/v1/pose", data=bodies[i % len(bodies)],
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read()
                ok = True
            except OSError:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[0] += 1
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    return {"mode": "serve", "clients": clients, "requests": len(latencies), "errors": errors[0],
            "throughput": len(latencies) / elapsed,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def start_server(engine: Path, replicas: int, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpose.cli.main", "serve", "--engine", str(engine), "--replicas", str(replicas),
         "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=5):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"tokenpose serve exited with {proc.returncode}")
            time.sleep(1)
    proc.kill()
    raise SystemExit("tokenpose serve did not become healthy in 240 s")


def markdown(rows: list[dict], info: dict) -> str:
    base = next(r["throughput"] for r in rows if r["mode"] == "direct")
    lines = [f"# tokenpose serve load: {info['variant']} ONNX FP32, {info['replicas']} replica(s), "
             f"max batch {info['max_batch']}",
             "", f"CPU: {info['provenance']['cpu']['model']} ({info['provenance']['cpu']['logical_cores']} cores; "
             f"flags {' '.join(info['provenance']['cpu']['flags'])})", "",
             "| mode | clients | requests | img/s | x direct | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients'] or '-'} | {r['requests']} | {r['throughput']:.2f} | "
                     f"{r['throughput'] / base:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="s-v2")
    ap.add_argument("--engine", type=Path, help="an exported .onnx to serve instead of a fresh export")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    requests = person_requests()
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine or export(args.variant, Path(tmp))
        rows = [direct(engine, requests, args.max_batch, args.seconds)]
        proc, url = start_server(engine, args.replicas, args.max_batch, args.batch_wait_ms)
        try:
            load(url, requests, 4, 3.0)  # warm-up: every replica has run its engine
            for clients in (int(c) for c in args.clients.split(",")):
                rows.append(load(url, requests, clients, args.seconds))
                print(rows[-1], flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    from tokenpose.bench.provenance import collect_provenance

    info = {"variant": args.variant, "replicas": args.replicas, "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms, "seconds": args.seconds, "provenance": collect_provenance()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serve_load_{args.variant}"
    stem.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))
    text = markdown(rows, info)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
