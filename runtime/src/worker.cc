#include "worker.h"

#include <sys/resource.h>

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "framing.h"
#include "plugin_loader.h"
#include "plugpool/codec.h"
#include "wire.capnp.h"

namespace plugpool::detail {
namespace {

// Setup is small; before it arrives, nothing larger is accepted.
constexpr std::uint64_t SETUP_MAX_WORDS = std::uint64_t{1} << 20;

struct ItemFailureRecord {
  unsigned index;
  std::string type, message;
};

class Worker {
 public:
  explicit Worker(int fd) : fd_(fd), reader_(SETUP_MAX_WORDS) {}

  int serve() {
    kj::Array<capnp::word> words;
    if (reader_.read(fd_, words) != FrameReader::Status::MESSAGE) return 0;  // host went away
    if (!setUp(words)) return EXIT_LOAD_FAILED;
    for (;;) {
      if (reader_.read(fd_, words) == FrameReader::Status::END) return 0;
      capnp::FlatArrayMessageReader message(words, readerOptions(words.size()));
      auto root = message.getRoot<wire::HostMessage>();
      if (!root.isRun()) throw ProtocolViolation("expected a Run message");
      runChunk(root.getRun());
    }
  }

 private:
  struct Plugin {
    LoadedPlugin loaded;
    PluginInfo info;
  };

  // Reads Setup, loads every plugin and answers Hello. False if a plugin failed.
  bool setUp(kj::Array<capnp::word>& words) {
    capnp::FlatArrayMessageReader message(words, readerOptions(words.size()));
    auto root = message.getRoot<wire::HostMessage>();
    if (!root.isSetup()) throw ProtocolViolation("expected Setup first");
    auto setup = root.getSetup();
    if (setup.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw ProtocolViolation("host speaks protocol " + std::to_string(setup.getProtocolVersion()) +
                              ", worker speaks " + std::to_string(wire::PROTOCOL_VERSION));
    }
    maxWords_ = setup.getMaxMessageWords();
    reader_.setMaxWords(maxWords_);

    capnp::MallocMessageBuilder reply;
    auto hello = reply.initRoot<wire::WorkerMessage>().initHello();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setPid(::getpid());
    std::set<std::string> names;
    std::string failedPath;
    try {
      applyLimits(setup.getLimits());
      for (auto path : setup.getPlugins()) {
        failedPath = path.cStr();
        LoadedPlugin loaded = loadPlugin(failedPath);
        PluginInfo info = manifestOf(loaded);
        if (!names.insert(info.name).second) {
          throw PluginLoadError(failedPath + ": another plugin in this pool is also named \"" +
                                info.name + "\"");
        }
        plugins_.push_back({std::move(loaded), std::move(info)});
      }
    } catch (const PluginLoadError& e) {
      auto error = hello.initLoadError();
      error.setPlugin(failedPath);
      error.setMessage(e.what());
      writeMessage(fd_, reply);
      return false;
    }
    auto manifests = hello.initPlugins(static_cast<unsigned>(plugins_.size()));
    for (unsigned i = 0; i < plugins_.size(); ++i) fillManifest(manifests[i], plugins_[i].info);
    writeMessage(fd_, reply);
    return true;
  }

  // Applies Setup's resource limits to this process. Throws PluginLoadError (reported in
  // Hello like a plugin that cannot load) if one cannot be set.
  static void applyLimits(wire::Limits::Reader limits) {
    auto set = [](int resource, const char* name, std::uint64_t value) {
      if (value == 0) return;
      rlimit limit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
      if (resource == RLIMIT_CPU) limit.rlim_max = RLIM_INFINITY;  // SIGXCPU at the soft limit
      if (::setrlimit(resource, &limit) != 0) {
        throw PluginLoadError(std::string("cannot set the worker's ") + name + " limit to " +
                              std::to_string(value) + ": " + std::strerror(errno));
      }
    };
    set(RLIMIT_AS, "address-space", limits.getAddressSpaceBytes());
    set(RLIMIT_CPU, "CPU-seconds", limits.getCpuSeconds());
    set(RLIMIT_NOFILE, "open-files", limits.getOpenFiles());
  }

