// fuzz_support.h — what the fuzz targets share: turning a fuzz input into framed messages,
// and the preamble target's secret.
//
// An input is a byte stream as a peer would write it on the channel. It goes through the
// real FrameReader (size caps, segment-table checks) from a memfd, so framing is fuzzed
// together with decoding.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>

#include <capnp/serialize.h>
#include <kj/array.h>

#include "fd.h"
#include "framing.h"
#include "tcp.h"

namespace fuzzing {

// The secret fuzz_preamble expects; its seeds (fuzz_seeds.cc) carry it.
inline plugpool::detail::Secret preambleSecret() {
  plugpool::detail::Secret secret;
  for (std::size_t i = 0; i < secret.size(); ++i) secret[i] = static_cast<std::uint8_t>(7 * i + 1);
  return secret;
}

// The most messages taken from one input: enough for conversations (Hello, then replies).
inline constexpr int MAX_MESSAGES = 8;

// Calls `handle` with each complete message framed in data[0, size), at most MAX_MESSAGES,
// until the stream ends or breaks the framing (ProtocolViolation: the peer would be dropped).
// With `peer`, frames may place segments in that region, as a peer that agreed to shared
// memory may.
inline void forEachMessage(const std::uint8_t* data, std::size_t size, std::uint64_t maxWords,
                           const std::function<void(kj::Array<capnp::word>)>& handle,
                           std::shared_ptr<plugpool::detail::SharedRegion> peer = nullptr) {
  plugpool::detail::UniqueFd fd(::memfd_create("fuzz-input", MFD_CLOEXEC));
  if (!fd) std::abort();
  for (std::size_t done = 0; done < size;) {
    ssize_t n = ::write(fd.get(), data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) std::abort();
  plugpool::detail::FrameReader reader(maxWords);
  reader.acceptShared(std::move(peer));
  for (int i = 0; i < MAX_MESSAGES; ++i) {
    kj::Array<capnp::word> words;
    try {
      if (reader.read(fd.get(), words) != plugpool::detail::FrameReader::Status::MESSAGE) return;
    } catch (const plugpool::detail::ProtocolViolation&) {
      return;
    }
    handle(std::move(words));
  }
}

}  // namespace fuzzing
