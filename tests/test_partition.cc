// A remote worker behind a link that is cut. tests/remote/cluster.py makes two network
// namespaces joined by one veth pair and runs this program inside the "host" one; each worker
// is started inside the "worker" one (`ip netns exec`) and connects back to the host's
// address across the pair. Cutting the pair (`ip link set ... down`) is a network partition:
// nothing is closed or reset, packets just stop, and only the connection's liveness settings
// can tell.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
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

std::string env(const char* name) {
  const char* value = std::getenv(name);
  REQUIRE(value != nullptr);
  return value;
}

// Workers in the worker namespace, started by `prefix` after `ip netns exec NS`.
Options across(std::vector<std::string> prefix = {}) {
  Options o = testing::options(1, {testing::fixture("faults")});
  std::vector<std::string> launch = {"ip", "netns", "exec", env("PLUGPOOL_NS_WORKER")};
  launch.insert(launch.end(), prefix.begin(), prefix.end());
  plugpool::Remote remote = plugpool::LaunchCommand{launch};
  remote.address = env("PLUGPOOL_NS_HOST_ADDR");
  o.remote = remote;
  return o;
}

void setLink(const char* state) {
  const std::string command = "ip -n " + env("PLUGPOOL_NS_WORKER") + " link set " +
                              env("PLUGPOOL_NS_WORKER_LINK") + " " + state;
  REQUIRE(std::system(command.c_str()) == 0);
}

// The link is up again when the test case ends, however it ends.
struct CutLink {
  CutLink() { setLink("down"); }
  ~CutLink() { setLink("up"); }
};

// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
bool ended(Int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  return close == std::string::npos || stat.size() < close + 3 || stat[close + 2] == 'Z';
}

}  // namespace

TEST_CASE("a cut link fails the running chunk within seconds; the pool heals once it is back") {
  testing::ProcessSnapshot before;
  {
    Pool pool(across());
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto [worker, held] = testing::busyWorker(pool, 120'000);
    {
      CutLink cut;
      const auto t0 = std::chrono::steady_clock::now();
      auto e = crashOf([&] { held.get(); });
      const auto took = std::chrono::steady_clock::now() - t0;
      INFO("seen after " << std::chrono::duration<double>(took).count() << " s");
      CHECK(took < 20s);  // about 4 s with the default Liveness
      CHECK(e.signal() == 0);
      CHECK_THAT(e.what(), Catch::Contains("lost its connection to the host"));
    }
    // The replacement connects once the link is back.
    CHECK(pool.apply(pid, 0) != worker);
    CHECK(pool.stats().workersLost == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a worker cut off from its host leaves by itself, even inside a task") {
  testing::ProcessSnapshot before;
  {
    // A launcher that forks the worker instead of becoming it: the worker leads a group of its
    // own, so the host's signals to its launcher never reach it. Only its watchdog can end it.
    Pool pool(across({"sh", "-c", "\"$@\"; exit $?", "sh"}));
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto [worker, held] = testing::busyWorker(pool, 120'000);
    std::optional<CutLink> cut(std::in_place);
    CHECK_THROWS_AS(held.get(), plugpool::WorkerCrashed);
    CHECK(testing::eventually([&] { return ended(worker); }, 20s));
    // Back up before the pool goes: its replacement, still trying to connect, gets in and is
    // then stopped as any connected worker is (a worker that never connects gives up after
    // 30 s on its own).
    cut.reset();
    CHECK(pool.apply(pid, 0) != worker);
  }
  testing::requireCleanShutdown(before);
}
