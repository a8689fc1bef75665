#!/usr/bin/env bash
# The GPU check of a machine that already has a CUDA build of PyTorch (and no internet): installs
# this checkout into a virtual environment that reuses the system's torch, then, within a time
# budget (8 minutes by default), runs
#   1. pytest -m gpu (TensorRT tests skip themselves: TensorRT is not installable there);
#   2. tokenpose-bench --device cuda, S-v2 and T at batch 1, 8, 64, 256: torch FP32/FP16/BF16,
#      the same as CUDA graphs (--cuda-graphs), and an AOTInductor CUDA package (.pt2);
#   3. a few AMP training steps of T on tests/fixtures/coco_mini: bf16, and fp16 (GradScaler);
#   4. the target: S-v2 BF16 at batch 256 reaches >= 30% of the same run's BF16 matmul peak;
#   5. only where TensorRT imports (not on the machines without it): a TensorRT FP32 engine of T,
#      the C++ example built with its TensorRT back-end, run on a COCO image and compared with
#      Python's PosePredictor on the same engine.
# Results land in OUT_DIR: one log per step, the bench JSON/markdown, target.json and summary.json.
#
#   scripts/gpu_check.sh [--dry-run] [--wheels DIR] [--python PY] OUT_DIR
#
# --wheels DIR   wheels of the small dependencies the machine lacks (pip --no-index --find-links DIR);
#                torch is never installed or upgraded.
# --python PY    the interpreter that has CUDA torch (default: python3); with --dry-run, the one
#                whose environment already has tokenpose installed (no virtual environment is made).
# --dry-run      runs on CPU (CI): makes no environment and runs nothing heavy, but checks that every
#                command parses: typer/pip commands with --help appended, pytest with --collect-only,
#                the embedded Python helpers with --check.
# Exit status: 0 when every step passed and the target was met, 1 otherwise (details in summary.json),
# 2 on bad usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
WHEELS=""
BASE_PY="python3"
OUT=""
BUDGET_S="${TOKENPOSE_GPU_CHECK_BUDGET_S:-480}"
VENV="${TOKENPOSE_GPU_CHECK_VENV:-$ROOT/build/gpu-venv}"
VARIANTS="s-v2,t"
BATCHES="1,8,64,256"
COCO_ANN="$ROOT/tests/fixtures/coco_mini/annotations/person_keypoints_mini.json"
COCO_IMAGES="$ROOT/tests/fixtures/coco_mini/images"

