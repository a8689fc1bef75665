// Heatmap decoding, following HeatmapCodec.decode (tokenpose/data/heatmaps.py) exactly:
// integer argmax, DARK refinement (Gaussian blur k=11 over a zero border, log, one Newton step),
// then the inverse heatmap affine back to image pixels.
#pragma once

#include <vector>

#include "tokenpose/types.hpp"

namespace tokenpose {

// heatmaps: (n, j, h, w) float32, contiguous. crops: the n crops the maps came from.
// Returns n * j keypoints (person-major) in image pixels; score = the raw map maximum.
// Maps whose maximum is <= 0 decode to heatmap (0, 0) before the mapping back, like the
// official code. Throws Error on non-finite heatmaps.
std::vector<Keypoint> decode_heatmaps(const float* heatmaps, int n, int j, int h, int w,
                                      const std::vector<Crop>& crops, bool dark = true,
                                      int blur_kernel = 11);

// Official person rescoring: mean of the joint scores > threshold (0 if none) x box score.
double rescore(const Keypoint* keypoints, int num_joints, double box_score, double threshold = 0.2);

}  // namespace tokenpose
