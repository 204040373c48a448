// An out-of-tree plugin, built by the install tests against the installed SDK, with
// pkg-config and g++ and with CMake (see installed.py and the README's "Installing"). `bounds`
// returns a struct of the plugin's own schema (mytypes.capnp, compiled into plugin and host).
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <plugpool/sdk.h>

#include "mytypes.capnp.h"

namespace {

std::int64_t cube(std::int64_t x) {
  return x * x * x;
}

std::string greet(std::string_view name) {
  return "hello, " + std::string(name);
}

// The executable of the process that runs the task: shows which worker the pool started.
std::string worker_executable() {
  char path[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n < 0) throw std::system_error(errno, std::generic_category(), "readlink /proc/self/exe");
  return std::string(path, static_cast<std::size_t>(n));
}

// The smallest and largest of a list, as a Range (a struct result fills a trailing Builder).
void bounds(const std::vector<std::int64_t>& values, mytypes::Range::Builder out) {
  if (values.empty()) throw std::invalid_argument("bounds of an empty list");
  auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  out.setLo(*lo);
  out.setHi(*hi);
}

}  // namespace

PLUGPOOL_PLUGIN("mytasks", PLUGPOOL_TASK(cube, "Returns x cubed."),
                PLUGPOOL_TASK(greet, "Greets someone by name."),
                PLUGPOOL_TASK(bounds, "The smallest and largest of a list."),
                PLUGPOOL_TASK(worker_executable, "The executable of the worker running it."));
