// Large payloads and many chunks in flight: the fast paths must not change a single byte or
// the order of results, and must give back the memory they take (big_buffers.h).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Bytes;
using plugpool::Pool;
using testing::Int;

namespace {

// A payload whose every byte depends on its position and on `seed`.
Bytes pattern(std::size_t size, unsigned seed) {
  Bytes b(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& byte : b) {
    x = x * 1664525u + 1013904223u;
    byte = static_cast<std::byte>(x >> 24);
  }
  return b;
}

// Bytes of this process's memory advised for transparent huge pages (madvise MADV_HUGEPAGE,
// VmFlags "hg" in /proc/self/smaps): big_buffers.h maps each large message buffer on its own
// with that advice, so a leaked or still-kept one shows here. Only plugpool gives that advice
// (codec.h's copyBytes too, inside a large result while it lives), not the allocators: the
// sanitizers' own mappings, which come and go and split as they like, do not count.
std::size_t hugePageBytes() {
  return testing::hugePageMappings().bytes;
}

// RssShmem of process `pid` in KiB: the shared-memory pages it has mapped in.
long sharedKib(const std::string& pid) {
  std::ifstream status("/proc/" + pid + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stol(line.substr(9));
  }
  return -1;
}

std::string environmentOf(Int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : env) c = c == '\0' ? '\n' : c;
  return env;
}

}  // namespace

TEST_CASE("large payloads round-trip intact and their buffers are released") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto echo = pool.task<Bytes(Bytes)>("examples", "echo_bytes");
    const std::size_t advised = hugePageBytes();  // before any large message
    {
      // Sizes around the 1 MiB threshold and the 2 MiB huge page, and 64 MiB.
      for (std::size_t size :
           {std::size_t{0}, std::size_t{1}, std::size_t{(1 << 20) - 8}, std::size_t{1} << 20,
            std::size_t{(2 << 20) + 3}, std::size_t{64} << 20}) {
        INFO("size " << size);
        Bytes in = pattern(size, static_cast<unsigned>(size));
        REQUIRE(pool.apply(echo, in) == in);
      }
      // Several large calls in flight at once, on both workers, come back each to its caller;
      // a worker's second Run and reply find its regions held and take the socket, in message
      // buffers of their own (big_buffers.h).
      std::vector<Bytes> inputs;
      for (unsigned i = 0; i < 6; ++i) inputs.push_back(pattern((3u << 20) + i, i));
      REQUIRE(pool.map(echo, inputs, 1) == inputs);
      // So do three at once on two workers, none decoded until all are done: one worker's
      // second reply finds its region still held.
      const Bytes in = pattern(std::size_t{16} << 20, 7);
      for (int round = 0; round < 3; ++round) {
        std::vector<decltype(pool.submit(echo, in))> calls;
        for (int i = 0; i < 3; ++i) calls.push_back(pool.submit(echo, in));
        for (auto& call : calls) call.wait();
        for (auto& call : calls) REQUIRE(call.get() == in);
      }
    }
    // Every message buffer of those calls is unmapped again once the pool has been idle for
    // idleMemoryTimeout (until then it keeps its last two for the next of their size:
    // big_buffers.h); the results' copies went with them. A buffer freed after that release
    // (a result decoded late, as on a slow machine) waits for the next one, which follows the
    // next large message: here a 1.6 MB Run with a small reply, sent until the release came
    // (waited for: it runs in the pool's own time). Not under AddressSanitizer, whose
    // allocator keeps freed blocks mapped for a while (its quarantine), copyBytes' advice
    // with them.
