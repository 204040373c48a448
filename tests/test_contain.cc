// Containment with real processes: what a task starts dies with its worker, on every way a
// worker stops (the pool's end, a timeout, a cancel, terminate, kill, retirement, a crash, the
// host's own death); and the pool's descriptors stay off 0, 1 and 2, so a host that closed
// them (a daemon) can go on using those numbers, and its workers get /dev/null there.
//
// The processes a task leaves are not our children: the tests watch them by pid and start
// time in /proc, and kill any still running when a test ends, pass or fail.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

extern char** environ;

using plugpool::Pool;
using plugpool::StartMethod;
using testing::Int;
using namespace std::chrono_literals;

namespace {

const std::string PLUGIN = testing::fixture("descendants");

// The start methods to test. Sanitizer builds test SPAWN only: their runtimes are not
// fork-safe (tests/meson.build says why test_fork is not run under them).
std::vector<StartMethod> startMethods() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return {StartMethod::SPAWN};
#else
  return {StartMethod::SPAWN, StartMethod::FORK};
#endif
}

const char* nameOf(StartMethod method) {
  return method == StartMethod::FORK ? "fork" : "spawn";
}

// What contain-host is told to start its workers with: each start method, and "remote" (a
// LaunchCommand pool whose workers connect back over TCP and get no death signal: their
// watchdog sees the connection end).
std::vector<std::string> hostMethods() {
  std::vector<std::string> methods;
  for (StartMethod method : startMethods()) methods.push_back(nameOf(method));
  methods.push_back("remote");
  return methods;
}

// A process known by pid and start time (field 22 of /proc/pid/stat), so that a pid reused
// by an unrelated process is never taken for it.
struct Process {
  pid_t pid = -1;
  unsigned long long start = 0;
};

// The state letter and start time of `pid`, if it exists.
std::optional<std::pair<char, unsigned long long>> statOf(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  char state = '?';
  rest >> state;
  std::string field;
  for (int i = 4; i < 22; ++i) rest >> field;  // ppid .. priority, nice .. itrealvalue
  unsigned long long start = 0;
  rest >> start;
  return std::make_pair(state, start);
}

// Running (or stopped): neither gone nor a zombie waiting for its new parent to reap it.
bool running(const Process& p) {
  auto s = statOf(p.pid);
  return s && s->second == p.start && s->first != 'Z' && s->first != 'X';
}

