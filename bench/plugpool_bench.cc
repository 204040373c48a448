// plugpool-bench — plugpool beside Python's own pools, in one run, on one machine.
//
//   plugpool-bench [--quick] [--json PATH] [--reps N] [--workers N] [--only KEY,...]
//                  [--python EXE] [--script PATH] [--python-module DIR] [--in-flight N]
//                  [--window N] [--plugpool-only]
//
// For each workload (the keys below) and each repetition it runs the workload on a
// plugpool Pool and, as a subprocess of python3 (the interpreter the build's Python module
// is for), on multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor
// (bench/python_pools.py), with the same number of workers, alternating which side goes
// first. Each repetition also measures the machine's reference points (machine.h). The report
// gives medians over the repetitions: a table on stdout, and with --json one JSON object (see
// README, "Benchmark"). A --quick run is too short to measure: it gives no verdict on any
// target ("target_met": null).
//
// Both sides return a check value (a sum of results) that must match the other side's and
// the expected one, so the figures are of work actually done. A mismatch, a failed
// subprocess or a pool error ends the run with status 1.
//
// image_job decodes a folder of generated images (make_images, written once per run into a
// temporary folder that is removed however the run ends) with the imagefeatures plugin, and
// on the Python side with Pillow and numpy; both sides must agree on every image's size and
// channels exactly and on its means within kMeanTolerance.
//
// The keys py_KEY time KEY's workload from Python through the `plugpool` module
// (python_pools.py --side plugpool) against the same Python pools: what a Python user gains.
// They have no target, and are skipped (with a line on stderr) when the module was not built.
//
// Three keys are measured a second time through a remote pool on this machine (the keys
// KEY_tcp, listed after KEY): the same workload, whose workers are started through the
// launcher `env` and connect back over loopback TCP, without shared memory (remote.h). They
// show what the TCP channel costs: each is compared with KEY's plugpool figure of the same
// run (measured for it if KEY itself is not chosen), never with Python, and has no target.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/local_plugin.h>
#include <plugpool/pool.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "imagefeatures.capnp.h"
#include "machine.h"

extern char** environ;

