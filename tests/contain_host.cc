// contain-host — a small host application that test_contain runs as a child process, for what
// a test cannot do to its own process: be killed, or run as a daemon with its standard
// descriptors closed.
//
//   contain-host orphans spawn|fork|remote REPORT_FD PLUGIN [busy]
//     One worker (plugin "descendants" at PLUGIN) leaves two sleeping processes behind; with
//     `busy`, the worker then runs a task that sleeps for a minute. Writes "WORKER SLEEPER
//     SLEEPER" to REPORT_FD, then waits to be killed.
//   contain-host daemon spawn|fork|remote REPORT_FD PLUGIN
//     Closes descriptors 0, 1 and 2, starts a pool, and runs work while another thread reads
//     descriptor 0 and writes to 1 and 2 all along. Writes "key value..." lines to REPORT_FD
//     and ends with "done".
//
// Either way the host dies with the test (PR_SET_PDEATHSIG), so a failing test leaves nothing.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <plugpool/pool.h>

#include "stdio_targets.h"

namespace {

using Int = std::int64_t;

int reportFd = -1;

void report(const std::string& line) {
  const std::string out = line + "\n";
  (void)!::write(reportFd, out.data(), out.size());
}

// `method`: spawn, fork, or remote (workers started by `env` that connect back over TCP).
plugpool::Options options(std::string_view method, const std::string& plugin, int workers) {
  plugpool::Options o;
  o.workers = workers;
  o.plugins = {plugin};
  o.startMethod = method == "fork" ? plugpool::StartMethod::FORK : plugpool::StartMethod::SPAWN;
  if (method == "remote") {
    plugpool::Remote remote = plugpool::LaunchCommand{{"env"}};
    remote.address = "127.0.0.1";
    o.remote = remote;
  }
  return o;
}

[[noreturn]] void orphans(std::string_view method, const std::string& plugin, bool busy) {
  plugpool::Pool pool(options(method, plugin, 1));
  const Int worker = pool.apply(pool.task<Int(Int)>("descendants", "pid"), 0);
  const Int forked = pool.apply(pool.task<Int(Int)>("descendants", "fork_sleeper"), 300);
  const Int shell = pool.apply(pool.task<Int(Int)>("descendants", "shell_sleeper"), 300);
  if (busy) {
    // Left running on purpose: the host is killed while its worker is inside this task.
    auto hang = pool.submit(pool.task<Int(Int)>("descendants", "sleep_ms"), 60'000);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  report(std::to_string(worker) + " " + std::to_string(forked) + " " + std::to_string(shell));
  for (;;) ::pause();  // until the test kills us
}

int daemon(std::string_view method, const std::string& plugin) {
  for (int fd = 0; fd < 3; ++fd) ::close(fd);
  std::atomic<bool> stop{false};
  std::thread noise;
  try {
    plugpool::Pool pool(options(method, plugin, 2));
    report("after-start " + testing::stdioTargets());
    // What a daemon's other threads do with the descriptors it closed: read "stdin" and print.
    noise = std::thread([&] {
      while (!stop.load()) {
        char buffer[64];
        (void)!::read(0, buffer, sizeof buffer);
        (void)!::write(1, "noise\n", 6);
        (void)!::write(2, "noise\n", 6);
        ::usleep(100);
      }
    });
    auto pid = pool.task<Int(Int)>("descendants", "pid");
    int applied = 0;
    for (int i = 0; i < 200; ++i) applied += pool.apply(pid, i) > 0;
    report("applied " + std::to_string(applied));
    std::vector<Int> items(2000, 0);
    int mapped = 0;
    for (Int p : pool.map(pid, items, 1)) mapped += p > 0;
    report("mapped " + std::to_string(mapped));
    report("after-run " + testing::stdioTargets());
    report("worker-stdio " +
           pool.apply(pool.task<std::string(Int)>("descendants", "stdio_targets"), 0));
    report("lost " + std::to_string(pool.stats().workersLost));
  } catch (const std::exception& e) {
    report(std::string("error ") + e.what());
  }
  stop = true;
  if (noise.joinable()) noise.join();
  report("done");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (argc < 5) return 2;
  const std::string_view mode = argv[1];
  reportFd = std::atoi(argv[3]);
  const std::string plugin = argv[4];
  if (mode == "orphans") orphans(argv[2], plugin, argc > 5 && std::string_view(argv[5]) == "busy");
  if (mode == "daemon") return daemon(argv[2], plugin);
  return 2;
}
