#include "scheduler.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include <capnp/serialize.h>

#include "plugpool/codec.h"
#include "plugpool/errors.h"
#include "wire.capnp.h"

namespace plugpool::detail {

namespace {

template <typename E, typename... Args>
std::exception_ptr errorPtr(Args&&... args) {
  return std::make_exception_ptr(E(std::forward<Args>(args)...));
}

std::string name(const TaskRef& task) {
  return task.pluginName + "." + task.taskName;
}

// A tuple struct's layout, from an element of its list (all share it).
struct Layout {
  std::uint16_t dataWords = 0, pointers = 0;
};
Layout layoutOf(capnp::AnyStruct::Reader tuple) {
  return {static_cast<std::uint16_t>(tuple.getDataSection().size() / sizeof(capnp::word)),
          static_cast<std::uint16_t>(tuple.getPointerSection().size())};
}

// Copies a tuple struct, what its pointers point at included.
void copyTuple(capnp::AnyStruct::Reader from, capnp::AnyStruct::Builder to) {
  auto data = from.getDataSection();
  auto out = to.getDataSection();
  std::copy_n(data.begin(), std::min(data.size(), out.size()), out.begin());
  auto pointers = from.getPointerSection();
  auto outPointers = to.getPointerSection();
  for (unsigned k = 0; k < std::min(pointers.size(), outPointers.size()); ++k) {
    outPointers[k].set(pointers[k]);
  }
}

}  // namespace

ChunkOutcome assemble(const Assembly& assembly, const TaskRef& task) {
  std::vector<const Assembly::Part*> parts;
  Layout layout;
  for (const Assembly::Part& part : assembly.parts) {
    parts.push_back(&part);
    if (!part.outcome.failure && part.outcome.results.size() > 0) {
      const Layout l = layoutOf(part.outcome.results[0]);
      layout.dataWords = std::max(layout.dataWords, l.dataWords);
      layout.pointers = std::max(layout.pointers, l.pointers);
    }
  }
  std::sort(parts.begin(), parts.end(),
            [](const Assembly::Part* a, const Assembly::Part* b) { return a->offset < b->offset; });
  auto message = std::make_shared<capnp::MallocMessageBuilder>();
  auto list = message->getRoot<capnp::AnyPointer>().initAsListOfAnyStruct(
      layout.dataWords, layout.pointers, assembly.items);
  ChunkOutcome out;
  for (const Assembly::Part* part : parts) {
    const ChunkOutcome& o = part->outcome;
    out.elapsedNs += o.elapsedNs;
    out.workerPid = o.workerPid;
    std::size_t e = 0;
    for (unsigned j = 0; j < part->count; ++j) {
      if (o.failure) {
        out.errors.push_back({part->offset + j, {}, {}, o.failure});
        continue;
      }
      while (e < o.errors.size() && o.errors[e].index < j) ++e;
      if (e < o.errors.size() && o.errors[e].index == j) {
        // Made an exception here, while the part's outcome says which worker and item it was.
        out.errors.push_back({part->offset + j, {}, {}, itemError(task, o, o.errors[e])});
        continue;
      }
      copyTuple(o.results[j], list[part->offset + j]);
    }
  }
  out.results = codec::readTupleList(message->getRoot<capnp::AnyPointer>().asReader());
  out.keepAlive = std::move(message);
  out.firstItem = assembly.firstItem;
  return out;
}

Job slice(const Job& job, unsigned from, unsigned count) {
  auto run = job.message->getRoot<wire::HostMessage>().getRun().asReader();
  auto items = codec::readTupleList(run.getItems());
  auto message = std::make_shared<capnp::MallocMessageBuilder>();
  auto out = message->initRoot<wire::HostMessage>().initRun();
  out.setPlugin(run.getPlugin());
  out.setTask(run.getTask());
  out.setItemStartTimes(run.getItemStartTimes());
  const Layout layout = items.size() > 0 ? layoutOf(items[0]) : Layout{};
  auto list = out.initItems().initAsListOfAnyStruct(layout.dataWords, layout.pointers, count);
  for (unsigned j = 0; j < count; ++j) copyTuple(items[from + j], list[j]);
  Job piece;
  piece.call = job.call;
  piece.index = job.index;
  piece.message = std::move(message);
  piece.items = count;
  piece.firstItem = job.firstItem + from;
  piece.attempts = job.attempts;
  piece.assembly = job.assembly;
  piece.offset = job.offset + from;
  return piece;
}

SchedulerOptions SchedulerOptions::of(const Options& options) {
  SchedulerOptions s;
  s.workers = static_cast<unsigned>(options.workers);
  s.chunksInFlight = options.chunksInFlight;
  s.crashRetries = options.crashRetries;
  s.maxTasksPerChild = options.maxTasksPerChild;
  s.maxWords = options.maxMessageBytes / sizeof(capnp::word);
  return s;
}

Scheduler::Scheduler(SchedulerOptions options, StatsCounter& stats)
    : options_(options), stats_(stats) {}

void Scheduler::submit(Job job) {
  queue_.push_back(std::move(job));
}

void Scheduler::addWorker(WorkerId w, int pid, bool itemProgress) {
  Worker worker;
  worker.id = w;
  worker.pid = pid;
  worker.itemProgress = itemProgress;
  workers_.push_back(std::move(worker));
}

Scheduler::Worker* Scheduler::find(WorkerId w) {
  auto it =
      std::find_if(workers_.begin(), workers_.end(), [&](const Worker& x) { return x.id == w; });
  return it == workers_.end() ? nullptr : &*it;
}

const Scheduler::Worker* Scheduler::find(WorkerId w) const {
  return const_cast<Scheduler*>(this)->find(w);
}

void Scheduler::closed(WorkerId w) {
  if (Worker* worker = find(w)) worker->closed = true;
}

void Scheduler::stopping(WorkerId w) {
  if (Worker* worker = find(w)) worker->closed = worker->stopping = true;
}

bool Scheduler::retiring(WorkerId w) const {
  const Worker* worker = find(w);
  return worker != nullptr && worker->retiring;
}

std::size_t Scheduler::held(WorkerId w) const {
  const Worker* worker = find(w);
  return worker == nullptr ? 0 : worker->held.size();
}

std::size_t Scheduler::inFlightLimit(const Worker& w) const {
  if (options_.chunksInFlight != 0) return options_.chunksInFlight;
  if (w.chunkNs == 0) return AUTO_IN_FLIGHT;
  const auto queued = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(QUEUED_WORK).count());
  return std::clamp<std::size_t>(queued / w.chunkNs, AUTO_IN_FLIGHT, MAX_IN_FLIGHT);
}