namespace plugpool::bench {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// What one run measures; --quick makes everything smaller.
struct Params {
  std::size_t mapItems = 1'000'000;
  std::size_t imapItems = 20'000;
  std::size_t applySamples = 2'000;
  std::size_t echoMib = 64;
  std::size_t cpuItems = 400;
  std::int64_t cpuRounds = 2'000;
  int socketpairRoundTrips = 20'000;
  std::size_t pipeBytes = std::size_t{1} << 30;
  std::size_t memcpyBytes = std::size_t{256} << 20;
  std::size_t images = 3'000;
};

// How far the two sides' mean of one channel of one image may differ (on the 0..255 scale):
// PNG is lossless, and Debian's Pillow decodes JPEG with the plugin's libjpeg-turbo, so they
// agree exactly here; the margin is for a Pillow built with another libjpeg.
constexpr double kMeanTolerance = 0.01;

struct Settings {
  bool quick = false;
  int reps = 5;
  int workers = 0;  // 0: one per core
  std::string jsonPath;
  std::string python = PLUGPOOL_BENCH_PYTHON;
  std::string script = PLUGPOOL_BENCH_SCRIPT;
  std::string pythonModule = PLUGPOOL_BENCH_MODULE_DIR;  // empty: not built, py_* skipped
  std::string makeImages = PLUGPOOL_BENCH_MAKE_IMAGES;
  std::string imageDir;           // image_job's images, made by run() when a chosen key needs them
  std::vector<std::string> only;  // empty: every workload
  bool plugpoolOnly = false;      // for profilers: no Python, no reference points, no report
  unsigned chunksInFlight = 0;    // 0: Options' default
  std::size_t streamWindow = 0;   // 0: Options' default
  bool tcp = false;               // plugpool's pools are remote ones over loopback (overTcp)
  Params params;
};

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Nearest-rank percentile of sorted values (as python_pools.py computes it).
double percentile(const std::vector<double>& sorted, double p) {
  auto rank = static_cast<std::size_t>(std::ceil(static_cast<double>(sorted.size()) * p / 100));
  return sorted[std::max<std::size_t>(rank, 1) - 1];
}

std::uint64_t sumOf(const std::vector<std::int64_t>& values) {
  std::uint64_t sum = 0;
  for (auto v : values) sum += static_cast<std::uint64_t>(v);
  return sum;
}

// 0² + 1² + … + (n-1)²: what every square workload must add up to.
std::uint64_t sumOfSquares(std::uint64_t n) {
  if (n == 0) return 0;
  return (n - 1) * n * (2 * n - 1) / 6;
}

std::string loadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

std::string utcNow() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// --- the plugpool side: each returns the same raw fields as python_pools.py's "pool" ----------

Options poolOptions(const Settings& s, std::string plugin = "bench") {
  Options options;
  options.workers = s.workers;
  options.plugins = {std::move(plugin)};
  if (s.chunksInFlight != 0) options.chunksInFlight = s.chunksInFlight;
  options.streamWindow = s.streamWindow;
  if (s.tcp) {
    Remote remote = LaunchCommand{{"env"}};
    remote.address = "127.0.0.1";
    options.remote = remote;
  }
  return options;
}

// The same settings, for pools whose workers are started through `env` (on this machine) and
// connect back to 127.0.0.1 over TCP: remote workers, with no shared memory (remote.h).
Settings overTcp(Settings s) {
  s.tcp = true;
  return s;
}

Pool startPool(const Settings& s) {
  return Pool(poolOptions(s));
}

Json plugpoolMap(const Settings& s, std::size_t chunksize) {
  std::vector<std::int64_t> items(s.params.mapItems);
  std::iota(items.begin(), items.end(), std::int64_t{0});
  Pool pool = startPool(s);
  auto square = pool.task<std::int64_t(std::int64_t)>("bench", "square");
  pool.map(square, std::vector<std::int64_t>(1000, 3));  // warm-up
  auto t0 = Clock::now();
  auto results = pool.map(square, items, chunksize);
  auto t1 = Clock::now();
  return {{"seconds", seconds(t1 - t0)}, {"check", sumOf(results)}};
}

Json plugpoolImap(const Settings& s) {
  Pool pool = startPool(s);
  auto square = pool.task<std::int64_t(std::int64_t)>("bench", "square");
  pool.map(square, std::vector<std::int64_t>(1000, 3));
  auto n = static_cast<std::int64_t>(s.params.imapItems);
  std::uint64_t sum = 0;
  auto t0 = Clock::now();
  for (std::int64_t v : pool.imapUnordered(square, std::views::iota(std::int64_t{0}, n), 1)) {
    sum += static_cast<std::uint64_t>(v);
  }
  auto t1 = Clock::now();
  return {{"seconds", seconds(t1 - t0)}, {"check", sum}};
}

Json plugpoolApply(const Settings& s) {
  Pool pool = startPool(s);
  auto noop = pool.task<bool()>("bench", "noop");
  const std::size_t samples = s.params.applySamples;
  for (std::size_t i = 0; i < std::min<std::size_t>(100, samples); ++i) pool.apply(noop);
  std::vector<double> us;
  us.reserve(samples);
  for (std::size_t i = 0; i < samples; ++i) {
    auto t0 = Clock::now();
    if (!pool.apply(noop)) throw std::runtime_error("noop returned false");
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return {{"median_us", median(us)}, {"p99_us", percentile(us, 99)}, {"samples", samples}};
}

Json plugpoolEcho(const Settings& s) {
  Bytes payload(s.params.echoMib << 20);
  std::mt19937_64 random(5);
  for (std::size_t i = 0; i + 8 <= payload.size(); i += 8) {
    std::uint64_t r = random();
    std::memcpy(payload.data() + i, &r, 8);
  }
  Pool pool = startPool(s);
  // The result is read where it arrived (SharedBytes), as Python's caller gets the bytes
  // object unpickled for it; a copy into a fresh Bytes is timed too (JSON "bytes_seconds").
  auto echo = pool.task<plugpool::SharedBytes(Bytes)>("bench", "echo");
  auto echoCopy = pool.task<Bytes(Bytes)>("bench", "echo");
  auto check = [&](std::span<const std::byte> back) {
    if (!std::ranges::equal(back, payload)) {
      throw std::runtime_error("echo returned different bytes");
    }
  };
  // As on the Python side: a first round trip of the same size (reported, not the figure),
  // then the one measured, on a pool that has carried such a payload before.
  auto t0 = Clock::now();
  check(pool.apply(echo, payload));
  auto t1 = Clock::now();
  plugpool::SharedBytes back = pool.apply(echo, payload);
  auto t2 = Clock::now();
  check(back);
  const std::size_t size = back.size();
  back = {};  // gives the worker's region back
  auto t3 = Clock::now();
  Bytes copy = pool.apply(echoCopy, payload);
  auto t4 = Clock::now();
  check(copy);
  return {{"seconds", seconds(t2 - t1)},
          {"first_seconds", seconds(t1 - t0)},
          {"bytes_seconds", seconds(t4 - t3)},
          {"check", size}};
}

Json plugpoolCpu(const Settings& s) {
  const auto& p = s.params;
  std::vector<std::tuple<std::int64_t, std::int64_t>> args;
  for (std::size_t i = 0; i < p.cpuItems; ++i) {
    args.emplace_back(static_cast<std::int64_t>(i), p.cpuRounds);
  }
  // The serial baseline runs the very same task function, loaded into this process.
  LocalPlugin local("bench");
  auto chain = local.task<std::int64_t(std::int64_t, std::int64_t)>("sha256_chain");
  std::vector<std::int64_t> serial;
  auto t0 = Clock::now();
  for (const auto& [seed, rounds] : args) serial.push_back(chain(seed, rounds));
  auto t1 = Clock::now();

  Pool pool = startPool(s);
  auto task = pool.task<std::int64_t(std::int64_t, std::int64_t)>("bench", "sha256_chain");
  pool.starmap(task, std::vector<std::tuple<std::int64_t, std::int64_t>>(10, {0, 1}));
  auto t2 = Clock::now();
  auto results = pool.starmap(task, args);
  auto t3 = Clock::now();
  return {{"serial_s", seconds(t1 - t0)},
          {"seconds", seconds(t3 - t2)},
          {"check", sumOf(results)},
          {"serial_check", sumOf(serial)}};
}

Json plugpoolStartup(const Settings& s) {
  auto t0 = Clock::now();
  auto pool = std::make_unique<Pool>(poolOptions(s));
  auto t1 = Clock::now();  // the constructor returns once every worker has said Hello
  pool.reset();
  auto t2 = Clock::now();
  return {{"start_ms", seconds(t1 - t0) * 1e3},
          {"stop_ms", seconds(t2 - t1) * 1e3},
          {"total_ms", seconds(t2 - t0) * 1e3}};
}

// Every regular file directly in `dir`, sorted by name (as python_pools.py lists them).
std::vector<std::string> imagePaths(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) paths.push_back(entry.path().string());
  }
  std::ranges::sort(paths);
  return paths;
}

Json plugpoolImages(const Settings& s) {
  const std::vector<std::string> paths = imagePaths(s.imageDir);
  Pool pool(poolOptions(s, "imagefeatures"));
  auto features = pool.task<imagefeatures::ImageFeatures(std::string)>("imagefeatures", "features");
  const auto warm = std::min<std::size_t>(paths.size(), static_cast<std::size_t>(s.workers));
  pool.map(features, std::vector<std::string>(paths.begin(), paths.begin() + warm), 1);
  auto t0 = Clock::now();
  auto results = pool.map(features, paths);
  auto t1 = Clock::now();
  // The same raw fields as python_pools.py's image_raw.
  Json sizes = Json::array(), means = Json::array();
  std::uint64_t pixels = 0;
  for (const auto& result : results) {
    auto f = result.get();
    sizes.push_back({f.getWidth(), f.getHeight(), f.getChannels()});
    Json mean = Json::array();
    for (double m : f.getMean()) mean.push_back(m);
    means.push_back(std::move(mean));
    pixels += std::uint64_t{f.getWidth()} * f.getHeight();
  }
  return {{"seconds", seconds(t1 - t0)},
          {"images", results.size()},
          {"check", pixels},
          {"sizes", std::move(sizes)},
          {"means", std::move(means)}};
}

