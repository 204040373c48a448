#include "core.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include <kj/exception.h>

#include "paths.h"
#include "plugpool/errors.h"
#include "spin.h"

namespace plugpool::detail {

namespace {

template <typename E, typename... Args>
std::exception_ptr errorPtr(Args&&... args) {
  return std::make_exception_ptr(E(std::forward<Args>(args)...));
}

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

// The plugin named `name` among `plugins`, or null.
const PluginInfo* findPluginInfo(const std::vector<PluginInfo>& plugins, const std::string& name) {
  for (const PluginInfo& p : plugins) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

}  // namespace

Core::Core(Options options, std::vector<std::string> pluginPaths,
           std::unique_ptr<Transport> transport)
    : options_(std::move(options)),
      workers_(static_cast<unsigned>(options_.workers)),
      session_(std::make_shared<SessionConfig>(
          SessionConfig{std::move(pluginPaths), options_.maxMessageBytes / sizeof(capnp::word),
                        options_.limits})),
      transport_(std::move(transport)),
      scheduler_(SchedulerOptions::of(options_), stats_),
      exitedFuture_(exitedPromise_.get_future().share()) {
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

// --- the callers' side ---------------------------------------------------------------------

void Core::close() {
  mailbox_.close();
}

bool Core::closed() const {
  return mailbox_.closed();
}

void Core::checkOpen() const {
  mailbox_.checkOpen();
}

void Core::join() {
  if (!closed()) throw UsageError("join() before close(), shutdown() or terminate()");
  exitedFuture_.wait();
  std::call_once(joined_, [&] { thread_.join(); });
}

void Core::cancel(std::shared_ptr<Call> call, bool running) {
  mailbox_.post({running ? Control::CANCEL : Control::DISCARD, std::move(call), Stop::KILL, {}});
}

void Core::cancelQueued() {
  close();
  mailbox_.post({Control::CANCEL_QUEUED, nullptr, Stop::KILL, {}});
}

void Core::terminate(Stop how) {
  close();
  mailbox_.post({Control::TERMINATE, nullptr, how, {}});
  join();
}

Stats Core::stats() const {
  return stats_.get();
}

void Core::submit(std::shared_ptr<Call> call, std::size_t index, std::uint64_t firstItem,
                  ChunkRequest chunk) {
  const unsigned items = chunk.size();
  mailbox_.submit({std::move(call), index, chunk.release(), items, firstItem});
}

// --- the dispatcher thread's life ----------------------------------------------------------

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
  mailbox_.exit();
  if (!up) started.set_exception(startError_);
  exitedPromise_.set_value();
}

void Core::abandon(std::exception_ptr error) noexcept {
  std::deque<Job> incoming = mailbox_.breakWith(error);  // from now on submit() throws it
  closing_ = true;
  for (auto& job : incoming) {
    try {
      ChunkOutcome outcome;
      outcome.failure = error;
      job.call->complete(job.index, std::move(outcome));
    } catch (...) {  // a Call that cannot take its outcome cannot be helped here
    }
  }
  scheduler_.failUnfinished(error, error);
  slots_.clear();  // each link kills its worker and waits for it
}

bool Core::startUp() {
  for (unsigned i = 0; i < workers_ && !startError_; ++i) {
    if (!startWorker()) break;
  }
  auto anyStarting = [&] {
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const Worker& w) { return w.state == State::STARTING; });
  };
  while (!startError_ && anyStarting()) {
    expire(Clock::now());
    poll();
  }
  starting_ = false;
  if (!startError_) return true;
  // Could not start: stop whatever did start, and reap it, before reporting.
  for (auto& w : slots_) stop(w, Stop::KILL);
  closing_ = true;
  while (!slots_.empty()) {
    expire(Clock::now());
    poll();
  }
  return false;
}

void Core::loop() {
  for (;;) {
    takeMailbox();
    expire(Clock::now());
    supervise();
    assign();
    flushAll();
    if (windDown()) return;
    poll();
  }
}

// --- the phases ----------------------------------------------------------------------------

void Core::takeMailbox() {
  takeIncoming();
  for (auto& c : mailbox_.takeControls()) {
    runControl(c);
    c.done->set_value();
  }
  // While starts keep failing, work no ready worker can take fails now instead of waiting
  // for a start that may never succeed.
  if (startsFailing() && !scheduler_.canServe()) scheduler_.failQueued(lastStartError_);
}

