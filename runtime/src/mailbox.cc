#include "mailbox.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>
#include <utility>

#include "plugpool/errors.h"

namespace plugpool::detail {

Mailbox::Mailbox() : wake_(aboveStdio(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))) {
  if (!wake_) throw std::system_error(errno, std::generic_category(), "eventfd");
}

void Mailbox::wake() {
  std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

void Mailbox::clearWake() {
  std::uint64_t count;
  (void)!::read(wake_.get(), &count, sizeof count);
}

void Mailbox::submit(Job job) {
  bool first;
  {
    MutexLock lock(mutex_);
    if (broken_) std::rethrow_exception(broken_);
    if (closed_) throw PoolClosed("the pool is closed; it takes no new work");
    first = jobs_.empty();
    jobs_.push_back(std::move(job));
  }
  // Only the first chunk of a batch wakes the dispatcher: until it takes the batch (after it
  // has consumed that wake-up), later ones join the same batch.
  if (first) wake();
}

void Mailbox::post(Control control) {
  control.done = std::make_shared<std::promise<void>>();
  auto done = control.done->get_future();
  {
    MutexLock lock(mutex_);
    if (exited_) return;  // nothing is left to act on
    controls_.push_back(std::move(control));
  }
  wake();
  done.wait();
}

void Mailbox::close() {
  {
    MutexLock lock(mutex_);
    closed_ = true;
  }
  wake();
}

bool Mailbox::closed() const {
  MutexLock lock(mutex_);
  return closed_;
}

void Mailbox::checkOpen() const {
  MutexLock lock(mutex_);
  if (broken_) std::rethrow_exception(broken_);
  if (closed_) throw PoolClosed("the pool is closed; it takes no new work");
}

std::deque<Job> Mailbox::takeJobs() {
  std::deque<Job> jobs;
  MutexLock lock(mutex_);
  jobs.swap(jobs_);
  return jobs;
}

std::vector<Control> Mailbox::takeControls() {
  std::vector<Control> controls;
  MutexLock lock(mutex_);
  controls.swap(controls_);
  return controls;
}

Mailbox::Closing Mailbox::closing() const {
  MutexLock lock(mutex_);
  return {closed_, jobs_.empty()};
}

std::deque<Job> Mailbox::breakWith(std::exception_ptr error) {
  std::deque<Job> jobs;
  MutexLock lock(mutex_);
  broken_ = std::move(error);
  closed_ = true;
  jobs.swap(jobs_);
  return jobs;
}

void Mailbox::exit() {
  std::vector<Control> left;
  {
    MutexLock lock(mutex_);
    exited_ = true;
    closed_ = true;
    left.swap(controls_);
  }
  for (auto& c : left) c.done->set_value();
}

}  // namespace plugpool::detail
