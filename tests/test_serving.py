"""`tokenpose serve` (Ray Serve): the protocol, a real server in a subprocess, load, faults and shutdown.

The server runs the real CLI with two replicas of a tiny ONNX engine on CPU; every answer is
checked against `PosePredictor.predict` on the same image and boxes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_run import COCO_ANN, COCO_IMAGES, ROOT, cli_env
from test_engines import TINY, build_artifacts, peaked_model

from tokenpose.engines import PosePredictor, load_engine
from tokenpose.errors import InputShapeError
from tokenpose.models.checkpoints import save_weights
from tokenpose.serving import Client, ServingError
from tokenpose.serving.protocol import Limits, RequestError, parse_boxes, parse_json_request

pytest.importorskip("ray.serve")

LIMITS = Limits(max_body_bytes=2_000_000, max_boxes=16)


def _people() -> list[tuple[Path, np.ndarray]]:
    """(image path, (N, 5) boxes with scores) for the coco_mini images with annotated people."""
    ann = json.loads(COCO_ANN.read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    boxes: dict[int, list] = {}
    for a in ann["annotations"]:
        if a["num_keypoints"] > 0:
            boxes.setdefault(a["image_id"], []).append([*a["bbox"], 0.9])
    return [(COCO_IMAGES / names[i], np.array(b)) for i, b in sorted(boxes.items())]


PEOPLE = _people()


def test_protocol_parses_json_and_refuses_bad_requests_with_one_line():
    image = PEOPLE[0][0].read_bytes()
    body = json.dumps({"image": base64.b64encode(image).decode(), "boxes": [[1, 2, 30, 40], [5, 6, 7, 8, 0.5]]})
    req = parse_json_request(body.encode(), LIMITS)
    assert req.image.shape == cv2.imread(str(PEOPLE[0][0])).shape
    np.testing.assert_array_equal(req.boxes, [[1, 2, 30, 40, 1.0], [5, 6, 7, 8, 0.5]])
    bad = {
        b"not json": (400, "not valid JSON"),
        b"[1, 2]": (400, "JSON object"),
        json.dumps({"boxes": []}).encode(): (400, "'image'"),
        json.dumps({"image": "@@@", "boxes": []}).encode(): (400, "base64"),
        json.dumps({"image": base64.b64encode(b"hello").decode(), "boxes": []}).encode(): (400, "not a JPEG"),
    }
    for raw, (status, words) in bad.items():
        with pytest.raises(RequestError) as err:
            parse_json_request(raw, LIMITS)
        assert err.value.status == status and words in err.value.message and "\n" not in err.value.message
    for boxes, status, words in (
        (5, 400, "must be a list"), ([[1, 2, 3]], 400, "boxes[0]"), ([[None, 1, 2, 3]], 400, "boxes[0]"),
        ([[1, 2, 3, float("nan")]], 400, "finite"), ([[1, 2, 3, True]], 400, "boxes[0]"),
        ([[0, 0, 1, 1]] * 17, 413, "limit is 16"), ("[[1, 2", 400, "not valid JSON"),
    ):
        with pytest.raises(RequestError) as err:
            parse_boxes(boxes, LIMITS)
        assert err.value.status == status and words in err.value.message, err.value.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start_server(engine: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`tokenpose serve --engine ENGINE OPTIONS` in its own session; returns once it is healthy."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpose.cli.main", "serve", "--engine", str(engine), "--port", str(port), *options],
        cwd=ROOT, env=cli_env(RAY_DEDUP_LOGS="0"), stdout=log.open("w"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(f"{url}/v1/health")[0] == 200:
                return proc, url
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"server not healthy in 180 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    onnx = build_artifacts(folder)["onnx"]
    metrics_port = _free_port()
    proc, url = _start_server(onnx, folder / "server.log", "--replicas", "2", "--max-batch", "8",
                              "--batch-wait-ms", "20", "--cpus-per-replica", "0.5", "--max-body-mb", "2",
                              "--max-boxes", "16", "--metrics-port", str(metrics_port))
    predictor = PosePredictor(load_engine(onnx), batch_size=8)
    yield {"url": url, "proc": proc, "predictor": predictor, "log": folder / "server.log",
           "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _expected(predictor: PosePredictor, image: Path, boxes: np.ndarray):
    return predictor.predict(str(image), boxes[:, :4], box_scores=boxes[:, 4])


def _assert_same(got, want) -> None:
    assert got.keypoints.shape == want.keypoints.shape
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(got.boxes, want.boxes)
    assert got.skipped == want.skipped and got.image_hw == want.image_hw


def test_served_keypoints_equal_the_local_predictor(server):
    client = Client(server["url"])
    assert client.health()["model"]["engine"] == "onnxruntime"
    manifest = client.model()
    assert manifest["variant"] == "tiny-t" and manifest["model"]["precision"] == "fp32"
    for image, boxes in PEOPLE[:4]:
        _assert_same(client.predict(image, boxes), _expected(server["predictor"], image, boxes))
    # an array is sent as a lossless PNG; rows of 4 get box score 1
    image, boxes = PEOPLE[0]
    array = cv2.imread(str(image))
    _assert_same(client.predict(array, boxes[:, :4]),
                 server["predictor"].predict(array, boxes[:, :4]))


def test_multipart_requests_for_curl_users(server):
    image, boxes = PEOPLE[1]
    boundary = "tokenposeboundary"
    parts = [
        (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
         "Content-Type: image/jpeg\r\n\r\n").encode() + image.read_bytes() + b"\r\n",
        (f'--{boundary}\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n'
         f"{json.dumps(boxes.tolist())}\r\n").encode(),
        f"--{boundary}--\r\n".encode(),
    ]
    status, body = _post(f"{server['url']}/v1/pose", b"".join(parts), f"multipart/form-data; boundary={boundary}")
    assert status == 200, body
    from tokenpose.serving.client import prediction_from_json

    _assert_same(prediction_from_json(json.loads(body)), _expected(server["predictor"], image, boxes))


def test_bad_requests_get_one_line_and_the_server_keeps_serving(server):
    url = f"{server['url']}/v1/pose"
    good = base64.b64encode(PEOPLE[0][0].read_bytes()).decode()
    cases = [
        (b"{", 400), (json.dumps({"image": "***", "boxes": []}).encode(), 400),
        (json.dumps({"image": base64.b64encode(b"text").decode(), "boxes": []}).encode(), 400),
        (json.dumps({"image": good, "boxes": [[1, 2, "x", 4]]}).encode(), 400),
        (json.dumps({"image": good, "boxes": [[0, 0, 10, 10]] * 17}).encode(), 413),
        (b"x" * 2_200_000, 413),
    ]
    for data, status in cases:
        got, body = _post(url, data)
        error = json.loads(body)["error"]
        assert got == status and "\n" not in error and error, (got, body[:200])
    assert _get(f"{server['url']}/v1/nothing")[0] == 404
    with pytest.raises(InputShapeError, match=r"\(N, 4\).*got \(2, 3\)"):
        Client(server["url"]).predict(PEOPLE[0][0], np.zeros((2, 3)))
    with pytest.raises(ServingError) as err:  # the server's own check, past the client's
        Client(server["url"])._request("/v1/pose", {"image": "", "boxes": []})
    assert err.value.status == 400 and "image is empty" in str(err.value)
    # a box far larger than the image is skipped (reported), not predicted at 1e11 px
    image, boxes = PEOPLE[2]
    got = Client(server["url"]).predict(image, np.vstack([[0, 0, 1e12, 1e12, 1.0], boxes]))
    assert got.skipped == [0] and len(got) == len(boxes)
    _assert_same(Client(server["url"]).predict(image, boxes), _expected(server["predictor"], image, boxes))


def _one_box_requests(n: int) -> list[tuple[Path, np.ndarray]]:
    flat = [(image, boxes[k:k + 1]) for image, boxes in PEOPLE for k in range(len(boxes))]
    return [flat[i % len(flat)] for i in range(n)]


def _load(server, clients: int, per_client: int) -> list[tuple[int, dict | str, Path, np.ndarray]]:
    url = f"{server['url']}/v1/pose"
    work = _one_box_requests(clients * per_client)
    encoded = {p: base64.b64encode(p.read_bytes()).decode() for p in {w[0] for w in work}}

    def one(item):
        image, boxes = item
        status, body = _post(url, json.dumps({"image": encoded[image], "boxes": boxes.tolist()}).encode())
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body.decode(errors="replace")
        return status, parsed, image, boxes

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, work))


def test_load_16_clients_every_request_answered_and_batched(server):
    from tokenpose.serving.client import prediction_from_json

    results = _load(server, clients=16, per_client=32)
    assert [r[0] for r in results].count(200) == len(results) == 512
    cache: dict[tuple, object] = {}
    for _status, body, image, boxes in results[::16]:  # keypoints of a sample of answers
        key = (image, tuple(boxes.ravel()))
        cache.setdefault(key, _expected(server["predictor"], image, boxes))
        _assert_same(prediction_from_json(body), cache[key])
    crops = [body["batch"]["crops"] / body["batch"]["engine_calls"] for _s, body, *_ in results]
    # each request carries one box: more than one crop per engine call means requests were batched
    assert np.mean(crops) > 1.0, np.mean(crops)
    # ... and the server's Prometheus batch-size metric says so too (Ray exports it every few seconds)
    deadline, mean, counted = time.monotonic() + 90, 0.0, 0.0
    while time.monotonic() < deadline and (mean <= 1.0 or counted < 512):
        sums = _metric_totals(server["metrics"], "ray_tokenpose_crops_per_batch")
        mean = sums["_sum"] / sums["_count"] if sums["_count"] else 0.0
        counted = _metric_totals(server["metrics"], "ray_tokenpose_requests")["_total"]
        time.sleep(2)
    assert mean > 1.0 and counted >= 512, (mean, counted)


def _metric_totals(url: str, name: str) -> dict[str, float]:
    """Sums over all label sets of `name`_sum / _count / _total in a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    totals = {"_sum": 0.0, "_count": 0.0, "_total": 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith(name + suffix + "{") or line.startswith(name + suffix + " "):
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals


def test_a_killed_replica_is_replaced_and_nothing_hangs(server):
    pid = _get(f"{server['url']}/v1/health")[1]["pid"]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(_load, server, 8, 8)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        results = load.result(timeout=240)
    for status, body, _image, _boxes in results:
        assert status == 200 or 500 <= status < 600, (status, body)
        if status != 200:
            text = body["error"] if isinstance(body, dict) else body
            assert text.strip() and len(text.strip().splitlines()) == 1, text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the controller starts a new replica
        pids = {_get(f"{server['url']}/v1/health")[1].get("pid") for _ in range(6)}
        if len(pids - {pid}) == 2:
            break
        time.sleep(2)
    later = _load(server, clients=4, per_client=8)
    assert all(r[0] == 200 for r in later), [r[:2] for r in later if r[0] != 200][:3]


def test_an_engine_failure_is_one_line_500_and_the_server_keeps_serving(tmp_path):
    """A model whose heatmaps come out NaN (a NaN head bias): the predictor refuses them."""
    model = peaked_model()
    with torch.no_grad():
        [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1].bias[0] = float("nan")
    pth = tmp_path / "nan.pth"
    save_weights(model, pth, variant={"model_config": dataclasses.asdict(TINY)})
    proc, url = _start_server(pth, tmp_path / "server.log", "--cpus-per-replica", "0.5")
    try:
        image, boxes = PEOPLE[0]
        for _ in range(2):
            with pytest.raises(ServingError) as err:
                Client(url).predict(image, boxes)
            assert err.value.status == 500 and "non-finite heatmaps" in str(err.value)
            assert "\n" not in str(err.value)
        assert _get(f"{url}/v1/health")[0] == 200
        assert _post(f"{url}/v1/pose", b"{")[0] == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0


def test_sigterm_stops_the_server_within_30_seconds(server):
    proc = server["proc"]
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=40)
    assert time.monotonic() - start < 30 and rc == 0, (rc, server["log"].read_text()[-2000:])


