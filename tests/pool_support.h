// pool_support.h — small helpers shared by the tests that drive a Pool.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "support.h"

namespace testing {

using Int = std::int64_t;

// 0, 1, ..., n - 1.
inline std::vector<Int> range(Int n) {
  std::vector<Int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Options with `workers` workers loading `plugins`, everything else default.
inline plugpool::Options options(int workers, std::vector<std::string> plugins) {
  plugpool::Options o;
  o.workers = workers;
  o.plugins = std::move(plugins);
  return o;
}

// A worker made busy in a long task (a pool whose plugins include the "faults" fixture, with
// one worker, or one idle one): its pid, as the task `pid` reports it, and the call of
// sleep_ms(ms) it is running now.
struct BusyWorker {
  Int pid;
  plugpool::Future<Int> call;
};
inline BusyWorker busyWorker(plugpool::Pool& pool, Int ms) {
  const Int pid = pool.apply(pool.task<Int(Int)>("faults", "pid"), 0);
  const auto sent = pool.stats().chunksSent;
  auto call = pool.submit(pool.task<Int(Int)>("faults", "sleep_ms"), ms);
  REQUIRE(eventually([&] { return pool.stats().chunksSent > sent; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // into the task
  return {pid, std::move(call)};
}

// The WorkerCrashed that running `call` throws.
template <typename F>
plugpool::WorkerCrashed crashOf(F&& call) {
  try {
    call();
  } catch (const plugpool::WorkerCrashed& e) {
    return e;
  }
  FAIL("no WorkerCrashed was thrown");
  throw;  // unreachable
}

// Whether `e` holds a plugpool::Cancelled.
inline bool isCancelled(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const plugpool::Cancelled&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace testing
