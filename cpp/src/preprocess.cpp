// Pre-processing, line for line with tokenpose/data/transforms.py (the spec, DESIGN convention 5).
#include "tokenpose/preprocess.hpp"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <filesystem>
#include <system_error>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace tokenpose {

cv::Mat read_image(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("image file not found: '" + path + "'");
  if (std::filesystem::file_size(path, ec) == 0 || ec) throw Error("image file is empty: '" + path + "'");
  if (!cv::haveImageReader(path)) throw Error("image file is not in a format OpenCV can read: '" + path + "'");
  cv::Mat image;
  try {
    image = cv::imread(path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& exc) {
    throw Error("cannot decode image file '" + path + "': " + exc.what());
  }
  if (image.empty()) throw Error("cannot decode image file '" + path + "'");
  return image;
}

bool usable_box(const Box& b, int image_h, int image_w) {
  bool finite = std::isfinite(b.x) && std::isfinite(b.y) && std::isfinite(b.w) && std::isfinite(b.h);
  return finite && b.w > 0 && b.h > 0 && b.x < image_w && b.y < image_h && b.x + b.w > 0 && b.y + b.h > 0;
}

Crop box_to_crop(const Box& b, double aspect_ratio, double scale_factor) {
  Crop c;
  c.cx = b.x + (b.w - 1) * 0.5;
  c.cy = b.y + (b.h - 1) * 0.5;
  bool wide = b.w > aspect_ratio * b.h;
  double w = wide ? b.w : b.h * aspect_ratio;
  double h = wide ? b.w / aspect_ratio : b.h;
  c.sx = w / kPixelStd * scale_factor;  // same operation order as numpy: (w / 200) * 1.25
  c.sy = h / kPixelStd * scale_factor;
  return c;
}

Affine crop_affine(const Crop& crop, double rot_deg, int out_w, int out_h, bool inverse) {
  const double dst_cx = (out_w - 1.0) * 0.5, dst_cy = (out_h - 1.0) * 0.5;
  const double k = (out_w - 1.0) / (crop.sx * kPixelStd - 1.0);
  const double theta = rot_deg * (M_PI / 180.0);  // numpy.deg2rad
  const double cs = std::cos(theta), sn = std::sin(theta);
  Affine m{};
  if (inverse) {  // (1/k) R(r): output offsets from the output center -> image offsets from the crop center
    m[0] = cs / k, m[1] = -sn / k, m[3] = sn / k, m[4] = cs / k;
    m[2] = crop.cx - (m[0] * dst_cx + m[1] * dst_cy);
    m[5] = crop.cy - (m[3] * dst_cx + m[4] * dst_cy);
  } else {  // k R(-r)
    m[0] = cs * k, m[1] = sn * k, m[3] = -sn * k, m[4] = cs * k;
    m[2] = dst_cx - (m[0] * crop.cx + m[1] * crop.cy);
    m[5] = dst_cy - (m[3] * crop.cx + m[4] * crop.cy);
  }
  return m;
}

// CropWarp::kFloat. OpenCV up to 4.x warps with 1/32-pixel fixed-point coordinates and weights;
// OpenCV 5.x (imgproc warp_kernels.simd.hpp, 8UC3 linear, constant border) in float32 with FMAs.
// Measured on tests/fixtures/coco_mini crops: opencv-python 4.10-4.14 and Debian's OpenCV 4.6 agree
// with each other and differ from 5.0 by up to 5 grey levels on ~40% of pixels. This is the 5.x
// algorithm, bit-exact with cv2 5.0 on every crop of the parity test:
//   M = float32(inverse of the double matrix), per row: mx = float(y * M1 + M2) (no FMA),
//   sx = fma(M0, x, mx); ix = floor(sx); a = sx - ix; pixels outside the image are 0;
//   v0 = fma(a, p01 - p00, p00); v1 = fma(a, p11 - p10, p10); v = fma(b, v1 - v0, v0);
//   round half to even, saturate to uint8.
// The file is compiled with -ffp-contract=off so the compiler adds no FMAs of its own; std::fma
// is exact everywhere (a hardware instruction where the CPU has one).
static cv::Mat warp_float(const cv::Mat& bgr, const Affine& fwd, int out_w, int out_h) {
  CV_Assert(bgr.type() == CV_8UC3);
  double det = fwd[0] * fwd[4] - fwd[1] * fwd[3];  // cv::invertAffineTransform, in double
  det = det != 0 ? 1.0 / det : 0.0;
  const double a11 = fwd[4] * det, a22 = fwd[0] * det, a12 = -fwd[1] * det, a21 = -fwd[3] * det;
  const double b1 = -a11 * fwd[2] - a12 * fwd[5], b2 = -a21 * fwd[2] - a22 * fwd[5];
  const float m[6] = {float(a11), float(a12), float(b1), float(a21), float(a22), float(b2)};

  cv::Mat out(out_h, out_w, CV_8UC3);
  const int rows = bgr.rows, cols = bgr.cols;
  const size_t step = bgr.step[0];
  const uint8_t* src = bgr.data;
  for (int y = 0; y < out_h; ++y) {
    const float row_x = float(y) * m[1] + m[2];
    const float row_y = float(y) * m[4] + m[5];
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < out_w; ++x, dst += 3) {
      const float sx = std::fma(m[0], float(x), row_x);
      const float sy = std::fma(m[3], float(x), row_y);
      const float fx = std::floor(sx), fy = std::floor(sy);
      if (!(fx >= -1.0f && fx < float(cols) && fy >= -1.0f && fy < float(rows))) {  // also catches NaN
        dst[0] = dst[1] = dst[2] = 0;
        continue;
      }
      const int ix = int(fx), iy = int(fy);
      const float a = sx - fx, b = sy - fy;
      const bool x0 = ix >= 0, x1 = ix + 1 < cols, y0 = iy >= 0, y1 = iy + 1 < rows;
      const uint8_t* p = src + (ptrdiff_t)iy * (ptrdiff_t)step + (ptrdiff_t)ix * 3;
      for (int c = 0; c < 3; ++c) {
        const float p00 = (y0 && x0) ? p[c] : 0.0f;
        const float p01 = (y0 && x1) ? p[3 + c] : 0.0f;
        const float p10 = (y1 && x0) ? p[step + c] : 0.0f;
        const float p11 = (y1 && x1) ? p[step + 3 + c] : 0.0f;
        const float v0 = std::fma(a, p01 - p00, p00);
        const float v1 = std::fma(a, p11 - p10, p10);
        const float v = std::nearbyint(std::fma(b, v1 - v0, v0));  // round half to even (default mode)
        dst[c] = uint8_t(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
      }
    }
  }
  return out;
}

cv::Mat warp_affine_linear(const cv::Mat& bgr, const Affine& fwd, int out_w, int out_h, CropWarp warp) {
  if (warp == CropWarp::kFloat) return warp_float(bgr, fwd, out_w, out_h);
  const cv::Mat m(2, 3, CV_64F, const_cast<double*>(fwd.data()));
  cv::Mat out;
  cv::warpAffine(bgr, out, m, cv::Size(out_w, out_h), cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

CropWarp parse_crop_warp(const std::string& name) {
  if (name == "float") return CropWarp::kFloat;
  if (name == "opencv") return CropWarp::kOpenCV;
  throw Error("crop warp must be 'float' (OpenCV 5.x arithmetic) or 'opencv' (the linked OpenCV " CV_VERSION
              "), got '" + name + "'");
}

const char* crop_warp_name(CropWarp warp) { return warp == CropWarp::kFloat ? "float" : "opencv"; }

CropWarp default_crop_warp(const ModelInfo& info) {
  const std::string& v = info.opencv_version;
  if (!v.empty() && std::isdigit(static_cast<unsigned char>(v[0]))) {
    const int major = std::atoi(v.c_str());  // "4.10.0" -> 4
    return major >= 5 ? CropWarp::kFloat : CropWarp::kOpenCV;
  }
  return CV_VERSION_MAJOR < 5 ? CropWarp::kOpenCV : CropWarp::kFloat;
}

void normalize_crop(const cv::Mat& crop, const std::array<float, 3>& mean_rgb, const std::array<float, 3>& std_rgb,
                    float* out) {
  CV_Assert(crop.type() == CV_8UC3);
  const int h = crop.rows, w = crop.cols;
  const size_t plane = size_t(h) * w;
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = crop.ptr<uint8_t>(y);
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) {  // output channel c (RGB) comes from BGR channel 2 - c
        const float v = float(row[x * 3 + (2 - c)]) / 255.0f;
        out[c * plane + size_t(y) * w + x] = (v - mean_rgb[c]) / std_rgb[c];
      }
    }
  }
}

void preprocess_crops(const cv::Mat& bgr, const std::vector<Crop>& crops, const ModelInfo& info, float* batch,
                      CropWarp warp) {
  const size_t per_crop = size_t(3) * info.input_h * info.input_w;
  for (size_t i = 0; i < crops.size(); ++i) {
    const Affine m = crop_affine(crops[i], 0.0, info.input_w, info.input_h, false);
    const cv::Mat crop = warp_affine_linear(bgr, m, info.input_w, info.input_h, warp);
    normalize_crop(crop, info.mean_rgb, info.std_rgb, batch + i * per_crop);
  }
}

}  // namespace tokenpose
