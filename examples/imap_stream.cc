// imap_stream — a stream of any length in flat memory: N items come from a generator (a lazy
// std::views range; no list of N items ever exists), go through imapUnordered, and are summed
// as they come back. The stream keeps only a few chunks outstanding, so the host's peak
// memory is about the same for a million items as for ten million.
//
//   $ build/examples/imap_stream 1000000
//   items=1000000 sum=332833500000 peak_rss_mib=5.7 shared_mib=1.2
//
// usage: imap_stream [N [CHUNKSIZE]]; N defaults to 1000000, CHUNKSIZE to 0 (adaptive: chunks
// grow until each takes about 10 ms in a worker, at most Stream::MAX_ADAPTIVE_CHUNK items).
//
// The items are i % 1000 and the task squares them, so the sum has a closed form that the
// program checks (it exits with 1 if the sum is wrong): each full run of 1000 items adds
// 0² + 1² + ... + 999² = 332833500. Peak memory is getrusage's ru_maxrss of this process (the
// workers are separate processes). Linux keeps ru_maxrss across execve, so start the program
// from a shell: exec'd directly by a larger process, it reports that process's peak.
#include <sys/resource.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <ranges>
#include <string>

#include <plugpool/pool.h>

namespace {

using Int = std::int64_t;

// 0² + 1² + ... + (n-1)².
Int sumOfSquaresBelow(Int n) {
  return (n - 1) * n * (2 * n - 1) / 6;
}

// The peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB).
double peakRssMib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// The shared memory this process has resident now, in MiB (RssShmem): mostly the workers'
// reply logs, whose pages the host touches as their rings advance, up to a fixed size per
// worker however long the stream. It is part of the peak above.
double sharedRssMib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stod(line.substr(9)) / 1024.0;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Int n = argc > 1 ? std::atoll(argv[1]) : 1'000'000;
  long long chunksize = argc > 2 ? std::atoll(argv[2]) : 0;
  if (n < 0 || chunksize < 0) {
    std::fprintf(stderr, "usage: imap_stream [N [CHUNKSIZE]] (both >= 0)\n");
    return 2;
  }

  plugpool::Pool pool(4, {"examples"});
  auto square = pool.task<Int(Int)>("examples", "square");

  // The generator: 0, 1, ..., 999, 0, 1, ... — N items, each made only when the stream asks.
  auto items = std::views::iota(Int{0}, n) | std::views::transform([](Int i) { return i % 1000; });

  // Results arrive in chunks, in whatever order the chunks finish; a sum does not mind.
  Int sum = 0;
  for (Int squared : pool.imapUnordered(square, items, static_cast<std::size_t>(chunksize))) {
    sum += squared;
  }

  std::printf("items=%lld sum=%lld peak_rss_mib=%.1f shared_mib=%.1f\n", static_cast<long long>(n),
              static_cast<long long>(sum), peakRssMib(),
              sharedRssMib());  // while the pool, and so its shared memory, is still there

  Int expected = (n / 1000) * sumOfSquaresBelow(1000) + sumOfSquaresBelow(n % 1000);
  if (sum != expected) {
    std::fprintf(stderr, "imap_stream: sum is %lld, expected %lld\n", static_cast<long long>(sum),
                 static_cast<long long>(expected));
    return 1;
  }
}