#ifndef __SANITIZE_ADDRESS__
    auto sum = pool.task<Int(std::vector<Int>)>("examples", "sum");
    const std::vector<Int> ones(200'000, 1);
    const bool released = testing::eventually([&] {
      REQUIRE(pool.apply(sum, ones) == 200'000);
      return testing::eventually([&] { return hugePageBytes() <= advised; },
                                 std::chrono::seconds(5));
    });
    const testing::Advised now = testing::hugePageMappings();
    INFO("advised for huge pages: " << now.bytes << " bytes, " << advised << " before:\n"
                                    << now.mappings);
    REQUIRE(released);
#else
    static_cast<void>(advised);
#endif
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("large segments travel through shared memory both ways and its pages are given back") {
  testing::ProcessSnapshot before;
  const long hostBefore = sharedKib("self");
  const Bytes in = pattern(std::size_t{8} << 20, 3);
  const Bytes other = pattern(std::size_t{8} << 20, 4);
  const Bytes small = pattern(1000, 1);
  for (auto method : {plugpool::StartMethod::SPAWN, plugpool::StartMethod::FORK}) {
    INFO("start method " << static_cast<int>(method));
    auto options = testing::options(1, {"examples"});
    options.startMethod = method;
    {
      // The regions keep their pages throughout: an idle release in the middle (after a
      // second without a large message, by default) would change what each check below
      // measures whenever the machine is slow enough.
      auto warm = options;
      warm.idleMemoryTimeout = std::chrono::hours(1);
      Pool pool(warm);
      auto echo = pool.task<Bytes(Bytes)>("examples", "echo_bytes");
      const std::string worker =
          std::to_string(pool.apply(pool.task<Int()>("examples", "worker_pid")));
      const auto shared = [&] { return pool.stats().sharedMessages; };

      REQUIRE(pool.apply(echo, in) == in);
      REQUIRE(shared() == 2);  // the Run there, the ChunkDone back
      REQUIRE(pool.apply(echo, small) == small);
      REQUIRE(shared() == 2);  // small messages take the socket
      // Both processes map the pages (a region is written by one and read by the other).
      REQUIRE(sharedKib("self") - hostBefore >= 2 * 8 * 1024);
      REQUIRE(sharedKib(worker) >= 2 * 8 * 1024);

      // A result not yet decoded holds the worker's region: the next large reply takes the
      // socket instead, intact, and nothing waits. Decoding it frees the region again.
      auto held = pool.submit(echo, in);
      held.wait();
      REQUIRE(pool.apply(echo, other) == other);
      REQUIRE(shared() == 2 + 2 + 1);  // held's both ways; other's Run only
      REQUIRE(held.get() == in);
      REQUIRE(pool.apply(echo, other) == other);
      REQUIRE(shared() == 5 + 2);
    }
    {
      // With the default idleMemoryTimeout (1 s), an idle pool's regions give their pages
      // back, in both processes. A SharedBytes result holds the worker's region, pages and
      // all, until it goes.
      Pool pool(options);
      auto echo = pool.task<plugpool::SharedBytes(Bytes)>("examples", "echo_bytes");
      const std::string worker =
          std::to_string(pool.apply(pool.task<Int()>("examples", "worker_pid")));
      plugpool::SharedBytes back = pool.apply(echo, in);
      REQUIRE(back == in);
      REQUIRE(sharedKib(worker) >= 8 * 1024);
      back = {};
      const auto trimmed = [&] {
        return sharedKib("self") - hostBefore < 1024 && sharedKib(worker) < 1024;
      };
      const bool given = testing::eventually(trimmed);
      INFO("host RssShmem " << sharedKib("self") - hostBefore << " KiB more than before, worker "
                            << sharedKib(worker) << " KiB");
      REQUIRE(given);
      // And the next large message writes to fresh pages: its Run at least through the host's
      // region, which the release left free (its reply may meet the next release of the
      // worker's region on a slow machine, and then takes the socket).
      const auto sharedBefore = pool.stats().sharedMessages;
      REQUIRE(pool.apply(echo, in) == in);
      REQUIRE(pool.stats().sharedMessages > sharedBefore);
    }
  }
  testing::requireCleanShutdown(before);
}

// Whether `p` lies in one of this process's mappings of a plugpool shared region.
bool inSharedRegion(const void* p) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("plugpool-shared") == std::string::npos) continue;
    auto dash = line.find('-');
    auto from = std::stoull(line.substr(0, dash), nullptr, 16);
    auto to = std::stoull(line.substr(dash + 1, line.find(' ') - dash - 1), nullptr, 16);
    if (at >= from && at < to) return true;
  }
  return false;
}

// How many of process `pid`'s mappings of plugpool shared regions are writable and at least
// 1 MiB (the data of its region, not the header pages).
int writableRegions(const std::string& pid) {
  std::ifstream maps("/proc/" + pid + "/maps");
  int count = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("plugpool-shared") == std::string::npos) continue;
    std::istringstream in(line);
    std::string range, perms;
    in >> range >> perms;
    auto dash = range.find('-');
    auto size = std::stoull(range.substr(dash + 1), nullptr, 16) -
                std::stoull(range.substr(0, dash), nullptr, 16);
    if (size >= (1u << 20) && perms[1] == 'w') ++count;
  }
  return count;
}