void Core::takeIncoming() {
  for (auto& job : mailbox_.takeJobs()) {
    if (closing_) {
      ChunkOutcome outcome;
      outcome.failure = errorPtr<PoolClosed>("the pool was shutting down; the chunk was not run");
      job.call->complete(job.index, std::move(outcome));
    } else {
      scheduler_.submit(std::move(job));
    }
  }
}

void Core::runControl(Control& c) {
  switch (c.kind) {
    case Control::TERMINATE:
      return terminateNow(c.how, "the pool was terminated");
    case Control::CANCEL_QUEUED:
      return scheduler_.failQueued(errorPtr<Cancelled>("cancelled by shutdown before it ran"));
    case Control::CANCEL:
    case Control::DISCARD:
      for (WorkerId id : scheduler_.cancel(c.call.get(), c.kind == Control::CANCEL)) {
        if (Worker* w = find(id)) stop(*w, Stop::KILL);
      }
      return;
  }
}

void Core::terminateNow(Stop how, const std::string& why) {
  takeIncoming();
  scheduler_.failUnfinished(errorPtr<Cancelled>("cancelled: " + why + " before it ran"),
                            errorPtr<Cancelled>("cancelled: " + why + " while it ran"));
  for (auto& w : slots_) stop(w, how);
  closing_ = true;
}

void Core::expire(Clock::time_point now) {
  for (WorkerId id : scheduler_.due(now)) {
    if (Worker* w = find(id)) scheduler_.observe(id, w->link->progress());
  }
  for (WorkerId id : scheduler_.timedOut(now)) {
    if (Worker* w = find(id)) stop(*w, Stop::TERMINATE);  // and replaced at once: supervise()
  }
  for (auto& w : slots_) {
    w.link->onTime(now);
    if (w.end || w.state == State::READY || now < w.deadline) continue;
    if (w.state == State::STARTING) {
      w.link->stop(Stop::KILL, "did not become ready within " +
                                   std::to_string(options_.startTimeout.count()) + " ms");
    } else {
      w.link->stop(Stop::KILL);  // CLOSING and still running: stuck in a task
    }
    w.deadline = Clock::time_point::max();
  }
}

void Core::supervise() {
  for (WorkerId id : scheduler_.takeRetiring()) {
    if (Worker* w = find(id)) stop(*w, Stop::CLOSE);  // it exits when it reads the end
  }
  replace();
}

void Core::replace() {
  if (starting_ || closing_) return;
  const auto now = Clock::now();
  while (serving() < workers_ && now >= nextStartAt_) {
    if (!startWorker()) return;
  }
}

void Core::assign() {
  for (Assignment& a : scheduler_.assign(Clock::now())) {
    find(a.worker)->link->send(std::move(a.run), a.items, HostSession::RunKind::CHUNK);
  }
}

void Core::flushAll() {
  // Everything assigned to a worker in this round leaves in one write where it fits.
  for (auto& w : slots_) w.link->flush();
}

bool Core::windDown() {
  const Mailbox::Closing asked = mailbox_.closing();
  const auto now = Clock::now();
  if (asked.closed && !closeDeadline_ && options_.shutdownTimeout.count() != 0) {
    closeDeadline_ = now + options_.shutdownTimeout;
  }
  if (!closing_ && closeDeadline_ && now >= *closeDeadline_) {
    terminateNow(Stop::TERMINATE, "the pool's shutdownTimeout (" +
                                      std::to_string(options_.shutdownTimeout.count()) +
                                      " ms) passed");
  }
  if (asked.closed && asked.drained && !closing_ && scheduler_.idle()) {
    closing_ = true;
    for (auto& w : slots_) stop(w, Stop::CLOSE);  // each exits when it reads the end
  }
  return closing_ && slots_.empty();
}

