// The manifest's SHA-256 through OpenSSL (libcrypto's EVP digest), not a hand-written hash.
#include "tokenpose/sha256.hpp"

#include <cstdio>
#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "tokenpose/types.hpp"

namespace tokenpose {

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw Error("cannot open '" + path + "' to compute its sha256");
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw Error("OpenSSL cannot start a sha256 digest for '" + path + "'");
  std::vector<unsigned char> chunk(size_t(1) << 20);
  size_t got = 0;
  while ((got = std::fread(chunk.data(), 1, chunk.size(), f.get())) > 0) {
    if (EVP_DigestUpdate(ctx.get(), chunk.data(), got) != 1)
      throw Error("OpenSSL failed while hashing '" + path + "'");
  }
  if (std::ferror(f.get())) throw Error("failed while reading '" + path + "' to compute its sha256");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &size) != 1)
    throw Error("OpenSSL cannot finish the sha256 digest of '" + path + "'");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

}  // namespace tokenpose
