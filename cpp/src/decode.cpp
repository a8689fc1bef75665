// Heatmap decoding, line for line with HeatmapCodec.decode / gaussian_blur_maps
// (tokenpose/data/heatmaps.py, the spec): same float64 arithmetic in the same order.
#include "tokenpose/decode.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include <opencv2/imgproc.hpp>

#include "tokenpose/preprocess.hpp"

namespace tokenpose {
namespace {

// One map (h, w) blurred with OpenCV's Gaussian kernel over a zero border, in float64: the
// official per-map cv2.GaussianBlur of the zero-padded map, cropped back. Horizontal pass over
// the padded rows first, then vertical, each tap added in order (as the Python sum() does).
void blur_map(const float* map, int h, int w, const std::vector<double>& kernel, std::vector<double>& padded,
              std::vector<double>& rows, std::vector<double>& out) {
  const int r = int(kernel.size() - 1) / 2;
  const int pw = w + 2 * r, ph = h + 2 * r;
  padded.assign(size_t(ph) * pw, 0.0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) padded[size_t(y + r) * pw + x + r] = double(map[size_t(y) * w + x]);
  rows.assign(size_t(ph) * w, 0.0);
  for (int y = 0; y < ph; ++y)
    for (int x = 0; x < w; ++x) {
      double s = 0.0;
      for (size_t i = 0; i < kernel.size(); ++i) s += kernel[i] * padded[size_t(y) * pw + x + i];
      rows[size_t(y) * w + x] = s;
    }
  out.assign(size_t(h) * w, 0.0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double s = 0.0;
      for (size_t i = 0; i < kernel.size(); ++i) s += kernel[i] * rows[size_t(y + i) * w + x];
      out[size_t(y) * w + x] = s;
    }
}

}  // namespace

std::vector<Keypoint> decode_heatmaps(const float* heatmaps, int n, int j, int h, int w,
                                      const std::vector<Crop>& crops, bool dark, int blur_kernel) {
  if (int(crops.size()) != n)
    throw Error("decode: got " + std::to_string(crops.size()) + " crops for " + std::to_string(n) + " heatmaps");
  std::vector<double> kernel;
  if (dark) {
    cv::Mat k = cv::getGaussianKernel(blur_kernel, 0, CV_64F);  // sigma 0.3((k-1)/2 - 1) + 0.8
    kernel.assign(k.ptr<double>(), k.ptr<double>() + blur_kernel);
  }
  std::vector<double> padded, rows, blurred, logm(size_t(h) * w);
  std::vector<Keypoint> out(size_t(n) * j);
  const size_t area = size_t(h) * w;

  for (int p = 0; p < n; ++p) {
    const Affine inv = crop_affine(crops[p], 0.0, w, h, true);
    for (int k = 0; k < j; ++k) {
      const float* map = heatmaps + (size_t(p) * j + k) * area;
      size_t idx = 0;
      for (size_t i = 0; i < area; ++i) {
        if (!std::isfinite(map[i]))
          throw Error("the engine returned non-finite heatmaps (NaN/Inf) for person " + std::to_string(p));
        if (map[i] > map[idx]) idx = i;  // first maximum, like numpy.argmax
      }
      const float maxval = map[idx];
      const bool positive = maxval > 0.0f;
      const int px = positive ? int(idx % w) : 0, py = positive ? int(idx / w) : 0;
      double x = px, y = py;

      if (dark) {
        blur_map(map, h, w, kernel, padded, rows, blurred);
        const double bmax = *std::max_element(blurred.begin(), blurred.end());
        const double ratio = bmax != 0.0 ? double(maxval) / bmax : 0.0;
        for (size_t i = 0; i < area; ++i) logm[i] = std::log(std::max(blurred[i] * ratio, 1e-10));
        auto at = [&](int dx, int dy) {
          const int yy = std::clamp(py + dy, 0, h - 1), xx = std::clamp(px + dx, 0, w - 1);
          return logm[size_t(yy) * w + xx];
        };
        const bool interior = px > 1 && px < w - 2 && py > 1 && py < h - 2;
        const double centre = at(0, 0);
        const double gx = 0.5 * (at(1, 0) - at(-1, 0));
        const double gy = 0.5 * (at(0, 1) - at(0, -1));
        const double dxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0));
        const double dyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2));
        const double dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1));
        const double det = dxx * dyy - dxy * dxy;
        if (interior && det != 0.0) {
          const double off_x = -(dyy * gx - dxy * gy) / det;  // -H^-1 g
          const double off_y = -(dxx * gy - dxy * gx) / det;
          // As the Python codec: a step longer than 1 px means the quadratic model does not hold.
          if (std::isfinite(off_x) && std::isfinite(off_y) && std::abs(off_x) <= 1.0 && std::abs(off_y) <= 1.0)
            x += off_x, y += off_y;
        }
      }
      Keypoint& kp = out[size_t(p) * j + k];
      kp.x = (x * inv[0] + y * inv[1]) + inv[2];
      kp.y = (x * inv[3] + y * inv[4]) + inv[5];
      kp.score = maxval;
    }
  }
  return out;
}

double rescore(const Keypoint* keypoints, int num_joints, double box_score, double threshold) {
  double total = 0.0;
  int count = 0;
  for (int k = 0; k < num_joints; ++k) {
    if (double(keypoints[k].score) > threshold) total += double(keypoints[k].score), ++count;
  }
  return (count > 0 ? total / count : 0.0) * box_score;
}

}  // namespace tokenpose
