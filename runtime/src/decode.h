// decode.h — every check applied to a peer's message, in one place. Internal.
//
// The host treats each worker message as untrusted, and the worker each host message. These
// functions are those checks, free of I/O and of process state, so that the pool and the
// fuzz targets (tests/fuzz/) run exactly the same code. Each takes a message already framed by
// FrameReader (which capped its size) and read with readerOptions() (which caps traversal and
// nesting), and either returns what the message says, or throws ProtocolViolation saying,
// for a human, what the peer did wrong ("answered chunk 7 but chunk 6 was next"). Cap'n
// Proto's own exceptions for a malformed message (bad pointers, traversal limit) are turned
// into ProtocolViolation too. Some Cap'n Proto checks are lazy — they fire in getters — so a
// caller that reads further than these functions (the typed result decoding of pool.h) must
// still expect kj::Exception and plugpool::DecodeError.
//
// Thread-safe: the functions keep no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include "crash_handler.h"
#include "framing.h"
#include "plugpool/detail/call.h"
#include "plugpool/errors.h"
#include "plugpool/manifest.h"
#include "wire.capnp.h"

namespace plugpool::detail {

// The first message each way (Setup, Hello) carries names and manifests, never task data:
// until it has arrived, a peer may send no more than this (8 MiB), whatever maxMessageBytes
// allows later.
inline constexpr std::uint64_t FIRST_MESSAGE_MAX_WORDS = std::uint64_t{1} << 20;

// --- what the host reads from a worker ------------------------------------------------------

// A worker's Hello, checked. Exactly one of `plugins` (every plugin loaded, one manifest per
// plugin asked for, in order) and `loadError` (why a plugin could not be used) is set.
// `sharedMemory`: the worker mapped the regions Setup offered.
struct HelloContent {
  std::vector<PluginInfo> plugins;
  std::string loadError;
  bool sharedMemory = false;
  bool replyLog = false;  // and the reply log (reply_log.h)
};

// Checks the protocol version, that a manifest came for each of the `expectedPlugins` plugins
// and that task names are unique within each plugin.
HelloContent decodeHello(wire::Hello::Reader hello, std::size_t expectedPlugins);

// A ChunkDone that must answer the chunk `id` of `items` items: results is a list of exactly
// `items` tuple structs, errors name strictly increasing indices below `items`. Fills
// results, errors and elapsedNs of the outcome; the caller sets keepAlive.
ChunkOutcome decodeChunkDone(wire::ChunkDone::Reader done, std::uint64_t id, std::size_t items);
// The same for a ChunkDone half built in a dead worker's reply log (wire.capnp, "The reply
// log"): of its `items` results only the first `finished` count, and only the first `errors`
// elements of its errors list, whose indices must lie below `finished`.
ChunkOutcome decodePartialChunkDone(wire::ChunkDone::Reader done, std::uint64_t id,
                                    std::size_t items, std::size_t finished, std::size_t errors);

// A worker's Crash (wire.capnp), as text for a human: at most CRASH_MAX_FRAMES frames, each
// text cut to CRASH_MAX_TEXT bytes with control characters replaced by '?', C++ names
// demangled. Nothing in it is trusted further: runId and item only name a call if they match
// what the host sent.
struct CrashContent {
  std::uint64_t runId = 0;
  std::uint32_t item = 0;
  int signal = 0;
  std::uint64_t address = 0;
  std::vector<StackFrame> frames;
};
CrashContent decodeCrash(wire::Crash::Reader crash);

// --- what a worker reads from the host --------------------------------------------------------

// The first message of a conversation: a Setup of this protocol version.
wire::Setup::Reader decodeSetup(wire::HostMessage::Reader message);

struct RunRequest {
  std::uint64_t id;
  unsigned plugin, task;                        // valid indices (checked)
  capnp::List<capnp::AnyStruct>::Reader items;  // one argument tuple per call
  bool itemStartTimes = false;                  // the host times each item (reply_log.h)
};

// Every later message: a Run naming one of the loaded plugins (`taskCounts[p]` tasks in
// plugin p) and a list of argument tuple structs. The tuples' contents are the plugin's to
// check (its SDK decodes them and reports a failure per item).
RunRequest decodeRun(wire::HostMessage::Reader message, std::span<const unsigned> taskCounts);

}  // namespace plugpool::detail
