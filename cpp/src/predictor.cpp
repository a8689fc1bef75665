#include "tokenpose/predictor.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "tokenpose/decode.hpp"

namespace tokenpose {

PosePredictor::PosePredictor(Engine& engine, ModelInfo info, int batch_size, std::optional<CropWarp> warp)
    : engine_(engine), info_(std::move(info)), warp_(warp ? *warp : default_crop_warp(info_)) {
  const int limit = engine_.max_batch();
  min_batch_ = std::max(1, engine_.min_batch());
  if (limit > 0 && min_batch_ > limit)
    throw Error("the engine's batch range " + std::to_string(min_batch_) + ".." + std::to_string(limit) + " is empty");
  int size = batch_size > 0 ? batch_size : (limit > 0 ? limit : 32);
  if (limit > 0) size = std::min(size, limit);
  if (size < 1) throw Error("batch size must be >= 1, got " + std::to_string(size));
  batch_size_ = std::max(size, min_batch_);  // a smaller chunk would be padded up to min_batch_ anyway
}

Prediction PosePredictor::predict(const cv::Mat& bgr, const std::vector<Box>& boxes, std::vector<float>* inputs_out,
                                  std::vector<float>* heatmaps_out) {
  if (bgr.empty() || bgr.type() != CV_8UC3) throw Error("expected a non-empty BGR uint8 image (H, W, 3)");
  Prediction result;
  result.image_h = bgr.rows;
  result.image_w = bgr.cols;

  std::vector<Crop> crops;
  std::vector<int> used;
  for (size_t i = 0; i < boxes.size(); ++i) {
    if (!usable_box(boxes[i], bgr.rows, bgr.cols)) {
      result.skipped.push_back(int(i));
      continue;
    }
    used.push_back(int(i));
    crops.push_back(box_to_crop(boxes[i], info_.aspect_ratio()));
  }
  const int n = int(crops.size());
  const size_t per_input = size_t(3) * info_.input_h * info_.input_w;
  const size_t per_output = size_t(info_.num_joints) * info_.heatmap_h * info_.heatmap_w;
  // Model inputs are built one engine batch at a time (a batch of 32 crops of 256x192 is 19 MB), unless
  // the caller wants all of them.
  std::vector<float> inputs(size_t(inputs_out ? n : std::min(n, batch_size_)) * per_input);
  std::vector<float> heatmaps(size_t(n) * per_output);
  if (n > 0) {
    for (int start = 0; start < n; start += batch_size_) {  // split only at the engine's max batch
      const int k = std::min(batch_size_, n - start);
      float* batch = inputs.data() + (inputs_out ? size_t(start) * per_input : 0);
      preprocess_crops(bgr, std::vector<Crop>(crops.begin() + start, crops.begin() + start + k), info_, batch, warp_);
      float* out = heatmaps.data() + size_t(start) * per_output;
      if (k >= min_batch_) {
        engine_.infer(batch, k, out);
        continue;
      }
      // Below the engine's minimum batch (a TensorRT profile or an AOTInductor package exported with
      // min > 1): repeat the last crop up to the minimum and drop the extra heatmaps. Crops are
      // independent through the model, so the kept heatmaps are those of an unpadded call.
      std::vector<float> padded_in(size_t(min_batch_) * per_input);
      std::vector<float> padded_out(size_t(min_batch_) * per_output);
      std::copy(batch, batch + size_t(k) * per_input, padded_in.begin());
      for (int j = k; j < min_batch_; ++j)
        std::copy(batch + size_t(k - 1) * per_input, batch + size_t(k) * per_input,
                  padded_in.begin() + size_t(j) * per_input);
      engine_.infer(padded_in.data(), min_batch_, padded_out.data());
      std::copy(padded_out.begin(), padded_out.begin() + size_t(k) * per_output, out);
    }
    const std::vector<Keypoint> kps =
        decode_heatmaps(heatmaps.data(), n, info_.num_joints, info_.heatmap_h, info_.heatmap_w, crops);
    for (int p = 0; p < n; ++p) {
      Person person;
      person.index = used[p];
      person.box = boxes[used[p]];
      person.crop = crops[p];
      person.keypoints.assign(kps.begin() + size_t(p) * info_.num_joints, kps.begin() + size_t(p + 1) * info_.num_joints);
      person.score = rescore(person.keypoints.data(), info_.num_joints, person.box.score);
      result.people.push_back(std::move(person));
    }
  }
  if (inputs_out) *inputs_out = std::move(inputs);
  if (heatmaps_out) *heatmaps_out = std::move(heatmaps);
  return result;
}

}  // namespace tokenpose