std::vector<Assignment>& Scheduler::assign(Clock::time_point now) {
  std::vector<Assignment>& out = assigned_;
  out.clear();
  std::size_t running = static_cast<std::size_t>(std::count_if(
      workers_.begin(), workers_.end(), [](const Worker& w) { return runsTasks(w); }));
  while (!queue_.empty()) {
    Worker* best = nullptr;
    for (Worker& w : workers_) {
      if (w.closed || w.retiring || w.held.size() >= inFlightLimit(w)) continue;
      if (!runsTasks(w) && running >= options_.workers) continue;
      if (best == nullptr || w.held.size() < best->held.size()) best = &w;
    }
    if (best == nullptr) break;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    if (capnp::computeSerializedSizeInWords(*job.message) > options_.maxWords) {
      const TaskRef& task = job.call->task();
      fail(job, errorPtr<TaskError>(task.pluginName, task.taskName, "plugpool::MessageTooLarge",
                                    "the chunk's arguments exceed the pool's maxMessageBytes; "
                                    "use a smaller chunksize or raise the limit"));
      continue;
    }
    if (!runsTasks(*best)) ++running;
    send(*best, std::move(job), now, out);
  }
  return out;
}

void Scheduler::send(Worker& w, Job job, Clock::time_point now, std::vector<Assignment>& out) {
  stats_.sent(job.items);
  out.push_back({w.id, job.message, job.items});
  w.itemsSent += job.items;
  if (w.held.empty()) frontChanged(w, now);
  Call* call = job.call.get();
  w.held.push_back({std::move(job), false, std::nullopt, OnWorker(call)});
  if (options_.maxTasksPerChild != 0 && w.itemsSent >= options_.maxTasksPerChild) {
    // It takes no more work; the dispatcher starts its replacement now, so that it is ready
    // by the time this one has answered what it holds, and only then does it take work.
    w.retiring = true;
    stats_.add(&Stats::workersRetired);
  }
}