// Waits up to `limit` for `p` to stop running.
bool endsWithin(const Process& p, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (running(p)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// The processes a test watches. Whatever still runs when it goes out of scope is killed, so
// no test leaves a process behind, whether it passed or not.
class Watched {
 public:
  Watched() = default;
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;
  ~Watched() {
    for (const Process& p : all_) {
      if (running(p)) ::kill(p.pid, SIGKILL);
    }
  }

  // Starts watching `pid`, which must be running now.
  Process add(Int pid) {
    auto s = statOf(static_cast<pid_t>(pid));
    INFO("process " << pid << " is running when the task returns");
    REQUIRE(s);
    Process p{static_cast<pid_t>(pid), s->second};
    all_.push_back(p);
    REQUIRE(running(p));
    return p;
  }

  // Requires every watched process to end within a generous 10 s.
  void requireAllEnd() const {
    for (const Process& p : all_) {
      INFO("process " << p.pid << " ended");
      CHECK(endsWithin(p, 10s));
    }
  }

 private:
  std::vector<Process> all_;
};

plugpool::Options oneWorker(StartMethod method) {
  auto o = testing::options(1, {PLUGIN});
  o.startMethod = method;
  return o;
}

// Has the pool's (only) worker leave a forked copy that ignores SIGTERM and a shell-started
// sleep re-parented away from it, both sleeping 300 s; watches them.
void leaveSleepers(Pool& pool, Watched& watched) {
  watched.add(pool.apply(pool.task<Int(Int)>("descendants", "fork_sleeper"), 300));
  watched.add(pool.apply(pool.task<Int(Int)>("descendants", "shell_sleeper"), 300));
}

// A child process running tests/contain_host.cc, reporting through a pipe. Killed and reaped
// when it goes out of scope.
class Host {
 public:
  explicit Host(std::vector<std::string> args) {
    int pipe[2];
    REQUIRE(::pipe2(pipe, O_CLOEXEC) == 0);
    report_ = pipe[0];
    std::vector<std::string> all = {CONTAIN_HOST, args[0], args[1], std::to_string(REPORT_FD),
                                    PLUGIN};
    all.insert(all.end(), args.begin() + 2, args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe[1], REPORT_FD);
    const int rc = ::posix_spawn(&pid_, CONTAIN_HOST, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(pipe[1]);
    REQUIRE(rc == 0);
  }
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;
  ~Host() {
    kill();
    ::close(report_);
  }

  // The next line it reports, or "" if it ends or `limit` passes first.
  std::string line(std::chrono::milliseconds limit = 60s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      auto newline = buffered_.find('\n');
      if (newline != std::string::npos) {
        std::string out = buffered_.substr(0, newline);
        buffered_.erase(0, newline + 1);
        return out;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd ready{report_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&ready, 1, static_cast<int>(left.count())) <= 0) return "";
      char chunk[512];
      const ssize_t n = ::read(report_, chunk, sizeof chunk);
      if (n <= 0) return "";
      buffered_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  // SIGKILL, then reap.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    wait();
  }

  // Reaps it; returns its wait status.
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  static constexpr int REPORT_FD = 9;
  pid_t pid_ = -1;
  int report_ = -1;
  std::string buffered_;
};

}  // namespace

TEST_CASE("every worker leads a process group of its own") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Pool pool(oneWorker(method));
    const Int pid = pool.apply(pool.task<Int(Int)>("descendants", "pid"), 0);
    const Int pgid = pool.apply(pool.task<Int(Int)>("descendants", "pgid"), 0);
    REQUIRE(pgid == pid);
    REQUIRE(pgid != ::getpgrp());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with the pool (~Pool)") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Watched watched;
    {
      Pool pool(oneWorker(method));
      leaveSleepers(pool, watched);
    }
    watched.requireAllEnd();
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with a worker stopped by a task timeout") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Watched watched;
    Pool pool(oneWorker(method));
    leaveSleepers(pool, watched);
    auto sleepy = pool.task<Int(Int)>("descendants", "sleep_ms").withTimeout(300ms);
    REQUIRE_THROWS_AS(pool.apply(sleepy, 60'000), plugpool::TaskTimeout);
    watched.requireAllEnd();  // while the pool lives on
    REQUIRE(pool.apply(pool.task<Int(Int)>("descendants", "sleep_ms"), 1) == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with a worker killed by a cancel") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Watched watched;
    Pool pool(oneWorker(method));
    leaveSleepers(pool, watched);
    auto running = pool.submit(pool.task<Int(Int)>("descendants", "sleep_ms"), 60'000);
    std::this_thread::sleep_for(300ms);  // it is running
    REQUIRE(running.cancel());
    watched.requireAllEnd();
    REQUIRE(pool.apply(pool.task<Int(Int)>("descendants", "sleep_ms"), 1) == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with terminate() and killWorkers()") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    for (bool kill : {false, true}) {
      INFO((kill ? "killWorkers()" : "terminate()"));
      Watched watched;
      Pool pool(oneWorker(method));
      leaveSleepers(pool, watched);
      auto running = pool.submit(pool.task<Int(Int)>("descendants", "sleep_ms"), 60'000);
      std::this_thread::sleep_for(100ms);
      if (kill) {
        pool.killWorkers();
      } else {
        pool.terminate();  // SIGTERM: the forked copy ignores it, yet it ends too
      }
      REQUIRE(running.cancelled());
      watched.requireAllEnd();
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with a worker retired by maxTasksPerChild") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Watched watched;
    auto o = oneWorker(method);
    o.maxTasksPerChild = 3;
    Pool pool(o);
    auto pid = pool.task<Int(Int)>("descendants", "pid");
    // Two items leave processes, seen running; the third makes the worker retire, and it
    // exits by itself once it has answered. (Had the second been the last, the worker could
    // retire, and its processes end, before the test looked at them.)
    leaveSleepers(pool, watched);
    const Int retiring = pool.apply(pid, 0);
    watched.requireAllEnd();
    REQUIRE(pool.apply(pid, 0) != retiring);
    REQUIRE(pool.stats().workersRetired >= 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("processes a task leaves behind end with a worker that crashes") {
  testing::ProcessSnapshot before;
  for (StartMethod method : startMethods()) {
    INFO("start method " << nameOf(method));
    Watched watched;
    Pool pool(oneWorker(method));
    leaveSleepers(pool, watched);
    REQUIRE_THROWS_AS(pool.apply(pool.task<Int(Int)>("descendants", "crash"), 0),
                      plugpool::WorkerCrashed);
    watched.requireAllEnd();
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a worker and the processes its tasks left end when the host is killed") {
  testing::ProcessSnapshot before;
  for (const std::string& method : hostMethods()) {
    for (bool busy : {false, true}) {
      INFO("start method " << method << (busy ? ", worker inside a task" : ", idle"));
      Watched watched;
      std::vector<std::string> args = {"orphans", method};
      if (busy) args.push_back("busy");
      Host host(args);
      std::istringstream pids(host.line());
      Int worker = 0, forked = 0, shell = 0;
      REQUIRE(pids >> worker >> forked >> shell);
      watched.add(worker);
      watched.add(forked);
      watched.add(shell);
      host.kill();  // SIGKILL: nothing of the pool runs in the host any more
      watched.requireAllEnd();
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a host with stdin, stdout and stderr closed keeps them free of the pool's descriptors") {
  testing::ProcessSnapshot before;
  for (const std::string& method : hostMethods()) {
    INFO("start method " << method);
    Host host({"daemon", method});
    std::map<std::string, std::string> report;
    bool done = false;
    for (std::string line = host.line(); !line.empty() && !done; line = host.line()) {
      done = line == "done";
      auto space = line.find(' ');
      report[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
    }
    if (!done) host.kill();  // hung, or died: what it reported says where
    CHECK(done);
    const int status = done ? host.wait() : 0;
    const bool failed = report.count("error") != 0;
    INFO("the host's report: " << (failed ? "error " + report["error"] : "no error"));
    CHECK(!failed);
    // Nothing else in that host opens descriptors: whatever is on 0-2 would be the pool's.
    CHECK(report["after-start"] == "closed closed closed");
    CHECK(report["after-run"] == "closed closed closed");
    // A thread reading "stdin" and writing "stdout" took no wake-up and hit no worker.
    CHECK(report["applied"] == "200");
    CHECK(report["mapped"] == "2000");
    CHECK(report["lost"] == "0");
    CHECK(report["worker-stdio"] == "/dev/null /dev/null /dev/null");
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  testing::requireCleanShutdown(before);
}
