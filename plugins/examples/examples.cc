// The example plugin: small tasks that show each kind of value the SDK carries, used by the
// README, the example hosts and the tests.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
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

// int64 arithmetic that throws std::overflow_error (a TaskError in the host) instead of
// overflowing, which is undefined behaviour in C++; the fuzz target found square(2^53) did.
std::int64_t multiply(const char* task, std::int64_t a, std::int64_t b) {
  std::int64_t product;
  if (__builtin_mul_overflow(a, b, &product)) {
    throw std::overflow_error(std::string(task) + ": " + std::to_string(a) + " * " +
                              std::to_string(b) + " overflows int64");
  }
  return product;
}

std::int64_t plus(const char* task, std::int64_t a, std::int64_t b) {
  std::int64_t total;
  if (__builtin_add_overflow(a, b, &total)) {
    throw std::overflow_error(std::string(task) + ": " + std::to_string(a) + " + " +
                              std::to_string(b) + " overflows int64");
  }
  return total;
}

std::int64_t square(std::int64_t x) {
  return multiply("square", x, x);
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
  return multiply("slow_task", x, x);
}

plugpool::Bytes echo_bytes(std::span<const std::byte> data) {
  return plugpool::Bytes(data.begin(), data.end());
}

// Sleeps `ms` milliseconds and returns it: a task that takes as long as asked.
std::int64_t sleep_ms(std::int64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

// The process id of the worker running the call: shows which worker ran what.
std::int64_t worker_pid() {
  return ::getpid();
}

// The machine the worker runs on: the Slurm node's name inside a Slurm job step, else the
// host name. Shows where the workers of a pool that spans machines (Options::remote) ran.
std::string node() {
  if (const char* name = std::getenv("SLURMD_NODENAME"); name != nullptr && *name != '\0') {
    return name;
  }
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

// Per-process state, set by an initializer (or by a host that loaded the plugin in-process
// before a fork-started pool) and read by later calls in the same process.
std::int64_t offset = 0;
std::vector<std::int64_t> table;

// An initializer: sets the offset that add_offset adds. Throws for a negative offset, so a
// failing initializer can be shown.
std::int64_t set_offset(std::int64_t value) {
  if (value < 0)
    throw std::invalid_argument("set_offset: negative offset " + std::to_string(value));
  offset = value;
  return value;
}

std::int64_t add_offset(std::int64_t x) {
  return plus("add_offset", x, offset);
}

// Fills this process's table with n entries, as a host would load a large table once.
std::int64_t load_table(std::int64_t n) {
  table.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) table[static_cast<std::size_t>(i)] = i * 3;
  return n;
}

// Entry i of this process's table, or -1 if the table has no entry i.
std::int64_t table_entry(std::int64_t i) {
  if (i < 0 || static_cast<std::size_t>(i) >= table.size()) return -1;
  return table[static_cast<std::size_t>(i)];
}

std::int64_t fail(std::int64_t x) {
  throw std::runtime_error("fail called with " + std::to_string(x));
}

std::int64_t sum(const std::vector<std::int64_t>& values) {
  std::int64_t total = 0;
  for (auto v : values) total = plus("sum", total, v);
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
                PLUGPOOL_TASK(sleep_ms, "Sleeps ms milliseconds, then returns ms."),
                PLUGPOOL_TASK(worker_pid, "The process id of the worker that runs the call."),
                PLUGPOOL_TASK(node, "The machine (Slurm node, else host name) it runs on."),
                PLUGPOOL_TASK(set_offset, "Initializer: sets the offset add_offset adds."),
                PLUGPOOL_TASK(add_offset, "Returns x plus the offset set by set_offset."),
                PLUGPOOL_TASK(load_table, "Fills this process's table with n entries (3 * i)."),
                PLUGPOOL_TASK(table_entry, "Entry i of this process's table, or -1."),
                PLUGPOOL_TASK(fail, "Always throws std::runtime_error naming its input."),
                PLUGPOOL_TASK(sum, "Returns the sum of a list of integers."),
                PLUGPOOL_TASK(sort_words, "Returns the words sorted."),
                PLUGPOOL_TASK(min_max, "Returns the smallest and largest of a list of numbers."),
                PLUGPOOL_TASK(polygon_stats, "Area, perimeter and centroid of a polygon."));
