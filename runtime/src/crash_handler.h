// crash_handler.h — a worker says where it crashed before it dies. Internal.
//
// A task that dereferences a null pointer (or divides by zero, or aborts) ends its worker
// with a fatal signal; the host reports WorkerCrashed. With the handler installed, the worker
// first writes one Crash message (wire.capnp) on its channel: the signal, the call that was
// running, and its stack with function names and, where the code has debug information,
// file:line. The handler runs on an alternate signal stack (so a stack overflow is reported
// too) and takes async-signal-safe steps only: the stack is walked and symbolised by GCC's
// libbacktrace, which was set up beforehand and allocates with mmap, never malloc; the
// message is built in a static buffer (capnp::FlatMessageBuilder) and written with send().
// Names stay mangled: the host demangles them. (Built without libbacktrace, by another
// compiler than g++, a report has bare program counters.) Then the worker dies of the same signal,
// as it would have without the handler (a core dump, if enabled, shows the handler on top).
//
// If the report cannot be made within CRASH_REPORT_SECONDS (a stack walk that never ends,
// a lock a second thread holds), an alarm ends the worker with the original signal anyway.
// A second fatal signal inside the handler ends it at once.
#pragma once

#include <cstdint>

namespace plugpool::detail {

inline constexpr unsigned CRASH_REPORT_SECONDS = 5;
inline constexpr unsigned CRASH_MAX_FRAMES = 64;
inline constexpr unsigned CRASH_MAX_TEXT = 1024;  // bytes of one function name or file name
inline constexpr std::uint32_t CRASH_ITEM_UNKNOWN = 0xffffffff;

// Installs the handler for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT in this (worker)
// process, writing to `channel`. Call once, on the thread that runs tasks, after the plugins
// are loaded (a crash while loading is told by the host as a start failure). Not for a
// host: it takes over those signals for the whole process.
void installCrashHandler(int channel) noexcept;

// What the handler reports as running: item `item` of Run `runId` (0: none). Cheap; the task
// thread calls it before each call. For a chunk entry, which runs a chunk's items in one
// call, `item` is CRASH_ITEM_UNKNOWN and `pluginItem` the plugin's word that says which
// (abi.h convention 10), if it has one.
void noteRunning(std::uint64_t runId, std::uint32_t item,
                 volatile std::uint32_t* pluginItem = nullptr) noexcept;

}  // namespace plugpool::detail
