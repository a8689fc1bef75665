// tokenpose_cpp: keypoints of the people in an image, from person boxes, with an exported model.
//
//   tokenpose_cpp --model tokenpose_s-v2_fp32.pt2 image.jpg boxes.json [-o keypoints.json]
//
// boxes.json: [[x, y, w, h], ...], or [{"bbox": [x, y, w, h], "score": s}, ...] (COCO detection
// results), or either of them under {"boxes": ...}. Output: JSON on stdout or in --output.
// Exit status: 0 success, 1 bad input / model / runtime error (one line on stderr), 2 bad usage.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenpose/engine.hpp"
#include "tokenpose/predictor.hpp"
#include "tokenpose/preprocess.hpp"
#include "tokenpose/sha256.hpp"

namespace {

using nlohmann::json;
using tokenpose::Error;

const char* kUsage =
    "usage: tokenpose_cpp --model MODEL IMAGE BOXES [options]\n"
    "       tokenpose_cpp --print-sha256 FILE...\n"
    "\n"
    "  MODEL   exported model: .pt2 (AOTInductor) or .engine (TensorRT), with MODEL.json beside it\n"
    "  IMAGE   image file (read with OpenCV, EXIF orientation ignored)\n"
    "  BOXES   JSON person boxes: [[x, y, w, h], ...] or [{\"bbox\": [x, y, w, h], \"score\": s}, ...]\n"
    "\n"
    "options:\n"
    "  -o, --output FILE      write the keypoints JSON to FILE (default: stdout)\n"
    "  --device auto|cpu|cuda device the model must run on (default: auto)\n"
    "  --threads N            CPU threads for the AOTInductor back-end (default: libtorch's)\n"
    "  --batch N              most crops per engine call (default: the model's max batch)\n"
    "  --warp float|opencv    crop arithmetic: float = OpenCV 5.x (Python with opencv-python 5),\n"
    "                         opencv = the linked OpenCV's warpAffine (4.x: Python with\n"
    "                         opencv-python 4). Default: the one matching the Python OpenCV the\n"
    "                         manifest records, else opencv when the linked OpenCV (" CV_VERSION ")\n"
    "                         is 4.x and float from 5.x\n"
    "  --dump-input FILE      also write the model input, float32 NCHW raw (little-endian)\n"
    "  --dump-heatmaps FILE   also write the heatmaps, float32 NCHW raw\n"
    "  --print-sha256         print the sha256 of each FILE (as sha256sum) and exit; the hash that\n"
    "                         loading checks against the manifest's\n"
    "  -h, --help             show this help\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string model, image, boxes, output, dump_input, dump_heatmaps;
  tokenpose::EngineOptions engine;
  int batch = 0;
  std::optional<tokenpose::CropWarp> warp;  // unset: tokenpose::default_crop_warp(manifest)
  bool print_sha256 = false;
  std::vector<std::string> files;  // --print-sha256
};

int parse_int(const std::string& flag, const std::string& value, int min_value) {
  try {
    size_t used = 0;
    const int v = std::stoi(value, &used);
    if (used == value.size() && v >= min_value) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " needs an integer >= " + std::to_string(min_value) + ", got '" + value + "'");
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "-m" || arg == "--model") {
      a.model = value();
    } else if (arg == "-o" || arg == "--output") {
      a.output = value();
    } else if (arg == "--device") {
      a.engine.device = value();
      if (a.engine.device != "auto" && a.engine.device != "cpu" && a.engine.device != "cuda")
        throw UsageError("--device must be auto, cpu or cuda, got '" + a.engine.device + "'");
    } else if (arg == "--threads") {
      a.engine.threads = parse_int(arg, value(), 1);
    } else if (arg == "--batch") {
      a.batch = parse_int(arg, value(), 1);
    } else if (arg == "--warp") {
      const std::string name = value();
      try {
        a.warp = tokenpose::parse_crop_warp(name);
      } catch (const Error& exc) {
        throw UsageError(exc.what());
      }
    } else if (arg == "--dump-input") {
      a.dump_input = value();
    } else if (arg == "--dump-heatmaps") {
      a.dump_heatmaps = value();
    } else if (arg == "--print-sha256") {
      a.print_sha256 = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (a.print_sha256) {
    if (positional.empty()) throw UsageError("--print-sha256 needs at least one FILE");
    a.files = positional;
    return a;
  }
  if (a.model.empty()) throw UsageError("--model MODEL is required");
  if (positional.size() != 2)
    throw UsageError("expected IMAGE and BOXES, got " + std::to_string(positional.size()) + " positional argument(s)");
  a.image = positional[0];
  a.boxes = positional[1];
  return a;
}

std::vector<tokenpose::Box> read_boxes(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("boxes file not found: '" + path + "'");
  std::ifstream in(path);
  if (!in) throw Error("cannot open boxes file '" + path + "'");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::parse_error& exc) {
    throw Error("boxes file '" + path + "' is not valid JSON: " + exc.what());
  }
  const char* expected = "expected [[x, y, w, h], ...] or [{\"bbox\": [x, y, w, h], \"score\": s}, ...]";
  if (doc.is_object() && doc.contains("boxes")) doc = doc["boxes"];
  if (!doc.is_array()) throw Error("boxes file '" + path + "': " + expected + ", got " + std::string(doc.type_name()));
  if (doc.empty()) throw Error("boxes file '" + path + "' holds no boxes: nothing to estimate");
  std::vector<tokenpose::Box> boxes;
  for (size_t i = 0; i < doc.size(); ++i) {
    const json& item = doc[i];
    const json* xywh = &item;
    double score = 1.0;
    if (item.is_object()) {
      if (!item.contains("bbox")) throw Error("boxes file '" + path + "': box #" + std::to_string(i) + " has no \"bbox\"");
      xywh = &item["bbox"];
      if (item.contains("score")) {
        if (!item["score"].is_number())
          throw Error("boxes file '" + path + "': box #" + std::to_string(i) + " has a non-numeric \"score\"");
        score = item["score"].get<double>();
      }
    }
    bool ok = xywh->is_array() && xywh->size() == 4;
    for (size_t k = 0; ok && k < 4; ++k) ok = (*xywh)[k].is_number();
    if (!ok) {
      std::string shown = item.dump();
      if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
      throw Error("boxes file '" + path + "': box #" + std::to_string(i) + " must be 4 numbers [x, y, w, h] (" +
                  expected + "), got " + shown);
    }
    boxes.push_back({(*xywh)[0].get<double>(), (*xywh)[1].get<double>(), (*xywh)[2].get<double>(),
                     (*xywh)[3].get<double>(), score});
  }
  return boxes;
}