def test_requests_without_boxes_need_a_detector():
    body = json.dumps({"image": base64.b64encode(PEOPLE[0][0].read_bytes()).decode()}).encode()
    with pytest.raises(RequestError, match="no 'boxes' field"):
        parse_json_request(body, LIMITS)
    assert parse_json_request(body, LIMITS, boxes_optional=True).boxes is None


def test_served_detector_finds_the_people_of_requests_without_boxes(tmp_path):
    """`serve --detector`: a request without boxes is answered as the local predictor answers on the
    detector's boxes; a request with boxes still uses its own."""
    from test_detectors import constant_graph, yolov8_output

    from tokenpose.predict.detectors import load_detector

    onnx = build_artifacts(tmp_path)["onnx"]
    det_path = constant_graph(tmp_path / "det.onnx", {"output0": yolov8_output()})
    proc, url = _start_server(onnx, tmp_path / "server.log", "--cpus-per-replica", "0.5", "--detector", det_path)
    try:
        predictor = PosePredictor(load_engine(onnx))
        image, boxes = PEOPLE[0]
        (found,) = load_detector(det_path).detect([cv2.imread(str(image))])
        assert len(found) == 2
        status, body = _post(f"{url}/v1/pose", json.dumps({"image": base64.b64encode(image.read_bytes()).decode()}).encode())
        assert status == 200, body
        from tokenpose.serving.client import prediction_from_json

        _assert_same(prediction_from_json(json.loads(body)), _expected(predictor, image, found))
        _assert_same(Client(url).predict(image, boxes), _expected(predictor, image, boxes))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
