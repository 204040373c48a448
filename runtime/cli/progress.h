// progress.h — the live progress line of `plugpool map` on a terminal. Internal to the CLI.
//
// Debian 12 packages no C or C++ progress-bar library (indicators, tqdm-cpp and the like are
// not in it), and one status line needs only a carriage return and an erase-line escape, so
// this is hand-written: about a hundred lines instead of a vendored dependency.
//
// A Progress started on a terminal redraws one line on stderr four times a second:
//   1234567/10000000 items (12%)  3 failed  812345/s  elapsed 0:01  ETA 0:10
// (done/total and ETA only once the total is known). It draws nothing when stderr is not a
// terminal. message() prints a whole line above the progress line. finish() draws the final
// state and ends the line.
//
// Thread safety: add(), setTotal() and message() may be called from any thread; drawing
// happens on the Progress's own thread, started by the constructor and joined by finish() or
// the destructor.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace plugpool::cli {

class Progress {
 public:
  // Draws only if `enabled` (the caller passes whether stderr is a terminal).
  explicit Progress(bool enabled);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  bool enabled() const { return enabled_; }
  void add(bool failed) {
    done_.fetch_add(1, std::memory_order_relaxed);
    if (failed) failed_.fetch_add(1, std::memory_order_relaxed);
  }
  void setTotal(std::uint64_t total) { total_.store(static_cast<std::int64_t>(total)); }
  // Writes `line` and a newline to stderr, keeping the progress line below it.
  void message(const std::string& line);
  // Calls `write`, which writes whole lines to stdout, with the progress line cleared, and
  // draws the line again below them: for a stdout that is the same terminal as stderr, where
  // results would otherwise run into the line. An exception from `write` propagates, and the
  // line is drawn again only by finish().
  void output(const std::function<void()>& write);
  // Draws the final line and stops drawing. Idempotent.
  void finish();

  // The progress line for these counts (no escapes), e.g. for tests of the format.
  static std::string format(std::uint64_t done, std::int64_t total, std::uint64_t failed,
                            std::chrono::duration<double> elapsed);

 private:
  void run();
  void draw();  // REQUIRES: mutex_ held

  const bool enabled_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> done_{0}, failed_{0};
  std::atomic<std::int64_t> total_{-1};  // -1: unknown
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopped_ = false;  // GUARDED_BY(mutex_)
  std::thread thread_;
};

}  // namespace plugpool::cli
