// TensorRT back-end (TensorRT 10+ C++ API: named I/O tensors, setInputShape, enqueueV3).
// Compiled only where CMake finds TensorRT and CUDA (e.g. NVIDIA's TensorRT container); an engine
// runs only with the TensorRT version and GPU it was built for, which tokenpose-export records in
// the manifest beside it.
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