void Core::poll() {
  // Replies the workers logged (reply_log.h) come without a system call: take them first, and
  // do not sleep if there were any (the round that follows has work to send).
  bool took = false;
  for (auto& w : slots_) took = w.link->takeLogged() || took;
  fds_.clear();
  fds_.push_back({mailbox_.fd(), POLLIN, 0});
  watched_.clear();
  auto next = scheduler_.nextDeadline();
  for (auto& w : slots_) {
    watched_.push_back(fds_.size());
    w.link->watch(fds_);
    next = std::min(next, w.link->nextTimer());
    if (w.state != State::READY) next = std::min(next, w.deadline);
  }
  if (closeDeadline_ && !closing_) next = std::min(next, *closeDeadline_);
  if (!starting_ && !closing_ && serving() < workers_) next = std::min(next, nextStartAt_);
  int timeout = -1;
  if (next != Clock::time_point::max()) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now()).count();
    timeout = static_cast<int>(std::clamp<long long>(ms, 0, 60'000));
  }
  if (took) timeout = 0;
  auto logged = [&] {
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const Worker& w) { return w.link->hasLogged(); });
  };
  int n = 0;
  if (timeout != 0 && scheduler_.loneChunk()) {
    // One chunk out and nothing else to do (an apply): watch for its reply before sleeping,
    // as its caller does, so the reply is not delayed by this thread's own wake-up.
    watchBriefly([&] { return logged() || (n = ::poll(fds_.data(), fds_.size(), 0)) != 0; });
  }
  bool waiting = false;
  if (n == 0 && timeout != 0) {
    // Each worker is told to wake this thread when it logs a reply; one logged meanwhile
    // means no sleep (an eventcount).
    waiting = true;
    for (auto& w : slots_) waiting = w.link->mayWait() && waiting;
    if (!waiting) timeout = 0;
  }
  if (n == 0) n = ::poll(fds_.data(), fds_.size(), timeout);
  for (auto& w : slots_) w.link->awake();
  if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");
  if (n <= 0) return;
  if ((fds_[0].revents & POLLIN) != 0) mailbox_.clearWake();
  // The links' events; those that ended are settled after all have been heard, so that
  // replies another worker sent in the meantime are taken first.
  for (std::size_t i = 0; i < watched_.size(); ++i) slots_[i].link->onEvents(&fds_[watched_[i]]);
  for (std::size_t i = 0; i < slots_.size();) {
    if (slots_[i].end) {
      settle(i);  // erases slot i; may append a replacement
    } else {
      ++i;
    }
  }
}

// --- what links report ---------------------------------------------------------------------

void Core::received(WorkerLink& link, HostSession::Incoming&& message) {
  Worker* w = find(link);
  if (w == nullptr) return;
  switch (message.kind) {
    case HostSession::Incoming::HELLO:
      return hello(*w, std::move(message.hello));
    case HostSession::Incoming::INITIALIZED:
      return initialized(*w, message.outcome);
    case HostSession::Incoming::REPLY:
      return scheduler_.replied(w->id, std::move(message.outcome), Clock::now());
    case HostSession::Incoming::CRASH:
    case HostSession::Incoming::WAKE:
      return;  // the link keeps a crash report for its end; a wake-up only woke it
  }
}

void Core::closed(WorkerLink& link) {
  if (Worker* w = find(link)) scheduler_.closed(w->id);
}

void Core::ended(WorkerLink& link, WorkerEnd end) {
  if (Worker* w = find(link)) w->end = std::move(end);
}

// --- supervision ---------------------------------------------------------------------------

bool Core::startWorker() {
  std::unique_ptr<WorkerLink> link;
  try {
    link = transport_->start(HostSession(session_), *this);
  } catch (const StartError&) {
    startFailed(std::current_exception());
    return false;
  }
  Worker w;
  w.id = nextWorker_++;
  w.link = std::move(link);
  w.deadline = Clock::now() + options_.startTimeout;
  slots_.push_back(std::move(w));
  stats_.add(&Stats::workersStarted);
  slots_.back().link->flush();  // its Setup
  return true;
}

