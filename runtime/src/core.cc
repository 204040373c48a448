#include "core.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include "big_buffers.h"
#include "decode.h"
#include "paths.h"
#include "plugpool/errors.h"
#include "spin.h"
#include "termination.h"

namespace plugpool::detail {

namespace {

// Options::chunksInFlight 0 (automatic): AUTO_IN_FLIGHT chunks per worker, raised while its
// chunks are short so that about QUEUED_WORK waits in it, at most MAX_IN_FLIGHT.
constexpr std::size_t AUTO_IN_FLIGHT = 2;
constexpr std::size_t MAX_IN_FLIGHT = 64;
constexpr auto QUEUED_WORK = std::chrono::milliseconds(1);

// A worker's shared regions hold at most this much each (or maxMessageBytes if less); larger
// segments go through the channel. They keep their pages for the next large message, and give
// them back once they have carried none for Options::idleMemoryTimeout.
constexpr std::size_t SHARED_REGION_BYTES = std::size_t{1} << 30;

template <typename E, typename... Args>
std::exception_ptr errorPtr(Args&&... args) {
  return std::make_exception_ptr(E(std::forward<Args>(args)...));
}

}  // namespace

Core::Core(Options options, std::vector<std::string> pluginPaths, std::string workerExecutable,
           std::unique_ptr<Launcher> launcher)
    : options_(std::move(options)),
      workers_(static_cast<unsigned>(options_.workers)),
      pluginPaths_(std::move(pluginPaths)),
      workerExecutable_(std::move(workerExecutable)),
      launcher_(std::move(launcher)),
      maxWords_(options_.maxMessageBytes / sizeof(capnp::word)),
      exitedFuture_(exitedPromise_.get_future().share()),
      wake_(aboveStdio(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))) {
  if (!wake_) throw std::system_error(errno, std::generic_category(), "eventfd");
  std::promise<void> started;
  auto ready = started.get_future();
  thread_ = std::thread([this, &started] { run(started); });
  try {
    ready.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

Core::~Core() {
  close();
  join();
}

void Core::close() {
  {
    std::lock_guard lock(mutex_);
    closeRequested_ = true;
  }
  std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

bool Core::closed() const {
  std::lock_guard lock(mutex_);
  return closeRequested_;
}

void Core::checkOpen() const {
  std::lock_guard lock(mutex_);
  if (broken_) std::rethrow_exception(broken_);
  if (closeRequested_) throw PoolClosed("the pool is closed; it takes no new work");
}

void Core::join() {
  if (!closed()) throw UsageError("join() before close(), shutdown() or terminate()");
  exitedFuture_.wait();
  std::call_once(joined_, [&] { thread_.join(); });
}

void Core::cancel(std::shared_ptr<Call> call, bool running) {
  post({running ? Control::CANCEL : Control::DISCARD, std::move(call), 0, nullptr});
}

void Core::cancelQueued() {
  close();
  post({Control::CANCEL_QUEUED, nullptr, 0, nullptr});
}

void Core::terminate(int signal) {
  close();
  post({Control::TERMINATE, nullptr, signal, nullptr});
  join();
}

void Core::post(Control control) {
  control.done = std::make_shared<std::promise<void>>();
  auto done = control.done->get_future();
  {
    std::lock_guard lock(mutex_);
    if (exited_) return;  // nothing is left to act on
    controls_.push_back(std::move(control));
  }
  std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  done.wait();
}

Stats Core::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Core::submit(std::shared_ptr<Call> call, std::size_t index, std::uint64_t firstItem,
                  ChunkRequest chunk) {
  unsigned items = chunk.size();
  bool first;
  {
    std::lock_guard lock(mutex_);
    if (broken_) std::rethrow_exception(broken_);
    if (closeRequested_) throw PoolClosed("the pool is closed; it takes no new work");
    first = incoming_.empty();
    incoming_.push_back({std::move(call), index, chunk.release(), items, firstItem});
  }
  // Only the first chunk of a batch wakes the dispatcher: until it takes the batch (after it
  // has consumed that wake-up), later ones join the same batch.
  if (!first) return;
  std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

namespace {

// What an error that escaped the dispatcher says, for PoolBroken's message.
std::string describe(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const kj::Exception& e) {
    return e.getDescription().cStr();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

}  // namespace

void Core::run(std::promise<void>& started) {
  bool up = false;
  try {
    up = startUp();
  } catch (...) {
    startError_ = errorPtr<StartError>("the pool could not start: its dispatcher failed: " +
                                       describe(std::current_exception()));
    abandon(startError_);
  }
  if (up) {
    started.set_value();  // `started` dies with the constructor's frame: not touched again
    try {
      loop();
    } catch (...) {
      abandon(errorPtr<PoolBroken>(
          "the pool broke: its dispatcher failed: " + describe(std::current_exception()) +
          "; its workers were stopped and it takes no more work"));
    }
  }
  std::vector<Control> left;
  {
    std::lock_guard lock(mutex_);
    exited_ = true;
    closeRequested_ = true;
    left.swap(controls_);
  }
  for (auto& c : left) c.done->set_value();
  if (!up) started.set_exception(startError_);
  exitedPromise_.set_value();
}

void Core::abandon(std::exception_ptr error) noexcept {
  std::deque<Job> incoming;
  {
    std::lock_guard lock(mutex_);
    broken_ = error;  // from now on submit() throws it
    closeRequested_ = true;
    incoming.swap(incoming_);
  }
  closing_ = true;
  auto end = [&](Job& job) {
    try {
      fail(job, error);
    } catch (...) {  // a Call that cannot take its outcome cannot be helped here
    }
  };
  for (auto& job : incoming) end(job);
  for (auto& job : pending_) end(job);
  pending_.clear();
  for (auto& w : slots_) {
    for (auto& f : w->inFlight) {
      if (!f.ended) end(f.job);
    }
    signalWorker(*w, SIGKILL);
    closeChannel(*w);
    while (::waitpid(w->process.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  slots_.clear();
}

bool Core::startUp() {
  for (unsigned i = 0; i < workers_ && !startError_; ++i) {
    if (!spawnWorker()) break;
  }
  auto anyStarting = [&] {
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const auto& w) { return w->state == State::STARTING; });
  };
  while (!startError_ && anyStarting()) pollOnce();
  starting_ = false;
  if (!startError_) return true;
  // Could not start: stop whatever did start, and reap it, before reporting.
  for (auto& w : slots_) {
    signalWorker(*w, SIGKILL);
    closeChannel(*w);
    w->state = State::CLOSING;
  }
  closing_ = true;
  while (!slots_.empty()) pollOnce();
  return false;
}

void Core::loop() {
  for (;;) {
    takeIncoming();
    takeControls();
    supervise();
    // While starts keep failing, work no ready worker can take fails now instead of waiting
    // for a start that may never succeed.
    if (startsFailing() && !canServe()) failAll(lastStartError_);
    retireIdle();
    dispatch();
    bool idle = pending_.empty() && std::all_of(slots_.begin(), slots_.end(),
                                                [](const auto& w) { return w->inFlight.empty(); });
    bool stop, closed;
    {
      std::lock_guard lock(mutex_);
      closed = closeRequested_;
      stop = closed && incoming_.empty();
    }
    if (closed && !closeDeadline_ && options_.shutdownTimeout.count() != 0) {
      closeDeadline_ = Clock::now() + options_.shutdownTimeout;
    }
    if (!closing_ && closeDeadline_ && Clock::now() >= *closeDeadline_) {
      terminateNow(SIGTERM, "the pool's shutdownTimeout (" +
                                std::to_string(options_.shutdownTimeout.count()) + " ms) passed");
    }
    if (stop && idle && !closing_) beginClosing();
    if (closing_ && slots_.empty()) return;
    pollOnce();
  }
}

void Core::takeIncoming() {
  std::deque<Job> incoming;
  {
    std::lock_guard lock(mutex_);
    incoming.swap(incoming_);
  }
  for (auto& job : incoming) {
    if (closing_) {
      fail(job, errorPtr<PoolClosed>("the pool was shutting down; the chunk was not run"));
    } else {
      pending_.push_back(std::move(job));
    }
  }
}

void Core::takeControls() {
  std::vector<Control> controls;
  {
    std::lock_guard lock(mutex_);
    controls.swap(controls_);
  }
  for (auto& c : controls) {
    runControl(c);
    c.done->set_value();
  }
}

void Core::runControl(Control& c) {
  auto cancelled = [](const char* what) { return errorPtr<Cancelled>(what); };
  if (c.kind != Control::TERMINATE) {
    // Queued chunks (all, or those of one call) end without running.
    auto error = cancelled(c.kind == Control::CANCEL_QUEUED ? "cancelled by shutdown before it ran"
                                                            : "cancelled before it ran");
    std::deque<Job> keep;
    for (auto& job : pending_) {
      if (c.call && job.call != c.call) {
        keep.push_back(std::move(job));
      } else {
        fail(job, error);
      }
    }
    pending_.swap(keep);
    if (c.kind != Control::CANCEL) return;
    // Chunks already sent: end them now. The one a worker is running (the first unanswered)
    // only stops with its worker.
    auto running = cancelled("cancelled while it ran; its worker was killed and replaced");
    auto queued = cancelled("cancelled before it ran");
    for (auto& w : slots_) {
      for (std::size_t i = 0; i < w->inFlight.size(); ++i) {
        InFlight& f = w->inFlight[i];
        if (f.ended || f.job.call != c.call) continue;
        fail(f, i == 0 ? running : queued);
        if (i == 0) {
          signalWorker(*w, SIGKILL);
          w->stoppedOnPurpose = true;
        }
      }
    }
    return;
  }
  terminateNow(c.signal, "the pool was terminated");
}

void Core::terminateNow(int signal, const std::string& why) {
  auto before = errorPtr<Cancelled>("cancelled: " + why + " before it ran");
  auto during = errorPtr<Cancelled>("cancelled: " + why + " while it ran");
  failAll(before);
  for (auto& w : slots_) {
    for (std::size_t i = 0; i < w->inFlight.size(); ++i) {
      // Only the first unanswered chunk is running; the others wait in the worker's queue.
      if (!w->inFlight[i].ended) fail(w->inFlight[i], i == 0 ? during : before);
    }
    signalWorker(*w, signal);
    w->stoppedOnPurpose = true;
    closeChannel(*w);
    w->state = State::CLOSING;
    w->deadline = Clock::now() + options_.stopTimeout;
  }
  closing_ = true;
}

void Core::retireIdle() {
  for (auto& w : slots_) {
    if (!w->retiring || w->state != State::READY || !w->inFlight.empty()) continue;
    closeChannel(*w);  // it exits when it reads the end of its channel
    w->state = State::CLOSING;
    w->deadline = Clock::now() + options_.stopTimeout;
  }
}

void Core::dispatch() {
  // Options::workers bounds the workers running tasks, not only those taking work: one that
  // runs none takes work only while fewer run. So a retiring worker's replacement waits until
  // the retiring one has answered all it holds.
  std::size_t running = static_cast<std::size_t>(
      std::count_if(slots_.begin(), slots_.end(), [](const auto& w) { return runsTasks(*w); }));
  while (!pending_.empty()) {
    Worker* best = nullptr;
    for (auto& w : slots_) {
      if (w->state != State::READY || !w->channelOpen || w->retiring) continue;
      if (w->inFlight.size() >= inFlightLimit(*w)) continue;
      if (!runsTasks(*w) && running >= workers_) continue;
      if (best == nullptr || w->inFlight.size() < best->inFlight.size()) best = w.get();
    }
    if (best == nullptr) break;
    Job job = std::move(pending_.front());
    pending_.pop_front();
    if (capnp::computeSerializedSizeInWords(*job.message) > maxWords_) {
      const TaskRef& task = job.call->task();
      fail(job, errorPtr<TaskError>(task.pluginName, task.taskName, "plugpool::MessageTooLarge",
                                    "the chunk's arguments exceed the pool's maxMessageBytes; "
                                    "use a smaller chunksize or raise the limit"));
      continue;
    }
    if (!runsTasks(*best)) ++running;
    send(*best, std::move(job));
  }
  // Everything dispatched to a worker in this round leaves in one write where it fits.
  for (auto& w : slots_) {
    if (!w->writer.empty()) flush(*w);
  }
}

std::size_t Core::inFlightLimit(const Worker& w) const {
  if (options_.chunksInFlight != 0) return options_.chunksInFlight;
  if (w.chunkNs == 0) return AUTO_IN_FLIGHT;
  const auto queued = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(QUEUED_WORK).count());
  return std::clamp<std::size_t>(queued / w.chunkNs, AUTO_IN_FLIGHT, MAX_IN_FLIGHT);
}

void Core::send(Worker& w, Job job) {
  std::uint64_t id = nextId_++;
  job.message->getRoot<wire::HostMessage>().getRun().setId(id);
  if (w.writer.push(job.message, w.shared ? w.toWorker.get() : nullptr)) noteShared(w);
  countStats(job);
  w.itemsSent += job.items;
  if (w.inFlight.empty()) w.frontSince = Clock::now();
  Call* call = job.call.get();
  w.inFlight.push_back({id, std::move(job), false, OnWorker(call)});
  if (options_.maxTasksPerChild != 0 && w.itemsSent >= options_.maxTasksPerChild && !w.retiring) {
    // supervise() starts its replacement now, so that it is ready by the time this one has
    // finished what it holds; dispatch() gives the replacement work only then.
    w.retiring = true;
    std::lock_guard lock(mutex_);
    ++stats_.workersRetired;
  }
}

void Core::sendInitializer(Worker& w) {
  const Initializer& init = options_.initializer;
  ChunkRequest request(*initializer_, 1, init.dataWords_, init.pointers_);
  init.encode_(request.items()[0]);
  auto message = request.release();
  w.initId = nextId_++;
  message->getRoot<wire::HostMessage>().getRun().setId(w.initId);
  w.writer.push(std::move(message));
  flush(w);
}

Clock::time_point Core::timeoutAt(const Worker& w) const {
  if (w.inFlight.empty() || w.inFlight.front().ended) return Clock::time_point::max();
  const Job& job = w.inFlight.front().job;
  auto timeout = job.call->task().timeout;
  if (timeout.count() == 0) return Clock::time_point::max();
  return w.frontSince + timeout * job.items;
}

void Core::timeOut(Worker& w) {
  InFlight& front = w.inFlight.front();
  const TaskRef& task = front.job.call->task();
  fail(front, errorPtr<TaskTimeout>(task.pluginName, task.taskName, task.timeout.count(),
                                    front.job.items, w.process.pid));
  // The chunks behind it never started: send them to other workers now, not after the grace.
  std::deque<Job> again;
  for (std::size_t i = 1; i < w.inFlight.size(); ++i) {
    if (!w.inFlight[i].ended) again.push_back(std::move(w.inFlight[i].job));
  }
  w.inFlight.resize(1);
  pending_.insert(pending_.begin(), std::make_move_iterator(again.begin()),
                  std::make_move_iterator(again.end()));
  signalWorker(w, SIGTERM);
  w.stoppedOnPurpose = true;
  closeChannel(w);
  w.state = State::CLOSING;
  w.deadline = Clock::now() + options_.stopTimeout;  // then SIGKILL
  supervise();                                       // replace it at once
  std::lock_guard lock(mutex_);
  ++stats_.chunksTimedOut;
}

void Core::becomeReady(Worker& w) {
  w.state = State::READY;
  w.deadline = Clock::time_point::max();
  startFailures_ = 0;  // healed
  lastStartError_ = nullptr;
  nextStartAt_ = {};
}

void Core::supervise() {
  if (starting_ || closing_) return;
  const auto now = Clock::now();
  while (serving() < workers_ && now >= nextStartAt_) {
    if (!spawnWorker()) return;
  }
}

void Core::startFailed(std::exception_ptr error, bool final) {
  if (starting_) {
    if (!startError_) startError_ = std::move(error);
    return;
  }
  lastStartError_ = std::move(error);
  startFailures_ = final ? std::max(startFailures_ + 1, MAX_START_FAILURES) : startFailures_ + 1;
  const int doublings = std::min(startFailures_ - 1, 16);
  nextStartAt_ =
      Clock::now() + std::min<std::chrono::milliseconds>(
                         START_BACKOFF * (std::int64_t{1} << doublings), MAX_START_BACKOFF);
}

std::size_t Core::serving() const {
  return static_cast<std::size_t>(std::count_if(slots_.begin(), slots_.end(), [](const auto& w) {
    return w->state != State::CLOSING && !w->retiring;
  }));
}

bool Core::runsTasks(const Worker& w) {
  return !w.inFlight.empty() && !w.stoppedOnPurpose;
}

bool Core::canServe() const {
  return std::any_of(slots_.begin(), slots_.end(), [](const auto& w) {
    return w->state == State::READY && w->channelOpen && !w->retiring;
  });
}

void Core::beginClosing() {
  closing_ = true;
  for (auto& w : slots_) {
    closeChannel(*w);  // a worker exits when it reads the end of its channel
    w->state = State::CLOSING;
    w->deadline = Clock::now() + options_.stopTimeout;
  }
}

bool Core::spawnWorker() {
  SpawnedProcess process;
  try {
    process = launcher_->spawn(workerExecutable_);
  } catch (const std::system_error& e) {
    startFailed(errorPtr<StartError>(
        (workerExecutable_.empty() ? std::string("cannot fork a worker: ")
                                   : "cannot start worker executable " + workerExecutable_ + ": ") +
        e.what()));
    return false;
  }
  // In slots_ before anything else can throw, so that the process is reaped whatever happens.
  slots_.push_back(std::make_unique<Worker>(std::min(maxWords_, FIRST_MESSAGE_MAX_WORDS)));
  Worker* w = slots_.back().get();
  w->process = std::move(process);
  {
    std::lock_guard lock(mutex_);
    ++stats_.workersStarted;
  }
  w->deadline = Clock::now() + options_.startTimeout;
  auto setup = std::make_unique<capnp::MallocMessageBuilder>();
  auto s = setup->initRoot<wire::HostMessage>().initSetup();
  s.setProtocolVersion(wire::PROTOCOL_VERSION);
  s.setMaxMessageWords(maxWords_);
  auto limits = s.initLimits();
  limits.setAddressSpaceBytes(options_.limits.memoryBytes);
  limits.setCpuSeconds(static_cast<std::uint64_t>(options_.limits.cpuTime.count()));
  limits.setOpenFiles(options_.limits.openFiles);
  auto paths = s.initPlugins(static_cast<unsigned>(pluginPaths_.size()));
  for (unsigned i = 0; i < pluginPaths_.size(); ++i) paths.set(i, pluginPaths_[i]);
  std::vector<int> regions;
  try {
    const std::size_t bytes = std::min(SHARED_REGION_BYTES, options_.maxMessageBytes);
    w->toWorker = SharedRegion::create(bytes, true);
    w->toHost = SharedRegion::create(bytes, false);
    regions = {w->toWorker->fd(), w->toHost->fd()};
    s.setSharedMemory(true);
  } catch (const std::system_error&) {
    // No memfd here (or no room to map it): everything goes through the channel.
    w->toWorker.reset();
    w->toHost.reset();
  }
  w->writer.push(std::move(setup), nullptr, std::move(regions));
  flush(*w);
  return true;
}

void Core::noteShared(Worker& w) {
  w.sharedSince = Clock::now();
  std::lock_guard lock(mutex_);
  ++stats_.sharedMessages;
}

void Core::trimShared() {
  const auto now = Clock::now();
  for (auto& w : slots_) {
    if (!w->sharedSince || now < *w->sharedSince + options_.idleMemoryTimeout) continue;
    // A region still held (a result not yet decoded, a Run not yet run) is tried again later.
    const bool ours = w->toWorker->trim();
    const bool theirs = w->toHost->trim();
    w->sharedSince = ours && theirs ? std::nullopt : std::optional(now);
    releaseFreedBuffers();  // the large messages' own buffers, idle as long
  }
}

bool Core::loneChunk() const {
  if (!pending_.empty()) return false;
  std::size_t out = 0;
  for (const auto& w : slots_) out += w->inFlight.size();
  return out == 1;
}

void Core::pollOnce() {
  std::vector<pollfd> fds;
  fds.push_back({wake_.get(), POLLIN, 0});
  auto now = Clock::now();
  auto next = Clock::time_point::max();
  for (auto& w : slots_) {
    short events = POLLIN;
    if (!w->writer.empty()) events |= POLLOUT;
    fds.push_back({w->channelOpen ? w->process.channel.get() : -1, events, 0});
    fds.push_back({w->process.pidfd.get(), POLLIN, 0});
    next = std::min(next, w->state == State::READY ? timeoutAt(*w) : w->deadline);
    if (w->sharedSince) next = std::min(next, *w->sharedSince + options_.idleMemoryTimeout);
    if (w->endBy) next = std::min(next, *w->endBy);
  }
  if (closeDeadline_ && !closing_) next = std::min(next, *closeDeadline_);
  if (!starting_ && !closing_ && serving() < workers_) next = std::min(next, nextStartAt_);
  int timeout = -1;
  if (next != Clock::time_point::max()) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
    timeout = static_cast<int>(std::clamp<long long>(ms, 0, 60'000));
  }
  int n = 0;
  if (timeout != 0 && loneChunk()) {
    // One chunk out and nothing else to do (an apply): watch for its reply before sleeping,
    // as its caller does, so the reply is not delayed by this thread's own wake-up.
    watchBriefly([&] { return (n = ::poll(fds.data(), fds.size(), 0)) != 0; });
  }
  if (n == 0) n = ::poll(fds.data(), fds.size(), timeout);
  if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");

  if (n > 0 && (fds[0].revents & POLLIN) != 0) {
    std::uint64_t count;
    (void)!::read(wake_.get(), &count, sizeof count);
  }
  std::vector<Worker*> exited;
  for (std::size_t i = 0; n > 0 && i < slots_.size(); ++i) {
    Worker& w = *slots_[i];
    short channel = fds[1 + 2 * i].revents;
    if (w.channelOpen && (channel & (POLLIN | POLLHUP | POLLERR)) != 0 && !drain(w)) {
      channelEnded(w);
    }
    if (w.channelOpen && (channel & POLLOUT) != 0) flush(w);
    if ((fds[2 + 2 * i].revents & POLLIN) != 0) exited.push_back(&w);
  }
  for (Worker* w : exited) {
    auto it = std::find_if(slots_.begin(), slots_.end(), [&](auto& s) { return s.get() == w; });
    reap(static_cast<std::size_t>(it - slots_.begin()));
  }

  trimShared();
  now = Clock::now();
  for (std::size_t i = 0; i < slots_.size(); ++i) {  // timeOut() may add a slot
    if (slots_[i]->state == State::READY && timeoutAt(*slots_[i]) <= now) timeOut(*slots_[i]);
  }
  for (auto& w : slots_) {
    if (w->endBy && now >= *w->endBy) {
      w->endBy.reset();
      violate(*w, "ended its channel inside a message and did not exit");
    }
    if (w->state == State::READY || now < w->deadline) continue;
    if (w->state == State::STARTING) {
      violate(*w, "did not become ready within " + std::to_string(options_.startTimeout.count()) +
                      " ms");
    } else {
      signalWorker(*w, SIGKILL);  // CLOSING and still running: stuck in a task
    }
    w->deadline = Clock::time_point::max();
  }
}

bool Core::drain(Worker& w) {
  for (;;) {
    kj::Array<capnp::word> words;
    FrameReader::Status status;
    try {
      status = w.reader.read(w.process.channel.get(), words);
    } catch (const TruncatedStream& e) {
      w.truncated = e.what();  // channelEnded() decides what it means
      return false;
    } catch (const ProtocolViolation& e) {
      violate(w, e.what());
      return false;
    } catch (const MessageUnallocatable& e) {
      replyUnallocatable(w, e.bytes());
      return false;
    } catch (const std::system_error&) {
      return false;  // ECONNRESET and the like: the worker is gone
    }
    if (status == FrameReader::Status::AGAIN) return true;
    if (status == FrameReader::Status::END) return false;
    handleMessage(w, std::move(words));
    if (!w.violation.empty()) return false;
  }
}

void Core::handleMessage(Worker& w, kj::Array<capnp::word> words) {
  try {
    auto received = std::make_shared<Received>(std::move(words), w.reader.peerRegion());
    if (received->shared()) noteShared(w);
    auto root = received->reader().getRoot<wire::WorkerMessage>();
    switch (root.which()) {
      case wire::WorkerMessage::HELLO:
        if (w.state != State::STARTING) return violate(w, "sent Hello twice");
        return handleHello(w, root.getHello());
      case wire::WorkerMessage::CHUNK_DONE:
        if (w.state == State::STARTING && w.initId == 0) {
          return violate(w, "sent ChunkDone before Hello");
        }
        return handleChunkDone(w, root.getChunkDone(), received);
      case wire::WorkerMessage::CRASH:
        if (w.crash) return violate(w, "sent Crash twice");
        w.crash = decodeCrash(root.getCrash());
        return;
    }
    violate(w, "sent a message of unknown kind");
  } catch (const ProtocolViolation& e) {
    violate(w, e.what());
  } catch (const kj::Exception& e) {
    violate(w, std::string("sent a malformed message: ") + e.getDescription().cStr());
  }
}

void Core::handleHello(Worker& w, wire::Hello::Reader hello) {
  HelloContent content = decodeHello(hello, pluginPaths_.size());
  w.reader.setMaxWords(maxWords_);
  if (hello.getSharedMemory() && w.toWorker != nullptr) {
    w.shared = true;
    w.reader.acceptShared(w.toHost);
  } else {
    w.toWorker.reset();  // the worker could not map them
    w.toHost.reset();
  }
  if (!content.loadError.empty()) {
    // The worker exits by itself after this; its exit is then expected.
    w.stoppedOnPurpose = true;  // its exit is not a second failure
    startFailed(errorPtr<PluginError>(content.loadError), /*final=*/true);
    return;
  }
  std::vector<PluginInfo>& infos = content.plugins;
  if (plugins_.empty() && starting_) {
    plugins_ = std::move(infos);
    if (options_.initializer) {
      try {
        const Initializer& init = options_.initializer;
        initializer_ =
            bindByName(plugins_, init.plugin_, init.task_, init.argTypes_, init.resultType_);
      } catch (const PluginError& e) {
        if (!startError_)
          startError_ = errorPtr<PluginError>(std::string("initializer: ") + e.what());
        return;
      }
    }
  } else if (infos != plugins_) {
    return violate(w, "loaded plugins that differ from the other workers'");
  }
  if (initializer_) return sendInitializer(w);
  becomeReady(w);
}

void Core::handleChunkDone(Worker& w, wire::ChunkDone::Reader done,
                           std::shared_ptr<const void> keep) {
  if (w.state == State::STARTING) {
    if (w.initId == 0) return violate(w, "sent ChunkDone before it was ready");
    ChunkOutcome init = decodeChunkDone(done, w.initId, 1);
    w.initId = 0;
    if (init.errors.empty()) return becomeReady(w);
    // A failing initializer fails the pool at once: a fresh worker would fail the same way.
    const ItemFailure& e = init.errors[0];
    auto error = errorPtr<StartError>(
        "the initializer " + initializer_->pluginName + "." + initializer_->taskName +
        " failed in worker " + std::to_string(w.process.pid) + ": " + e.type + ": " + e.message +
        "; the pool does not start workers whose initializer fails");
    startFailed(error, /*final=*/true);
    signalWorker(w, SIGKILL);
    w.stoppedOnPurpose = true;
    closeChannel(w);
    return;
  }
  if (w.inFlight.empty()) return violate(w, "answered a chunk that was not sent");
  InFlight& front = w.inFlight.front();
  ChunkOutcome outcome = decodeChunkDone(done, front.id, front.job.items);
  outcome.keepAlive = std::move(keep);
  outcome.firstItem = front.job.firstItem;
  outcome.workerPid = w.process.pid;
  const std::uint64_t ns = std::max<std::uint64_t>(1, outcome.elapsedNs);
  w.chunkNs = w.chunkNs == 0 ? ns : (3 * w.chunkNs + ns) / 4;
  InFlight f = std::move(front);
  w.inFlight.pop_front();
  w.frontSince = Clock::now();  // the next chunk starts now
  f.onWorker.reset();           // before complete(): a woken waiter sees it back
  if (!f.ended) f.job.call->complete(f.job.index, std::move(outcome));
}

void Core::flush(Worker& w) {
  if (!w.channelOpen) return;
  try {
    w.writer.flush(w.process.channel.get());
  } catch (const std::system_error&) {
    // EPIPE: the worker closed its end, so it is exiting or dead; the pidfd will say how.
    // Whatever it answered before that is still in the socket: take it first, or the chunks
    // it finished would be taken for the one it was running when it died.
    if (w.violation.empty()) drain(w);
    channelEnded(w);
  }
}

void Core::channelEnded(Worker& w) {
  if (!w.truncated.empty() && w.violation.empty() && w.runningError == nullptr) {
    // Killed while it wrote, most likely: its pidfd will say so. Killing it now would hide
    // whether it died on its own (a crash) or broke off and lives on (a violation).
    w.endBy = Clock::now() + options_.stopTimeout;
  } else if (w.state != State::CLOSING) {
    signalWorker(w, SIGKILL);  // make sure it dies, and learn how from its pidfd
  }
  closeChannel(w);
}

void Core::replyUnallocatable(Worker& w, std::uint64_t bytes) {
  if (!w.inFlight.empty() && w.runningError == nullptr) {
    const TaskRef& task = w.inFlight.front().job.call->task();
    char mib[32];
    std::snprintf(mib, sizeof mib, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
    w.runningError = errorPtr<TaskError>(
        task.pluginName, task.taskName, "std::bad_alloc",
        std::string("the host could not allocate ") + mib + " (" + std::to_string(bytes) +
            " bytes) to receive the chunk's results from worker " + std::to_string(w.process.pid) +
            "; that worker was replaced");
  } else if (w.inFlight.empty()) {
    violate(w, "sent a message of " + std::to_string(bytes) +
                   " bytes that the host could not allocate, answering nothing");
    return;
  }
  signalWorker(w, SIGKILL);
}

void Core::closeChannel(Worker& w) {
  // shutdown() ends the connection itself, not only this descriptor: a copy of it in a
  // process the host forked keeps the socket open, and the worker would never see its end.
  if (w.process.channel) ::shutdown(w.process.channel.get(), SHUT_RDWR);
  w.process.channel.reset();
  w.channelOpen = false;
}

void Core::signalWorker(Worker& w, int signal) {
  // The worker leads its own process group (launcher.h): the signal reaches every process its
  // tasks left in it too. Until reap() has waited for the worker, the worker (or its zombie)
  // holds the group's id, so it names no other group. The fallback is for a worker that does
  // not lead a group (ESRCH).
  if (::kill(-w.process.pid, signal) != 0) ::kill(w.process.pid, signal);
}

void Core::violate(Worker& w, const std::string& why) {
  if (w.violation.empty()) w.violation = why;
  signalWorker(w, SIGKILL);
  closeChannel(w);
}

void Core::reap(std::size_t slot) {
  Worker& w = *slots_[slot];
  // Replies written just before the worker died are still in the socket: take them first.
  if (w.channelOpen && w.violation.empty()) drain(w);
  // Whatever its tasks started and left in its group (a forked copy, a `sleep &`) ends with
  // it, whichever way it ended; before waitpid, while its zombie still holds the group's id.
  signalWorker(w, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(w.process.pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  const bool known = r == w.process.pid;
  const int sig = known && WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  const int exitStatus = known && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const std::string how = describeTermination(sig, exitStatus);
  const pid_t pid = w.process.pid;
  // A stream that ended inside a message is a crash only if a signal ended the worker then
  // (it was killed while it wrote); a worker that broke off and exited broke the protocol.
  const std::string violation = w.violation.empty() && !w.truncated.empty() && sig == 0
                                    ? w.truncated + " (then it " + how + ")"
                                    : w.violation;
  const State state = w.state;
  const bool onPurpose = w.stoppedOnPurpose;
  const std::exception_ptr runningError = w.runningError;
  // What a worker that died of a signal said as it died (a crash report from one that exited
  // is no crash: ignored).
  const std::optional<CrashContent> crash = sig != 0 ? std::move(w.crash) : std::nullopt;
  std::deque<InFlight> lost = std::move(w.inFlight);

  // Settle the pool's state (counters, the replacement worker) before failing the lost
  // chunks, so a caller woken by a failure sees the pool as it now is.
  if (state == State::READY && !onPurpose) {
    std::lock_guard lock(mutex_);
    ++stats_.workersLost;
  } else if (state == State::STARTING && !onPurpose) {
    const std::string what = "worker " + std::to_string(pid) + " " +
                             (violation.empty() ? how : violation) + " before it was ready";
    startFailed(errorPtr<StartError>(
        starting_ || startFailures_ + 1 < MAX_START_FAILURES
            ? what
            : std::to_string(startFailures_ + 1) +
                  " workers in a row died before they were ready; the pool tries again after a "
                  "pause, up to 10 s. Last: " +
                  what));
  }
  slots_.erase(slots_.begin() + static_cast<long>(slot));
  supervise();

  // Only the first unanswered chunk was running; the ones queued behind it go out again. A
  // worker killed on purpose (a cancel) was running the cancelled chunk, which has ended
  // already; if it had moved on to the next one, that one is not to blame: resend it too.
  std::deque<Job> again;
  for (std::size_t i = 0; i < lost.size(); ++i) {
    InFlight& f = lost[i];
    if (f.ended) continue;
    if (i != 0 || onPurpose) {
      again.push_back(std::move(f.job));
      continue;
    }
    const TaskRef& task = f.job.call->task();
    if (runningError) {
      fail(f, runningError);
      continue;
    }
    if (violation.empty() && f.job.attempts < options_.crashRetries) {
      ++f.job.attempts;
      again.push_front(std::move(f.job));
      std::lock_guard lock(mutex_);
      ++stats_.chunksRetried;
      continue;
    }
    if (!violation.empty()) {
      fail(f, errorPtr<ProtocolError>("worker " + std::to_string(pid) + " " + violation +
                                      "; it was killed while running " + task.pluginName + "." +
                                      task.taskName));
    } else if (crash) {
      // The item it named, if it names one of the chunk that was running.
      std::optional<std::uint64_t> item;
      if (crash->runId == f.id && crash->item < f.job.items) item = f.job.firstItem + crash->item;
      fail(f, errorPtr<WorkerCrashed>(pid, sig, exitStatus, task.pluginName, task.taskName, item,
                                      crash->frames));
    } else {
      fail(f, errorPtr<WorkerCrashed>(pid, sig, exitStatus, task.pluginName, task.taskName));
    }
  }
  pending_.insert(pending_.begin(), std::make_move_iterator(again.begin()),
                  std::make_move_iterator(again.end()));
}

void Core::failAll(std::exception_ptr error) {
  takeIncoming();
  for (auto& job : pending_) fail(job, error);
  pending_.clear();
}

void Core::fail(InFlight& f, std::exception_ptr error) {
  f.ended = true;
  f.onWorker.reset();
  fail(f.job, std::move(error));
}

void Core::fail(Job& job, std::exception_ptr error) {
  ChunkOutcome outcome;
  outcome.failure = std::move(error);
  job.call->complete(job.index, std::move(outcome));
}

void Core::countStats(const Job& job) {
  std::lock_guard lock(mutex_);
  ++stats_.chunksSent;
  stats_.itemsSent += job.items;
}

}  // namespace plugpool::detail
