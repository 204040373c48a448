// An out-of-tree host, built by the install tests against the installed plugpool, with
// pkg-config and g++ and with CMake (see installed.py and the README's "Installing"). It loads
// the out-of-tree plugin "mytasks" and the installed "examples" plugin by bare name, calls
// struct tasks typed — mytasks' `bounds` (its own mytypes.capnp) and examples' `polygon_stats`
// (geometry.capnp, installed in share/plugpool) — and prints which libplugpool it loaded and
// which worker executable ran its tasks.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <plugpool/pool.h>

#include "geometry.capnp.h"
#include "mytypes.capnp.h"

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
  auto bounds = pool.task<mytypes::Range(std::vector<std::int64_t>)>("mytasks", "bounds");
  auto worker = pool.task<std::string()>("mytasks", "worker_executable");
  auto square = pool.task<std::int64_t(std::int64_t)>("examples", "square");
  auto polygonStats =
      pool.task<geometry::PolygonStats(geometry::Polygon)>("examples", "polygon_stats");

  std::cout << "cube:";
  for (auto c : pool.map(cube, std::vector<std::int64_t>{1, 2, 3})) std::cout << ' ' << c;
  std::cout << "\ngreet: " << pool.apply(greet, "plugpool") << "\n";
  std::cout << "square: " << pool.apply(square, 7) << "\n";

  // Struct results are plugpool::Message<T>, which is move-only: bind them by const auto&.
  std::vector<std::vector<std::int64_t>> lists{{3, -1, 7}, {2}};
  std::cout << "bounds:";
  for (const auto& range : pool.map(bounds, lists))
    std::cout << ' ' << range.get().getLo() << ".." << range.get().getHi();

  plugpool::Message<geometry::Polygon> polygon;
  polygon.builder().setName("unit square");
  auto points = polygon.builder().initPoints(4);
  const double xy[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}};
  for (unsigned i = 0; i < 4; ++i) {
    points[i].setX(xy[i][0]);
    points[i].setY(xy[i][1]);
  }
  auto stats = pool.apply(polygonStats, polygon);  // a Message: stats.get() lives as long
  std::cout << "\npolygon_stats: " << stats.get().getName().cStr() << ", area "
            << stats.get().getArea() << ", perimeter " << stats.get().getPerimeter() << "\n";

  std::cout << "library: " << loadedLibrary() << "\n";
  std::cout << "worker: " << pool.apply(worker) << "\n";
}