void Core::hello(Worker& w, HelloContent hello) {
  // The start has failed (startError_ is set only then), by another worker's Hello in this
  // dispatcher round or before: this worker is being stopped with the rest, and nothing is
  // sent to it.
  if (startError_) return;
  if (!hello.loadError.empty()) {
    // The worker exits by itself after this; its exit is not a second failure.
    w.onPurpose = true;
    startFailed(errorPtr<PluginError>(hello.loadError), /*final=*/true);
    return;
  }
  if (plugins_.empty() && starting_) {
    try {
      // decodeHello checked that there is one manifest per plugin asked for.
      for (std::size_t i = 0; i < hello.plugins.size(); ++i)
        checkFoundPlugin(options_.plugins[i], hello.plugins[i]);
    } catch (const PluginError&) {
      return startFailed(std::current_exception());
    }
    plugins_ = std::move(hello.plugins);
    if (options_.initializer) {
      Initializer& init = options_.initializer;
      try {
        if (init.dynamicEncode_) {
          // Bound by the manifest's own types; an unknown task fails in bindByName.
          const PluginInfo* plugin = findPluginInfo(plugins_, init.plugin_);
          const TaskInfo* info = plugin ? plugin->find(init.task_) : nullptr;
          auto bound = bindByName(plugins_, init.plugin_, init.task_,
                                  info ? info->argTypes : std::vector<std::string>{},
                                  info ? info->resultType : std::string{});
          init.resolve(*plugin, *info);  // may throw what the front end's encoder threw
          // Only now: a worker whose Hello follows must never find it bound without its
          // arguments.
          initializer_ = std::move(bound);
        } else {
          initializer_ =
              bindByName(plugins_, init.plugin_, init.task_, init.argTypes_, init.resultType_);
        }
      } catch (const PluginError& e) {
        if (!startError_) {
          startError_ = errorPtr<PluginError>(std::string("initializer: ") + e.what());
        }
        return;
      } catch (...) {
        if (!startError_) startError_ = std::current_exception();
        return;
      }
    }
  } else if (hello.plugins != plugins_) {
    return w.link->stop(Stop::KILL, "loaded plugins that differ from the other workers'");
  }
  if (!initializer_) return becomeReady(w);
  const Initializer& init = options_.initializer;
  ChunkRequest request(*initializer_, 1, init.dataWords_, init.pointers_);
  init.encode_(request.items()[0]);
  w.link->send(request.release(), 1, HostSession::RunKind::INITIALIZER);
  w.link->flush();
}

void Core::initialized(Worker& w, const ChunkOutcome& outcome) {
  if (outcome.errors.empty()) return becomeReady(w);
  // A failing initializer fails the pool at once: a fresh worker would fail the same way.
  const ItemFailure& e = outcome.errors[0];
  startFailed(errorPtr<StartError>(
                  "the initializer " + initializer_->pluginName + "." + initializer_->taskName +
                  " failed in worker " + std::to_string(w.link->pid()) + ": " + e.type + ": " +
                  e.message + "; the pool does not start workers whose initializer fails"),
              /*final=*/true);
  stop(w, Stop::KILL);
}

void Core::becomeReady(Worker& w) {
  w.state = State::READY;
  w.deadline = Clock::time_point::max();
  startFailures_ = 0;  // healed
  lastStartError_ = nullptr;
  nextStartAt_ = {};
  scheduler_.addWorker(w.id, w.link->pid(), w.link->logsReplies());
}

void Core::stop(Worker& w, Stop how) {
  w.link->stop(how);
  w.onPurpose = true;
  scheduler_.stopping(w.id);
  if (w.state == State::CLOSING) return;
  w.state = State::CLOSING;
  w.deadline = Clock::now() + options_.stopTimeout;  // then SIGKILL (expire)
}

void Core::settle(std::size_t slot) {
  Worker w = std::move(slots_[slot]);
  slots_.erase(slots_.begin() + static_cast<long>(slot));
  const WorkerEnd& end = *w.end;
  // Settle the pool's state (counters, the replacement worker) before failing the lost
  // chunks, so a caller woken by a failure sees the pool as it now is.
  if (w.state == State::READY && !w.onPurpose) {
    stats_.add(&Stats::workersLost);
  } else if (w.state == State::STARTING && !w.onPurpose) {
    const std::string what = "worker " + std::to_string(w.link->pid()) + " " +
                             (end.violation.empty() ? end.how : end.violation) +
                             " before it was ready";
    startFailed(errorPtr<StartError>(
        starting_ || startFailures_ + 1 < MAX_START_FAILURES
            ? what
            : std::to_string(startFailures_ + 1) +
                  " workers in a row died before they were ready; the pool tries again after a "
                  "pause, up to 10 s. Last: " +
                  what));
  }
  replace();
  scheduler_.workerLost(w.id, end);
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
  return static_cast<std::size_t>(std::count_if(slots_.begin(), slots_.end(), [&](const Worker& w) {
    return w.state != State::CLOSING && !scheduler_.retiring(w.id);
  }));
}

Core::Worker* Core::find(const WorkerLink& link) {
  for (auto& w : slots_) {
    if (w.link.get() == &link) return &w;
  }
  return nullptr;
}

Core::Worker* Core::find(WorkerId id) {
  for (auto& w : slots_) {
    if (w.id == id) return &w;
  }
  return nullptr;
}

}  // namespace plugpool::detail
