"""The C++ example (cpp/) against the Python pipeline on the same AOTInductor package.

Builds `tokenpose_cpp` with CMake into build/cpp (incremental: a rebuild with nothing changed
takes about a second), exports a tiny TokenPose-T to `.pt2` once (cached in build/cpp-test under
a key of the model/export sources and the torch version), runs the program on real COCO images
with their ground-truth boxes, and compares it with `PosePredictor(AotiEngine)`:

* model input (crop, colour order, normalisation): identical floats;
* decoding (argmax + DARK + inverse affine) of the same heatmaps: equal to 1e-9 px;
* end to end, keypoints within 0.01 px, scores and person scores within 1e-5, with `--warp` as the
  Python cv2 needs it and with the program's default (which must pick the same by itself);
* loading checks the manifest: a tampered package is refused (sha256 through OpenSSL, whose
  `--print-sha256` equals hashlib's);
* pre-processing follows the manifest's mean/std: a package whose manifest records other statistics
  gets crops normalised with them (against numpy by hand and against Python's PosePredictor);
  a manifest with unusable statistics or another colour order is refused;
* a package exported with a minimum batch of 2 (cached like the first): chunks below it are padded;
* bad input (missing files, bad JSON, empty or malformed boxes, broken model): exit status 1 or 2
  and a one-line message, never a crash.

Skipped only when cmake, a C++ compiler or the OpenCV / nlohmann-json / OpenSSL development files are
missing (scripts/install_cpp_deps.sh installs them); with TOKENPOSE_REQUIRE_CPP=1 (CI) a missing
dependency is a failure instead.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CPP_SRC = ROOT / "cpp"
BUILD = ROOT / "build" / "cpp"
CACHE = ROOT / "build" / "cpp-test"
COCO_MINI = ROOT / "tests" / "fixtures" / "coco_mini"
REQUIRE = os.environ.get("TOKENPOSE_REQUIRE_CPP", "") not in ("", "0")
BATCH_RANGE = "1:8:16"
MIN2_BATCH_RANGE = "2:4:8"  # a package that refuses batch 1: the C++ predictor must pad
# Images with many people; the first boxes of each, plus boxes that probe the edge cases.
IMAGES = ("000000129648.jpg", "000000184613.jpg", "000000293802.jpg")
BOXES_PER_IMAGE = 6
KEYPOINT_TOL_PX = 0.01


def _crop_warp() -> str:
    """The C++ crop arithmetic that equals this Python's cv2.warpAffine: OpenCV 5 computes in float32
    (reimplemented in C++, `--warp float`), every OpenCV 4 in fixed point (the C++ program calls the
    OpenCV 4 it links, `--warp opencv`). See cpp/src/preprocess.cpp."""
    import cv2

    return "float" if int(cv2.__version__.split(".")[0]) >= 5 else "opencv"

pytestmark = pytest.mark.slow


def _missing(reason: str):
    if REQUIRE:
        pytest.fail(f"TOKENPOSE_REQUIRE_CPP is set but {reason} (run scripts/install_cpp_deps.sh)")
    pytest.skip(f"{reason}; run scripts/install_cpp_deps.sh to enable the C++ parity test")


@contextmanager
def _locked(name: str):
    """An exclusive lock, so concurrent pytest runs in one checkout do not build over each other."""
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


@pytest.fixture(scope="module")
def cpp_binary() -> Path:
    """Configure (once) and build the example; the path of `tokenpose_cpp`."""
    if shutil.which("cmake") is None:
        _missing("cmake is not installed")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        _missing("no C++ compiler (c++/g++/clang++) is installed")
    with _locked("cpp-build"):
        cache = BUILD / "CMakeCache.txt"
        if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={CPP_SRC}" not in cache.read_text():
            shutil.rmtree(BUILD)  # configured from another checkout: start over
        if not cache.is_file():
            cmd = ["cmake", "-S", str(CPP_SRC), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                   f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", "-DTOKENPOSE_WITH_TENSORRT=OFF"]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            if shutil.which("ccache"):
                cmd += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
            done = _run(cmd)
            if done.returncode != 0:
                text = done.stdout + done.stderr
                shutil.rmtree(BUILD, ignore_errors=True)
                for dep in ("OpenCV", "nlohmann/json", "OpenSSL"):
                    if f"tokenpose: {dep}" in text:
                        _missing(f"the {dep} development files are not installed")
                pytest.fail(f"cmake configure failed:\n{text[-4000:]}")
        done = _run(["cmake", "--build", str(BUILD), "-j", "2"])
        if done.returncode != 0:
            pytest.fail(f"building cpp/ failed:\n{(done.stdout + done.stderr)[-6000:]}")
    binary = BUILD / "tokenpose_cpp"
    assert binary.is_file(), f"the build produced no {binary}"
    return binary


def _tiny_config():
    from tokenpose.models.config import VARIANTS

    # A one-layer T with narrow tokens: real TokenPose code paths, a short AOTInductor compile.
    return dataclasses.replace(VARIANTS["t"], name="t-cpp-test", depth=1, heads=2, dim=32, mlp_hidden=64,
                               head_hidden=32)


def _cache_key(cfg) -> str:
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{cfg!r}|{BATCH_RANGE}|seed0".encode())
    for path in sorted((ROOT / "tokenpose" / "models").glob("*.py")) + [
        ROOT / "tokenpose" / "export" / "aoti.py", ROOT / "tokenpose" / "manifest.py",
        ROOT / "tokenpose" / "csrc" / "attention_cpu.cpp", Path(__file__),  # this file: the export arguments
    ]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def tiny_pt2() -> Path:
    """A tiny TokenPose-T exported with `export_aoti` (seeded weights), reused while its sources are unchanged."""
    from tokenpose.export.aoti import export_aoti
    from tokenpose.models import create_model

    cfg = _tiny_config()
    folder = CACHE / _cache_key(cfg)
    path = folder / "tiny.pt2"
    with _locked("cpp-pt2"):
        if not (path.is_file() and (folder / "tiny.pt2.json").is_file()):
            shutil.rmtree(CACHE, ignore_errors=True)  # drop packages of older sources
            torch.manual_seed(0)
            model = create_model(cfg)
            started = time.perf_counter()
            export_aoti(model, path, batch=BATCH_RANGE)
            (folder / "export_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return path


@pytest.fixture(scope="module")
def tiny_min2_pt2(tiny_pt2) -> Path:
    """The same seeded model exported with batch range 2:4:8 and SDPA attention (`fused_attention=False`:
    the single-file kind of package), cached beside `tiny_pt2` (same key: same model and export
    sources; it depends on `tiny_pt2`, which clears stale packages first)."""
    from tokenpose.export.aoti import export_aoti
    from tokenpose.models import create_model

    path = tiny_pt2.parent / "tiny_min2.pt2"
    with _locked("cpp-pt2"):
        if not (path.is_file() and Path(f"{path}.json").is_file()):
            torch.manual_seed(0)
            model = create_model(_tiny_config())
            started = time.perf_counter()
            export_aoti(model, path, batch=MIN2_BATCH_RANGE, fused_attention=False)
            (path.parent / "export_min2_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return path


@pytest.fixture(scope="module")
def engine(tiny_pt2):
    from tokenpose.engines.aoti_engine import AotiEngine

    return AotiEngine.from_file(tiny_pt2)


def _gt_boxes(file_name: str) -> tuple[list[list[float]], tuple[int, int]]:
    with open(COCO_MINI / "annotations" / "person_keypoints_mini.json") as f:
        coco = json.load(f)
    image = next(i for i in coco["images"] if i["file_name"] == file_name)
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
    return boxes[:BOXES_PER_IMAGE], (image["height"], image["width"])


def _cases() -> list[tuple[str, list[list[float]], list[float]]]:
    """(image, boxes, box scores): GT boxes, one crossing the top-left corner (zero-border crop),
    one with zero width and one outside the image (both skipped)."""
    cases = []
    for k, name in enumerate(IMAGES):
        boxes, (_, w) = _gt_boxes(name)
        boxes = [list(map(float, b)) for b in boxes]
        boxes.insert(1, [-40.0, -25.5, 110.0, 180.25])
        boxes.append([10.0, 10.0, 0.0, 50.0])
        boxes.append([w + 5.0, 0.0, 40.0, 60.0])
        scores = [round(0.5 + 0.07 * i + 0.1 * k, 3) for i in range(len(boxes))]
        cases.append((name, boxes, scores))
    return cases


def _run_cpp(binary: Path, model: Path, image: Path, boxes_json, tmp: Path, *extra: str,
             dumps: bool = True, warp: str | None = "python") -> tuple[dict, Path, Path]:
    """Run tokenpose_cpp; warp "python": `--warp` as this Python's cv2 needs it, None: no `--warp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    boxes_path = tmp / "boxes.json"
    boxes_path.write_text(json.dumps(boxes_json))
    out, dump_in, dump_hm = tmp / "keypoints.json", tmp / "input.f32", tmp / "heatmaps.f32"
    if dumps:
        extra = ("--dump-input", str(dump_in), "--dump-heatmaps", str(dump_hm), *extra)
    if warp is not None:
        extra = ("--warp", _crop_warp() if warp == "python" else warp, *extra)
    done = _run([str(binary), "--model", str(model), str(image), str(boxes_path), "-o", str(out), *extra],
                timeout=300)
    assert done.returncode == 0, f"tokenpose_cpp failed ({done.returncode}):\n{done.stderr}"
    return json.loads(out.read_text()), dump_in, dump_hm


