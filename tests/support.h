// support.h — what every test that starts processes checks at its end.
//
// A test takes a ProcessSnapshot before it creates a pool and calls requireCleanShutdown()
// after the pool is gone: no child process of ours may remain (running or zombie) and exactly
// the descriptors open before may be open after.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
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

inline std::string fixture(const std::string& name) {
  return std::string(FIXTURES_DIR) + "/lib" + name + ".so";
}

}  // namespace testing
