#include "worker.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <unistd.h>

#include <algorithm>
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

#include "big_buffers.h"
#include "crash_handler.h"
#include "decode.h"
#include "framing.h"
#include "plugin_loader.h"
#include "plugpool/codec.h"
#include "reply_log.h"
#include "spin.h"
#include "wire.capnp.h"

namespace plugpool::detail {
namespace {

// Applies Setup's resource limits to this process. Throws PluginLoadError (reported in Hello
// like a plugin that cannot load) if one cannot be set.
void applyLimits(wire::Limits::Reader limits) {
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

void fillManifest(wire::PluginManifest::Builder out, const PluginInfo& info) {
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
  auto nodes = out.initSchemaNodes(static_cast<unsigned>(info.schemaNodes.size()));
  for (unsigned n = 0; n < info.schemaNodes.size(); ++n) {
    // Our own encoding (manifestOf): copy into aligned words to read it back.
    const std::string& bytes = info.schemaNodes[n];
    auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), bytes.data(), words.size() * sizeof(capnp::word));
    capnp::FlatArrayMessageReader node(words);
    nodes.setWithCaveats(n, node.getRoot<capnp::schema::Node>());
  }
}

}  // namespace

std::unique_ptr<capnp::MallocMessageBuilder> WorkerSession::setUp(
    capnp::MessageReader& message, std::vector<UniqueFd> descriptors) {
  auto setup = decodeSetup(message.getRoot<wire::HostMessage>());
  maxWords_ = setup.getMaxMessageWords();
  const std::size_t regions = setup.getReplyLog() ? 3 : 2;
  if (setup.getSharedMemory() && descriptors.size() == regions) {
    try {
      inbound_ = SharedRegion::adopt(std::move(descriptors[0]), false);
      outbound_ = SharedRegion::adopt(std::move(descriptors[1]), true);
    } catch (const std::system_error&) {
      inbound_.reset();  // not regions after all: everything goes through the channel
      outbound_.reset();
    }
    if (outbound_ && regions == 3) {
      try {
        log_ =
            std::make_unique<ReplyLogWriter>(SharedRegion::adopt(std::move(descriptors[2]), true));
      } catch (const std::exception&) {
        log_.reset();  // no log: a crash costs its whole chunk
      }
    }
  }

  auto reply = std::make_unique<capnp::MallocMessageBuilder>();
  auto hello = reply->initRoot<wire::WorkerMessage>().initHello();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setPid(::getpid());
  hello.setSharedMemory(outbound_ != nullptr);
  hello.setReplyLog(log_ != nullptr);
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
      if (log_ && loaded.setRunningItem != nullptr) {
        // Its chunk entries say which item runs in the reply log (abi.h convention 11).
        loaded.setRunningItem(log_->runningAddress());
        loaded.runningItem = log_->runningAddress();
      }
      taskCounts_.push_back(loaded.descriptor->taskCount);
      plugins_.push_back({std::move(loaded), std::move(info)});
    }
  } catch (const PluginLoadError& e) {
    auto error = hello.initLoadError();
    error.setPlugin(failedPath);
    error.setMessage(e.what());
    return reply;
  }
  auto manifests = hello.initPlugins(static_cast<unsigned>(plugins_.size()));
  for (unsigned i = 0; i < plugins_.size(); ++i) fillManifest(manifests[i], plugins_[i].info);
  loaded_ = true;
  return reply;
}

std::vector<PluginInfo> WorkerSession::plugins() const {
  std::vector<PluginInfo> infos;
  for (const Plugin& p : plugins_) infos.push_back(p.info);
  return infos;
}

