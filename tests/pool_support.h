// pool_support.h — small helpers shared by the tests that drive a Pool.
#pragma once

#include <cstdint>
#include <exception>
#include <numeric>
#include <string>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

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
