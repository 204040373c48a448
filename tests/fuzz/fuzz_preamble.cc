// fuzz_preamble.cc — libFuzzer target: the host's check of what a connection to a remote
// worker's port sends first (tcp.h, PreambleCheck), the only thing a stranger on the network
// can make the host read before it is refused.
//
// The input's first byte seeds how the rest is split into reads (1 to 64 bytes each, as TCP
// may deliver them); the rest is what the connection sends. The check may take only the bytes
// it still needs, must decide once it has the preamble's 44, and must accept exactly the
// preamble of the expected secret: every other input is refused, with a reason.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz_support.h"
#include "tcp.h"

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using plugpool::detail::PreambleCheck;
  if (size == 0) return 0;
  static const plugpool::detail::Secret secret = fuzzing::preambleSecret();
  static const auto valid = plugpool::detail::encodePreamble(secret);
  std::uint32_t split = data[0];
  const std::uint8_t* bytes = data + 1;
  const std::size_t length = size - 1;

  PreambleCheck check(secret);
  std::size_t at = 0;
  while (at < length) {
    split = split * 1103515245u + 12345u;
    const std::size_t piece = std::min<std::size_t>(length - at, 1 + (split >> 16) % 64);
    const std::size_t needed = check.needed();
    const std::size_t took = check.take(bytes + at, piece);
    require(took == std::min(piece, needed));
    if (took == 0) break;  // decided: the rest is the conversation's, or never read
    at += took;
  }
  const std::size_t seen = std::min(length, plugpool::detail::PREAMBLE_BYTES);
  if (seen < plugpool::detail::PREAMBLE_BYTES) {
    require(check.state() == PreambleCheck::State::NEED_MORE);
    require(check.needed() == plugpool::detail::PREAMBLE_BYTES - seen);
    return 0;
  }
  require(check.needed() == 0);
  const bool matches = std::memcmp(bytes, valid.data(), valid.size()) == 0;
  require((check.state() == PreambleCheck::State::ACCEPTED) == matches);
  require(matches ? check.why().empty() : !check.why().empty());
  return 0;
}
