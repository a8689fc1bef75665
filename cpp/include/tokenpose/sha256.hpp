// SHA-256 of a file through OpenSSL's EVP digest API: the manifest beside every artifact records the
// artifact's sha256 and loading checks it (DESIGN convention 7).
#pragma once

#include <string>

namespace tokenpose {

// Lower-case hex sha256 of a file (as Python's hashlib / sha256sum), read in 1 MiB chunks.
// Throws Error naming the file when it cannot be read or OpenSSL fails.
std::string sha256_file(const std::string& path);

}  // namespace tokenpose
