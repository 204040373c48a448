// Bad configuration gives a clear PluginError or StartError early: at pool start for plugins
// that cannot be loaded, at bind time for unknown names and wrong signatures.
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include <plugpool/local_plugin.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "support.h"

using Catch::Matchers::Contains;
using Catch::Matchers::EndsWith;
using Catch::Matchers::Equals;
using Catch::Matchers::StartsWith;
namespace fs = std::filesystem;
using plugpool::Pool;
using Int = std::int64_t;

namespace {

// The message of the PluginError (or other plugpool::Error) that starting a pool throws.
template <typename E = plugpool::PluginError>
std::string startError(std::vector<std::string> plugins) {
  try {
    Pool pool(2, std::move(plugins));
  } catch (const E& e) {
    return e.what();
  }
  FAIL("the pool started");
  return "";
}

// Sets an environment variable for the scope: unset again however the test ends, so that a
// failed check does not change the tests after it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

// A fresh temporary folder, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "plugpool-bind-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

TEST_CASE("binding an unknown plugin or task names what exists") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    REQUIRE_THROWS_WITH((pool.task<Int(Int)>("exampels", "square")),
                        Contains("no plugin named \"exampels\"") && Contains("examples"));
    REQUIRE_THROWS_WITH(
        (pool.task<Int(Int)>("examples", "sqaure")),
        Contains("has no task \"sqaure\"") && Contains("square") && Contains("slow_task"));
    REQUIRE_THROWS_AS((pool.task<Int(Int)>("examples", "sqaure")), plugpool::PluginError);
    REQUIRE(pool.stats().chunksSent == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("binding with the wrong types names both signatures") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    REQUIRE_THROWS_WITH((pool.task<std::string(std::string)>("examples", "square")),
                        "examples.square is (int64) -> int64, but was bound as (text) -> text");
    REQUIRE_THROWS_WITH((pool.task<double(Int)>("examples", "square")),
                        Contains("bound as (int64) -> float64"));
    REQUIRE_THROWS_WITH((pool.task<Int(std::int32_t)>("examples", "square")),
                        Contains("bound as (int32) -> int64"));
    REQUIRE_THROWS_WITH((pool.task<double(double)>("examples", "add")),
                        Contains("(float64, float64) -> float64"));
    REQUIRE_THROWS_AS((pool.task<Int(Int, Int)>("examples", "square")), plugpool::PluginError);
    // The same types under other C++ spellings are fine.
    REQUIRE(pool.apply(pool.task<long long(long)>("examples", "square"), 9) == 81);
    REQUIRE(pool.stats().chunksSent == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("plugins that cannot be loaded fail the pool at start with the reason") {
  testing::ProcessSnapshot before;
  SECTION("missing file") {
    REQUIRE_THAT(startError({"/nonexistent/libnothing.so"}),
                 Contains("/nonexistent/libnothing.so: no such file"));
  }
  SECTION("an unknown bare name") {
    REQUIRE_THAT(
        startError({"nothing_by_this_name"}),
        Contains("no plugin named \"nothing_by_this_name\"") && Contains("PLUGPOOL_PLUGIN_PATH"));
  }
  SECTION("not a shared library: the loader's reason, without an errno") {
    const std::string file = std::string(FIXTURES_SOURCE_DIR) + "/not_a_library.so";
    REQUIRE_THAT(startError({file}),
                 StartsWith(file + ": cannot be loaded as a shared library: ") &&
                     !Contains("Bad file descriptor") && !Contains("boost::dll"));
  }
  SECTION("a shared library that is not a plugin: did you forget the macro?") {
    REQUIRE_THAT(
        startError({testing::fixture("not_a_plugin")}),
        Contains("not a plugpool plugin") && Contains("did you forget PLUGPOOL_PLUGIN(...)"));
  }
  SECTION("a plugin built for another ABI version") {
    REQUIRE_THAT(startError({testing::fixture("wrong_abi")}),
                 Contains("built for plugpool ABI version 999") && Contains("speaks version 1"));
  }
  SECTION("a plugin with an undefined symbol: demangled, with the link option that finds it") {
    REQUIRE_THAT(startError({testing::fixture("missing_symbol")}),
                 StartsWith(testing::fixture("missing_symbol") +
                            ": undefined symbol: missing_helper(long) (_Z14missing_helperl); ") &&
                     Contains("link plugins with -Wl,--no-undefined") &&
                     !Contains("Bad file descriptor"));
  }
  SECTION("two plugins with one name") {
    REQUIRE_THAT(startError({"examples", testing::fixture("also_examples")}),
                 Contains("also named \"examples\""));
  }
  SECTION("a plugin that crashes its worker while loading") {
    REQUIRE_THAT(startError<plugpool::StartError>({testing::fixture("crash_on_load")}),
                 Contains("killed by signal 11 (SIGSEGV) before it was ready"));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a missing worker executable is a StartError naming where it looked") {
  testing::ProcessSnapshot before;
  plugpool::Options options;
  options.workers = 2;
  options.plugins = {"examples"};
  options.workerExecutable = "/nonexistent/plugpool-worker";
  REQUIRE_THROWS_AS(Pool(options), plugpool::StartError);
  // It was set: no hint to set it.
  REQUIRE_THROWS_WITH(Pool(options),
                      "Options::workerExecutable names /nonexistent/plugpool-worker, "
                      "which does not exist");
  options.workerExecutable = std::string(FIXTURES_SOURCE_DIR) + "/not_a_library.so";
  REQUIRE_THROWS_WITH(Pool(options), EndsWith("not_a_library.so, which is not an executable file"));
  testing::requireCleanShutdown(before);
}

TEST_CASE("PLUGPOOL_WORKER naming a missing file is a StartError, not skipped") {
  testing::ProcessSnapshot before;
  ScopedEnv worker("PLUGPOOL_WORKER", "/nonexistent/plugpool-worker");
  REQUIRE_THROWS_WITH(Pool(1, {"examples"}),
                      "PLUGPOOL_WORKER names /nonexistent/plugpool-worker, which does not exist");
  // Options::workerExecutable comes first.
  plugpool::Options options;
  options.workers = 1;
  options.plugins = {"examples"};
  options.workerExecutable = REAL_WORKER;
  {
    Pool pool(options);
    REQUIRE(pool.apply(pool.task<Int(Int)>("examples", "square"), 3) == 9);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("plugins are found by bare name through PLUGPOOL_PLUGIN_PATH") {
  testing::ProcessSnapshot before;
  ::setenv("PLUGPOOL_PLUGIN_PATH", ("/nonexistent:" + std::string(FIXTURES_DIR)).c_str(), 1);
  {
    Pool pool(1, {"faults"});
    REQUIRE(pool.plugins().front().path == testing::fixture("faults"));
    REQUIRE(pool.apply(pool.task<Int(Int)>("faults", "sleep_ms"), 1) == 1);
  }
  ::unsetenv("PLUGPOOL_PLUGIN_PATH");
  testing::requireCleanShutdown(before);
}

TEST_CASE("a bare name finds the plugin of that name, or is refused naming both") {
  testing::ProcessSnapshot before;
  // A decoy: the faults plugin under the file name libexamples.so, first on the search path.
  TempDir folder;
  const std::string decoy = (folder.path() / "libexamples.so").string();
  fs::copy_file(testing::fixture("faults"), decoy);
  ScopedEnv path("PLUGPOOL_PLUGIN_PATH", folder.path().string());
  const std::string refused = decoy +
                              " was found for the plugin name \"examples\", but it is the plugin "
                              "\"faults\"; remove or rename that file, or give a path to load "
                              "it as \"faults\"";
  REQUIRE_THAT(startError({"examples"}), Equals(refused));
  REQUIRE_THROWS_MATCHES(plugpool::LocalPlugin("examples"), plugpool::PluginError,
                         Catch::Matchers::Message(refused));
  {
    // By path, a file loads under its own name whatever the file is called.
    Pool pool(1, {decoy});
    REQUIRE(pool.plugins().front().name == "faults");
  }
  testing::requireCleanShutdown(before);
}
