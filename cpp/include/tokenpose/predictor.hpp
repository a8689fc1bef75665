// Top-down pose estimation with any Engine, the C++ twin of tokenpose.engines.PosePredictor:
// usable boxes -> all crops of the image batched, split only at the engine's max batch (a chunk
// below its min batch is padded) -> one engine call per chunk -> one decoding pass over all heatmaps.
#pragma once

#include <optional>
#include <vector>

#include <opencv2/core.hpp>

#include "tokenpose/engine.hpp"
#include "tokenpose/preprocess.hpp"
#include "tokenpose/types.hpp"

namespace tokenpose {

struct Person {
  int index = 0;  // position of its box in the caller's list
  Box box;
  Crop crop;
  std::vector<Keypoint> keypoints;  // num_joints, image pixels
  double score = 0;                 // official rescoring (mean joint score > 0.2, x box score)
};

struct Prediction {
  int image_h = 0, image_w = 0;
  std::vector<Person> people;
  std::vector<int> skipped;  // indices of boxes that were not usable (zero size, outside, non-finite)
};

class PosePredictor {
 public:
  // batch_size: most crops per engine call; 0: the engine's max batch, else 32. Chunks smaller
  // than the engine's min_batch() (the last one, or all with a small batch_size) are padded up to
  // it by repeating their last crop; the extra heatmaps are dropped.
  // warp: crop resampling arithmetic, see CropWarp; default: default_crop_warp(info), the
  // arithmetic of the Python OpenCV the manifest records, else that of the linked OpenCV's major.
  PosePredictor(Engine& engine, ModelInfo info, int batch_size = 0, std::optional<CropWarp> warp = std::nullopt);

  // image: BGR uint8 (H, W, 3). When given, `inputs` / `heatmaps` receive the model input and
  // output of all usable boxes (for debugging and the parity test).
  Prediction predict(const cv::Mat& bgr, const std::vector<Box>& boxes, std::vector<float>* inputs = nullptr,
                     std::vector<float>* heatmaps = nullptr);

  const ModelInfo& info() const { return info_; }
  int batch_size() const { return batch_size_; }
  CropWarp warp() const { return warp_; }

 private:
  Engine& engine_;
  ModelInfo info_;
  int batch_size_;
  int min_batch_ = 1;
  CropWarp warp_;
};

}  // namespace tokenpose