  static void fillManifest(wire::PluginManifest::Builder out, const PluginInfo& info) {
    out.setName(info.name);
    out.setPath(info.path);
    out.setAbiVersion(info.abiVersion);
    auto tasks = out.initTasks(static_cast<unsigned>(info.tasks.size()));
    for (unsigned t = 0; t < info.tasks.size(); ++t) {
      const TaskInfo& task = info.tasks[t];
      tasks[t].setName(task.name);
      tasks[t].setDoc(task.doc);
      tasks[t].setResultType(task.resultType);
      auto args = tasks[t].initArgTypes(static_cast<unsigned>(task.argTypes.size()));
      for (unsigned a = 0; a < task.argTypes.size(); ++a) args.set(a, task.argTypes[a]);
    }
  }

  void runChunk(wire::Run::Reader run) {
    if (run.getPlugin() >= plugins_.size()) throw ProtocolViolation("Run names an unknown plugin");
    const abi::PluginDescriptor& plugin = *plugins_[run.getPlugin()].loaded.descriptor;
    if (run.getTask() >= plugin.taskCount) throw ProtocolViolation("Run names an unknown task");
    const abi::TaskDescriptor& task = plugin.tasks[run.getTask()];
    auto args = codec::readTupleList(run.getItems());  // DecodeError ends the worker

    auto reply = std::make_unique<capnp::MallocMessageBuilder>();
    auto done = reply->initRoot<wire::WorkerMessage>().initChunkDone();
    done.setId(run.getId());
    auto results = done.initResults().initAsListOfAnyStruct(task.resultDataWords,
                                                            task.resultPointers, args.size());
    failures_.clear();
    abi::ErrorSink sink{this, &Worker::recordFailure};
    const auto started = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < args.size(); ++i) {
      current_ = i;
      capnp::AnyStruct::Reader in = args[i];
      capnp::AnyStruct::Builder out = results[i];
      task.invoke(&in, &out, &sink);
    }
    const auto elapsed = std::chrono::steady_clock::now() - started;

    if (capnp::computeSerializedSizeInWords(*reply) > maxWords_) {
      // Too big to send: fail every item of this chunk rather than break the protocol.
      reply = std::make_unique<capnp::MallocMessageBuilder>();
      done = reply->initRoot<wire::WorkerMessage>().initChunkDone();
      done.setId(run.getId());
      done.initResults().initAsListOfAnyStruct(0, 0, args.size());
      failures_.clear();
      for (unsigned i = 0; i < args.size(); ++i) {
        failures_.push_back({i, "plugpool::MessageTooLarge",
                             "the chunk's results exceed the pool's maxMessageBytes; use a "
                             "smaller chunksize or raise the limit"});
      }
    }
    done.setElapsedNs(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()));
    auto errors = done.initErrors(static_cast<unsigned>(failures_.size()));
    for (unsigned k = 0; k < failures_.size(); ++k) {
      errors[k].setIndex(failures_[k].index);
      errors[k].setType(failures_[k].type);
      errors[k].setMessage(failures_[k].message);
    }
    writeMessage(fd_, *reply);
  }

  static void recordFailure(void* context, const char* type, std::size_t typeSize,
                            const char* message, std::size_t messageSize) noexcept {
    auto* self = static_cast<Worker*>(context);
    try {
      self->failures_.push_back(
          {self->current_, std::string(type, typeSize), std::string(message, messageSize)});
    } catch (...) {
      // Out of memory while recording a failure: nothing sensible is left to do.
      std::abort();
    }
  }

  int fd_;
  FrameReader reader_;
  std::uint64_t maxWords_ = SETUP_MAX_WORDS;
  std::vector<Plugin> plugins_;
  std::vector<ItemFailureRecord> failures_;
  unsigned current_ = 0;
};

}  // namespace

int serveWorker(int fd) {
  try {
    Worker worker(fd);
    return worker.serve();
  } catch (const std::system_error& e) {
    // The host closed the channel while we were writing: it is gone or shutting down.
    if (e.code().value() == EPIPE || e.code().value() == ECONNRESET) return 0;
    std::fprintf(stderr, "plugpool-worker[%d]: channel error: %s\n", ::getpid(), e.what());
    return EXIT_PROTOCOL;
  } catch (const std::exception& e) {
    // ProtocolViolation, a kj::Exception from a malformed message, or an I/O error.
    std::fprintf(stderr, "plugpool-worker[%d]: protocol error: %s\n", ::getpid(), e.what());
    return EXIT_PROTOCOL;
  }
}

}  // namespace plugpool::detail