// --- the Python side --------------------------------------------------------------------------

// Runs argv (argv[0] looked up in PATH) and returns its standard output; throws if it fails.
std::string capture(const std::vector<std::string>& argv) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int error = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  if (error != 0) {
    ::close(out[0]);
    throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(error));
  }
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(out[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(argv[0] + " " + argv[1] + " " + argv[2] + " failed");
  }
  return text;
}

Json python(const Settings& s, const std::string& key, std::vector<std::string> extra) {
  std::vector<std::string> argv = {s.python, s.script, key, "--workers", std::to_string(s.workers)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return Json::parse(capture(argv));
}

// image_job's images: `count` files written by make_images into a fresh temporary folder,
// removed by the destructor and, however the process ends (an uncaught signal, SIGKILL), by
// a small shell the constructor starts: it waits for the end of a pipe only this process
// holds (close-on-exec, so no worker or Python side inherits it), then removes the folder.
class ImageFolder {
 public:
  ImageFolder(const std::string& makeImages, std::size_t count) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "plugpool-bench-images-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("cannot create a temporary folder: " +
                               std::string(std::strerror(errno)));
    }
    path_ = pattern;
    startCleaner();
    try {
      std::string wrote = capture({makeImages, path_, std::to_string(count)});
      std::fprintf(stderr, "images: %s", wrote.c_str());
    } catch (...) {
      remove();
      throw;
    }
  }
  ImageFolder(const ImageFolder&) = delete;
  ImageFolder& operator=(const ImageFolder&) = delete;
  ~ImageFolder() { remove(); }
  const std::string& path() const { return path_; }

 private:
  void remove() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
    if (cleanerPipe_ >= 0) ::close(cleanerPipe_);  // the shell's `read` returns: it ends
    if (cleaner_ > 0) {
      while (::waitpid(cleaner_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }

  // Without a cleaner the folder is still removed on every path but a signal's.
  void startCleaner() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO);
    // Ctrl-C reaches the whole process group: the shell ignores it and waits for the pipe.
    // A make_images that outlives this process may still be writing: the removal is tried
    // again each second (for up to two minutes) until the folder is gone, after which
    // make_images can write nothing more.
    const char* script =
        "trap '' INT TERM HUP; read -r line; for i in $(seq 120); do "
        "rm -rf -- \"$1\" 2>/dev/null; [ -e \"$1\" ] || exit 0; sleep 1; done";
    std::vector<const char*> argv = {"sh", "-c", script, "sh", path_.c_str(), nullptr};
    int error = ::posix_spawn(&cleaner_, "/bin/sh", &actions, nullptr,
                              const_cast<char* const*>(argv.data()), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[0]);
    if (error != 0) {
      cleaner_ = -1;
      ::close(fds[1]);
      return;
    }
    cleanerPipe_ = fds[1];
  }

  std::string path_;
  pid_t cleaner_ = -1;
  int cleanerPipe_ = -1;
};

// --- workloads ----------------------------------------------------------------------------

// One workload: how each side runs it, whether higher or lower is better, and how a
// raw measurement becomes the reported figure.
struct Workload {
  std::string key;
  std::string unit;
  bool higherIsBetter;
  std::string target;  // in words, for the table; "none…" for a key without one
  std::function<Json(const Settings&)> plugpool;
  // python_pools.py's arguments after the workload's name and --workers, for the Python side;
  // empty for a KEY_tcp, which has none.
  std::function<std::vector<std::string>(const Settings&)> pythonArgs;
  std::function<double(const Json& raw, const Settings&)> figure;
  // Throws unless a raw result (either side's) shows the expected work was done.
  std::function<void(const Json& raw, const Settings&)> verify;
  // If set, throws unless plugpool's raw result and a Python side's agree (beyond `check`).
  std::function<void(const Json& plugpool, const Json& python)> agree{};
  // A KEY_tcp: "KEY", the local workload whose plugpool figure it is compared with instead of
  // Python's (it has no Python side and no target). Empty for every other workload.
  std::string local{};
  bool needsImages = false;  // runs on Settings::imageDir
  bool fromPython = false;   // a py_KEY: its plugpool side needs the Python module

  bool hasTarget() const { return !target.starts_with("none"); }
  std::string pythonWorkload() const { return fromPython ? key.substr(3) : key; }
};

// The workloads also measured through a remote pool over loopback TCP, as KEY_tcp.
const std::vector<std::string> kOverTcp = {"map_tiny", "apply_rtt", "echo_64mib"};
// The workloads also measured from Python through the plugpool module, as py_KEY.
const std::vector<std::string> kFromPython = {"map_tiny", "imap_c1", "apply_rtt", "image_job"};

// KEY_tcp from the workload KEY: the very same plugpool side, run on overTcp settings, with
// the same figure and check.
Workload tcpTwin(const Workload& w) {
  Workload tcp = w;
  tcp.key = w.key + "_tcp";
  tcp.target = "none: the cost of TCP";
  tcp.plugpool = [run = w.plugpool](const Settings& s) { return run(overTcp(s)); };
  tcp.pythonArgs = nullptr;
  tcp.verify = [verify = w.verify, key = tcp.key](const Json& raw, const Settings& s) {
    try {
      verify(raw, s);
    } catch (const std::exception& e) {
      throw std::runtime_error(key + ": " + e.what());
    }
  };
  tcp.local = w.key;
  return tcp;
}

