// stdio_targets.h — where this process's descriptors 0, 1 and 2 lead, for the tests of a
// host that closed them (tests/contain_host.cc and the descendants fixture's stdio_targets).
#pragma once

#include <unistd.h>

#include <string>

namespace testing {

// "readlink(0) readlink(1) readlink(2)", with "closed" for one that is not open.
inline std::string stdioTargets() {
  std::string out;
  for (int fd = 0; fd < 3; ++fd) {
    char target[256];
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (!out.empty()) out += ' ';
    out += n < 0 ? std::string("closed") : std::string(target, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace testing
