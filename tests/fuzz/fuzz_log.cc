// fuzz_log.cc — libFuzzer target: what the host reads from a dead worker's reply log
// (reply_log.h, readPartial), whose every byte that worker could have written.
//
// The input's first 48 bytes are the log's header words 1 to 6 (run, items, running, errors,
// started, words: wire.capnp, "The reply log"), the rest its data from the start (at most the
// log's size). The host asks for the run and the item count the header names (the low 32
// bits of its `items` word: a count that does not fit is a run of another size), so that most
// inputs get past the header to the message; the high half of the `running` word, which the
// worker never writes, stands for the crash report: 0 none, else it named item (that - 1).
// Whatever the bytes, readPartial must not crash, and what it returns must hold up: finished
// <= running <= items, the errors in increasing order and below `finished`, and every other
// result below `finished` wholly readable.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

#include <capnp/common.h>
#include <kj/exception.h>

#include "reply_log.h"
#include "shared_memory.h"

namespace {

using namespace plugpool::detail;

// The host's default maxMessageBytes is far larger; a fuzz input is at most 64 KiB anyway.
constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 16;
constexpr std::size_t HEADER_BYTES = 6 * sizeof(std::uint64_t);  // words 1 to 6

void require(bool condition) {
  if (!condition) std::abort();
}

std::uint64_t wordAt(const std::uint8_t* bytes, std::size_t i) {
  std::uint64_t word = 0;
  std::memcpy(&word, bytes + i * sizeof word, sizeof word);
  return word;
}

// One log for the whole run (a memfd per input would cost more than readPartial); each input
// first zeroes what the one before wrote, so that every input sees only its own bytes.
struct Log {
  std::shared_ptr<SharedRegion> region =
      SharedRegion::create(REPLY_LOG_BYTES, true, "plugpool-log");
  kj::ArrayPtr<capnp::word> data = region->words(0, region->capacityWords());
  std::size_t dirty = 0;  // bytes of data the last input wrote
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* input, std::size_t size) {
  static Log log;
  std::uint8_t header[HEADER_BYTES] = {};
  std::memcpy(header, input, std::min(size, HEADER_BYTES));
  for (std::size_t i = 0; i < 6; ++i) {
    log.region->headerWord(LOG_RUN + i).store(wordAt(header, i), std::memory_order_release);
  }
  auto* data = reinterpret_cast<std::uint8_t*>(log.data.begin());
  std::memset(data, 0, log.dirty);
  const std::size_t body = size > HEADER_BYTES ? size - HEADER_BYTES : 0;
  log.dirty = std::min(body, log.data.size() * sizeof(capnp::word));
  std::memcpy(data, input + HEADER_BYTES, log.dirty);

  const std::uint64_t run = wordAt(header, LOG_RUN - 1);
  const auto items = static_cast<unsigned>(wordAt(header, LOG_ITEMS - 1));
  const auto crashHalf = static_cast<std::uint32_t>(wordAt(header, LOG_RUNNING - 1) >> 32);
  std::optional<std::uint32_t> crashItem;
  if (crashHalf != 0) crashItem = crashHalf - 1;

  const std::optional<PartialReply> partial =
      readPartial(log.region, run, items, MAX_WORDS, crashItem);
  if (!partial) return 0;
  if (!partial->started) {  // it had not begun the run: nothing of it is kept
    require(partial->finished == 0 && partial->running == 0);
    return 0;
  }
  require(partial->finished <= partial->running);
  require(partial->running <= items);
  const ChunkOutcome& outcome = partial->outcome;
  require(!outcome.failure);
  require(outcome.keepAlive != nullptr);
  require(outcome.results.size() >= partial->finished);
  const auto& errors = outcome.errors;
  for (std::size_t k = 0; k < errors.size(); ++k) {
    require(errors[k].index < partial->finished);
    require(k == 0 || errors[k - 1].index < errors[k].index);
  }
  std::size_t e = 0;
  for (unsigned j = 0; j < partial->finished; ++j) {
    while (e < errors.size() && errors[e].index < j) ++e;
    if (e < errors.size() && errors[e].index == j) continue;  // a failed item holds nothing
    try {
      static_cast<void>(outcome.results[j].totalSize());
    } catch (const kj::Exception&) {
      std::abort();  // counted as finished, yet not wholly in the log
    }
  }
  return 0;
}
