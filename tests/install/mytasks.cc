// An out-of-tree plugin, built by the install test against the installed SDK with only
// pkg-config and g++ (see check_install.py and the README's "Installing").
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include <plugpool/sdk.h>

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

}  // namespace

PLUGPOOL_PLUGIN("mytasks", PLUGPOOL_TASK(cube, "Returns x cubed."),
                PLUGPOOL_TASK(greet, "Greets someone by name."),
                PLUGPOOL_TASK(worker_executable, "The executable of the worker running it."));
