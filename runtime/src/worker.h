// worker.h — the worker's side of the conversation (wire.capnp), as a library function.
// Internal.
//
// Both ways of starting a worker end here: plugpool-worker's main() (StartMethod::SPAWN)
// and the child of the fork launcher (StartMethod::FORK). The caller prepares the process
// (descriptors, signals, death signal) before calling serveWorker; serveWorker only talks.
#pragma once

namespace plugpool::detail {

// Exit statuses of a worker process (besides 0, "the host closed the channel").
inline constexpr int EXIT_LOAD_FAILED = 1;   // a plugin could not be loaded (after Hello said so)
inline constexpr int EXIT_USAGE = 2;         // started by hand, or with bad arguments
inline constexpr int EXIT_PROTOCOL = 70;     // the host sent something malformed
inline constexpr int EXIT_CHILD_SETUP = 71;  // a fork-started worker could not move its channel

// Runs the whole conversation on the connected, blocking stream `fd`: reads Setup, loads the
// plugins and answers Hello, then runs each Run and answers with a ChunkDone, until the host
// closes its end. Returns the status the process should exit with:
//   0                 the host closed the channel, also while we were writing (EPIPE,
//                     ECONNRESET), or before sending Setup;
//   EXIT_LOAD_FAILED  a plugin could not be used; Hello carried the reason;
//   EXIT_PROTOCOL     a malformed or unexpected message, or another channel error; a line
//                     saying why has been written to stderr.
// Every std::exception is turned into one of these statuses; nothing else is expected to be
// thrown (tasks report failures through their ErrorSink) and would propagate. Plugins stay
// loaded; `fd` is not closed. Channel writes use MSG_NOSIGNAL, so a vanished host cannot
// raise SIGPIPE here. A task that crashes ends the process, as it must: the host reports it
// as WorkerCrashed.
int serveWorker(int fd);

}  // namespace plugpool::detail
