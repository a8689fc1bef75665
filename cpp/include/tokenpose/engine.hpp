// One interface for every inference back-end: a float batch (B, 3, H, W) of normalised RGB crops
// in, heatmaps (B, J, h, w) out, both float32 in host memory (DESIGN convention 6).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenpose/types.hpp"

namespace tokenpose {

struct EngineOptions {
  std::string device = "auto";  // "auto", "cpu" or "cuda" (the back-end checks what it supports)
  int threads = 0;              // CPU threads for back-ends that use them (0: the library default)
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string backend() const = 0;  // "aoti", "tensorrt"
  virtual int max_batch() const = 0;        // largest batch one call accepts; 0: no limit
  virtual int min_batch() const = 0;        // smallest batch one call accepts (>= 1; TensorRT profile minimum)
  // input: batch x 3 x H x W floats; heatmaps: batch x J x h x w floats, caller-allocated.
  virtual void infer(const float* input, int batch, float* heatmaps) = 0;
};

// Read `<artifact>.json` beside the artifact (the manifest every export writes).
ModelInfo read_model_info(const std::string& artifact_path);

// Check that `path` is the file its manifest describes: the manifest's `artifact` names it and its
// `sha256` matches the file's. Throws Error saying which does not match.
void verify_artifact(const std::string& path, const ModelInfo& info);

// Open an artifact with the back-end its suffix names: `.pt2` (AOTInductor, libtorch) or
// `.engine` (TensorRT), after verify_artifact (engines also check the manifest's TensorRT version
// and GPU against this machine's). Throws Error when the file is missing, does not match its
// manifest or this build lacks the back-end.
std::unique_ptr<Engine> load_engine(const std::string& path, const ModelInfo& info,
                                    const EngineOptions& options = {});

// Back-ends compiled into this build, e.g. {"aoti"} or {"aoti", "tensorrt"}.
std::vector<std::string> available_backends();

}  // namespace tokenpose
