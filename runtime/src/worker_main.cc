// plugpool-worker — the process a Pool starts for each worker slot (StartMethod::SPAWN).
//
// Started by a plugpool host with its channel on descriptor 3 (see wire.capnp for the
// conversation, worker.h for the serving loop, which a fork-started worker runs too). It
// loads the plugins named in Setup, answers Hello with their manifests, then runs chunks one
// item at a time until the host closes the channel.
//
// Exit statuses (worker.h): 0 the host closed the channel; 1 a plugin could not be loaded
// (after reporting it in Hello); 2 started by hand or with bad arguments; 70 protocol error
// (the host sent something malformed); 71 only from fork-started workers (StartMethod::FORK),
// which could not set up their channel. A signal means the task or plugin crashed the process.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "launcher.h"
#include "worker.h"

int main(int argc, char** argv) {
  using namespace plugpool::detail;
  long hostPid = -1;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.starts_with("--host-pid=")) {
      hostPid = std::strtol(argv[i] + 11, nullptr, 10);
    } else {
      std::fprintf(stderr, "plugpool-worker: unknown argument %s\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (::fcntl(WORKER_CHANNEL_FD, F_GETFD) < 0) {
    std::fprintf(stderr,
                 "plugpool-worker is started by a plugpool host (plugpool::Pool or the plugpool "
                 "command); it is not meant to be run by hand.\n");
    return EXIT_USAGE;
  }
  // Die with the host, with what our tasks start, even while stuck in a task: the channel's
  // EOF only reaches a worker that reads it.
  if (!dieWithHost(static_cast<pid_t>(hostPid))) return 0;
  ::fcntl(WORKER_CHANNEL_FD, F_SETFD, FD_CLOEXEC);
  ::signal(SIGPIPE, SIG_IGN);
  const int status = serveWorker(WORKER_CHANNEL_FD);
  endWithHost(static_cast<pid_t>(hostPid));
  return status;
}
