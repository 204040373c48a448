#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace plugpool::cli {

namespace {

std::string clock(double seconds) {
  auto s = static_cast<long long>(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

void writeAll(const std::string& text) {
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) return;  // EINTR included: a lost progress frame is harmless
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

Progress::Progress(bool enabled) : enabled_(enabled) {
  if (enabled_) thread_ = std::thread([this] { run(); });
}

Progress::~Progress() {
  finish();
}

std::string Progress::format(std::uint64_t done, std::int64_t total, std::uint64_t failed,
                             std::chrono::duration<double> elapsed) {
  std::string line = std::to_string(done);
  if (total >= 0) {
    line += "/" + std::to_string(total);
  }
  line += " items";
  if (total > 0) {
    line += " (" + std::to_string(done * 100 / static_cast<std::uint64_t>(total)) + "%)";
  }
  if (failed > 0) line += "  " + std::to_string(failed) + " failed";
  const double seconds = elapsed.count();
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  line += "  " + std::to_string(static_cast<long long>(rate)) + "/s";
  line += "  elapsed " + clock(seconds);
  if (total >= 0 && rate > 0) {
    const double left = static_cast<double>(total) - static_cast<double>(done);
    line += "  ETA " + clock(left > 0 ? left / rate : 0);
  }
  return line;
}

void Progress::draw() {
  writeAll("\r" +
           format(done_.load(), total_.load(), failed_.load(),
                  std::chrono::steady_clock::now() - start_) +
           "\x1b[K");
}

void Progress::run() {
  std::unique_lock lock(mutex_);
  while (!stopped_) {
    draw();
    wake_.wait_for(lock, std::chrono::milliseconds(250));
  }
}

void Progress::message(const std::string& line) {
  if (!enabled_) {
    writeAll(line + "\n");
    return;
  }
  std::lock_guard lock(mutex_);
  writeAll("\r\x1b[K" + line + "\n");
  if (!stopped_) draw();
}

void Progress::output(const std::function<void()>& write) {
  std::lock_guard lock(mutex_);
  if (enabled_) writeAll("\r\x1b[K");
  write();
  if (enabled_ && !stopped_) draw();
}

void Progress::finish() {
  if (!enabled_) return;
  {
    std::lock_guard lock(mutex_);
    if (!stopped_) {
      stopped_ = true;
      draw();
      writeAll("\n");
    }
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace plugpool::cli
