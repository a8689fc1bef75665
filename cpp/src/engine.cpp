// Manifest reading and checking (artifact name, sha256) and the suffix table that picks a back-end
// (DESIGN conventions 6 and 7).
#include "tokenpose/engine.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "backends.hpp"
#include "tokenpose/sha256.hpp"

namespace tokenpose {
namespace {

using nlohmann::json;

const json& field(const json& doc, const char* key, const std::string& where) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) throw Error("manifest " + where + " lacks the field '" + key + "'");
  return *it;
}

void read_hw(const json& doc, const char* key, const std::string& where, int& h, int& w) {
  const json& v = field(doc, key, where);
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer() ||
      v[0].get<int>() < 1 || v[1].get<int>() < 1)
    throw Error("manifest " + where + ": '" + key + "' must be [H, W] positive integers, got " + v.dump());
  h = v[0].get<int>();
  w = v[1].get<int>();
}

// The statistics the model was trained with (`mean_rgb`, `std_rgb`, per RGB channel of pixels / 255)
// and the channel order of its input; a manifest without them means the ImageNet defaults and RGB.
void read_normalization(const json& doc, const std::string& where, ModelInfo& info) {
  for (const char* key : {"mean_rgb", "std_rgb"}) {
    if (!doc.contains(key) || doc[key].is_null()) continue;
    const json& v = doc[key];
    const bool is_std = std::string(key) == "std_rgb";
    bool ok = v.is_array() && v.size() == 3;
    for (size_t c = 0; ok && c < 3; ++c)
      ok = v[c].is_number() && std::isfinite(v[c].get<double>()) && (!is_std || v[c].get<double>() > 0);
    if (!ok)
      throw Error("manifest " + where + ": '" + key + "' must hold 3 " + (is_std ? "positive " : "") +
                  "finite numbers, got " + v.dump());
    auto& dst = is_std ? info.std_rgb : info.mean_rgb;
    for (int c = 0; c < 3; ++c) dst[c] = static_cast<float>(v[c].get<double>());  // float32, as numpy does
  }
  // Every tokenpose model takes RGB; an artifact that records another order was not made for this
  // pre-processing, and feeding it RGB would silently swap its colours.
  if (doc.contains("color_order") && !doc["color_order"].is_null() &&
      !(doc["color_order"].is_string() && doc["color_order"].get<std::string>() == "RGB"))
    throw Error("manifest " + where + ": color_order " + doc["color_order"].dump() +
                " is not supported: the C++ pre-processing feeds RGB (\"RGB\")");
}

std::string suffix_of(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

}  // namespace

