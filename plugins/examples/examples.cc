// The example plugin: small tasks that show each kind of value the SDK carries, used by the
// README, the example hosts and the tests.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/sdk.h>

#include "geometry.capnp.h"

namespace {

std::int64_t square(std::int64_t x) {
  return x * x;
}

double add(double a, double b) {
  return a + b;
}

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// Counts whitespace-separated words; the map travels as a list of (word, count) pairs.
std::map<std::string, std::int64_t> word_count(std::string_view text) {
  std::map<std::string, std::int64_t> counts;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) ++counts[word];
  return counts;
}

// The seed lesson's task: pretend to work for 100 ms.
std::int64_t slow_task(std::int64_t x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return x * x;
}

plugpool::Bytes echo_bytes(std::span<const std::byte> data) {
  return plugpool::Bytes(data.begin(), data.end());
}

std::int64_t fail(std::int64_t x) {
  throw std::runtime_error("fail called with " + std::to_string(x));
}

std::int64_t sum(const std::vector<std::int64_t>& values) {
  std::int64_t total = 0;
  for (auto v : values) total += v;
  return total;
}

std::vector<std::string> sort_words(std::vector<std::string> words) {
  std::sort(words.begin(), words.end());
  return words;
}

std::tuple<double, double> min_max(const std::vector<double>& values) {
  if (values.empty()) throw std::invalid_argument("min_max of an empty list");
  auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  return {*lo, *hi};
}

// A struct of the author's schema in, another out (shoelace formula).
void polygon_stats(geometry::Polygon::Reader polygon, geometry::PolygonStats::Builder out) {
  auto points = polygon.getPoints();
  out.setName(polygon.getName());
  out.setVertices(points.size());
  double area2 = 0, perimeter = 0, cx = 0, cy = 0;
  for (unsigned i = 0; i < points.size(); ++i) {
    auto p = points[i];
    auto q = points[(i + 1) % points.size()];
    double cross = p.getX() * q.getY() - q.getX() * p.getY();
    area2 += cross;
    cx += (p.getX() + q.getX()) * cross;
    cy += (p.getY() + q.getY()) * cross;
    perimeter += std::hypot(q.getX() - p.getX(), q.getY() - p.getY());
  }
  out.setArea(std::abs(area2) / 2);
  out.setPerimeter(perimeter);
  auto centroid = out.initCentroid();
  if (area2 != 0) {
    centroid.setX(cx / (3 * area2));
    centroid.setY(cy / (3 * area2));
  }
}

}  // namespace

PLUGPOOL_PLUGIN("examples", PLUGPOOL_TASK(square, "Returns x * x."),
                PLUGPOOL_TASK(add, "Returns a + b."),
                PLUGPOOL_TASK(upper, "Upper-cases the ASCII letters of a text."),
                PLUGPOOL_TASK(word_count, "Counts each whitespace-separated word of a text."),
                PLUGPOOL_TASK(slow_task, "Sleeps 100 ms, then returns x * x."),
                PLUGPOOL_TASK(echo_bytes, "Returns its bytes unchanged."),
                PLUGPOOL_TASK(fail, "Always throws std::runtime_error naming its input."),
                PLUGPOOL_TASK(sum, "Returns the sum of a list of integers."),
                PLUGPOOL_TASK(sort_words, "Returns the words sorted."),
                PLUGPOOL_TASK(min_max, "Returns the smallest and largest of a list of numbers."),
                PLUGPOOL_TASK(polygon_stats, "Area, perimeter and centroid of a polygon."));
