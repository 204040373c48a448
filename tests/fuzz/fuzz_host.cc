// fuzz_host.cc — libFuzzer target: everything the host does with the bytes a worker sends.
//
// The input's first byte sets up the conversation: its low 7 bits are how many items each
// chunk the host sends has, and bit 7 says whether the worker's bytes start before its Hello
// (set: the stream must begin with one) or after it (clear: a valid Hello has been taken
// already, so the stream can answer chunks at once). The rest is the worker's byte stream.
// Each message is framed by the host's FrameReader and handed to the host's own HostSession
// (host_session.h), the code every LocalLink runs; the conversation ends at the first
// ProtocolViolation, as a link stops its worker there. A reply that passes is then decoded as
// the results of tasks of several types, the way pool.h decodes results for a caller. Whatever
// the bytes, the only outcomes allowed are a result or one of the errors the pool turns into
// ProtocolError; anything else (a crash, a sanitizer report, another exception) is a bug.
// Frames may also place segments in a shared region (wire.capnp "Shared segments"), whose
// contents are the input's bytes.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "decode.h"
#include "fuzz_support.h"
#include "geometry.capnp.h"
#include "host_session.h"
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

// A Hello for one plugin, as the session expects after Setup.
std::shared_ptr<Received> validHello() {
  capnp::MallocMessageBuilder builder;
  auto hello = builder.initRoot<wire::WorkerMessage>().initHello();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setSharedMemory(true);
  auto plugin = hello.initPlugins(1)[0];
  plugin.setName("fuzz");
  plugin.setPath("/fuzz.so");
  return std::make_shared<Received>(capnp::messageToFlatArray(builder));
}

// Numbers one more chunk of `items` items, as a link does when it sends a Run.
void sendChunk(HostSession& session, unsigned items) {
  capnp::MallocMessageBuilder run;
  run.initRoot<wire::HostMessage>().initRun();
  session.number(run, items, HostSession::RunKind::CHUNK);
}

// Returns false once the conversation is over (the session found a violation).
bool handleMessage(HostSession& session, kj::Array<capnp::word> words, unsigned items) {
  try {
    auto in = session.receive(std::make_shared<Received>(std::move(words), workerRegion()));
    switch (in.kind) {
      case HostSession::Incoming::HELLO:
        for (const PluginInfo& plugin : in.hello.plugins) {
          for (const TaskInfo& task : plugin.tasks) static_cast<void>(task.signature());
        }
        sendChunk(session, items);
        return true;
      case HostSession::Incoming::REPLY:
      case HostSession::Incoming::INITIALIZED:
        decodeResults(in.outcome);
        sendChunk(session, items);
        return true;
      case HostSession::Incoming::CRASH: {
        // As the scheduler reports it: the frames become a WorkerCrashed and its text.
        std::optional<std::uint64_t> item;
        if (in.crashItem) item = *in.crashItem;
        WorkerCrashed error(1, in.crash.signal, -1, "p", "t", item, std::move(in.crash.frames));
        static_cast<void>(error.stackTrace().size() + std::string_view(error.what()).size());
        return true;
      }
      case HostSession::Incoming::WAKE:
        return true;
    }
  } catch (const ProtocolViolation&) {
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const unsigned items = data[0] & 0x7f;
  const bool beforeHello = (data[0] & 0x80) != 0;
  // The host maps the region read-only; write the contents through the descriptor.
  if (::pwrite(workerRegion()->fd(), data, std::min(size, REGION_BYTES), 4096) < 0) std::abort();
  auto config = std::make_shared<SessionConfig>();
  config->pluginPaths = {"/fuzz.so"};
  config->maxWords = MAX_WORDS;
  HostSession session(config);
  static_cast<void>(session.setup(true));
  if (!beforeHello) {
    session.receive(validHello());
    sendChunk(session, items);
  }
  bool going = true;
  fuzzing::forEachMessage(
      data + 1, size - 1, MAX_WORDS,
      [&](kj::Array<capnp::word> words) {
        if (going) going = handleMessage(session, std::move(words), items);
      },
      workerRegion());
  return 0;
}
