// fuzz_host.cc — libFuzzer target: everything the host does with the bytes a worker sends.
//
// The input's first byte is how many items the chunk being answered has (the host knows it;
// the fuzzer chooses it); the rest is the worker's byte stream. Each message is framed by the
// host's FrameReader, read with the host's reader limits and checked by decode.h exactly as
// Core does. A ChunkDone that passes is then decoded as the results of tasks of several
// types, the way pool.h decodes results for a caller. Whatever the bytes, the only outcomes
// allowed are a result or one of the errors the pool turns into ProtocolError; anything else
// (a crash, a sanitizer report, another exception) is a bug. Frames may also place segments
// in a shared region (wire.capnp "Shared segments"), whose contents are the input's bytes.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <capnp/message.h>
#include <kj/exception.h>

#include "decode.h"
#include "fuzz_support.h"
#include "geometry.capnp.h"
#include "plugpool/codec.h"
#include "wire.capnp.h"

namespace {

using namespace plugpool;
using namespace plugpool::detail;

// The host's default maxMessageBytes is far larger; a fuzz input is at most 64 KiB anyway.
constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 16;
constexpr std::size_t REGION_BYTES = std::size_t{64} << 10;

// Decodes result i as a task of result type W would: DecodeError and kj::Exception are what
// pool.h's decodeResult turns into ProtocolError.
template <typename W>
void decodeAs(const ChunkOutcome& outcome, unsigned i) {
  try {
    auto value = std::get<0>(codec::readTuple<W>(outcome.results[i]));
    static_cast<void>(value);
  } catch (const DecodeError&) {
  } catch (const kj::Exception&) {
  }
}

// Reads scalar results as one array of words, as pool.h's decodeResults does when
// codec::packedWords finds them laid out as a worker makes them.
template <typename W>
void decodePacked(const ChunkOutcome& outcome) {
  const capnp::byte* words = codec::packedWords(outcome.results, 1);
  if (words == nullptr) return;
  for (unsigned i = 0; i < outcome.results.size(); ++i) {
    auto value = std::get<0>(codec::readWords<W>(words + i * 8));
    static_cast<void>(value);
  }
}

void decodeResults(const ChunkOutcome& outcome) {
  decodePacked<std::int64_t>(outcome);
  decodePacked<bool>(outcome);
  decodePacked<double>(outcome);
  for (unsigned i = 0; i < outcome.results.size(); ++i) {
    decodeAs<std::int64_t>(outcome, i);
    decodeAs<double>(outcome, i);
    decodeAs<bool>(outcome, i);
    decodeAs<std::string>(outcome, i);
    decodeAs<Bytes>(outcome, i);
    decodeAs<std::vector<std::int64_t>>(outcome, i);
    decodeAs<std::vector<std::string>>(outcome, i);
    decodeAs<std::vector<std::vector<double>>>(outcome, i);
    decodeAs<std::map<std::string, std::int64_t>>(outcome, i);
    decodeAs<std::tuple<double, double>>(outcome, i);
    decodeAs<std::tuple<std::string, std::int64_t, Bytes>>(outcome, i);
    try {
      auto stats = std::get<0>(codec::readTuple<geometry::PolygonStats>(outcome.results[i]));
      auto reader = stats.get();
      static_cast<void>(reader.getName().size() + reader.getVertices() + reader.getArea() +
                        reader.getCentroid().getX());
    } catch (const DecodeError&) {
    } catch (const kj::Exception&) {
    }
  }
}

// The worker's shared region as the host maps it. Each input's bytes are also its contents, so
// frames that point into it find data the fuzzer chose.
const std::shared_ptr<SharedRegion>& workerRegion() {
  static const auto region = SharedRegion::create(REGION_BYTES, false);
  return region;
}

void handleMessage(kj::Array<capnp::word> words, std::size_t items) {
  try {
    Received received(std::move(words), workerRegion());
    auto root = received.reader().getRoot<wire::WorkerMessage>();
    switch (root.which()) {
      case wire::WorkerMessage::HELLO: {
        HelloContent hello = decodeHello(root.getHello(), 1);
        for (const PluginInfo& plugin : hello.plugins) {
          for (const TaskInfo& task : plugin.tasks) static_cast<void>(task.signature());
        }
        return;
      }
      case wire::WorkerMessage::CHUNK_DONE: {
        auto done = root.getChunkDone();
        decodeResults(decodeChunkDone(done, done.getId(), items));
        return;
      }
      case wire::WorkerMessage::CRASH: {
        // As Core reports it: the frames become a WorkerCrashed and its text.
        CrashContent crash = decodeCrash(root.getCrash());
        WorkerCrashed error(1, crash.signal, -1, "p", "t", crash.item, std::move(crash.frames));
        static_cast<void>(error.stackTrace().size() + std::string_view(error.what()).size());
        return;
      }
    }
  } catch (const ProtocolViolation&) {
  } catch (const kj::Exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t items = data[0];
  // The host maps the region read-only; write the contents through the descriptor.
  if (::pwrite(workerRegion()->fd(), data, std::min(size, REGION_BYTES), 4096) < 0) std::abort();
  fuzzing::forEachMessage(
      data + 1, size - 1, MAX_WORDS,
      [&](kj::Array<capnp::word> words) { handleMessage(std::move(words), items); },
      workerRegion());
  return 0;
}
