// Workers as Slurm job steps, on a real (private) Slurm: tests/remote/cluster.py starts munged,
// slurmctld and two slurmd's (nodes n1 and n2, on this machine) and runs this program inside
// `salloc -N 2 -n 4`. Every worker is an `srun --exact` step that connects back over TCP; the
// steps' processes run on this machine, so the test can see and kill them.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Options;
using plugpool::Pool;
using testing::crashOf;
using testing::Int;

namespace {

using namespace std::chrono_literals;

Options slurm(int workers, std::vector<std::string> plugins) {
  Options o = testing::options(workers, std::move(plugins));
  o.remote = plugpool::Slurm{};
  return o;
}

std::string faults() {
  return testing::fixture("faults");
}

// The processes whose command line starts with `text` (its arguments separated by spaces).
std::vector<int> processesWith(const std::string& text) {
  std::vector<int> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline");
    std::string line((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (char& c : line) c = c == '\0' ? ' ' : c;
    if (line.starts_with(text)) found.push_back(std::stoi(name));
  }
  return found;
}

// The remote workers running on this machine (on any node).
std::vector<int> workers() {
  return processesWith(REAL_WORKER + std::string(" --connect"));
}

int parentOf(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int ppid = 0;
  const auto close = stat.rfind(')');
  if (close != std::string::npos) std::sscanf(stat.c_str() + close + 1, " %*c %d", &ppid);
  return ppid;
}

// No worker, and no step of this job, is left on any node.
void requireNothingLeftOnTheNodes() {
  CHECK(testing::eventually([] { return workers().empty(); }, 30s));
  CHECK(testing::eventually(
      [] {
        return processesWith("slurmstepd: [" + std::string(std::getenv("SLURM_JOB_ID"))).empty();
      },
      30s));
}

}  // namespace

TEST_CASE("inside an allocation, the workers are job steps spread over its nodes") {
  REQUIRE(std::getenv("SLURM_JOB_ID") != nullptr);
  testing::ProcessSnapshot before;
  {
    Pool pool(slurm(4, {"examples"}));
    auto node = pool.task<std::string()>("examples", "node");
    std::set<std::string> nodes;
    for (int round = 0; round < 20 && nodes.size() < 2; ++round) {
      std::vector<plugpool::Future<std::string>> calls;
      for (int i = 0; i < 16; ++i) calls.push_back(pool.submit(node));
      for (auto& c : calls) nodes.insert(c.get());
    }
    CHECK(nodes == std::set<std::string>{"n1", "n2"});
    auto square = pool.task<Int(Int)>("examples", "square");
    const auto items = testing::range(20'000);
    const auto squares = pool.map(square, items);
    bool right = squares.size() == items.size();
    for (std::size_t i = 0; right && i < items.size(); ++i)
      right = squares[i] == items[i] * items[i];
    CHECK(right);
    CHECK(workers().size() == 4);
  }
  testing::requireCleanShutdown(before);
  requireNothingLeftOnTheNodes();
}

TEST_CASE("a killed step fails only its chunk, with its signal, and is replaced") {
  testing::ProcessSnapshot before;
  {
    Pool pool(slurm(1, {faults()}));
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto [worker, held] = testing::busyWorker(pool, 60'000);
    ::kill(static_cast<pid_t>(worker), SIGKILL);
    auto e = crashOf([&] { held.get(); });
    CHECK(e.signal() == SIGKILL);  // srun's 137, read as the signal it stands for
    CHECK_THAT(e.what(), Catch::Contains("was killed by signal 9 (SIGKILL)"));
    CHECK(pool.apply(pid, 0) != worker);
    CHECK(pool.stats().workersLost == 1);
  }
  testing::requireCleanShutdown(before);
  requireNothingLeftOnTheNodes();
}

TEST_CASE("a timeout and a cancel stop their steps; the pool goes on") {
  testing::ProcessSnapshot before;
  {
    Options o = slurm(2, {faults()});
    o.taskTimeout = 500ms;
    Pool pool(o);
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    CHECK_THROWS_AS(pool.apply(sleep, 60'000), plugpool::TaskTimeout);
    auto untimed = sleep.withTimeout(0ms);
    auto slow = pool.submit(untimed, 60'000);
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 2; }));
    std::this_thread::sleep_for(200ms);
    slow.cancel();
    CHECK_THROWS_AS(slow.get(), plugpool::Cancelled);
    CHECK(pool.apply(sleep, 1) == 1);
    pool.terminateWorkers();
  }
  testing::requireCleanShutdown(before);
  requireNothingLeftOnTheNodes();
}

TEST_CASE("a worker whose node dies is caught by its connection, not by srun") {
  testing::ProcessSnapshot before;
  {
    Pool pool(slurm(1, {faults()}));
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto [worker, held] = testing::busyWorker(pool, 60'000);
    const int stepd = parentOf(static_cast<int>(worker));
    {
      std::ifstream in("/proc/" + std::to_string(stepd) + "/cmdline");
      std::string name;
      std::getline(in, name, '\0');
      REQUIRE_THAT(name, Catch::StartsWith("slurmstepd"));
    }
    // The node "dies": its step daemon and the task go at once, and srun hears nothing.
    const auto t0 = std::chrono::steady_clock::now();
    ::kill(stepd, SIGKILL);
    ::kill(static_cast<pid_t>(worker), SIGKILL);
    auto e = crashOf([&] { held.get(); });
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took < 20s);  // srun took 96 s to notice here, and then exited 0
    CHECK(e.signal() == 0);
    CHECK_THAT(e.what(),
               Catch::Contains("ended its connection, and its launcher was still running"));
    CHECK(pool.apply(pid, 0) != worker);  // replaced
  }
  testing::requireCleanShutdown(before);
  requireNothingLeftOnTheNodes();
}
