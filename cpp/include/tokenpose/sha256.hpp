// SHA-256 (FIPS 180-4), self-contained: the manifest beside every artifact records the artifact's
// sha256 and loading checks it (DESIGN convention 7) without pulling in a crypto library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace tokenpose {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> digest();  // finishes the hash; call once
  std::string hexdigest();           // lower-case hex of digest(), as Python's hashlib

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

// Lower-case hex sha256 of a file, read in 1 MiB chunks. Throws Error when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace tokenpose