TEST_CASE("SharedBytes results are read where they arrived and keep their message alive") {
  testing::ProcessSnapshot before;
  const Bytes in = pattern(std::size_t{8} << 20, 5);
  plugpool::SharedBytes kept;
  {
    Pool pool(1, {"examples"});
    auto echo = pool.task<plugpool::SharedBytes(Bytes)>("examples", "echo_bytes");
    auto again = pool.task<Bytes(plugpool::SharedBytes)>("examples", "echo_bytes");
    const auto shared = [&] { return pool.stats().sharedMessages; };

    const std::string worker =
        std::to_string(pool.apply(pool.task<Int()>("examples", "worker_pid")));
    REQUIRE(writableRegions(worker) == 1);  // its own region, to build replies in

    plugpool::SharedBytes back = pool.apply(echo, in);
    REQUIRE(back == in);
    REQUIRE(inSharedRegion(back.data()));  // no copy: in the worker's region, as it arrived
    REQUIRE(shared() == 2);
    // The worker cannot write to what the host is reading: its region is read-only to it
    // until it takes the region for its next large reply.
    REQUIRE(writableRegions(worker) == 0);
    // Held, it keeps the region: the next large reply takes the socket, and is a copy.
    plugpool::SharedBytes second = pool.apply(echo, in);
    REQUIRE(second == in);
    REQUIRE_FALSE(inSharedRegion(second.data()));
    REQUIRE(shared() == 3);
    // Passed on as another call's argument, and small ones too.
    REQUIRE(pool.apply(again, second) == in);
    REQUIRE(pool.apply(echo, pattern(100, 1)) == pattern(100, 1));
    REQUIRE(pool.apply(echo, Bytes{}).empty());
    // In streams as in maps.
    std::size_t n = 0;
    for (const plugpool::SharedBytes& b : pool.imap(echo, std::vector<Bytes>(3, in), 1)) {
      REQUIRE(b == in);
      ++n;
    }
    REQUIRE(n == 3);
    kept = back;
    back = {};
  }
  // The pool and its worker are gone; the bytes are still there.
  REQUIRE(kept == in);
  kept = {};
  testing::requireCleanShutdown(before);
}

TEST_CASE("many small chunks in flight keep every result in its place") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto items = testing::range(200'000);
    for (std::size_t chunksize : {std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
      INFO("chunksize " << chunksize);
      auto squares =
          pool.map(square, std::vector<Int>(items.begin(), items.begin() + 20'000), chunksize);
      for (std::size_t i = 0; i < squares.size(); ++i) REQUIRE(squares[i] == items[i] * items[i]);
    }
    auto all = pool.map(square, items);
    for (std::size_t i = 0; i < all.size(); ++i) REQUIRE(all[i] == items[i] * items[i]);

    // Streams of one-item chunks of a cheap task: the window widens and each worker holds
    // dozens of chunks; ordered results still come in input order, unordered ones all once.
    Int expected = 0;
    for (Int value : pool.imap(square, items, 1)) {
      REQUIRE(value == expected * expected);
      ++expected;
    }
    REQUIRE(expected == static_cast<Int>(items.size()));
    std::vector<bool> seen(items.size());
    auto unordered = pool.imapUnordered(square, items, 1);
    while (auto value = unordered.next()) {
      std::size_t i = unordered.index();
      REQUIRE(!seen[i]);
      seen[i] = true;
      REQUIRE(*value == items[i] * items[i]);
    }
    REQUIRE(std::count(seen.begin(), seen.end(), true) == static_cast<long>(items.size()));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("spawned workers ask glibc for huge pages unless the host set its own tunables") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    auto pid = pool.apply(pool.task<Int()>("examples", "worker_pid"));
    REQUIRE_THAT(environmentOf(pid), Catch::Contains("GLIBC_TUNABLES=glibc.malloc.hugetlb=1\n"));
  }
  ::setenv("GLIBC_TUNABLES", "glibc.malloc.check=0", 1);
  {
    Pool pool(1, {"examples"});
    auto pid = pool.apply(pool.task<Int()>("examples", "worker_pid"));
    std::string env = environmentOf(pid);
    REQUIRE_THAT(env, Catch::Contains("GLIBC_TUNABLES=glibc.malloc.check=0\n"));
    REQUIRE_THAT(env, !Catch::Contains("hugetlb"));
  }
  ::unsetenv("GLIBC_TUNABLES");
  testing::requireCleanShutdown(before);
}