// py_KEY from the workload KEY: its plugpool side is python_pools.py --side plugpool (KEY's
// workload through plugpool.Pool, with KEY's arguments), its Python side KEY's own, with the
// same figure and checks; no target.
Workload pythonTwin(const Workload& w) {
  Workload py = w;
  py.key = "py_" + w.key;
  py.target = "none";
  py.fromPython = true;
  py.plugpool = [args = w.pythonArgs, key = w.key](const Settings& s) {
    std::vector<std::string> extra = args(s);
    extra.insert(extra.end(), {"--side", "plugpool", "--module-path", s.pythonModule,
                               "--bench-plugin", PLUGPOOL_BENCH_PLUGIN, "--imagefeatures-plugin",
                               PLUGPOOL_BENCH_IMAGEFEATURES_PLUGIN});
    return python(s, key, extra).at("plugpool");
  };
  py.verify = [verify = w.verify, key = py.key](const Json& raw, const Settings& s) {
    try {
      verify(raw, s);
    } catch (const std::exception& e) {
      throw std::runtime_error(key + ": " + e.what());
    }
  };
  return py;
}

void expectCheck(const Json& raw, std::uint64_t expected, const std::string& what) {
  if (raw.at("check").get<std::uint64_t>() != expected) {
    throw std::runtime_error(what + ": check " + raw.at("check").dump() + ", expected " +
                             std::to_string(expected));
  }
}

// image_job's raw result holds one [width, height, channels] and one list of channel means
// per image, in path order, and "check", the sum of width * height.
void verifyImages(const Json& raw, const Settings& s) {
  const Json& sizes = raw.at("sizes");
  if (raw.at("images").get<std::size_t>() != s.params.images || sizes.size() != s.params.images ||
      raw.at("means").size() != s.params.images) {
    throw std::runtime_error("image_job: " + raw.at("images").dump() + " images, expected " +
                             std::to_string(s.params.images));
  }
  std::uint64_t pixels = 0;
  for (const auto& size : sizes)
    pixels += size[0].get<std::uint64_t>() * size[1].get<std::uint64_t>();
  expectCheck(raw, pixels, "image_job");
}

// Both sides' features of every image (verified first): sizes and channels equal, means
// within kMeanTolerance.
void agreeOnImages(const Json& plugpool, const Json& python) {
  for (std::size_t i = 0; i < plugpool.at("sizes").size(); ++i) {
    auto differ = [&](const char* what, const Json& a, const Json& b) {
      throw std::runtime_error("image_job: image " + std::to_string(i) + ": " + what + " " +
                               a.dump() + " against Python's " + b.dump());
    };
    const Json &size = plugpool.at("sizes")[i], &otherSize = python.at("sizes")[i];
    if (size != otherSize) differ("size", size, otherSize);
    const Json &mean = plugpool.at("means")[i], &otherMean = python.at("means")[i];
    if (mean.size() != otherMean.size()) differ("means", mean, otherMean);
    for (std::size_t c = 0; c < mean.size(); ++c) {
      if (std::abs(mean[c].get<double>() - otherMean[c].get<double>()) > kMeanTolerance) {
        differ("means", mean, otherMean);
      }
    }
  }
}

std::vector<Workload> workloads() {
  auto itemsPerSecond = [](std::size_t Params::*items) {
    return [items](const Json& raw, const Settings& s) {
      return static_cast<double>(s.params.*items) / raw.at("seconds").get<double>();
    };
  };
  auto squares = [](std::size_t Params::*items, std::string key) {
    return [items, key](const Json& raw, const Settings& s) {
      expectCheck(raw, sumOfSquares(s.params.*items), key);
    };
  };
  auto count = [](std::size_t n) { return std::to_string(n); };
  std::vector<Workload> measured = {
      {"map_tiny", "items/s", true, ">= 20x Python",
       [](const Settings& s) { return plugpoolMap(s, 0); },
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--items", count(s.params.mapItems)};
       },
       itemsPerSecond(&Params::mapItems), squares(&Params::mapItems, "map_tiny")},
      {"map_tiny_c10000", "items/s", true, ">= 30x Python",
       [](const Settings& s) { return plugpoolMap(s, 10'000); },
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--items", count(s.params.mapItems)};
       },
       itemsPerSecond(&Params::mapItems), squares(&Params::mapItems, "map_tiny_c10000")},
      {"imap_c1", "items/s", true, ">= 20x Python", plugpoolImap,
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--items", count(s.params.imapItems)};
       },
       itemsPerSecond(&Params::imapItems), squares(&Params::imapItems, "imap_c1")},
      {"apply_rtt", "us", false, "<= 2x socketpair RTT, p99 <= 5x", plugpoolApply,
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--samples", count(s.params.applySamples)};
       },
       [](const Json& raw, const Settings&) { return raw.at("median_us").get<double>(); },
       [](const Json&, const Settings&) {}},
      {"echo_64mib", "GB/s", true, ">= 50% of memcpy, 25% into Bytes", plugpoolEcho,
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--mib", count(s.params.echoMib)};
       },
       // Bytes moved: the payload there and back.
       [](const Json& raw, const Settings& s) {
         return 2.0 * static_cast<double>(s.params.echoMib << 20) /
                raw.at("seconds").get<double>() / 1e9;
       },
       [](const Json& raw, const Settings& s) {
         expectCheck(raw, s.params.echoMib << 20, "echo_64mib");
       }},
      {"cpu_scaling", "x serial", true, ">= 0.95 x cores", plugpoolCpu,
       [count](const Settings& s) -> std::vector<std::string> {
         return {"--items", count(s.params.cpuItems), "--rounds",
                 std::to_string(s.params.cpuRounds)};
       },
       [](const Json& raw, const Settings&) {
         return raw.at("serial_s").get<double>() / raw.at("seconds").get<double>();
       },
       [](const Json& raw, const Settings&) {
         expectCheck(raw, raw.at("serial_check").get<std::uint64_t>(), "cpu_scaling");
       },
       [](const Json& plugpool, const Json& python) {
         if (plugpool.at("check") != python.at("check")) {
           throw std::runtime_error("cpu_scaling: plugpool's and Python's SHA-256 chains differ");
         }
       }},
      {"startup", "ms", false, "<= 5% of Python spawn", plugpoolStartup,
       [](const Settings&) { return std::vector<std::string>{}; },
       [](const Json& raw, const Settings&) { return raw.at("total_ms").get<double>(); },
       [](const Json&, const Settings&) {}},
      {"image_job", "images/s", true, ">= 5x Python", plugpoolImages,
       [](const Settings& s) -> std::vector<std::string> {
         return {"--images", s.imageDir};
       },
       itemsPerSecond(&Params::images), verifyImages, agreeOnImages, "", true},
  };
  std::vector<Workload> all, fromPython;
  for (const auto& w : measured) {
    all.push_back(w);
    if (std::ranges::find(kOverTcp, w.key) != kOverTcp.end()) all.push_back(tcpTwin(w));
    if (std::ranges::find(kFromPython, w.key) != kFromPython.end()) {
      fromPython.push_back(pythonTwin(w));
    }
  }
  all.insert(all.end(), fromPython.begin(), fromPython.end());
  return all;
}