// Write through a temp file and rename, so a failed run never leaves half a file.
void write_file(const std::string& path, const char* data, size_t size) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write '" + path + "' (is the folder there and writable?)");
    out.write(data, std::streamsize(size));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error("failed while writing '" + path + "' (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw Error("cannot write '" + path + "': " + ec.message());
  }
}

json to_json(const Args& args, const tokenpose::ModelInfo& info, const std::string& backend, tokenpose::CropWarp warp,
             const tokenpose::Prediction& pred, double seconds) {
  json people = json::array();
  for (const auto& p : pred.people) {
    json kps = json::array();
    for (const auto& k : p.keypoints) kps.push_back({k.x, k.y, double(k.score)});
    people.push_back({{"index", p.index},
                      {"box", {p.box.x, p.box.y, p.box.w, p.box.h}},
                      {"box_score", p.box.score},
                      {"center", {p.crop.cx, p.crop.cy}},
                      {"scale", {p.crop.sx, p.crop.sy}},
                      {"score", p.score},
                      {"keypoints", kps}});
  }
  return {{"image", args.image},
          {"image_hw", {pred.image_h, pred.image_w}},
          {"model", args.model},
          {"variant", info.variant},
          {"backend", backend},
          {"crop_warp", tokenpose::crop_warp_name(warp)},
          {"mean_rgb", info.mean_rgb},
          {"std_rgb", info.std_rgb},
          {"opencv", CV_VERSION},
          {"keypoint_names", info.keypoint_names},
          {"keypoint_format", "[x, y, score] in image pixels, 0-based"},
          {"people", people},
          {"skipped", pred.skipped},
          {"seconds", seconds}};
}

int print_sha256(const Args& args) {
  for (const std::string& file : args.files) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) throw Error("file not found: '" + file + "'");
    std::cout << tokenpose::sha256_file(file) << "  " << file << "\n";
  }
  std::cout << std::flush;
  return 0;
}

int run(const Args& args) {
  if (args.print_sha256) return print_sha256(args);
  const tokenpose::ModelInfo info = tokenpose::read_model_info(args.model);
  const std::vector<tokenpose::Box> boxes = read_boxes(args.boxes);
  const cv::Mat image = tokenpose::read_image(args.image);
  auto engine = tokenpose::load_engine(args.model, info, args.engine);
  tokenpose::PosePredictor predictor(*engine, info, args.batch, args.warp);

  std::vector<float> inputs, heatmaps;
  const auto start = std::chrono::steady_clock::now();
  const tokenpose::Prediction pred = predictor.predict(image, boxes, args.dump_input.empty() ? nullptr : &inputs,
                                                       args.dump_heatmaps.empty() ? nullptr : &heatmaps);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (pred.people.empty())
    throw Error("none of the " + std::to_string(boxes.size()) + " boxes in '" + args.boxes +
                "' is usable (zero size, non-finite or outside the " + std::to_string(image.cols) + "x" +
                std::to_string(image.rows) + " image)");
  if (!pred.skipped.empty()) {
    std::ostringstream msg;
    msg << "tokenpose_cpp: warning: skipped " << pred.skipped.size()
        << " box(es) with zero size, non-finite values or outside the " << image.cols << "x" << image.rows
        << " image:";
    for (int i : pred.skipped) msg << " #" << i;
    std::cerr << msg.str() << "\n";
  }

  if (!args.dump_input.empty())
    write_file(args.dump_input, reinterpret_cast<const char*>(inputs.data()), inputs.size() * sizeof(float));
  if (!args.dump_heatmaps.empty())
    write_file(args.dump_heatmaps, reinterpret_cast<const char*>(heatmaps.data()), heatmaps.size() * sizeof(float));
  const std::string text = to_json(args, info, engine->backend(), predictor.warp(), pred, seconds).dump(2) + "\n";
  if (args.output.empty()) {
    std::cout << text << std::flush;
    if (!std::cout) throw Error("cannot write the result to stdout");
  } else {
    write_file(args.output, text.data(), text.size());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const UsageError& exc) {
    std::cerr << "tokenpose_cpp: error: " << exc.what() << "\n\n" << kUsage;
    return 2;
  }
  try {
    return run(args);
  } catch (const Error& exc) {
    std::cerr << "tokenpose_cpp: error: " << exc.what() << "\n";
  } catch (const std::bad_alloc&) {
    std::cerr << "tokenpose_cpp: error: out of memory\n";
  } catch (const std::exception& exc) {  // OpenCV / libtorch / JSON exceptions not mapped above
    std::string text = exc.what();
    std::cerr << "tokenpose_cpp: error: " << text.substr(0, text.find('\n')) << "\n";
  } catch (...) {
    std::cerr << "tokenpose_cpp: error: unexpected failure\n";
  }
  return 1;
}
