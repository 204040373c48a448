#include "decode.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include <kj/exception.h>

#include "plugin_loader.h"
#include "plugpool/codec.h"

namespace plugpool::detail {

namespace {

// Runs `read`, turning Cap'n Proto's and the codec's exceptions about malformed data into
// ProtocolViolation.
template <typename F>
auto checked(F&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const kj::Exception& e) {
    throw ProtocolViolation(std::string("sent a malformed message: ") + e.getDescription().cStr());
  } catch (const DecodeError& e) {
    throw ProtocolViolation(std::string("sent a malformed message: ") + e.what());
  }
}

PluginInfo toPluginInfo(wire::PluginManifest::Reader m) {
  PluginInfo info{m.getName(), m.getPath(), m.getAbiVersion(), {}, {}};
  std::set<std::string> names;
  for (auto t : m.getTasks()) {
    TaskInfo task{t.getName(), t.getDoc(), {}, t.getResultType()};
    for (auto a : t.getArgTypes()) task.argTypes.emplace_back(a);
    if (!names.insert(task.name).second) {
      throw ProtocolViolation("sent a manifest of " + info.name + " naming task " + task.name +
                              " twice");
    }
    info.tasks.push_back(std::move(task));
  }
  // Copied as they are: whoever loads them (plugpool/dynamic.h) validates them.
  for (auto node : m.getSchemaNodes()) info.schemaNodes.push_back(encodeSchemaNode(node));
  return info;
}

// At most CRASH_MAX_TEXT bytes of `text`, printable: control characters become '?'.
std::string printable(capnp::Text::Reader text) {
  std::string out(text.begin(), std::min<std::size_t>(text.size(), CRASH_MAX_TEXT));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return out;
}

// The demangled form of a C++ linkage name; other names as they are.
std::string demangled(std::string name) {
  if (!name.starts_with("_Z")) return name;
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> plain(
      ::abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), &std::free);
  return status == 0 && plain ? std::string(plain.get()) : name;
}

}  // namespace

CrashContent decodeCrash(wire::Crash::Reader crash) {
  return checked([&] {
    CrashContent content;
    content.runId = crash.getRunId();
    content.item = crash.getItem();
    content.signal = crash.getSignal();
    content.address = crash.getAddress();
    for (auto f : crash.getFrames()) {
      if (content.frames.size() == CRASH_MAX_FRAMES) break;
      content.frames.push_back(
          {demangled(printable(f.getFunction())), printable(f.getFile()), f.getLine(), f.getPc()});
    }
    return content;
  });
}

HelloContent decodeHello(wire::Hello::Reader hello, std::size_t expectedPlugins) {
  return checked([&] {
    if (hello.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw ProtocolViolation("speaks protocol version " +
                              std::to_string(hello.getProtocolVersion()));
    }
    HelloContent content;
    content.sharedMemory = hello.getSharedMemory();
    content.replyLog = content.sharedMemory && hello.getReplyLog();
    if (hello.isLoadError()) {
      content.loadError = hello.getLoadError().getMessage().cStr();
      if (content.loadError.empty()) content.loadError = "a plugin could not be loaded";
      return content;
    }
    auto plugins = hello.getPlugins();
    if (plugins.size() != expectedPlugins) {
      throw ProtocolViolation("sent manifests of " + std::to_string(plugins.size()) +
                              " plugins for " + std::to_string(expectedPlugins));
    }
    for (auto m : plugins) content.plugins.push_back(toPluginInfo(m));
    return content;
  });
}

namespace {

// A ChunkDone's first `finished` results (of `items`) and its first `errors` errors.
ChunkOutcome decodeReply(wire::ChunkDone::Reader done, std::uint64_t id, std::size_t items,
                         std::size_t finished, std::size_t errors) {
  return checked([&] {
    if (done.getId() != id) {
      throw ProtocolViolation("answered chunk " + std::to_string(done.getId()) + " but chunk " +
                              std::to_string(id) + " was next");
    }
    ChunkOutcome outcome;
    try {
      outcome.results = codec::readTupleList(done.getResults());
    } catch (const DecodeError& e) {
      throw ProtocolViolation(std::string("sent results that are not ") + e.what());
    }
    if (outcome.results.size() != items) {
      throw ProtocolViolation("sent " + std::to_string(outcome.results.size()) + " results for " +
                              std::to_string(items) + " items");
    }
    auto list = done.getErrors();
    if (errors > list.size()) throw ProtocolViolation("logged more errors than it wrote");
    long last = -1;
    for (unsigned k = 0; k < errors; ++k) {
      auto e = list[k];
      // A dead worker may have logged the failure of the item it was running: not finished.
      if (finished < items && e.getIndex() >= finished && static_cast<long>(e.getIndex()) > last) {
        break;
      }
      if (static_cast<long>(e.getIndex()) <= last || e.getIndex() >= finished) {
        throw ProtocolViolation("sent an error for an item index out of order or out of range");
      }
      last = e.getIndex();
      outcome.errors.push_back({e.getIndex(), e.getType().cStr(), e.getMessage().cStr(), {}});
    }
    outcome.elapsedNs = done.getElapsedNs();
    return outcome;
  });
}

}  // namespace

ChunkOutcome decodeChunkDone(wire::ChunkDone::Reader done, std::uint64_t id, std::size_t items) {
  return decodeReply(done, id, items, items, done.getErrors().size());
}

ChunkOutcome decodePartialChunkDone(wire::ChunkDone::Reader done, std::uint64_t id,
                                    std::size_t items, std::size_t finished, std::size_t errors) {
  if (finished > items) throw ProtocolViolation("logged more items finished than its chunk has");
  return decodeReply(done, id, items, finished, errors);
}

wire::Setup::Reader decodeSetup(wire::HostMessage::Reader message) {
  return checked([&] {
    if (!message.isSetup()) throw ProtocolViolation("expected Setup first");
    auto setup = message.getSetup();
    if (setup.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw ProtocolViolation("host speaks protocol " + std::to_string(setup.getProtocolVersion()) +
                              ", worker speaks " + std::to_string(wire::PROTOCOL_VERSION));
    }
    if (setup.getMaxMessageWords() == 0) throw ProtocolViolation("Setup allows no messages");
    return setup;
  });
}

RunRequest decodeRun(wire::HostMessage::Reader message, std::span<const unsigned> taskCounts) {
  return checked([&] {
    if (!message.isRun()) throw ProtocolViolation("expected a Run message");
    auto run = message.getRun();
    if (run.getPlugin() >= taskCounts.size()) {
      throw ProtocolViolation("Run names an unknown plugin");
    }
    if (run.getTask() >= taskCounts[run.getPlugin()]) {
      throw ProtocolViolation("Run names an unknown task");
    }
    return RunRequest{run.getId(), run.getPlugin(), run.getTask(),
                      codec::readTupleList(run.getItems()), run.getItemStartTimes()};
  });
}

}  // namespace plugpool::detail
