"""The library side of `tokenpose predict`, shared by the CLI, serving and users' code.

    from tokenpose.predict import BoxSource, PredictJob
    summary = PredictJob(Path("pics"), Path("out"), boxes=BoxSource(Path("det.json"))).run(predictor)

sources: images, folders, video frames; boxes: the `--boxes` reader and the box screen;
detector: OpenCV's HOG people detector; detectors: the user's ONNX detector (`load_detector`);
tracking / smoothing: track ids, --det-every and One-Euro smoothing over video; drawing: skeleton overlays; sinks: drawn outputs and the
resumable results log (`done_items`); run: batching (`Run`) and whole runs (`PredictJob`).
"""

from tokenpose.predict.boxes import MAX_BOX_FACTOR, BoxSource, screen_boxes
from tokenpose.predict.detector import HogPersonDetector, detect_people, hog_available
from tokenpose.predict.detectors import DetectorSpec, OnnxDetector, load_detector
from tokenpose.predict.drawing import draw_poses, draw_results
from tokenpose.predict.run import PredictJob, PredictSummary, Run
from tokenpose.predict.sinks import PREDICT_TEMP_PATTERNS, ImageWriter, ResultsLog, done_items, video_writer
from tokenpose.predict.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoFrames, image_files, truncation_problem
from tokenpose.predict.tracking import FrameSequence, TrackOptions

__all__ = [
    "IMAGE_SUFFIXES", "MAX_BOX_FACTOR", "PREDICT_TEMP_PATTERNS", "VIDEO_SUFFIXES", "BoxSource", "DetectorSpec",
    "FrameSequence", "HogPersonDetector", "ImageWriter", "OnnxDetector", "PredictJob", "TrackOptions", "load_detector", "PredictSummary", "ResultsLog", "Run", "VideoFrames", "detect_people", "done_items",
    "draw_poses", "draw_results", "hog_available", "image_files", "screen_boxes",
    "truncation_problem", "video_writer",
]
