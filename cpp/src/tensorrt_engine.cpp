// TensorRT back-end (TensorRT 10+ C++ API: named I/O tensors, setInputShape, enqueueV3).
// Compiled only where CMake finds TensorRT and CUDA (e.g. NVIDIA's TensorRT container); an engine
// runs only with the TensorRT version and GPU it was built for, which tokenpose-export records in
// the manifest beside it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "backends.hpp"

#if defined(NV_TENSORRT_MAJOR) && NV_TENSORRT_MAJOR < 10
#error "the tokenpose TensorRT back-end needs TensorRT 10 or newer (named tensors, enqueueV3)"
#endif

namespace tokenpose {
namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

struct CudaFree {
  void operator()(void* p) const noexcept { cudaFree(p); }
};
struct StreamDestroy {
  void operator()(CUstream_st* s) const noexcept { cudaStreamDestroy(s); }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

DeviceBuffer device_buffer(size_t bytes, const char* what) {
  void* p = nullptr;
  cuda_check(cudaMalloc(&p, bytes), what);
  return DeviceBuffer(p);
}

// This process's TensorRT library as {major, minor, patch, build}. getInferLibVersion() is
// (major * 100 + minor) * 100 + patch (TensorRT 10 and later).
std::vector<int> tensorrt_runtime_version() {
  const int32_t v = getInferLibVersion();
  return {int(v / 10000), int(v / 100 % 100), int(v % 100), int(getInferLibBuildVersion())};
}

std::string version_text(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "." : "") + std::to_string(v[i]);
  return s;
}

// Whether the manifest's version (Python's tensorrt.__version__: "10.7.0.23", "10.7.0",
// "10.7.0.post1") names this runtime: its leading numeric components, up to four, must match.
bool same_tensorrt_version(const std::string& built, const std::vector<int>& now) {
  size_t pos = 0, matched = 0;
  while (matched < now.size() && pos < built.size()) {
    const size_t end = std::min(built.find('.', pos), built.size());
    const std::string part = built.substr(pos, end - pos);
    if (part.empty() || part.size() > 9 || part.find_first_not_of("0123456789") != std::string::npos) break;
    if (std::stoi(part) != now[matched]) return false;
    ++matched;
    pos = end + 1;
  }
  return matched > 0;
}

// The manifest's TensorRT version and GPU against this machine's (DESIGN convention 7): an engine
// only deserializes with the TensorRT version and GPU it was built for, and when it does not, this
// says why instead of TensorRT's generic deserialization error.
void check_runtime(const std::string& path, const ModelInfo& info) {
  const std::vector<int> runtime = tensorrt_runtime_version();
  const std::string now = version_text(runtime);
  if (info.tensorrt_version.empty())
    throw Error(path + ": its manifest records no TensorRT version (versions.tensorrt); this machine has TensorRT " +
                now + ": re-export the engine");
  if (!same_tensorrt_version(info.tensorrt_version, runtime))
    throw Error(path + " was built with TensorRT " + info.tensorrt_version + " but this machine has TensorRT " + now +
                ": rebuild the engine");
  int device = 0;
  cudaDeviceProp props{};
  if (info.gpu.empty() || cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&props, device) != cudaSuccess)
    return;  // as the Python loader: the GPU is compared when both names are known
  const std::string gpu(props.name);
  if (gpu != info.gpu)
    throw Error(path + " was built for GPU '" + info.gpu + "' but this machine has '" + gpu + "': rebuild the engine");
}

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + "]";
}