// --- running and reporting ----------------------------------------------------------------

struct Samples {
  std::vector<Json> plugpool, pool, executor;  // raw results, one per repetition
  std::vector<Json> local;                     // a KEY_tcp's: KEY's plugpool results
};

struct Machine {
  std::vector<double> rttUs, rttUsOneCpu, pipeGbps, pipeGbpsOneCpu, memcpyGbps;
};

std::vector<double> figures(const Workload& w, const Settings& s, const std::vector<Json>& raws) {
  std::vector<double> out;
  for (const auto& raw : raws) {
    if (!raw.is_null()) out.push_back(w.figure(raw, s));
  }
  return out;
}

std::vector<double> field(const std::vector<Json>& raws, const char* name) {
  std::vector<double> out;
  for (const auto& raw : raws) {
    if (!raw.is_null()) out.push_back(raw.at(name).get<double>());
  }
  return out;
}

// A ratio oriented so that above 1 means plugpool is better.
double better(const Workload& w, double plugpool, double other) {
  return w.higherIsBetter ? plugpool / other : other / plugpool;
}

Json numberOrNull(double v) {
  return std::isnan(v) ? Json(nullptr) : Json(v);
}

// GB/s of the echo round trips timed in field `name` of `raws` (medians): the payload there and
// back.
double echoGbps(const Settings& s, const std::vector<Json>& raws, const char* name) {
  return 2.0 * static_cast<double>(s.params.echoMib << 20) / median(field(raws, name)) / 1e9;
}

// A KEY_tcp's entry: its figure ("plugpool") beside KEY's plugpool figure of the same run
// ("local"), "ratio" oriented as everywhere (above 1: better over TCP), the extra figures of
// KEY for both, no Python figures (null) and no target ("target_met": null, never missed).
Json tcpEntry(const Workload& w, const Settings& s, const Samples& r) {
  const double tcp = median(figures(w, s, r.plugpool));
  const double local = median(figures(w, s, r.local));
  Json entry{{"plugpool", tcp}, {"local", local}, {"ratio", better(w, tcp, local)}};
  entry["python"] = nullptr;
  entry["python_executor"] = nullptr;
  entry["ratio_executor"] = nullptr;
  entry["unit"] = w.unit;
  entry["compared_with"] = w.local;
  if (w.local == "apply_rtt") {
    entry["plugpool_p99"] = median(field(r.plugpool, "p99_us"));
    entry["local_p99"] = median(field(r.local, "p99_us"));
  } else if (w.local == "echo_64mib") {
    entry["plugpool_bytes_result"] = echoGbps(s, r.plugpool, "bytes_seconds");
    entry["local_bytes_result"] = echoGbps(s, r.local, "bytes_seconds");
    entry["plugpool_first"] = echoGbps(s, r.plugpool, "first_seconds");
    entry["local_first"] = echoGbps(s, r.local, "first_seconds");
  }
  entry["target"] = w.target;
  entry["target_met"] = nullptr;
  return entry;
}