@pytest.mark.parametrize("case", range(len(IMAGES)), ids=list(IMAGES))
def test_cpp_matches_python_predictor(cpp_binary, tiny_pt2, engine, tmp_path, case):
    _check_parity(cpp_binary, tiny_pt2, engine, tmp_path, case)


def test_cpp_default_warp_matches_python(cpp_binary, tiny_pt2, engine, tmp_path):
    """Without `--warp` the program must pick, by itself, the crop arithmetic of the project's Python
    (manifest's OpenCV version, else the linked OpenCV's major): identical inputs, keypoints to 0.01 px."""
    got = _check_parity(cpp_binary, tiny_pt2, engine, tmp_path, 0, warp=None)
    assert got["crop_warp"] == _crop_warp()


def _check_parity(cpp_binary, model, engine, tmp_path, case, warp="python", extra=(), boxes_slice=None) -> dict:
    """tokenpose_cpp on `model` against PosePredictor(engine) on image `case`; returns the C++ JSON."""
    import cv2

    from tokenpose.data.heatmaps import HeatmapCodec
    from tokenpose.data.transforms import read_image
    from tokenpose.engines.predictor import PosePredictor

    name, boxes, scores = _cases()[case]
    if boxes_slice is not None:
        boxes, scores = boxes[boxes_slice], scores[boxes_slice]
    image_path = COCO_MINI / "images" / name
    boxes_json = [{"bbox": b, "score": s} for b, s in zip(boxes, scores)]
    got, dump_in, dump_hm = _run_cpp(cpp_binary, model, image_path, boxes_json, tmp_path, *extra, warp=warp)

    predictor = PosePredictor(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped boxes are expected
        want = predictor.predict(image_path, np.array(boxes), np.array(scores))
    assert got["skipped"] == want.skipped
    if boxes_slice is None:
        assert want.skipped == [len(boxes) - 2, len(boxes) - 1]
    people = got["people"]
    assert [p["index"] for p in people] == [i for i in range(len(boxes)) if i not in want.skipped]
    n, cfg = len(people), engine.config
    assert n == len(want) >= (5 if boxes_slice is None else 1)

    np.testing.assert_allclose([p["center"] for p in people], want.centers, rtol=0, atol=1e-9)
    np.testing.assert_allclose([p["scale"] for p in people], want.scales, rtol=0, atol=1e-12)

    # 1. Pre-processing: the C++ crop + normalisation give the very same floats as Python's.
    cpp_input = np.fromfile(dump_in, dtype="<f4").reshape(n, 3, *cfg.input_hw)
    py_input = predictor.crops([read_image(image_path)], np.zeros(n, dtype=np.int64), want.centers, want.scales)
    diff = np.abs(cpp_input - py_input)
    assert diff.max() == 0, (
        f"C++ model input differs from Python's: max {diff.max():.3g} on {(diff > 0).mean():.1%} of values "
        f"(Python cv2 {cv2.__version__}, C++ crop_warp {got['crop_warp']} with {got['opencv']}; "
        "see cpp/src/preprocess.cpp)"
    )

    # 2. Decoding: Python's codec on the C++ heatmaps gives the C++ keypoints.
    cpp_heatmaps = np.fromfile(dump_hm, dtype="<f4").reshape(n, cfg.num_joints, *cfg.heatmap_hw)
    cpp_kpts = np.array([[k[:2] for k in p["keypoints"]] for p in people])
    cpp_scores = np.array([[k[2] for k in p["keypoints"]] for p in people])
    codec = HeatmapCodec.from_config(cfg)
    decoded, maxvals = codec.decode(cpp_heatmaps, want.centers, want.scales)
    np.testing.assert_allclose(cpp_kpts, decoded, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(cpp_scores.astype(np.float32), maxvals[..., 0])

    # 3. End to end against PosePredictor on the same package.
    err = np.abs(cpp_kpts - want.keypoints).max()
    assert err <= KEYPOINT_TOL_PX, f"C++ keypoints differ from Python by up to {err:.4f} px"
    np.testing.assert_allclose(cpp_scores, want.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose([p["score"] for p in people], want.scores_person, rtol=0, atol=1e-5)
    np.testing.assert_allclose([p["box_score"] for p in people], want.box_scores, rtol=0, atol=0)

    # The comparison is sharp enough to see DARK: without it the keypoints move well past the tolerance.
    plain, _ = codec.decode(cpp_heatmaps, want.centers, want.scales, dark=False)
    assert np.abs(plain - cpp_kpts).max() > 20 * KEYPOINT_TOL_PX
    return got


def _with_manifest(model: Path, folder: Path, name: str | None = None, **changes) -> Path:
    """A copy of `model` in `folder` (as `name`) with its manifest, top-level fields replaced by `changes`."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / (name or model.name)
    shutil.copy(model, copy)
    manifest = json.loads(Path(f"{model}.json").read_text())
    if manifest.get("op_library"):  # the fused attention library the package calls travels with it
        shutil.copy(model.parent / manifest["op_library"], folder / manifest["op_library"])
    manifest.update(changes)
    Path(f"{copy}.json").write_text(json.dumps(manifest))
    return copy


def test_cpp_default_warp_follows_the_manifest(cpp_binary, tiny_pt2, tmp_path):
    """The OpenCV version the manifest records decides the default crop arithmetic; `--warp` overrides it."""
    import cv2

    name, boxes, _ = _cases()[0]
    image = COCO_MINI / "images" / name
    versions = json.loads(Path(f"{tiny_pt2}.json").read_text())["versions"]
    linked = None
    for key, version, want in (("opencv", "5.0.0", "float"), ("opencv-python-headless", "4.10.0.84", "opencv"),
                               ("cv2", cv2.__version__, _crop_warp())):
        model = _with_manifest(tiny_pt2, tmp_path / key, versions={**versions, key: version})
        got, _, _ = _run_cpp(cpp_binary, model, image, boxes[:2], tmp_path / key, dumps=False, warp=None)
        assert got["crop_warp"] == want, (key, version, got["crop_warp"])
        linked = got["opencv"]
    got, _, _ = _run_cpp(cpp_binary, model, image, boxes[:2], tmp_path / "override", dumps=False, warp="float")
    assert got["crop_warp"] == "float"
    # No OpenCV in the manifest (exports before it was recorded): the linked OpenCV's major decides.
    if not any(k in versions for k in ("opencv", "cv2", "opencv-python-headless", "opencv-python")):
        got, _, _ = _run_cpp(cpp_binary, tiny_pt2, image, boxes[:2], tmp_path / "plain", dumps=False, warp=None)
        assert got["crop_warp"] == ("opencv" if int(linked.split(".")[0]) < 5 else "float")


def test_cpp_print_sha256_matches_hashlib_and_the_manifest(cpp_binary, tiny_pt2, tmp_path):
    """`--print-sha256` (OpenSSL's digest behind the manifest check) prints what hashlib and the
    manifest say, for the package (several 1 MiB read chunks) and an empty file."""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    files = [tiny_pt2, Path(f"{tiny_pt2}.json"), empty]
    done = _run([str(cpp_binary), "--print-sha256", *map(str, files)], timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f}" for f in files]
    assert lines[0].split()[0] == json.loads(Path(f"{tiny_pt2}.json").read_text())["sha256"]


OTHER_MEAN_RGB = [0.5, 0.4, 0.3]
OTHER_STD_RGB = [0.2, 0.25, 0.3]


def test_cpp_normalises_with_the_manifest_mean_std(cpp_binary, tiny_pt2, tmp_path):
    """A package whose manifest records other mean/std: the C++ model input is the crop normalised
    with those (numpy by hand: RGB, / 255, (x - mean) / std, in float32), equal to what Python's
    PosePredictor feeds the same package, and not the ImageNet normalisation."""
    import cv2

    from tokenpose.data.transforms import get_affine_transforms, normalize_image, read_image
    from tokenpose.engines.aoti_engine import AotiEngine
    from tokenpose.engines.predictor import PosePredictor

    model = _with_manifest(tiny_pt2, tmp_path / "stats", mean_rgb=OTHER_MEAN_RGB, std_rgb=OTHER_STD_RGB)
    name, boxes, _ = _cases()[0]
    image_path = COCO_MINI / "images" / name
    got, dump_in, _ = _run_cpp(cpp_binary, model, image_path, boxes[:3], tmp_path / "run")
    assert got["mean_rgb"] == pytest.approx(OTHER_MEAN_RGB) and got["std_rgb"] == pytest.approx(OTHER_STD_RGB)
    people = got["people"]
    h, w = json.loads(Path(f"{model}.json").read_text())["input_hw"]
    cpp_input = np.fromfile(dump_in, dtype="<f4").reshape(len(people), 3, h, w)

    image = read_image(image_path)
    mats = get_affine_transforms(np.array([p["center"] for p in people]), np.array([p["scale"] for p in people]),
                                 0.0, (w, h))
    crops = np.stack([cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0) for m in mats])
    rgb = crops[..., ::-1].astype(np.float32) / np.float32(255.0)
    by_hand = np.moveaxis((rgb - np.float32(OTHER_MEAN_RGB)) / np.float32(OTHER_STD_RGB), -1, 1)
    np.testing.assert_array_equal(cpp_input, by_hand)
    assert np.abs(cpp_input - normalize_image(crops, bgr=True)).max() > 0.1  # the statistics do matter

    predictor = PosePredictor(AotiEngine.from_file(model))
    py_input = predictor.crops([image], np.zeros(len(people), dtype=np.int64),
                               np.array([p["center"] for p in people]), np.array([p["scale"] for p in people]))
    np.testing.assert_array_equal(cpp_input, py_input)


@pytest.mark.parametrize("changes, message", [
    ({"std_rgb": [0.2, 0.0, 0.3]}, "'std_rgb' must hold 3 positive finite numbers"),
    ({"mean_rgb": [0.5, "0.4", 0.3]}, "'mean_rgb' must hold 3 finite numbers"),
    ({"mean_rgb": [0.5, 0.4]}, "'mean_rgb' must hold 3 finite numbers"),
    ({"color_order": "BGR"}, 'color_order "BGR" is not supported'),
], ids=["zero std", "string mean", "two means", "BGR"])
def test_cpp_refuses_unusable_normalisation_in_the_manifest(cpp_binary, tiny_pt2, tmp_path, changes, message):
    """Statistics that cannot normalise a crop, or a colour order the pre-processing does not produce:
    exit status 1, one line naming the manifest and the key; nothing on stdout."""
    model = _with_manifest(tiny_pt2, tmp_path / "bad", **changes)
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[100, 50, 120, 240]]")
    done = _run([str(cpp_binary), "--model", str(model), str(COCO_MINI / "images" / IMAGES[0]), str(boxes)],
                timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tokenpose_cpp: error: manifest {model}.json: "), done.stderr
    assert message in lines[0], done.stderr
    assert done.stdout == ""


def test_cpp_refuses_a_model_that_does_not_match_its_manifest(cpp_binary, tiny_pt2, tmp_path):
    """A package changed after export (one byte flipped, manifest kept) or renamed away from the name
    its manifest records: exit status 1 and a message that says so; nothing on stdout."""
    tampered = _with_manifest(tiny_pt2, tmp_path / "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    renamed = _with_manifest(tiny_pt2, tmp_path / "renamed", name="other.pt2")
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[100, 50, 120, 240]]")
    for model, message in ((tampered, "does not match its manifest: sha256"),
                           (renamed, "describes 'tiny.pt2', not 'other.pt2'")):
        done = _run([str(cpp_binary), "--model", str(model), str(COCO_MINI / "images" / IMAGES[0]), str(boxes)],
                    timeout=120)
        assert done.returncode == 1, done.stderr
        first = done.stderr.strip().splitlines()[0]
        assert first.startswith("tokenpose_cpp: error: ") and message in first, done.stderr
        assert done.stdout == ""


def test_cpp_pads_chunks_below_the_minimum_batch(cpp_binary, tiny_min2_pt2, engine, tmp_path):
    """A package exported with batch 2:4:8 refuses batch 1; the C++ predictor pads such chunks by
    repeating the last crop. Same seeded weights as `tiny_pt2`, so Python on that package is the reference:
    7 crops in chunks of 2 (the last one padded), and a single crop (padded), both within 0.01 px."""
    manifest = json.loads(Path(f"{tiny_min2_pt2}.json").read_text())
    assert manifest["batch"]["min"] == 2
    _check_parity(cpp_binary, tiny_min2_pt2, engine, tmp_path / "chunks", 0, extra=("--batch", "2"))
    _check_parity(cpp_binary, tiny_min2_pt2, engine, tmp_path / "single", 1, extra=("--batch", "1"),
                  boxes_slice=slice(0, 1))


def test_cpp_chunked_batches_and_plain_box_lists(cpp_binary, tiny_pt2, tmp_path):
    """`--batch 2` splits the crops into several engine calls (with and without keeping every input
    for the dump); a plain [[x, y, w, h]] list and {"boxes": ...} work."""
    name, boxes, _ = _cases()[0]
    image = COCO_MINI / "images" / name
    whole, _, _ = _run_cpp(cpp_binary, tiny_pt2, image, boxes, tmp_path / "whole")
    split, _, _ = _run_cpp(cpp_binary, tiny_pt2, image, {"boxes": boxes}, tmp_path / "split", "--batch", "2")
    lean, _, _ = _run_cpp(cpp_binary, tiny_pt2, image, boxes, tmp_path / "lean", "--batch", "2", dumps=False)
    a = np.array([p["keypoints"] for p in whole["people"]])
    assert a.shape[0] >= 5
    for other in (split, lean):
        b = np.array([p["keypoints"] for p in other["people"]])
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert all(p["box_score"] == 1.0 for p in whole["people"])


BAD_INPUTS = {
    # name: (files to write {name: bytes | None for 'copy of the model'}, argv after the binary, status, message)
    "missing image": ({}, ["--model", "{model}", "{tmp}/nope.jpg", "{boxes}"], 1, "image file not found"),
    "image not decodable": ({"fake.jpg": b"this is not a jpeg"}, ["--model", "{model}", "{tmp}/fake.jpg", "{boxes}"],
                            1, "image file"),
    "empty image file": ({"empty.jpg": b""}, ["--model", "{model}", "{tmp}/empty.jpg", "{boxes}"], 1,
                         "image file is empty"),
    "missing boxes": ({}, ["--model", "{model}", "{image}", "{tmp}/nope.json"], 1, "boxes file not found"),
    "bad json": ({"bad.json": b"[[10, 20, 30, 40]"}, ["--model", "{model}", "{image}", "{tmp}/bad.json"], 1,
                 "is not valid JSON"),
    "empty boxes": ({"empty.json": b"[]"}, ["--model", "{model}", "{image}", "{tmp}/empty.json"], 1, "holds no boxes"),
    "box of 3 numbers": ({"short.json": b"[[1, 2, 3]]"}, ["--model", "{model}", "{image}", "{tmp}/short.json"], 1,
                         "box #0 must be 4 numbers"),
    "box with a string": ({"str.json": b'[{"bbox": [1, 2, "w", 4]}]'},
                          ["--model", "{model}", "{image}", "{tmp}/str.json"], 1, "box #0 must be 4 numbers"),
    "json object without boxes": ({"obj.json": b'{"people": []}'}, ["--model", "{model}", "{image}", "{tmp}/obj.json"],
                                  1, "expected [[x, y, w, h]"),
    "no usable box": ({"out.json": b"[[5000, 5000, 10, 10], [0, 0, 0, 10]]"},
                      ["--model", "{model}", "{image}", "{tmp}/out.json"], 1, "none of the 2 boxes"),
    "missing model": ({}, ["--model", "{tmp}/nope.pt2", "{image}", "{boxes}"], 1, "model file not found"),
    "model without manifest": ({"lonely.pt2": None}, ["--model", "{tmp}/lonely.pt2", "{image}", "{boxes}"], 1,
                               "no manifest"),
    "corrupt model": ({"broken.pt2": b"PK\x03\x04 not really a zip", "broken.pt2.json": "manifest"},
                      ["--model", "{tmp}/broken.pt2", "{image}", "{boxes}"], 1, "cannot load the AOTInductor package"),
    "operator library missing": ({"alone.pt2": None, "alone.pt2.json": "manifest, library missing"},
                                 ["--model", "{tmp}/alone.pt2", "{image}", "{boxes}"], 1,
                                 "cannot load the operator library the package calls"),
    "no arguments": ({}, [], 2, "--model MODEL is required"),
    "bad --batch": ({}, ["--model", "{model}", "--batch", "0", "{image}", "{boxes}"], 2, "--batch needs an integer"),
    "bad --warp": ({}, ["--model", "{model}", "--warp", "cubic", "{image}", "{boxes}"], 2, "crop warp must be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cpp_bad_input_fails_cleanly(cpp_binary, tiny_pt2, tmp_path, case):
    files, argv, status, message = BAD_INPUTS[case]
    for fname, data in files.items():
        if data is None:
            shutil.copy(tiny_pt2, tmp_path / fname)
        elif isinstance(data, str):  # "manifest...": the model's manifest, made to describe the file written before it
            manifest = json.loads(Path(str(tiny_pt2) + ".json").read_text())
            if data == "manifest, library missing":
                manifest["op_library"] = "missing.attention.so"
            elif manifest.get("op_library"):
                shutil.copy(tiny_pt2.parent / manifest["op_library"], tmp_path / manifest["op_library"])
            manifest["artifact"] = fname[: -len(".json")]
            manifest["sha256"] = hashlib.sha256((tmp_path / manifest["artifact"]).read_bytes()).hexdigest()
            (tmp_path / fname).write_text(json.dumps(manifest))
        else:
            (tmp_path / fname).write_bytes(data)
    boxes = tmp_path / "good_boxes.json"
    boxes.write_text("[[100, 50, 120, 240]]")
    values = {"model": str(tiny_pt2), "tmp": str(tmp_path), "image": str(COCO_MINI / "images" / IMAGES[0]),
              "boxes": str(boxes)}
    done = _run([str(cpp_binary), *[a.format(**values) for a in argv]], timeout=120)
    assert done.returncode == status, (
        f"expected exit status {status}, got {done.returncode} (negative: killed by a signal)\n{done.stderr}"
    )
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("tokenpose_cpp: error: ") and message in first, done.stderr
    assert done.stdout == ""


def _wrapper_source(package: Path) -> str:
    import zipfile

    with zipfile.ZipFile(package) as z:
        return "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".wrapper.cpp"))


def test_aoti_package_is_compiled_with_its_weights_frozen(tiny_pt2):
    """`freezing` (the default Inductor setting) is ignored when the compile runs with grad mode on:
    the package then recomputes every BatchNorm and feeds raw weights to addmm. Frozen, the
    BatchNorms are folded into oneDNN convolutions and the Linears use pre-packed weights."""
    wrapper = _wrapper_source(tiny_pt2)
    assert wrapper, f"no wrapper.cpp in {tiny_pt2}"
    calls = set(re.findall(r"\b(aoti_torch_cpu_\w+|cpp_fused_\w+)\(", wrapper))
    assert calls, f"no kernel calls found in the wrapper of {tiny_pt2}"
    assert not [c for c in calls if "batch_norm" in c], f"BatchNorm still computed (not frozen): {sorted(calls)}"
    assert not [c for c in calls if "addmm" in c] and any("_linear_pointwise" in c for c in calls), (
        f"the Linears do not run on pre-packed weights (not frozen): {sorted(calls)}"
    )


def test_bench_remakes_aoti_packages_compiled_before_freezing_applied(tiny_pt2, tmp_path):
    from tokenpose.bench.preparation import cached_artifact
    from tokenpose.bench.settings import BenchSettings

    pt2, manifest = tmp_path / tiny_pt2.name, tmp_path / f"{tiny_pt2.name}.json"
    shutil.copy(tiny_pt2, pt2)
    data = json.loads(Path(f"{tiny_pt2}.json").read_text())
    assert data["verification"]["frozen"] is True
    manifest.write_text(json.dumps(data))
    assert cached_artifact(pt2, None, BenchSettings(batches=[1, 8]))
    for key in ("frozen", "attention"):  # what export_aoti wrote before no_grad / before the fused kernel
        older = {**data, "verification": {k: v for k, v in data["verification"].items() if k != key}}
        manifest.write_text(json.dumps(older))
        assert not cached_artifact(pt2, None, BenchSettings(batches=[1, 8])), key


def test_aoti_engine_follows_the_engine_protocol(engine, tiny_pt2, tmp_path):
    from tokenpose.engines.base import Engine
    from tokenpose.errors import InputShapeError
    from tokenpose.manifest import ManifestError

    assert isinstance(engine, Engine)
    assert (engine.name, engine.precision, engine.max_batch) == ("aoti", "fp32", 16)
    assert engine.manifest["format"] == "pt2" and engine.manifest["verification"]["aoti_vs_torch"]["passed"]
    out = engine(np.zeros((2, 3, *engine.config.input_hw), np.float32))
    assert out.shape == (2, engine.config.num_joints, *engine.config.heatmap_hw) and out.dtype == np.float32
    with pytest.raises(InputShapeError, match="exceeds the engine's maximum batch 16"):
        engine(np.zeros((17, 3, *engine.config.input_hw), np.float32))
    with pytest.raises(InputShapeError, match="expected input"):
        engine(np.zeros((1, 3, 128, 96), np.float32))

    from tokenpose.engines.aoti_engine import AotiEngine

    tampered = tmp_path / tiny_pt2.name
    shutil.copy(tiny_pt2, tampered)
    shutil.copy(f"{tiny_pt2}.json", f"{tampered}.json")
    with open(tampered, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="does not match its manifest"):
        AotiEngine.from_file(tampered)


def test_pt2_is_in_the_engine_suffix_table(tiny_pt2):
    from tokenpose.engines.aoti_engine import AotiEngine
    from tokenpose.engines.base import BACKENDS, load_engine

    assert BACKENDS.get(".pt2") == "tokenpose.engines.aoti_engine:AotiEngine.from_file", (
        "register '.pt2' in BACKENDS (tokenpose/engines/base.py) so load_engine opens AOTInductor packages"
    )
    assert isinstance(load_engine(tiny_pt2), AotiEngine)


def test_aoti_package_calls_the_fused_attention_kernel_where_it_runs(tiny_pt2):
    from tokenpose.models.fused_attention import unavailable_reason

    manifest = json.loads(Path(f"{tiny_pt2}.json").read_text())
    wrapper = _wrapper_source(tiny_pt2)
    if unavailable_reason() is None:  # AVX-512: the package calls tokenpose::attention, its library beside it
        assert manifest["verification"]["attention"] == "tokenpose::attention"
        assert manifest["op_library"] == "tiny.attention.so" and (tiny_pt2.parent / "tiny.attention.so").is_file()
        assert "tokenpose.attention" in wrapper and "flash_attention" not in wrapper
    else:
        assert manifest["verification"]["attention"] == "scaled_dot_product_attention"
        assert manifest["op_library"] is None and "tokenpose.attention" not in wrapper


def test_aoti_package_with_sdpa_is_one_file(tiny_min2_pt2):
    manifest = json.loads(Path(f"{tiny_min2_pt2}.json").read_text())
    assert manifest["verification"]["attention"] == "scaled_dot_product_attention" and manifest["op_library"] is None
    assert "tokenpose.attention" not in _wrapper_source(tiny_min2_pt2)
    assert not (tiny_min2_pt2.parent / "tiny_min2.attention.so").exists()


def test_aoti_engine_needs_the_operator_library_beside_the_package(tiny_pt2, tmp_path):
    from tokenpose.engines.aoti_engine import AotiEngine
    from tokenpose.errors import TokenPoseError

    if not json.loads(Path(f"{tiny_pt2}.json").read_text())["op_library"]:
        pytest.skip("this package calls no operator library (no AVX-512 here)")
    copy = tmp_path / tiny_pt2.name
    shutil.copy(tiny_pt2, copy)
    shutil.copy(f"{tiny_pt2}.json", f"{copy}.json")
    with pytest.raises(TokenPoseError, match="tiny.attention.so, which it needs beside it: .* does not exist"):
        AotiEngine.from_file(copy)


def test_export_aoti_rejects_bad_arguments(tmp_path):
    from tokenpose.export.aoti import export_aoti

    with pytest.raises(ValueError, match="fused_attention is for CPU packages"):
        export_aoti("t", tmp_path / "model.pt2", device="cuda", fused_attention=True)

    with pytest.raises(ValueError, match="must end in .pt2"):
        export_aoti("t", tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="batch range"):
        export_aoti("t", tmp_path / "model.pt2", batch="8:1:4")
    with pytest.raises(ValueError, match="'sha256' cannot be set"):
        export_aoti("t", tmp_path / "model.pt2", manifest_fields={"sha256": "0" * 64})
    assert not list(tmp_path.iterdir())
