// machine.h — the machine's own reference points, measured in the same run as the pools, so
// the pools' figures can be read against what the hardware and kernel allow.
//
// Each function forks at most one helper process, which only reads, writes and _exits (safe
// in a process with threads). Not thread-safe: call them one at a time, with nothing else
// running that would compete for the cores.
#pragma once

#include <cstddef>

namespace plugpool::bench {

// Where the two processes of a measurement run. On a VM, waking a process on an idle virtual
// CPU can cost tens of microseconds (the host must schedule that CPU again), so a ping-pong
// between CPUs measures 8 us while the machine is busy and 40-50 us while it is idle; on one
// CPU it measures the kernel's own cost every time. Report the better of the two as the floor.
enum class Placement {
  ANY_CPU,  // wherever the scheduler puts them
  ONE_CPU,  // both pinned to the CPU this thread runs on
};

// Median round trip, in microseconds, of a 1-byte ping-pong over a SOCK_STREAM socketpair
// between this process and a child: the floor under any request/reply between processes.
double socketpairRttUs(int roundTrips, Placement placement);

// Throughput, in GB/s (1e9 bytes per second), of `bytes` written by a child into a pipe of the
// default size in 1 MiB writes and read here in 1 MiB reads.
double pipeGbps(std::size_t bytes, Placement placement);

// Median bandwidth, in GB/s, of memcpy between two distinct buffers of `bytes` already in
// memory (pages touched before timing), over `passes` copies.
double memcpyGbps(std::size_t bytes, int passes);

}  // namespace plugpool::bench
