// fuzz_worker.cc — libFuzzer target: everything a worker does with the bytes a host sends.
//
// A real WorkerSession with the `examples` plugin loaded (as after a valid Setup) takes each
// message of the input as the host's next message: decode.h's checks, then the plugin's SDK
// decoding the argument tuples of every item and calling the task. Whatever the bytes, the
// only outcomes allowed are a ChunkDone or a protocol error that ends the worker; anything
// else (a crash, a sanitizer report, another exception) is a bug. And every ChunkDone the
// worker produces must pass the host's own checks (decodeChunkDone), or the two sides
// disagree about the protocol.
//
// Tasks that sleep or allocate as told (slow_task, sleep_ms, load_table) are not run: they
// are correct, only slow or large by design. The first message is also tried as a Setup,
// decoding it without loading what it names.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "decode.h"
#include "fuzz_support.h"
#include "wire.capnp.h"
#include "worker.h"

namespace {

using namespace plugpool;
using namespace plugpool::detail;

constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 16;
const std::set<std::string> NOT_RUN = {"slow_task", "sleep_ms", "load_table"};

WorkerSession* session = nullptr;  // set up once; lives for the whole run
std::vector<PluginInfo> plugins;
std::vector<unsigned> taskCounts;  // of each plugin, for decodeRun

void checkSetup(capnp::MessageReader& message) {
  try {
    auto setup = decodeSetup(message.getRoot<wire::HostMessage>());
    for (auto path : setup.getPlugins()) static_cast<void>(path.size());
    static_cast<void>(setup.getLimits().getAddressSpaceBytes());
  } catch (const ProtocolViolation&) {
  } catch (const kj::Exception&) {
  }
}

void runMessage(kj::Array<capnp::word> words, bool first) {
  capnp::FlatArrayMessageReader message(words, readerOptions(words.size()));
  if (first) checkSetup(message);
  try {
    RunRequest run = decodeRun(message.getRoot<wire::HostMessage>(), taskCounts);
    if (NOT_RUN.count(plugins[run.plugin].tasks[run.task].name) != 0) return;
    auto reply = session->run(message);
    // What the worker would write, read back as the host reads it.
    auto flat = capnp::messageToFlatArray(*reply);
    Received received(std::move(flat));
    auto root = received.reader().getRoot<wire::WorkerMessage>();
    try {
      decodeChunkDone(root.getChunkDone(), run.id, run.items.size());
    } catch (const ProtocolViolation& e) {
      std::fprintf(stderr, "the host rejects the worker's own reply: %s\n", e.what());
      std::abort();
    }
  } catch (const ProtocolViolation&) {
  } catch (const kj::Exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  capnp::MallocMessageBuilder builder;
  auto setup = builder.initRoot<wire::HostMessage>().initSetup();
  setup.setProtocolVersion(wire::PROTOCOL_VERSION);
  setup.setMaxMessageWords(MAX_WORDS * 16);
  setup.initPlugins(1).set(0, EXAMPLES_PLUGIN);
  auto flat = capnp::messageToFlatArray(builder);
  capnp::FlatArrayMessageReader reader(flat);
  session = new WorkerSession;
  auto hello = session->setUp(reader);
  if (!session->loaded()) {
    std::fprintf(
        stderr, "fuzz_worker: %s\n",
        hello->getRoot<wire::WorkerMessage>().getHello().getLoadError().getMessage().cStr());
    std::abort();
  }
  plugins = session->plugins();
  for (const PluginInfo& p : plugins) taskCounts.push_back(static_cast<unsigned>(p.tasks.size()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  bool first = true;
  fuzzing::forEachMessage(data, size, MAX_WORDS, [&](kj::Array<capnp::word> words) {
    runMessage(std::move(words), first);
    first = false;
  });
  return 0;
}
