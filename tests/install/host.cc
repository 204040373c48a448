// An out-of-tree host, built by the install test against the installed plugpool with only
// pkg-config and g++ (see check_install.py and the README's "Installing"). It loads the
// out-of-tree plugin "mytasks" and the installed "examples" plugin by bare name, and prints
// which libplugpool it loaded and which worker executable ran its tasks.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <plugpool/pool.h>

// The file libplugpool was mapped from, from /proc/self/maps.
std::string loadedLibrary() {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    auto slash = line.find('/');
    if (slash != std::string::npos && line.find("libplugpool.so") != std::string::npos)
      return line.substr(slash);
  }
  return "(not found)";
}

int main() {
  plugpool::Pool pool(2, {"mytasks", "examples"});
  auto cube = pool.task<std::int64_t(std::int64_t)>("mytasks", "cube");
  auto greet = pool.task<std::string(std::string)>("mytasks", "greet");
  auto worker = pool.task<std::string()>("mytasks", "worker_executable");
  auto square = pool.task<std::int64_t(std::int64_t)>("examples", "square");

  std::cout << "cube:";
  for (auto c : pool.map(cube, std::vector<std::int64_t>{1, 2, 3})) std::cout << ' ' << c;
  std::cout << "\ngreet: " << pool.apply(greet, "plugpool") << "\n";
  std::cout << "square: " << pool.apply(square, 7) << "\n";
  std::cout << "library: " << loadedLibrary() << "\n";
  std::cout << "worker: " << pool.apply(worker) << "\n";
}
