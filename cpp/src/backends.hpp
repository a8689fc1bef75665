// Factories of the back-ends compiled into this build (internal to the library).
#pragma once

#include <memory>
#include <string>

#include "tokenpose/engine.hpp"

namespace tokenpose {

#ifdef TOKENPOSE_WITH_AOTI
std::unique_ptr<Engine> make_aoti_engine(const std::string& path, const ModelInfo& info, const EngineOptions& options);
#endif
#ifdef TOKENPOSE_WITH_TENSORRT
std::unique_ptr<Engine> make_tensorrt_engine(const std::string& path, const ModelInfo& info,
                                             const EngineOptions& options);
#endif

}  // namespace tokenpose