void Scheduler::replied(WorkerId w, ChunkOutcome&& outcome, Clock::time_point now) {
  Worker* worker = find(w);
  if (worker == nullptr || worker->held.empty()) return;
  outcome.firstItem = worker->held.front().job.firstItem;
  outcome.workerPid = worker->pid;
  const std::uint64_t ns = std::max<std::uint64_t>(1, outcome.elapsedNs);
  worker->chunkNs = worker->chunkNs == 0 ? ns : (3 * worker->chunkNs + ns) / 4;
  Held h = std::move(worker->held.front());
  worker->held.pop_front();
  frontChanged(*worker, now);  // the next chunk starts now
  h.onWorker.reset();          // before complete(): a woken waiter sees it back
  if (!h.ended) finish(h.job, std::move(outcome));
}

void Scheduler::frontChanged(Worker& w, Clock::time_point now) {
  w.frontSince = now;
  w.seen.reset();
  w.silent = false;
}

Clock::time_point Scheduler::timeoutAt(const Worker& w) const {
  // A chunk that ended while it waited in the worker (cancelled) still runs there, and is
  // bounded by its timeout as well: it holds up what waits behind it.
  if (w.stopping || w.held.empty()) return Clock::time_point::max();
  const Job& job = w.held.front().job;
  auto timeout = job.call->task().timeout;
  if (timeout.count() == 0) return Clock::time_point::max();
  if (timesItems(w)) {
    // Its item's own start, once it has said; until then it is asked when an item that
    // started with the chunk would be due.
    if (w.seen && w.seen->started) return *w.seen->started + timeout;
    return w.frontSince + timeout;
  }
  return w.frontSince + timeout * job.items;
}

std::vector<WorkerId> Scheduler::due(Clock::time_point now) const {
  std::vector<WorkerId> out;
  for (const Worker& w : workers_) {
    if (timesItems(w) && timeoutAt(w) <= now) out.push_back(w.id);
  }
  return out;
}

void Scheduler::observe(WorkerId id, const std::optional<ItemProgress>& progress) {
  Worker* w = find(id);
  if (w == nullptr || w->held.empty()) return;
  if (progress && progress->started) {
    w->seen = progress;
  } else {
    w->silent = true;  // it does not say (a chunk run as one call): the chunk is timed whole
  }
}

Clock::time_point Scheduler::nextDeadline() const {
  auto next = Clock::time_point::max();
  for (const Worker& w : workers_) next = std::min(next, timeoutAt(w));
  return next;
}

std::vector<WorkerId> Scheduler::timedOut(Clock::time_point now) {
  std::vector<WorkerId> stop;
  for (Worker& w : workers_) {
    if (timeoutAt(w) > now) continue;
    Held& front = w.held.front();
    const TaskRef& task = front.job.call->task();
    if (!front.ended && timesItems(w) && w.seen) {
      // Only this item fails, once the worker is gone and has said what it finished.
      front.timedOutItem = w.seen->item;
      stats_.add(&Stats::chunksTimedOut);
    } else if (!front.ended) {
      end(front, errorPtr<TaskTimeout>(task.pluginName, task.taskName, task.timeout.count(),
                                       front.job.items, w.pid));
      stats_.add(&Stats::chunksTimedOut);
    }
    // The chunks behind it never started: send them to other workers now, not after the grace.
    requeueAfterFront(w);
    w.closed = w.stopping = true;
    stop.push_back(w.id);
  }
  return stop;
}

void Scheduler::requeueAfterFront(Worker& w) {
  std::deque<Job> again;
  for (std::size_t i = 1; i < w.held.size(); ++i) {
    if (!w.held[i].ended) again.push_back(std::move(w.held[i].job));
  }
  if (w.held.size() > 1) w.held.erase(w.held.begin() + 1, w.held.end());
  queue_.insert(queue_.begin(), std::make_move_iterator(again.begin()),
                std::make_move_iterator(again.end()));
}

std::vector<WorkerId> Scheduler::cancel(const Call* call, bool running) {
  auto before = errorPtr<Cancelled>("cancelled before it ran");
  std::deque<Job> keep;
  for (auto& job : queue_) {
    if (call != nullptr && job.call.get() != call) {
      keep.push_back(std::move(job));
    } else {
      fail(job, before);
    }
  }
  queue_.swap(keep);
  std::vector<WorkerId> kill;
  if (!running) return kill;
  // Chunks already sent end now. The one a worker is running (the first unanswered) only
  // stops with its worker.
  auto during = errorPtr<Cancelled>("cancelled while it ran; its worker was killed and replaced");
  for (Worker& w : workers_) {
    for (std::size_t i = 0; i < w.held.size(); ++i) {
      Held& h = w.held[i];
      if (h.ended || h.job.call.get() != call) continue;
      end(h, i == 0 ? during : before);
      if (i == 0) {
        w.closed = w.stopping = true;
        kill.push_back(w.id);
      }
    }
  }
  return kill;
}