Json report(const std::vector<Workload>& chosen, const std::vector<Samples>& samples,
            const Machine& m, const Settings& s, const std::string& started,
            const std::string& loadBefore, const std::string& pythonVersion, const Json& skipped) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // The floor is the better placement (machine.h says why they differ).
  const double rtt = std::min(median(m.rttUs), median(m.rttUsOneCpu));
  const double pipe = std::max(median(m.pipeGbps), median(m.pipeGbpsOneCpu));
  const double memcpy = median(m.memcpyGbps);
  Json out;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const Workload& w = chosen[i];
    const Samples& r = samples[i];
    if (!w.local.empty()) {
      out[w.key] = tcpEntry(w, s, r);
      continue;
    }
    double pp = median(figures(w, s, r.plugpool));
    double py = median(figures(w, s, r.pool));
    double ex = median(figures(w, s, r.executor));
    Json entry{{"plugpool", pp}, {"python", py}, {"ratio", better(w, pp, py)}};
    entry["python_executor"] = numberOrNull(ex);
    entry["ratio_executor"] = numberOrNull(std::isnan(ex) ? ex : better(w, pp, ex));
    entry["unit"] = w.unit;
    bool met = false;
    if (w.key == "map_tiny") {
      met = entry["ratio"].get<double>() >= 20;
    } else if (w.key == "map_tiny_c10000") {
      met = entry["ratio"].get<double>() >= 30;
    } else if (w.key == "imap_c1") {
      met = entry["ratio"].get<double>() >= 20;
    } else if (w.key == "apply_rtt" || w.key == "py_apply_rtt") {
      entry["plugpool_p99"] = median(field(r.plugpool, "p99_us"));
      entry["python_p99"] = median(field(r.pool, "p99_us"));
      entry["python_executor_p99"] = numberOrNull(median(field(r.executor, "p99_us")));
      if (w.key == "apply_rtt") {
        entry["socketpair_ratio"] = pp / rtt;                                       // target: <= 2
        entry["socketpair_ratio_p99"] = entry["plugpool_p99"].get<double>() / rtt;  // <= 5
        met = pp / rtt <= 2 && entry["plugpool_p99"].get<double>() / rtt <= 5;
      }
    } else if (w.key == "image_job") {
      met = entry["ratio"].get<double>() >= 5;
    } else if (w.key == "echo_64mib") {
      entry["memcpy_fraction"] = pp / memcpy;  // target: >= 0.5
      entry["python_memcpy_fraction"] = py / memcpy;
      // The same round trip with the result copied into a fresh Bytes, and each side's first
      // (cold) one.
      entry["plugpool_bytes_result"] = echoGbps(s, r.plugpool, "bytes_seconds");
      entry["plugpool_first"] = echoGbps(s, r.plugpool, "first_seconds");
      entry["python_first"] = echoGbps(s, r.pool, "first_seconds");
      // and >= 0.25 into Bytes
      entry["bytes_memcpy_fraction"] = entry["plugpool_bytes_result"].get<double>() / memcpy;
      met = pp / memcpy >= 0.5 && entry["bytes_memcpy_fraction"].get<double>() >= 0.25;
    } else if (w.key == "cpu_scaling") {
      entry["per_core"] = pp / cores;  // target: >= 0.95
      entry["python_per_core"] = py / cores;
      entry["plugpool_serial_s"] = median(field(r.plugpool, "serial_s"));
      entry["python_serial_s"] = median(field(r.pool, "serial_s"));
      met = pp / cores >= 0.95;
    } else if (w.key == "startup") {
      entry["plugpool_start_ms"] = median(field(r.plugpool, "start_ms"));
      entry["plugpool_stop_ms"] = median(field(r.plugpool, "stop_ms"));
      entry["python_start_ms"] = median(field(r.pool, "start_ms"));
      entry["python_stop_ms"] = median(field(r.pool, "stop_ms"));
      entry["fraction_of_python"] = pp / py;  // target: <= 0.05
      met = pp / py <= 0.05;
    }
    entry["target"] = w.target;
    // A quick run is too short to measure: no verdict. Nor for a key without a target.
    entry["target_met"] = w.hasTarget() && !s.quick ? Json(met) : Json(nullptr);
    out[w.key] = entry;
  }
  out["machine"] = {{"socketpair_rtt_us", rtt},
                    {"pipe_gbps", pipe},
                    {"memcpy_gbps", memcpy},
                    {"cores", cores},
                    {"socketpair_rtt_us_any_cpu", median(m.rttUs)},
                    {"socketpair_rtt_us_one_cpu", median(m.rttUsOneCpu)},
                    {"pipe_gbps_any_cpu", median(m.pipeGbps)},
                    {"pipe_gbps_one_cpu", median(m.pipeGbpsOneCpu)}};
  const auto& p = s.params;
  out["run"] = {{"started", started},
                {"finished", utcNow()},
                {"quick", s.quick},
                {"repetitions", s.reps},
                {"workers", s.workers},
                {"python", pythonVersion.empty() ? Json(nullptr) : Json(pythonVersion)},
                {"python_start_method", "spawn"},
                {"python_module", s.pythonModule.empty() ? Json(nullptr) : Json(s.pythonModule)},
                {"skipped", skipped},
                {"load_average_before", loadBefore},
                {"load_average_after", loadAverage()},
                {"params",
                 {{"map_items", p.mapItems},
                  {"imap_items", p.imapItems},
                  {"apply_samples", p.applySamples},
                  {"echo_mib", p.echoMib},
                  {"cpu_items", p.cpuItems},
                  {"cpu_rounds", p.cpuRounds},
                  {"images", p.images}}}};
  return out;
}

std::string format(double v) {
  if (std::isnan(v)) return "-";
  char text[32];
  if (v >= 1e6) {
    std::snprintf(text, sizeof text, "%.2fM", v / 1e6);
  } else if (v >= 100) {
    std::snprintf(text, sizeof text, "%.0f", v);
  } else {
    std::snprintf(text, sizeof text, "%.3g", v);
  }
  return text;
}

// A ratio for the table: "1.5x", or "-" where there is none.
std::string times(double v) {
  return std::isnan(v) ? "-" : format(v) + "x";
}