usage() { echo "usage: scripts/gpu_check.sh [--dry-run] [--wheels DIR] [--python PY] OUT_DIR" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --wheels) [ $# -ge 2 ] || usage; WHEELS="$2"; shift ;;
    --python) [ $# -ge 2 ] || usage; BASE_PY="$2"; shift ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || usage; OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || usage
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then echo "gpu_check: --wheels $WHEELS is not a folder" >&2; exit 2; fi
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
FAILED=0
DEADLINE=0

# The AOTInductor CUDA package of one variant (tokenpose export --aoti compiles for the CPU only).
AOTI_PY='
import argparse, inspect
from tokenpose.export.aoti import export_aoti
p = argparse.ArgumentParser(description="AOTInductor CUDA package of a variant")
p.add_argument("--variant", required=True)
p.add_argument("--out", required=True)
p.add_argument("--batch", required=True)
p.add_argument("--check", action="store_true", help="parse and bind the arguments only")
a = p.parse_args()
kwargs = dict(batch=a.batch, device="cuda")
inspect.signature(export_aoti).bind(a.variant, a.out, **kwargs)
if not a.check:
    export_aoti(a.variant, a.out, **kwargs)
'

# Target: S-v2 BF16 (torch-bf16) at batch 256 reaches >= 30% of the BF16 matmul peak of the same run.
TARGET_PY='
import argparse, json, sys
p = argparse.ArgumentParser(description="S-v2 BF16 batch-256 share of the BF16 matmul peak")
p.add_argument("bench_json")
p.add_argument("target_json")
p.add_argument("--min-fraction", type=float, default=0.30)
p.add_argument("--check", action="store_true", help="parse the arguments only")
a = p.parse_args()
if a.check:
    sys.exit(0)
rows = json.load(open(a.bench_json))["rows"]
row = next((r for r in rows if r["variant"] == "s-v2" and r["engine"] == "torch-bf16" and r["batch"] == 256
            and r["status"] == "ok"), None)
fraction = None if row is None else row.get("peak_fraction")
result = {"variant": "s-v2", "engine": "torch-bf16", "batch": 256, "min_fraction": a.min_fraction,
          "peak_fraction": fraction, "achieved_gflops_per_s": row and row.get("achieved_gflops_per_s"),
          "peak_gflops_per_s": row and row.get("peak_gflops_per_s"),
          "met": fraction is not None and fraction >= a.min_fraction}
json.dump(result, open(a.target_json, "w"), indent=2)
print(json.dumps(result))
sys.exit(0 if result["met"] else 1)
'

# Requirements of the installed tokenpose (plus pytest) that this environment lacks; torch excluded.
MISSING_PY='
import importlib.metadata as md, re
reqs = [r for r in md.requires("tokenpose") or [] if "extra ==" not in r] + ["pytest>=8.0"]
for req in reqs:
    name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
    if name.lower() == "torch":
        continue
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(req.split(";")[0].strip())
'

# C++ (TensorRT back-end) against Python on the same engine, image and boxes: keypoints within 0.01 px.
CPP_VS_PY='
import argparse, json, sys
import numpy as np
p = argparse.ArgumentParser(description="tokenpose_cpp keypoints against PosePredictor")
p.add_argument("engine")
p.add_argument("image")
p.add_argument("boxes_json")
p.add_argument("cpp_json")
p.add_argument("--check", action="store_true", help="parse the arguments only")
a = p.parse_args()
if a.check:
    sys.exit(0)
from tokenpose.engines import PosePredictor, load_engine
boxes = np.array(json.load(open(a.boxes_json)), dtype=np.float64)
want = PosePredictor(load_engine(a.engine)).predict(a.image, boxes)
got = np.array([[k[:2] for k in person["keypoints"]] for person in json.load(open(a.cpp_json))["people"]])
err = float(np.abs(got - want.keypoints).max())
print(f"C++ TensorRT vs Python: max keypoint difference {err:.4f} px")
sys.exit(0 if got.shape == want.keypoints.shape and err <= 0.01 else 1)
'

# step NAME SECONDS PARSE_FLAG CMD...: run CMD with its output in OUT/NAME.log, within SECONDS and
# what is left of the budget; with --dry-run, run CMD PARSE_FLAG instead (parse only).
step() {
  local name="$1" limit="$2" parse_flag="$3" rc start
  shift 3
  start=$SECONDS
  if [ "$DRY_RUN" = 1 ]; then
    "$@" "$parse_flag" > "$OUT/$name.log" 2>&1
    rc=$?
  else
    local left=$((DEADLINE - SECONDS))
    if [ "$DEADLINE" -gt 0 ] && [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -le 0 ]; then
      echo "gpu_check: $name: skipped, the ${BUDGET_S} s budget is spent" | tee "$OUT/$name.log" >&2
      printf '%s\t%s\t%s\n' "$name" 124 0 >> "$STEPS"
      FAILED=1
      return 0
    fi
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STEPS"
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    echo "gpu_check: $name failed (exit $rc): see $OUT/$name.log" >&2
  else
    echo "gpu_check: $name ok ($((SECONDS - start)) s)" >&2
  fi
  return 0
}

install() {
  if [ "$DRY_RUN" = 1 ]; then
    PY="$BASE_PY"
    step venv 30 --help "$BASE_PY" -m venv --system-site-packages "$VENV"
    step install 30 --help "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT"
    step install-deps 30 --help "$PY" -m pip install --no-index --find-links "${WHEELS:-$OUT}" pytest
    step missing-deps 30 --help "$PY" -c "$MISSING_PY"
    return 0
  fi
  PY="$VENV/bin/python"
  [ -x "$PY" ] || "$BASE_PY" -m venv --system-site-packages "$VENV" || { echo "gpu_check: cannot create $VENV" >&2; exit 1; }
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PY sees no CUDA build of torch with a GPU; run where one is installed (--python PY)" >&2
    exit 1
  fi
  local find_links=()
  [ -n "$WHEELS" ] && find_links=(--find-links "$WHEELS")
  # Building the editable install needs setuptools>=77 (pyproject's license fields); offline, it can only
  # come from the system or the wheel folder.
  "$PY" -m pip install -q --no-index "${find_links[@]}" "setuptools>=77" > "$OUT/install.log" 2>&1 || true
  "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT" >> "$OUT/install.log" 2>&1 \
    || { echo "gpu_check: installing tokenpose failed: see $OUT/install.log" >&2; exit 1; }
  mapfile -t missing < <("$PY" -c "$MISSING_PY")
  if [ ${#missing[@]} -gt 0 ]; then
    if [ -z "$WHEELS" ]; then
      echo "gpu_check: missing ${missing[*]}; pass --wheels DIR holding their wheels" >&2
      exit 1
    fi
    "$PY" -m pip install --no-index "${find_links[@]}" "${missing[@]}" >> "$OUT/install.log" 2>&1 \
      || { echo "gpu_check: installing ${missing[*]} from $WHEELS failed: see $OUT/install.log" >&2; exit 1; }
  fi
}

checks() {
  local bin
  bin="$(dirname "$PY")"
  DEADLINE=$((SECONDS + BUDGET_S))
  step pytest-gpu 120 --collect-only "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$OUT/pytest-gpu.xml" "$ROOT/tests"
  step bench-torch 100 --help "$bin/tokenpose-bench" --device cuda --variant "$VARIANTS" --batch "$BATCHES" \
    --engines torch,torch-fp16,torch-bf16 --warmup 3 --iters 20 --settle-ms 0 --quiet \
    --json "$OUT/bench-torch.json" --markdown "$OUT/bench-torch.md"
  step bench-cuda-graphs 60 --help "$bin/tokenpose-bench" --device cuda --variant "$VARIANTS" --batch "$BATCHES" \
    --engines torch,torch-fp16,torch-bf16 --cuda-graphs --warmup 3 --iters 20 --settle-ms 0 --quiet \
    --json "$OUT/bench-cuda-graphs.json" --markdown "$OUT/bench-cuda-graphs.md"
  local pt2=() v
  for v in ${VARIANTS//,/ }; do
    step "aoti-export-$v" 45 --check "$PY" -c "$AOTI_PY" --variant "$v" --out "$OUT/aoti/tokenpose_${v}_cuda.pt2" \
      --batch 1:64:256
    pt2+=(--engine "$OUT/aoti/tokenpose_${v}_cuda.pt2")
  done
  step bench-aoti 40 --help "$bin/tokenpose-bench" --device cuda "${pt2[@]}" --batch "$BATCHES" --warmup 3 \
    --iters 20 --settle-ms 0 --quiet --json "$OUT/bench-aoti.json" --markdown "$OUT/bench-aoti.md"
  local amp
  for amp in bf16 fp16; do  # fp16: autocast + GradScaler, bf16: autocast only
    step "train-amp-$amp" 25 --help "$bin/tokenpose-train" --variant t --ann-file "$COCO_ANN" --image-dir "$COCO_IMAGES" \
      --device cuda --amp "$amp" --epochs 1 --max-steps 8 --batch-size 16 --workers 2 --no-progress \
      --out "$OUT/train-$amp"
  done
  step target 10 --check "$PY" -c "$TARGET_PY" "$OUT/bench-torch.json" "$OUT/target.json"
  cpp_tensorrt "$bin"
}

# The C++ TensorRT back-end, where TensorRT is installed (its build and run are outside the budget).
cpp_tensorrt() {
  local bin="$1" trt_out="$OUT/cpp-tensorrt" image="$ROOT/tests/fixtures/coco_mini/images/000000129648.jpg"
  if [ "$DRY_RUN" = 0 ] && ! "$PY" -c "import tensorrt" > /dev/null 2>&1; then
    echo "gpu_check: tensorrt does not import here: the C++ TensorRT back-end is not checked" >&2
    return 0
  fi
  DEADLINE=0
  mkdir -p "$trt_out"
  echo "[[60, 40, 120, 240], [200, 60, 100, 220]]" > "$trt_out/boxes.json"
  step trt-export 300 --help "$bin/tokenpose-export" --variant t --out "$trt_out" --batch 1:4:8 --engine
  step cpp-configure 120 --help cmake -S "$ROOT/cpp" -B "$trt_out/build" -DCMAKE_BUILD_TYPE=Release \
    -DTOKENPOSE_WITH_AOTI=OFF -DTOKENPOSE_WITH_TENSORRT=ON
  [ "$DRY_RUN" = 1 ] && return 0  # the program's own options are checked by tests/test_cpp.py
  step cpp-build 300 --help cmake --build "$trt_out/build" -j 8
  step cpp-run 60 --help "$trt_out/build/tokenpose_cpp" --model "$trt_out/tokenpose_t_fp32.engine" "$image" \
    "$trt_out/boxes.json" -o "$trt_out/cpp.json"
  step cpp-vs-python 60 --check "$PY" -c "$CPP_VS_PY" "$trt_out/tokenpose_t_fp32.engine" "$image" \
    "$trt_out/boxes.json" "$trt_out/cpp.json"
}

summary() {
  "$PY" - "$STEPS" "$OUT/summary.json" "$DRY_RUN" "$BUDGET_S" <<'EOF'
import json, sys
steps_tsv, out, dry, budget = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
steps = []
for line in open(steps_tsv):
    name, rc, seconds = line.rstrip("\n").split("\t")
    steps.append({"step": name, "exit": int(rc), "seconds": int(seconds), "ok": rc == "0"})
summary = {"dry_run": dry, "budget_s": budget, "seconds": sum(s["seconds"] for s in steps),
           "ok": all(s["ok"] for s in steps), "steps": steps}
json.dump(summary, open(out, "w"), indent=2)
EOF
}

install
checks
summary
if [ "$FAILED" = 0 ]; then
  echo "gpu_check: all steps passed; results in $OUT" >&2
  exit 0
fi
echo "gpu_check: some steps failed; results in $OUT (summary.json)" >&2
exit 1