void Scheduler::failQueued(const std::exception_ptr& error) {
  for (auto& job : queue_) fail(job, error);
  queue_.clear();
}

void Scheduler::failUnfinished(const std::exception_ptr& queued,
                               const std::exception_ptr& running) noexcept {
  auto quietly = [](auto&& fn) {
    try {
      fn();
    } catch (...) {  // a Call that cannot take its outcome cannot be helped here
    }
  };
  for (auto& job : queue_) quietly([&] { fail(job, queued); });
  queue_.clear();
  for (Worker& w : workers_) {
    // Only the first unanswered chunk is running; the others wait in the worker's queue.
    for (std::size_t i = 0; i < w.held.size(); ++i) {
      if (!w.held[i].ended) quietly([&] { end(w.held[i], i == 0 ? running : queued); });
    }
    w.closed = w.stopping = true;
  }
}

std::vector<WorkerId> Scheduler::takeRetiring() {
  std::vector<WorkerId> idle;
  for (Worker& w : workers_) {
    if (!w.retiring || w.stopping || !w.held.empty()) continue;
    w.closed = w.stopping = true;
    idle.push_back(w.id);
  }
  return idle;
}

void Scheduler::workerLost(WorkerId id, const WorkerEnd& e) {
  auto it =
      std::find_if(workers_.begin(), workers_.end(), [&](const Worker& x) { return x.id == id; });
  if (it == workers_.end()) return;
  Worker w = std::move(*it);
  workers_.erase(it);
  // Only the first unanswered chunk was running; the ones queued behind it go out again. A
  // worker the pool stopped was running a chunk that has ended already (or whose item past
  // its timeout is to fail now); if it had moved on to the next one, that one is not to
  // blame: it goes out again too.
  std::deque<Job> again;
  for (std::size_t i = 0; i < w.held.size(); ++i) {
    Held& h = w.held[i];
    if (h.ended) continue;
    if (i != 0 || (w.stopping && !h.timedOutItem)) {
      again.push_back(std::move(h.job));
      continue;
    }
    const TaskRef& task = h.job.call->task();
    if (e.unallocatableBytes != 0) {
      char mib[32];
      std::snprintf(mib, sizeof mib, "%.1f MiB",
                    static_cast<double>(e.unallocatableBytes) / (1 << 20));
      end(h, errorPtr<TaskError>(task.pluginName, task.taskName, "std::bad_alloc",
                                 std::string("the host could not allocate ") + mib + " (" +
                                     std::to_string(e.unallocatableBytes) +
                                     " bytes) to receive the chunk's results from worker " +
                                     std::to_string(w.pid) + "; that worker was replaced"));
    } else if (!e.violation.empty()) {
      end(h, errorPtr<ProtocolError>("worker " + std::to_string(w.pid) + " " + e.violation +
                                     "; it was killed while running " + name(task)));
    } else if (e.partial && !e.partial->started && h.job.unstarted < MAX_UNSTARTED &&
               !h.timedOutItem) {
      // It died before it began this chunk (between two): nothing of it ran; it goes out
      // again, unblamed (a few times: a worker that dies as each chunk arrives is to blame).
      ++h.job.unstarted;
      again.push_front(std::move(h.job));
    } else if (e.partial && e.partial->started && !task.wholeChunks) {
      splitLost(w, h, e, again);
    } else if (h.timedOutItem) {
      end(h, errorPtr<TaskTimeout>(task.pluginName, task.taskName, task.timeout.count(),
                                   h.job.items, w.pid));
    } else if (h.job.attempts < options_.crashRetries) {
      ++h.job.attempts;
      again.push_front(std::move(h.job));
      stats_.add(&Stats::chunksRetried);
    } else {
      std::optional<std::uint64_t> item;
      if (e.crash && e.crashItem) item = h.job.firstItem + *e.crashItem;
      end(h, lostError(w, h.job, e, item));
    }
  }
  queue_.insert(queue_.begin(), std::make_move_iterator(again.begin()),
                std::make_move_iterator(again.end()));
}

std::exception_ptr Scheduler::lostError(const Worker& w, const Job& job, const WorkerEnd& e,
                                        std::optional<std::uint64_t> item) const {
  const TaskRef& task = job.call->task();
  if (e.crash) {
    return errorPtr<WorkerCrashed>(w.pid, e.signal, e.exitStatus, task.pluginName, task.taskName,
                                   item, e.crash->frames, e.how);
  }
  return errorPtr<WorkerCrashed>(w.pid, e.signal, e.exitStatus, task.pluginName, task.taskName,
                                 item, std::vector<StackFrame>{}, e.how);
}