std::unique_ptr<BigSegmentBuilder> WorkerSession::run(capnp::MessageReader& message) {
  RunRequest run = decodeRun(message.getRoot<wire::HostMessage>(), taskCounts_);
  const abi::TaskDescriptor& task = plugins_[run.plugin].loaded.descriptor->tasks[run.task];
  const auto& args = run.items;

  // A first segment that fits the envelope and the results' tuples (what they point at may
  // need more): small chunks cost a small allocation.
  auto reply = std::make_unique<BigSegmentBuilder>(std::max<unsigned>(
      128, 32 + args.size() * (task.resultDataWords + task.resultPointers * 3u)));
  reply->placeIn(outbound_.get());
  ReplyLogWriter* log = log_.get();
  // Items the host times have their start times published, item by item: not in a chunk
  // entry, which runs the chunk as one call.
  abi::InvokeChunkFn invokeChunk = log != nullptr && run.itemStartTimes
                                       ? nullptr
                                       : plugins_[run.plugin].loaded.chunkEntry(run.task);
  if (log != nullptr) {
    const bool opaque =
        invokeChunk != nullptr && plugins_[run.plugin].loaded.setRunningItem == nullptr;
    reply->startIn(log->begin(run.id, args.size(), run.itemStartTimes, opaque));
  }
  logged_ = log != nullptr;
  auto done = reply->initRoot<wire::WorkerMessage>().initChunkDone();
  done.setId(run.id);
  auto results = done.initResults().initAsListOfAnyStruct(task.resultDataWords, task.resultPointers,
                                                          args.size());
  failures_.clear();
  loggedErrors_ = 0;
  const auto started = std::chrono::steady_clock::now();
  if (invokeChunk != nullptr) {
    // One call for the whole chunk (abi.h convention 9). A report that breaks the convention
    // (an index out of range or out of order) is dropped: the host would refuse the reply.
    struct Chunk {
      WorkerSession* self;
      unsigned items;
      wire::ChunkDone::Builder done;
    } chunk{this, args.size(), done};
    noteRunning(run.id, CRASH_ITEM_UNKNOWN, plugins_[run.plugin].loaded.runningItem);
    abi::ChunkErrorSink sink{
        &chunk, [](void* context, std::uint32_t index, const char* type, std::size_t typeSize,
                   const char* message, std::size_t messageSize) noexcept {
          auto* c = static_cast<Chunk*>(context);
          const auto& failures = c->self->failures_;
          if (index >= c->items || (!failures.empty() && failures.back().index >= index)) {
            return;
          }
          c->self->current_ = index;
          recordFailure(c->self, type, typeSize, message, messageSize);
          if (c->self->log_ != nullptr) c->self->logErrors(c->done);
        }};
    invokeChunk(&args, &results, &sink);
    if (log != nullptr) log->running(args.size());
  } else {
    abi::ErrorSink sink{this, &WorkerSession::recordFailure};
    for (unsigned i = 0; i < args.size(); ++i) {
      current_ = i;
      noteRunning(run.id, i);
      if (log != nullptr) log->running(i);
      capnp::AnyStruct::Reader in = args[i];
      capnp::AnyStruct::Builder out = results[i];
      task.invoke(&in, &out, &sink);
      if (log != nullptr && failures_.size() != loggedErrors_) logErrors(done);
    }
    if (log != nullptr) log->running(args.size());
  }
  const auto elapsed = std::chrono::steady_clock::now() - started;
  noteRunning(0, CRASH_ITEM_UNKNOWN);

  bool replaced = false;
  if (capnp::computeSerializedSizeInWords(*reply) > maxWords_) {
    // Too big to send: fail every item of this chunk rather than break the protocol.
    if (logged_) logUsed_ = reply->getSegmentsForOutput()[0].size();
    replaced = true;
    reply = std::make_unique<BigSegmentBuilder>();
    done = reply->initRoot<wire::WorkerMessage>().initChunkDone();
    done.setId(run.id);
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
  // What the log's next message must find zeroed: all this one used (its final errors list
  // included).
  if (logged_ && !replaced) logUsed_ = reply->getSegmentsForOutput()[0].size();
  return reply;
}

void WorkerSession::logErrors(wire::ChunkDone::Builder done) {
  // The list grows by doubling, so that a chunk of many failures costs a few copies of them;
  // the reply's final list (run()) has exactly as many.
  auto list = done.getErrors();
  unsigned from = loggedErrors_;
  if (failures_.size() > list.size()) {
    list = done.initErrors(static_cast<unsigned>(std::max<std::size_t>(4, 2 * failures_.size())));
    from = 0;
  }
  for (unsigned k = from; k < failures_.size(); ++k) {
    list[k].setIndex(failures_[k].index);
    list[k].setType(failures_[k].type);
    list[k].setMessage(failures_[k].message);
  }
  loggedErrors_ = static_cast<unsigned>(failures_.size());
  log_->errors(loggedErrors_);
}

bool WorkerSession::logReply(BigSegmentBuilder& reply) {
  return log_ != nullptr && !reply.inRegion() && log_->append(reply);
}

bool WorkerSession::hostSleeping() {
  return log_ != nullptr && log_->hostSleeping();
}

void WorkerSession::replySent() {
  if (logged_) log_->end(logUsed_);
  logged_ = false;
  logUsed_ = 0;
}

void WorkerSession::recordFailure(void* context, const char* type, std::size_t typeSize,
                                  const char* message, std::size_t messageSize) noexcept {
  auto* self = static_cast<WorkerSession*>(context);
  try {
    self->failures_.push_back(
        {self->current_, std::string(type, typeSize), std::string(message, messageSize)});
  } catch (...) {
    // Out of memory while recording a failure: nothing sensible is left to do.
    std::abort();
  }
}

namespace {

// Reads the host's messages from `fd` and writes the session's replies.
int converse(int fd) {
  WorkerSession session;
  FrameReader reader(FIRST_MESSAGE_MAX_WORDS);
  kj::Array<capnp::word> words;
  std::vector<UniqueFd> passed;  // Setup's shared regions come with it
  reader.acceptDescriptors(&passed);
  if (reader.read(fd, words) != FrameReader::Status::MESSAGE) return 0;  // host went away
  reader.acceptDescriptors(nullptr);
  {
    Received message(std::move(words));
    auto hello = session.setUp(message.reader(), std::move(passed));
    // From here a crashed task says where (crash_handler.h); set before Hello, so a ready
    // worker has it.
    if (session.loaded()) installCrashHandler(fd);
    writeMessage(fd, *hello);
  }
  if (!session.loaded()) return EXIT_LOAD_FAILED;
  reader.setMaxWords(session.maxWords());
  reader.acceptShared(session.inbound());
  capnp::MallocMessageBuilder wake(8);
  wake.initRoot<wire::WorkerMessage>().setLogged();
  // Each reply leaves as soon as it is made, before the next chunk runs: if that chunk
  // crashes the worker, the host knows exactly which chunk was running.
  for (;;) {
    if (!reader.hasBuffered()) {
      // The host often answers a reply with the next Run within microseconds (an apply after
      // another): watch for it before sleeping, as the host's waiting threads do (spin.h).
      watchBriefly([&] {
        pollfd ready{fd, POLLIN, 0};
        return ::poll(&ready, 1, 0) != 0;
      });
    }
    if (reader.read(fd, words) == FrameReader::Status::END) return 0;
    std::unique_ptr<BigSegmentBuilder> reply;
    {
      Received message(std::move(words), reader.peerRegion());
      reply = session.run(message.reader());
    }  // the host's region is free again before the host hears of this chunk
    if (!session.logReply(*reply)) {
      if (writeMessage(fd, *reply, session.outbound())) reply->handOver();
    } else if (session.hostSleeping()) {
      writeMessage(fd, wake);  // the host waits on the channel: tell it where the reply is
    }
    session.replySent();
  }
}

}  // namespace

namespace {

// The kernel's PF_EXITING task flag (include/linux/sched.h), as /proc/<pid>/stat shows it.
constexpr unsigned long PF_EXITING_FLAG = 0x4;

// Whether `hostPid` is no longer our parent, or has begun to exit.
bool hostExiting(pid_t hostPid) {
  if (::getppid() != hostPid) return true;
  const std::string path = "/proc/" + std::to_string(hostPid) + "/stat";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // no /proc: we cannot tell; the death signal may still come
  char line[1024];
  const ssize_t n = ::read(fd, line, sizeof line - 1);
  ::close(fd);
  if (n <= 0) return false;
  line[n] = '\0';
  // "pid (comm) state ppid pgrp session tty_nr tpgid flags ..."; comm may hold anything.
  const char* rest = std::strrchr(line, ')');
  char state = '?';
  unsigned long flags = 0;
  if (rest == nullptr ||
      std::sscanf(rest + 1, " %c %*d %*d %*d %*d %*d %lu", &state, &flags) != 2) {
    return false;
  }
  return state == 'Z' || state == 'X' || (flags & PF_EXITING_FLAG) != 0;
}

void onHostGone(int) {
  // kill(0) signals our own group: only when we lead it, never a group we happen to share.
  if (::getpgrp() == ::getpid()) ::kill(0, SIGKILL);
  ::kill(::getpid(), SIGKILL);
}

}  // namespace

bool dieWithHost(pid_t hostPid) noexcept {
  struct sigaction action = {};
  action.sa_handler = onHostGone;
  sigfillset(&action.sa_mask);
  ::sigaction(hostGoneSignal(), &action, nullptr);
  ::prctl(PR_SET_PDEATHSIG, hostGoneSignal());
  return hostPid <= 0 || ::getppid() == hostPid;
}

void endWithHost(pid_t hostPid) noexcept {
  if (hostPid <= 0 || ::getpgrp() != ::getpid()) return;
  try {
    if (hostExiting(hostPid)) ::kill(0, SIGKILL);
  } catch (...) {
    // Out of memory for the path: leave it to the death signal.
  }
}

int serveWorker(int fd) {
  stopKeepingFreedBuffers();
  try {
    return converse(fd);
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
