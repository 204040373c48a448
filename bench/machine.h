// machine.h — the machine's own reference points, measured in the same run as the pools, so
// the pools' figures can be read against what the hardware and kernel allow.
//
// Each function forks at most one helper process, which only reads, writes and _exits (safe
// in a process with threads). Not thread-safe: call them one at a time, with nothing else
// running that would compete for the cores.
#pragma once

#include <cstddef>

namespace plugpool::bench {

// Median round trip, in microseconds, of a 1-byte ping-pong over a SOCK_STREAM socketpair
// between this process and a child: the floor under any request/reply between processes.
double socketpairRttUs(int roundTrips);

// Throughput, in GB/s (1e9 bytes per second), of `bytes` written by a child into a pipe of the
// default size in 1 MiB writes and read here in 1 MiB reads.
double pipeGbps(std::size_t bytes);

// Median bandwidth, in GB/s, of memcpy between two distinct buffers of `bytes` already in
// memory (pages touched before timing), over `passes` copies.
double memcpyGbps(std::size_t bytes, int passes);

}  // namespace plugpool::bench
