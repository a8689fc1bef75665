// Pre-processing of the top-down pipeline, following tokenpose/data/transforms.py exactly:
// box -> center/scale (x1.25 padding to the model aspect ratio), the unbiased "size-1" affine,
// bilinear crop with a zero border, BGR -> RGB, /255 and ImageNet mean/std, NCHW float32.
#pragma once

#include <array>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "tokenpose/types.hpp"

namespace tokenpose {

constexpr double kPixelStd = 200.0;     // scale unit, pixels
constexpr double kBoxPadding = 1.25;    // scale factor applied to every box

// How crops are resampled. Both are cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0), but OpenCV
// changed its arithmetic between major versions, so "the same call" differs by up to 5 grey levels:
//   kFloat:  OpenCV 5.x's float32 bilinear warp, reimplemented here so it does not depend on the
//            OpenCV this program links. Matches Python with opencv-python(-headless) 5.x.
//   kOpenCV: cv::warpAffine of the linked OpenCV. With OpenCV 4.x (Debian/Ubuntu packages) this is
//            the 1/32-pixel fixed-point warp of every 4.x release, i.e. Python with opencv-python 4.x
//            (what the project pins: opencv-python-headless>=4.8,<5).
// default_crop_warp picks the one that matches the Python the model was exported with.
enum class CropWarp { kFloat, kOpenCV };

// The crop arithmetic of the Python side: from the OpenCV version the manifest records
// (info.opencv_version; major >= 5: kFloat, else kOpenCV), or, when it records none, from the
// linked OpenCV's major version (CV_VERSION_MAJOR < 5: kOpenCV, else kFloat).
CropWarp default_crop_warp(const ModelInfo& info);

// Row-major 2x3 affine matrix [a b c; d e f]: (x, y) -> (a x + b y + c, d x + e y + f).
using Affine = std::array<double, 6>;

// Read an image as BGR uint8 (H, W, 3), ignoring EXIF orientation like the Python `read_image`.
// Throws Error naming the file when it is missing, empty or cannot be decoded.
cv::Mat read_image(const std::string& path);

// `usable_boxes` of the Python predictor: finite, w > 0, h > 0 and overlapping [0, W) x [0, H).
bool usable_box(const Box& box, int image_h, int image_w);

// `box_to_center_scale`: center (x + (w-1)/2, y + (h-1)/2); w or h enlarged to `aspect_ratio`
// (model input W / H), then / 200 * scale_factor.
Crop box_to_crop(const Box& box, double aspect_ratio, double scale_factor = kBoxPadding);

// `get_affine_transforms` for one crop: image -> output of size (out_w, out_h), or
// output -> image when `inverse`. Maps the crop center to ((out_w-1)/2, (out_h-1)/2) with zoom
// k = (out_w - 1) / (200 sx - 1) and rotation `rot_deg` (degrees).
Affine crop_affine(const Crop& crop, double rot_deg, int out_w, int out_h, bool inverse);

// cv2.warpAffine(image, m, (out_w, out_h), INTER_LINEAR, BORDER_CONSTANT, 0) of a BGR uint8
// image with the arithmetic `warp` names (see CropWarp).
cv::Mat warp_affine_linear(const cv::Mat& bgr, const Affine& image_to_out, int out_w, int out_h, CropWarp warp);

// (H, W, 3) BGR uint8 crop -> (3, H, W) float32 RGB at `out`: (v / 255 - mean) / std.
void normalize_crop(const cv::Mat& crop_bgr, const std::array<float, 3>& mean_rgb,
                    const std::array<float, 3>& std_rgb, float* out);

// `preprocess_crops`: every crop of one image, warped and normalised into `batch`
// (crops.size() x 3 x input_h x input_w floats, caller-allocated).
void preprocess_crops(const cv::Mat& bgr, const std::vector<Crop>& crops, const ModelInfo& info, float* batch,
                      CropWarp warp);

// "float" / "opencv" <-> CropWarp; parse throws Error for anything else.
CropWarp parse_crop_warp(const std::string& name);
const char* crop_warp_name(CropWarp warp);

}  // namespace tokenpose
