// support.h — what every test that starts processes checks at its end.
//
// A test takes a ProcessSnapshot before it creates a pool and calls requireCleanShutdown()
// after the pool is gone: no child process of ours may remain (running or zombie) and exactly
// the descriptors open before may be open after. Also: waiting for what a pool does in its
// own time (eventually), and tasks that run until the test lets them end (Gate).
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

namespace testing {

// The pids whose parent is this process, zombies included.
inline std::vector<int> childProcesses() {
  std::vector<int> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return children;
  while (dirent* entry = ::readdir(proc)) {
    int pid = std::atoi(entry->d_name);
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    int ppid;
    if ((rest >> state >> ppid) && ppid == ::getpid()) children.push_back(pid);
  }
  ::closedir(proc);
  return children;
}

inline std::set<int> openDescriptors() {
  std::set<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  int own = ::dirfd(dir);
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    int fd = std::atoi(entry->d_name);
    if (fd != own) fds.insert(fd);
  }
  ::closedir(dir);
  return fds;
}

struct ProcessSnapshot {
  std::set<int> descriptors = openDescriptors();
};

inline void requireCleanShutdown(const ProcessSnapshot& before) {
  INFO("child processes left behind by the pool");
  REQUIRE(childProcesses().empty());
  INFO("descriptors leaked by the pool");
  REQUIRE(openDescriptors() == before.descriptors);
}

// Polls `condition` every 10 ms until it holds or `limit` passed; returns whether it held.
// For what a pool or a worker does in its own time (a release when idle, a chunk reaching
// its worker, a worker's death being noticed), however slow the machine: the limit is a hang
// guard, not an expectation.
template <typename F>
bool eventually(F&& condition, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// A path under /tmp that no other test (or test process) uses, for a file the test and its
// fixture tasks share; removed when it goes.
class TempPath {
 public:
  explicit TempPath(const std::string& kind)
      : path_("/tmp/plugpool-test-" + kind + "-" + std::to_string(::getpid()) + "-" + next()) {
    std::remove(path_.c_str());
  }
  ~TempPath() { std::remove(path_.c_str()); }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;

  const std::string& path() const { return path_; }

 private:
  static std::string next() {
    static std::atomic<int> count{0};
    return std::to_string(count++);
  }
  std::string path_;
};

// A file that fixture tasks wait for (faults.wait_for_file): a task that runs until the test
// says so, instead of a sleep the test hopes is long enough.
class Gate : public TempPath {
 public:
  Gate() : TempPath("gate") {}
  // Lets every task waiting for this gate (and any later one) finish.
  void open() const {
    std::FILE* f = std::fopen(path().c_str(), "w");
    if (f) std::fclose(f);
  }
};

// How long process `pid` has run (0 if it is gone).
inline std::chrono::milliseconds ageOf(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return {};
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  for (int i = 3; i < 22 && rest >> field; ++i) {  // fields 3 (state) to 21
  }
  unsigned long long startTicks = 0;
  rest >> startTicks;  // field 22: start time, in clock ticks after boot
  double uptime = 0;
  std::ifstream("/proc/uptime") >> uptime;
  const double age = uptime - static_cast<double>(startTicks) / ::sysconf(_SC_CLK_TCK);
  return std::chrono::milliseconds(static_cast<long long>(age * 1000));
}

// The mappings of this process advised for huge pages (madvise MADV_HUGEPAGE), one line each
// ("from-to perms ..."), and their total size.
struct Advised {
  std::size_t bytes = 0;
  std::string mappings;
};
inline Advised hugePageMappings() {
  std::ifstream smaps("/proc/self/smaps");
  Advised advised;
  std::size_t size = 0;
  std::string mapping;
  for (std::string line; std::getline(smaps, line);) {
    if (line.rfind("VmFlags:", 0) == 0) {
      std::istringstream flags(line.substr(8));
      for (std::string flag; flags >> flag;) {
        if (flag != "hg") continue;
        advised.bytes += size;
        advised.mappings += mapping + "\n";
      }
      continue;
    }
    // A mapping's first line: "from-to perms offset device inode [path]"; field lines
    // ("Rss:   4 kB") have no '-' before their first space.
    auto space = line.find(' '), dash = line.find('-');
    if (dash == std::string::npos || dash > space) continue;
    size = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16) -
           std::stoull(line.substr(0, dash), nullptr, 16);
    mapping = line;
  }
  return advised;
}
inline std::string fixture(const std::string& name) {
  return std::string(FIXTURES_DIR) + "/lib" + name + ".so";
}

}  // namespace testing