class TensorRTEngine final : public Engine {
 public:
  TensorRTEngine(const std::string& path, const ModelInfo& info, const EngineOptions& options) : info_(info) {
    if (options.device == "cpu") throw Error(path + ": TensorRT engines run on a CUDA GPU; --device cpu is not possible");
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      throw Error(path + ": no CUDA device is available to run the TensorRT engine");
    check_runtime(path, info_);

    std::ifstream file(path, std::ios::binary);
    std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (blob.empty()) throw Error(path + ": cannot read the engine file (empty or unreadable)");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("cannot create the TensorRT runtime");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      throw Error(path + ": TensorRT cannot deserialize the engine; it was built with another TensorRT version or "
                  "for another GPU (the manifest says which): rebuild it with tokenpose-export on this machine");

    const char* in = info_.input_name.c_str();
    const char* out = info_.output_name.c_str();
    if (engine_->getTensorIOMode(in) != nvinfer1::TensorIOMode::kINPUT)
      throw Error(path + ": the engine has no input tensor '" + info_.input_name + "': mismatched manifest");
    if (engine_->getTensorIOMode(out) != nvinfer1::TensorIOMode::kOUTPUT)
      throw Error(path + ": the engine has no output tensor '" + info_.output_name + "': mismatched manifest");
    if (engine_->getTensorDataType(in) != nvinfer1::DataType::kFLOAT ||
        engine_->getTensorDataType(out) != nvinfer1::DataType::kFLOAT)
      throw Error(path + ": the engine's input/output must be float32 (FP16/INT8 engines keep float32 I/O)");

    const nvinfer1::Dims shape = engine_->getTensorShape(in);
    if (shape.nbDims != 4 || shape.d[1] != 3 || shape.d[2] != info_.input_h || shape.d[3] != info_.input_w)
      throw Error(path + ": engine input shape " + dims_text(shape) + " does not match the manifest's [B, 3, " +
                  std::to_string(info_.input_h) + ", " + std::to_string(info_.input_w) + "]");
    if (shape.d[0] >= 0) {  // static batch
      min_batch_ = max_batch_ = int(shape.d[0]);
    } else {  // dynamic batch: optimisation profile 0
      min_batch_ = int(engine_->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMIN).d[0]);
      max_batch_ = int(engine_->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMAX).d[0]);
    }
    if (max_batch_ < 1) throw Error(path + ": the engine reports no usable batch size");

    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error(path + ": cannot create a TensorRT execution context (out of GPU memory?)");
    cudaStream_t stream = nullptr;
    cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
    stream_.reset(stream);
    in_count_ = size_t(3) * info_.input_h * info_.input_w;
    out_count_ = size_t(info_.num_joints) * info_.heatmap_h * info_.heatmap_w;
    d_input_ = device_buffer(sizeof(float) * in_count_ * max_batch_, "cudaMalloc(input)");
    d_output_ = device_buffer(sizeof(float) * out_count_ * max_batch_, "cudaMalloc(output)");
    if (!context_->setTensorAddress(in, d_input_.get()) || !context_->setTensorAddress(out, d_output_.get()))
      throw Error(path + ": cannot bind the engine's input/output buffers");
  }

  std::string backend() const override { return "tensorrt"; }
  int max_batch() const override { return max_batch_; }
  int min_batch() const override { return min_batch_; }

  void infer(const float* input, int batch, float* heatmaps) override {
    if (batch < min_batch_ || batch > max_batch_)
      throw Error("batch " + std::to_string(batch) + " is outside the engine's profile " + std::to_string(min_batch_) +
                  ".." + std::to_string(max_batch_));
    const char* in = info_.input_name.c_str();
    const char* out = info_.output_name.c_str();
    if (!context_->setInputShape(in, nvinfer1::Dims4{batch, 3, info_.input_h, info_.input_w}))
      throw Error("TensorRT rejected the input shape for batch " + std::to_string(batch));
    const nvinfer1::Dims got = context_->getTensorShape(out);
    if (got.nbDims != 4 || got.d[0] != batch || got.d[1] != info_.num_joints || got.d[2] != info_.heatmap_h ||
        got.d[3] != info_.heatmap_w)
      throw Error("the engine's output shape " + dims_text(got) + " does not match the manifest: mismatched manifest");
    cuda_check(cudaMemcpyAsync(d_input_.get(), input, sizeof(float) * in_count_ * batch, cudaMemcpyHostToDevice,
                               stream_.get()),
               "cudaMemcpyAsync(input)");
    if (!context_->enqueueV3(stream_.get())) throw Error("TensorRT enqueueV3 failed (see the [TensorRT] messages above)");
    cuda_check(cudaMemcpyAsync(heatmaps, d_output_.get(), sizeof(float) * out_count_ * batch, cudaMemcpyDeviceToHost,
                               stream_.get()),
               "cudaMemcpyAsync(output)");
    cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }

 private:
  ModelInfo info_;
  Logger logger_;
  // Members are destroyed in reverse order: buffers and stream, then context, engine, runtime
  // (TensorRT 10 objects are released with plain delete).
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::unique_ptr<CUstream_st, StreamDestroy> stream_;
  DeviceBuffer d_input_, d_output_;
  size_t in_count_ = 0, out_count_ = 0;
  int min_batch_ = 1, max_batch_ = 0;
};

}  // namespace

std::unique_ptr<Engine> make_tensorrt_engine(const std::string& path, const ModelInfo& info,
                                             const EngineOptions& options) {
  return std::make_unique<TensorRTEngine>(path, info, options);
}

}  // namespace tokenpose