ModelInfo read_model_info(const std::string& artifact_path) {
  const std::string where = artifact_path + ".json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(artifact_path, ec)) throw Error("model file not found: '" + artifact_path + "'");
  if (!std::filesystem::is_regular_file(where, ec))
    throw Error("no manifest for " + artifact_path + ": expected " + where + " beside it (re-export the model)");
  std::ifstream in(where);
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::exception& exc) {
    throw Error("cannot read manifest " + where + ": " + exc.what());
  }
  if (!doc.is_object()) throw Error("manifest " + where + " is not a JSON object");
  ModelInfo info;
  try {
    info.variant = field(doc, "variant", where).get<std::string>();
    info.format = field(doc, "format", where).get<std::string>();
    info.precision = doc.value("precision", std::string("fp32"));
    info.input_name = doc.value("input_name", std::string("images"));
    info.output_name = doc.value("output_name", std::string("heatmaps"));
    read_hw(doc, "input_hw", where, info.input_h, info.input_w);
    read_hw(doc, "heatmap_hw", where, info.heatmap_h, info.heatmap_w);
    info.num_joints = field(doc, "num_joints", where).get<int>();
    if (info.num_joints < 1) throw Error("manifest " + where + ": num_joints must be >= 1");
    if (doc.contains("keypoint_names") && doc["keypoint_names"].is_array())
      info.keypoint_names = doc["keypoint_names"].get<std::vector<std::string>>();
    if (!info.keypoint_names.empty() && int(info.keypoint_names.size()) != info.num_joints)
      throw Error("manifest " + where + ": " + std::to_string(info.keypoint_names.size()) + " keypoint names for " +
                  std::to_string(info.num_joints) + " joints");
    read_normalization(doc, where, info);
    if (doc.contains("batch") && doc["batch"].is_object()) {
      const json& b = doc["batch"];
      info.batch_min = std::max(1, b.value("min", 1));
      info.batch_max = std::max(0, b.value("max", 0));
      if (info.batch_max > 0 && info.batch_min > info.batch_max)
        throw Error("manifest " + where + ": batch min " + std::to_string(info.batch_min) + " > max " +
                    std::to_string(info.batch_max));
    }
    info.artifact = field(doc, "artifact", where).get<std::string>();
    info.sha256 = field(doc, "sha256", where).get<std::string>();
    if (doc.contains("gpu") && doc["gpu"].is_string()) info.gpu = doc["gpu"].get<std::string>();
    if (doc.contains("op_library") && doc["op_library"].is_string())
      info.op_library = doc["op_library"].get<std::string>();
    if (doc.contains("versions") && doc["versions"].is_object()) {
      const json& v = doc["versions"];
      if (v.contains("tensorrt") && v["tensorrt"].is_string()) info.tensorrt_version = v["tensorrt"].get<std::string>();
      // The OpenCV the exporting Python had, under whichever name the exporter records it.
      for (const char* key : {"opencv", "cv2", "opencv-python-headless", "opencv-python"}) {
        if (v.contains(key) && v[key].is_string() && !v[key].get<std::string>().empty()) {
          info.opencv_version = v[key].get<std::string>();
          break;
        }
      }
    }
  } catch (const json::exception& exc) {
    throw Error("manifest " + where + " has a field of the wrong type: " + exc.what());
  }
  return info;
}

void verify_artifact(const std::string& path, const ModelInfo& info) {
  const std::string name = std::filesystem::path(path).filename().string();
  if (info.artifact != name)
    throw Error("manifest " + path + ".json describes '" + info.artifact + "', not '" + name + "'");
  const std::string digest = sha256_file(path);
  std::string want = info.sha256;
  for (char& c : want) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (digest != want)
    throw Error(path + " does not match its manifest: sha256 " + digest.substr(0, 12) + "... != " +
                (want.empty() ? std::string("(empty)") : want.substr(0, 12) + "...") +
                " (the file was changed or replaced after export)");
}

std::unique_ptr<Engine> load_engine(const std::string& path, const ModelInfo& info, const EngineOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("model file not found: '" + path + "'");
  verify_artifact(path, info);
  const std::string ext = suffix_of(path);
  if (ext == ".pt2") {
    if (info.format != "pt2")
      throw Error(path + ": its manifest describes a '" + info.format + "' artifact, not an AOTInductor package");
#ifdef TOKENPOSE_WITH_AOTI
    return make_aoti_engine(path, info, options);
#else
    throw Error(path + ": this build has no AOTInductor back-end (configure with -DTOKENPOSE_WITH_AOTI=ON and libtorch)");
#endif
  }
  if (ext == ".engine") {
    if (info.format != "tensorrt")
      throw Error(path + ": its manifest describes a '" + info.format + "' artifact, not a TensorRT engine");
#ifdef TOKENPOSE_WITH_TENSORRT
    return make_tensorrt_engine(path, info, options);
#else
    throw Error(path + ": this build has no TensorRT back-end (configure where TensorRT is installed, "
                "-DTOKENPOSE_WITH_TENSORRT=ON)");
#endif
  }
  (void)options;
  throw Error(path + ": unknown model file type '" + ext + "'; expected .pt2 (AOTInductor) or .engine (TensorRT)");
}

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
#ifdef TOKENPOSE_WITH_AOTI
  out.push_back("aoti");
#endif
#ifdef TOKENPOSE_WITH_TENSORRT
  out.push_back("tensorrt");
#endif
  return out;
}

}  // namespace tokenpose
