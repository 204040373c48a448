// The benchmark plugin: the tasks plugpool-bench runs, each the twin of a function in
// bench/python_pools.py so both pools do the same work per item. Kept apart from the
// `examples` plugin so benchmark needs never reshape the examples.
#include <openssl/evp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>

#include <plugpool/sdk.h>

namespace {

// Python: square(x) -> x * x.
std::int64_t square(std::int64_t x) {
  return x * x;
}

// Python: noop() -> None. The smallest call there is: no arguments, a one-word result.
bool noop() {
  return true;
}

// Python: echo(b) -> b. Its bytes back, unchanged: like Python's, it returns what it was
// given without copying it (the view is valid while the result is encoded).
std::span<const std::byte> echo(std::span<const std::byte> data) {
  return data;
}

// SHA-256 from OpenSSL's libcrypto, the library behind Python's hashlib.sha256 on Debian.
// The algorithm is fetched once per process (fetching per call would dominate 32-byte hashes).
const EVP_MD* sha256Algorithm() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (md == nullptr) throw std::runtime_error("libcrypto has no SHA256");
  return md;
}

// Python: sha256_chain(seed, rounds). h = the seed's 8 bytes (little-endian two's complement);
// `rounds` times h = SHA-256(h); returns h's first 8 bytes read the same way. rounds >= 1.
std::int64_t sha256_chain(std::int64_t seed, std::int64_t rounds) {
  if (rounds < 1) throw std::invalid_argument("sha256_chain needs at least one round");
  const EVP_MD* md = sha256Algorithm();
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx) throw std::bad_alloc();
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  std::memcpy(digest.data(), &seed, sizeof seed);  // little-endian host (codec.h asserts it)
  unsigned size = sizeof seed;
  for (std::int64_t r = 0; r < rounds; ++r) {
    if (EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), digest.data(), size) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), digest.data(), &size) != 1) {
      throw std::runtime_error("libcrypto SHA-256 failed");
    }
  }
  std::int64_t out;
  std::memcpy(&out, digest.data(), sizeof out);
  return out;
}

}  // namespace

PLUGPOOL_PLUGIN("bench", PLUGPOOL_TASK(square, "Returns x * x."),
                PLUGPOOL_TASK(noop, "Does nothing; returns true."),
                PLUGPOOL_TASK(echo, "Returns its bytes unchanged."),
                PLUGPOOL_TASK(sha256_chain,
                              "SHA-256 applied `rounds` times to the seed's 8 bytes; the first "
                              "8 bytes of the last digest."));
