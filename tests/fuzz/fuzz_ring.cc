// fuzz_ring.cc — libFuzzer target: the replies the host takes from a worker's reply log's ring
// (reply_log.h, takeRingReply), whose every byte the worker could have written.
//
// The input's first 16 bytes are the ring's head and tail (wire.capnp, "The reply log"), the
// rest its words from its start. The host takes replies until the ring is empty or refuses a
// record, and reads each as it reads a reply from the channel (Received, then decodeChunkDone).
// Whatever the bytes, nothing may crash, and the tail may never pass the head.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

#include <capnp/common.h>
#include <kj/exception.h>

#include "decode.h"
#include "framing.h"
#include "plugpool/codec.h"
#include "reply_log.h"
#include "shared_memory.h"
#include "wire.capnp.h"

namespace {

using namespace plugpool::detail;

constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 16;
constexpr std::size_t ENDS_BYTES = 2 * sizeof(std::uint64_t);

void require(bool condition) {
  if (!condition) std::abort();
}

// One log for the whole run; each input first zeroes what the one before wrote.
struct Log {
  std::shared_ptr<SharedRegion> region =
      SharedRegion::create(REPLY_LOG_BYTES, true, "plugpool-log");
  kj::ArrayPtr<capnp::word> ring = region->words(
      region->capacityWords() / 2, region->capacityWords() - region->capacityWords() / 2);
  std::size_t dirty = 0;
};

// Reads a taken reply as the host does; a malformed one is refused, never a crash.
void readReply(kj::Array<capnp::word> frame) {
  try {
    Received received(std::move(frame));
    auto message = received.reader().getRoot<plugpool::wire::WorkerMessage>();
    if (!message.isChunkDone()) return;
    auto done = message.getChunkDone();
    const auto items = plugpool::codec::readTupleList(done.getResults()).size();
    ChunkOutcome outcome = decodeChunkDone(done, done.getId(), items);
    for (unsigned i = 0; i < outcome.results.size(); ++i) {
      static_cast<void>(outcome.results[i].totalSize());
    }
  } catch (const ProtocolViolation&) {
  } catch (const plugpool::DecodeError&) {
  } catch (const kj::Exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* input, std::size_t size) {
  static Log log;
  std::uint64_t ends[2] = {};
  std::memcpy(ends, input, std::min(size, ENDS_BYTES));
  auto* ring = reinterpret_cast<std::uint8_t*>(log.ring.begin());
  std::memset(ring, 0, log.dirty);
  const std::size_t body = size > ENDS_BYTES ? size - ENDS_BYTES : 0;
  log.dirty = std::min(body, log.ring.size() * sizeof(capnp::word));
  std::memcpy(ring, input + ENDS_BYTES, log.dirty);
  log.region->headerWord(LOG_HEAD).store(ends[0]);
  log.region->headerWord(LOG_TAIL).store(ends[1]);
  for (int taken = 0; taken < 64; ++taken) {
    std::optional<kj::Array<capnp::word>> frame;
    try {
      frame = takeRingReply(*log.region, MAX_WORDS);
    } catch (const ProtocolViolation&) {
      break;
    }
    if (!frame) break;
    readReply(std::move(*frame));
  }
  const std::uint64_t tail = log.region->headerWord(LOG_TAIL).load();
  require(tail - ends[1] <= ends[0] - ends[1] || ends[0] - ends[1] > log.ring.size());
  return 0;
}