void printTable(const Json& r, const std::vector<Workload>& chosen) {
  std::printf("%-16s %-9s %10s %10s %10s %8s %9s  %-24s %s\n", "key", "unit", "plugpool", "mp.Pool",
              "executor", "ratio", "vs exec", "target", "figure for target");
  for (const auto& w : chosen) {
    const Json& e = r.at(w.key);
    auto num = [&](const char* k) { return e.at(k).is_null() ? NAN : e.at(k).get<double>(); };
    std::string forTarget;
    if (w.key == "map_tiny_tcp") {
      forTarget = times(num("ratio")) + " of local";
    } else if (w.key == "apply_rtt_tcp") {
      forTarget = format(num("plugpool")) + " us, " + times(num("plugpool") / num("local")) +
                  " local (p99 " + format(num("plugpool_p99")) + " vs " + format(num("local_p99")) +
                  " us)";
    } else if (w.key == "echo_64mib_tcp") {
      forTarget = times(num("ratio")) +
                  " of local (into Bytes: " + format(num("plugpool_bytes_result")) + " GB/s, " +
                  times(num("plugpool_bytes_result") / num("local_bytes_result")) + " local)";
    } else if (w.key == "apply_rtt") {
      forTarget = format(num("socketpair_ratio")) + "x socketpair, p99 " +
                  format(num("socketpair_ratio_p99")) + "x (p99 " + format(num("plugpool_p99")) +
                  " vs " + format(num("python_p99")) + " us)";
    } else if (w.key == "echo_64mib") {
      forTarget = format(100 * num("memcpy_fraction")) +
                  "% of memcpy (into Bytes: " + format(100 * num("bytes_memcpy_fraction")) + "%, " +
                  format(num("plugpool_bytes_result")) + " GB/s)";
    } else if (w.key == "cpu_scaling") {
      forTarget = format(num("per_core")) + " x cores";
    } else if (w.key == "startup") {
      forTarget = format(100 * num("fraction_of_python")) + "% of Python";
    } else if (w.key == "py_apply_rtt") {
      forTarget = format(num("ratio")) + "x Python (p99 " + format(num("plugpool_p99")) + " vs " +
                  format(num("python_p99")) + " us)";
    } else {
      forTarget = format(num("ratio")) + "x Python";
    }
    // A quick run's target_met is null: it prints no verdict.
    const char* verdict = !w.hasTarget()                   ? " (no target)"
                          : e.at("target_met").is_null()   ? ""
                          : e.at("target_met").get<bool>() ? " (met)"
                                                           : " (MISSED)";
    std::printf("%-16s %-9s %10s %10s %10s %8s %9s  %-24s %s%s\n", w.key.c_str(), w.unit.c_str(),
                format(num("plugpool")).c_str(), format(num("python")).c_str(),
                format(num("python_executor")).c_str(), times(num("ratio")).c_str(),
                times(num("ratio_executor")).c_str(), w.target.c_str(), forTarget.c_str(), verdict);
  }
  const Json& m = r.at("machine");
  const Json& run = r.at("run");
  const std::string python = run.at("python").is_null()
                                 ? "no Python"
                                 : "Python " + run.at("python").get<std::string>() + " (spawn)";
  std::printf(
      "\nmachine: socketpair RTT %s us (one CPU %s, any CPU %s), pipe %s GB/s (one CPU %s, "
      "any CPU %s), memcpy %s GB/s, %u cores\n"
      "run: %d repetition(s), %u workers, %s, load average %s before, %s "
      "after\nratios: above 1 is better for plugpool (\"vs exec\": against "
      "ProcessPoolExecutor); a KEY_tcp's (workers started through env, over TCP to 127.0.0.1) "
      "is against KEY's plugpool figure, above 1 better over TCP\n",
      format(m.at("socketpair_rtt_us").get<double>()).c_str(),
      format(m.at("socketpair_rtt_us_one_cpu").get<double>()).c_str(),
      format(m.at("socketpair_rtt_us_any_cpu").get<double>()).c_str(),
      format(m.at("pipe_gbps").get<double>()).c_str(),
      format(m.at("pipe_gbps_one_cpu").get<double>()).c_str(),
      format(m.at("pipe_gbps_any_cpu").get<double>()).c_str(),
      format(m.at("memcpy_gbps").get<double>()).c_str(), m.at("cores").get<unsigned>(),
      run.at("repetitions").get<int>(), run.at("workers").get<unsigned>(), python.c_str(),
      run.at("load_average_before").get<std::string>().c_str(),
      run.at("load_average_after").get<std::string>().c_str());
  if (std::ranges::any_of(chosen, &Workload::fromPython)) {
    std::printf(
        "py_KEY: KEY's workload called from Python through plugpool.Pool, against the same "
        "Python pools\n");
  }
  if (run.at("quick").get<bool>()) {
    std::printf("targets: no verdicts (a --quick run is too short to measure)\n");
  }
}

// Defines plugpool-bench's command line on `app`, filling `s`; finish() applies what depends
// on several options once parsed.
struct CommandLine {
  explicit CommandLine(Settings& s) : settings(s) {
    std::vector<std::string> keys;
    for (const auto& w : workloads()) keys.push_back(w.key);
    app.add_flag("--quick", s.quick, "smaller workloads, 1 repetition (a few seconds)");
    app.add_option("--json", s.jsonPath, "also write the results as one JSON object to PATH")
        ->type_name("PATH");
    reps = app.add_option("--reps", s.reps, "repetitions; medians are reported (default 5)")
               ->check(CLI::PositiveNumber);
    app.add_option("--workers", s.workers, "workers on both sides (default: one per core)")
        ->check(CLI::Range(0, std::numeric_limits<int>::max()));
    app.add_option("--only", s.only, "only these workloads (comma-separated keys)")
        ->delimiter(',')
        ->check(CLI::IsMember(keys));
    app.add_option("--python", s.python,
                   "the Python interpreter (default: the one the build's Python module is for, " +
                       s.python + ")")
        ->type_name("EXE");
    app.add_option("--script", s.script, "the Python side (default: bench/python_pools.py)")
        ->type_name("PATH");
    app.add_option("--python-module", s.pythonModule,
                   "the folder holding the built plugpool module, for the py_* keys; empty: "
                   "skip them (default: the build's, if it was built)")
        ->type_name("DIR");
    app.add_option("--in-flight", s.chunksInFlight,
                   "Options::chunksInFlight of plugpool's pools (default: its default)");
    app.add_option("--window", s.streamWindow,
                   "Options::streamWindow of plugpool's pools (default: its default)");
    app.add_flag("--plugpool-only", s.plugpoolOnly,
                 "run plugpool's side alone and print each figure (to profile it)");
  }

