// AOTInductor back-end: a `.pt2` package from `tokenpose-export --aoti` (torch.export +
// aoti_compile_and_package), loaded with libtorch's AOTIModelPackageLoader. The package runs on
// the device it was compiled for (CPU: the exporting machine's instruction set; CUDA: its GPU).
// A CPU package may call the fused attention operator tokenpose::attention: its manifest then names
// the operator library beside it (op_library), which is loaded before the package.
#include <dlfcn.h>

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "backends.hpp"

namespace tokenpose {
namespace {

std::string first_line(const char* what) {
  std::string text(what ? what : "");
  const size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// Load the operator library `name` from the package's folder, unless the process already has the
// operator (a second copy would register the tokenpose namespace twice).
void load_op_library(const std::string& package, const std::string& name) {
  if (c10::Dispatcher::singleton().findSchema({"tokenpose::attention", ""}).has_value()) return;
  const size_t slash = package.find_last_of('/');
  const std::string path = (slash == std::string::npos ? std::string(".") : package.substr(0, slash)) + "/" + name;
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    throw Error(package + ": cannot load the operator library the package calls, " + path + " (" +
                first_line(why) + "); keep it beside the package");
  }
}

class AotiEngine final : public Engine {
 public:
  AotiEngine(const std::string& path, const ModelInfo& info, const EngineOptions& options) : info_(info) {
    if (options.threads > 0) at::set_num_threads(options.threads);
    if (!info_.op_library.empty()) load_op_library(path, info_.op_library);
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
    } catch (const std::exception& exc) {
      throw Error(path + ": cannot load the AOTInductor package (" + first_line(exc.what()) +
                  "); it must be loaded by the libtorch version that compiled it, on a machine with the same "
                  "CPU instruction set / GPU");
    }
    const auto meta = loader_->get_metadata();
    const auto it = meta.find("AOTI_DEVICE_KEY");
    const std::string package_device = it == meta.end() ? "cpu" : it->second;
    if (options.device != "auto" && options.device != package_device)
      throw Error(path + ": the package was compiled for '" + package_device + "', not '" + options.device + "'");
    device_ = c10::Device(package_device);
  }

  std::string backend() const override { return "aoti"; }
  int max_batch() const override { return info_.batch_max; }
  int min_batch() const override { return info_.batch_min; }

  void infer(const float* input, int batch, float* heatmaps) override {
    // The compiled code trusts its bounds: a batch outside the exported range must not reach it.
    if (batch < info_.batch_min || (info_.batch_max > 0 && batch > info_.batch_max))
      throw Error("batch " + std::to_string(batch) + " is outside the package's batch range " +
                  std::to_string(info_.batch_min) + ".." + std::to_string(info_.batch_max));
    c10::InferenceMode guard;
    try {
      at::Tensor x = at::from_blob(const_cast<float*>(input), {batch, 3, info_.input_h, info_.input_w},
                                   at::TensorOptions().dtype(at::kFloat));
      if (!device_.is_cpu()) x = x.to(device_);
      std::vector<at::Tensor> outputs = loader_->run({x});
      if (outputs.size() != 1) throw Error("the AOTInductor package returned " + std::to_string(outputs.size()) +
                                           " outputs, expected 1 (heatmaps)");
      at::Tensor y = outputs[0].to(at::kCPU, at::kFloat).contiguous();
      const std::vector<int64_t> want{batch, info_.num_joints, info_.heatmap_h, info_.heatmap_w};
      if (y.sizes().vec() != want) {
        std::ostringstream msg;
        msg << "the AOTInductor package returned heatmaps of shape " << y.sizes() << ", expected [" << batch << ", "
            << info_.num_joints << ", " << info_.heatmap_h << ", " << info_.heatmap_w << "]: mismatched manifest";
        throw Error(msg.str());
      }
      std::memcpy(heatmaps, y.data_ptr<float>(), sizeof(float) * size_t(y.numel()));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& exc) {  // c10::Error and friends carry multi-line C++ traces
      throw Error("AOTInductor inference failed: " + first_line(exc.what()));
    }
  }

 private:
  ModelInfo info_;
  c10::Device device_{c10::kCPU};
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace

std::unique_ptr<Engine> make_aoti_engine(const std::string& path, const ModelInfo& info, const EngineOptions& options) {
  return std::make_unique<AotiEngine>(path, info, options);
}

}  // namespace tokenpose
