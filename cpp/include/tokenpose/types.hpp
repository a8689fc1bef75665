// Plain data shared by the tokenpose C++ library: boxes, crops, keypoints, model description.
// Conventions follow the Python package: pixels are 0-based (x right, y down), sizes are (H, W),
// crop scales are in units of 200 px (PIXEL_STD), boxes are (x, y, w, h).
#pragma once

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

namespace tokenpose {

// A problem with the caller's input, files or environment; the message is meant for the user.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Box {
  double x = 0, y = 0, w = 0, h = 0;  // pixels
  double score = 1.0;                 // detector score (1 for ground-truth boxes)
};

// The crop a box becomes: center (pixels) and scale (units of 200 px; only sx sets the zoom).
struct Crop {
  double cx = 0, cy = 0, sx = 0, sy = 0;
};

struct Keypoint {
  double x = 0, y = 0;  // image pixels
  float score = 0;      // heatmap maximum (joint confidence)
};

// What the exported model expects, read from its manifest (`<artifact>.json`).
struct ModelInfo {
  std::string variant;
  std::string format;     // "pt2", "tensorrt", ...
  std::string precision;  // "fp32", "fp16", "int8"
  std::string input_name = "images";
  std::string output_name = "heatmaps";
  int input_h = 0, input_w = 0;      // model input (H, W)
  int heatmap_h = 0, heatmap_w = 0;  // heatmap (h, w)
  int num_joints = 0;
  std::vector<std::string> keypoint_names;
  std::array<float, 3> mean_rgb{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std_rgb{0.229f, 0.224f, 0.225f};
  int batch_min = 1, batch_max = 0;  // batch_max 0: unlimited
  // Provenance, checked when the artifact is loaded (DESIGN convention 7).
  std::string artifact;          // file name the manifest describes
  std::string sha256;            // lower-case hex sha256 of the artifact
  std::string tensorrt_version;  // versions.tensorrt ("10.7.0.23"; engines are tied to it), "" when absent
  std::string gpu;               // GPU an engine was built for (CUDA device name), "" when absent
  std::string opencv_version;    // OpenCV of the exporting Python (versions.opencv / cv2 / opencv-python*), ""
  std::string op_library;        // AOTInductor: operator library beside the package it calls (op_library), ""

  double aspect_ratio() const { return static_cast<double>(input_w) / input_h; }
};

}  // namespace tokenpose