void Scheduler::splitLost(const Worker& w, Held& h, const WorkerEnd& e, std::deque<Job>& again) {
  Job& job = h.job;
  const PartialReply& partial = *e.partial;
  const unsigned finished = std::min(partial.finished, job.items);
  // The item it was running: the one its crash report names if it is past those it had
  // finished (its results outgrew the log), else what the log says.
  unsigned running = std::clamp(partial.running, finished, job.items);
  if (e.crash && e.crashItem && *e.crashItem >= finished && *e.crashItem < job.items) {
    running = *e.crashItem;
  }
  h.ended = true;
  h.onWorker.reset();
  ChunkOutcome done = partial.outcome;
  done.firstItem = job.firstItem;
  done.workerPid = w.pid;
  if (finished == job.items) {  // it had finished them all: nothing is lost
    finish(job, std::move(done));
    return;
  }
  if (!job.assembly) {
    job.assembly = std::make_shared<Assembly>(Assembly{job.items, job.items, job.firstItem, {}});
    job.offset = 0;
  }
  auto part = [&](unsigned from, unsigned count, ChunkOutcome outcome) {
    Assembly& a = *job.assembly;
    a.parts.push_back({job.offset + from, count, std::move(outcome)});
    a.missing -= count;
  };
  if (finished > 0) part(0, finished, std::move(done));
  // Finished, but their results did not fit the log: run again.
  if (running > finished) again.push_back(slice(job, finished, running - finished));
  if (running < job.items) {
    const TaskRef& task = job.call->task();
    const std::uint64_t item = job.firstItem + running;
    const bool timedOut = h.timedOutItem && *h.timedOutItem == running;
    if (h.timedOutItem && !timedOut) {
      // The item past its timeout finished after all; this one was only stopped with it.
      again.push_back(slice(job, running, 1));
    } else if (!timedOut && job.attempts < options_.crashRetries) {
      Job retry = slice(job, running, 1);
      ++retry.attempts;
      again.push_back(std::move(retry));
      stats_.add(&Stats::chunksRetried);
    } else {
      ChunkOutcome failed;
      failed.failure = timedOut ? errorPtr<TaskTimeout>(task.pluginName, task.taskName,
                                                        task.timeout.count(), w.pid, item)
                                : lostError(w, job, e, item);
      part(running, 1, std::move(failed));
    }
    if (running + 1 < job.items) {
      again.push_back(slice(job, running + 1, job.items - running - 1));
    }
  }
  if (job.assembly->missing == 0) completeAssembly(job);
}

bool Scheduler::idle() const {
  return queue_.empty() && std::all_of(workers_.begin(), workers_.end(),
                                       [](const Worker& w) { return w.held.empty(); });
}

bool Scheduler::loneChunk() const {
  if (!queue_.empty()) return false;
  std::size_t out = 0;
  for (const Worker& w : workers_) out += w.held.size();
  return out == 1;
}

bool Scheduler::canServe() const {
  return std::any_of(workers_.begin(), workers_.end(),
                     [](const Worker& w) { return !w.closed && !w.retiring; });
}

void Scheduler::end(Held& h, std::exception_ptr error) {
  h.ended = true;
  h.onWorker.reset();
  fail(h.job, std::move(error));
}

void Scheduler::fail(Job& job, std::exception_ptr error) {
  ChunkOutcome outcome;
  outcome.failure = std::move(error);
  finish(job, std::move(outcome));
}

void Scheduler::finish(Job& job, ChunkOutcome&& outcome) {
  if (!job.assembly) {
    job.call->complete(job.index, std::move(outcome));
    return;
  }
  Assembly& a = *job.assembly;
  a.parts.push_back({job.offset, job.items, std::move(outcome)});
  a.missing -= job.items;
  if (a.missing == 0) completeAssembly(job);
}

void Scheduler::completeAssembly(Job& job) {
  ChunkOutcome whole;
  try {
    whole = assemble(*job.assembly, job.call->task());
  } catch (...) {
    whole.failure = std::current_exception();  // no memory to put it together
  }
  job.assembly->parts.clear();  // the parts' messages go now
  job.call->complete(job.index, std::move(whole));
}

}  // namespace plugpool::detail
