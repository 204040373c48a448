// mailbox.h — the callers' hand-off to the dispatcher thread. Internal.
//
// Callers, from any thread, submit chunks and post controls (cancel, terminate); the
// dispatcher takes them in batches at the top of each loop round. Everything the two sides
// share is here, behind one mutex, and an eventfd that wakes the dispatcher from its poll.
//
// Life: open → closed (close(): submit() throws PoolClosed) → broken (breakWith(): submit()
// throws the error, once the dispatcher has failed) → exited (exit(): post() returns at once,
// nothing is left to act on).
#pragma once

#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <vector>

#include "fd.h"
#include "scheduler.h"
#include "thread_annotations.h"
#include "worker_link.h"

namespace plugpool::detail {

struct Control {
  enum Kind {
    CANCEL,         // end `call`'s chunks, sent ones too
    DISCARD,        // end `call`'s queued chunks
    CANCEL_QUEUED,  // end every queued chunk
    TERMINATE,      // end everything and stop every worker `how`
  } kind;
  std::shared_ptr<Call> call;
  Stop how = Stop::KILL;
  std::shared_ptr<std::promise<void>> done;  // set by post()
};

class Mailbox {
 public:
  // Throws std::system_error if no eventfd can be made.
  Mailbox();

  // --- callers ---
  // Queues a chunk. Throws the pool's PoolBroken once broken, PoolClosed once closed.
  void submit(Job job) EXCLUDES(mutex_);
  // Queues `control` and waits until the dispatcher has run it (or has exited).
  void post(Control control) EXCLUDES(mutex_);
  void close() EXCLUDES(mutex_);
  bool closed() const EXCLUDES(mutex_);
  // Throws PoolBroken if the pool broke, PoolClosed if it is closed; else nothing.
  void checkOpen() const EXCLUDES(mutex_);

  // --- the dispatcher ---
  // Readable while something is waiting; clearWake() after it polled readable.
  int fd() const { return wake_.get(); }
  void clearWake();
  std::deque<Job> takeJobs() EXCLUDES(mutex_);
  std::vector<Control> takeControls() EXCLUDES(mutex_);
  // Whether close() was called, and if so whether no submitted chunk is still waiting here.
  struct Closing {
    bool closed;
    bool drained;
  };
  Closing closing() const EXCLUDES(mutex_);
  // From now on submit() throws `error`; returns the chunks still waiting here.
  std::deque<Job> breakWith(std::exception_ptr error) EXCLUDES(mutex_);
  // The dispatcher is done: controls still waiting are released, later posts return at once.
  void exit() EXCLUDES(mutex_);

 private:
  void wake();

  mutable Mutex mutex_;
  std::deque<Job> jobs_ GUARDED_BY(mutex_);
  std::vector<Control> controls_ GUARDED_BY(mutex_);
  bool closed_ GUARDED_BY(mutex_) = false;
  bool exited_ GUARDED_BY(mutex_) = false;
  std::exception_ptr broken_ GUARDED_BY(mutex_);
  UniqueFd wake_;  // eventfd
};

}  // namespace plugpool::detail