  void finish() {
    Settings& s = settings;
    if (s.workers == 0) {
      s.workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
    if (!s.quick) return;
    if (reps->count() == 0) s.reps = 1;
    s.params.mapItems = 200'000;
    s.params.imapItems = 5'000;
    s.params.applySamples = 300;
    s.params.cpuItems = 100;
    s.params.socketpairRoundTrips = 5'000;
    s.params.pipeBytes = std::size_t{256} << 20;
    s.params.memcpyBytes = std::size_t{64} << 20;
    s.params.images = 60;
  }

  CLI::App app{
      "plugpool-bench: plugpool beside Python's multiprocessing.Pool and ProcessPoolExecutor, "
      "in one run (README, \"Benchmark\")"};
  Settings& settings;
  CLI::Option* reps = nullptr;
};

int run(int argc, char** argv) {
  Settings s;
  CommandLine line(s);
  try {
    line.app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return line.app.exit(e);  // 0 for --help, else a message and a non-zero status
  }
  line.finish();
  const std::vector<Workload> all = workloads();
  std::vector<Workload> chosen;
  Json skipped = Json::array();
  for (const auto& w : all) {
    if (!s.only.empty() && std::ranges::find(s.only, w.key) == s.only.end()) continue;
    if (w.fromPython && s.pythonModule.empty()) {
      skipped.push_back(w.key);
    } else {
      chosen.push_back(w);
    }
  }
  if (!skipped.empty()) {
    std::string keys;
    for (const auto& key : skipped) keys += (keys.empty() ? "" : ", ") + key.get<std::string>();
    std::fprintf(stderr,
                 "plugpool-bench: skipping %s: the Python module was not built (meson option "
                 "python; it needs pybind11-dev and python3-dev)\n",
                 keys.c_str());
  }
  std::optional<ImageFolder> images;
  if (std::ranges::any_of(chosen, &Workload::needsImages)) {
    images.emplace(s.makeImages, s.params.images);
    s.imageDir = images->path();
  }
  if (s.plugpoolOnly) {
    for (int rep = 0; rep < s.reps; ++rep) {
      for (const auto& w : chosen) {
        Json pp = w.plugpool(s);
        w.verify(pp, s);
        std::printf("%s %s %s\n", w.key.c_str(), format(w.figure(pp, s)).c_str(), w.unit.c_str());
      }
    }
    return 0;
  }
  if (const char* perturb = std::getenv("MALLOC_PERTURB_"); perturb && std::atoi(perturb) != 0) {
    std::fprintf(stderr,
                 "plugpool-bench: warning: MALLOC_PERTURB_ is set; glibc fills every allocation, "
                 "which distorts the figures (Python's most)\n");
  }
  const std::string started = utcNow(), loadBefore = loadAverage();
  std::string pythonVersion;
  std::vector<Samples> samples(chosen.size());
  Machine machine;
  for (int rep = 0; rep < s.reps; ++rep) {
    const auto& p = s.params;
    machine.rttUs.push_back(socketpairRttUs(p.socketpairRoundTrips, Placement::ANY_CPU));
    machine.rttUsOneCpu.push_back(socketpairRttUs(p.socketpairRoundTrips, Placement::ONE_CPU));
    machine.pipeGbps.push_back(pipeGbps(p.pipeBytes, Placement::ANY_CPU));
    machine.pipeGbpsOneCpu.push_back(pipeGbps(p.pipeBytes, Placement::ONE_CPU));
    machine.memcpyGbps.push_back(memcpyGbps(p.memcpyBytes, 5));
    for (std::size_t i = 0; i < chosen.size(); ++i) {
      const Workload& w = chosen[i];
      if (!w.local.empty()) {
        // A KEY_tcp, beside KEY's plugpool result of this repetition: that of KEY's own row if
        // KEY is chosen (it comes first), else one measured here, alternating which goes first.
        const Workload& local = *std::ranges::find(all, w.local, &Workload::key);
        const auto row = std::ranges::find(chosen, w.local, &Workload::key);
        Json tcp, lp;
        auto runTcp = [&] { tcp = w.plugpool(s); };
        auto runLocal = [&] { lp = local.plugpool(s); };
        if (row != chosen.end()) {
          runTcp();
          lp = samples[static_cast<std::size_t>(row - chosen.begin())].plugpool.back();
        } else if (rep % 2 == 0) {
          runTcp();
          runLocal();
        } else {
          runLocal();
          runTcp();
        }
        w.verify(tcp, s);
        local.verify(lp, s);
        samples[i].plugpool.push_back(tcp);
        samples[i].local.push_back(lp);
        std::fprintf(stderr, "rep %d/%d %-16s over TCP %s, local %s %s (load %s)\n", rep + 1,
                     s.reps, w.key.c_str(), format(w.figure(tcp, s)).c_str(),
                     format(w.figure(lp, s)).c_str(), w.unit.c_str(), loadAverage().c_str());
        continue;
      }
      Json pp, py;
      auto runPlugpool = [&] { pp = w.plugpool(s); };
      auto runPython = [&] { py = python(s, w.pythonWorkload(), w.pythonArgs(s)); };
      if (rep % 2 == 0) {  // alternate which side goes first
        runPlugpool();
        runPython();
      } else {
        runPython();
        runPlugpool();
      }
      for (Json* raw : {&pp, &py.at("pool"), &py.at("executor")}) {
        if (raw->is_null()) continue;
        w.verify(*raw, s);
        if (w.agree && raw != &pp) w.agree(pp, *raw);
      }
      for (Json* raw : {&pp, &py.at("pool"), &py.at("executor")}) {
        if (!raw->is_object()) continue;
        raw->erase("sizes");  // image_job's per-image fields, checked above: not kept
        raw->erase("means");
      }
      pythonVersion = py.at("python").get<std::string>();
      samples[i].plugpool.push_back(pp);
      samples[i].pool.push_back(py.at("pool"));
      samples[i].executor.push_back(py.at("executor"));
      std::fprintf(stderr, "rep %d/%d %-16s plugpool %s, mp.Pool %s %s (load %s)\n", rep + 1,
                   s.reps, w.key.c_str(), format(w.figure(pp, s)).c_str(),
                   format(w.figure(py.at("pool"), s)).c_str(), w.unit.c_str(),
                   loadAverage().c_str());
    }
  }
  Json result = report(chosen, samples, machine, s, started, loadBefore, pythonVersion, skipped);
  printTable(result, chosen);
  if (!s.jsonPath.empty()) {
    std::ofstream out(s.jsonPath);
    out << result.dump(2) << '\n';
    if (!out) {
      std::fprintf(stderr, "plugpool-bench: cannot write %s\n", s.jsonPath.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace plugpool::bench

int main(int argc, char** argv) {
  try {
    return plugpool::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plugpool-bench: %s\n", e.what());
    return 1;
  }
}
