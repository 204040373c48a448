// plugpool-worker — the process a Pool starts for each worker slot (StartMethod::SPAWN).
//
// Started by a plugpool host with its channel on descriptor 3 (see wire.capnp for the
// conversation, worker.h for the serving loop, which a fork-started worker runs too). It
// loads the plugins named in Setup, answers Hello with their manifests, then runs chunks one
// item at a time until the host closes the channel.
//
// A remote worker (plugpool/remote.h) is started by a launcher with --connect HOST:PORT and
// its secret in PLUGPOOL_WORKER_SECRET instead: it connects back to its host, sends its
// preamble (tcp.h), and serves the connection the same way. It leaves when the connection
// ends, also in the middle of a task (a watchdog thread), with whatever its tasks started, and
// then exits with status 0.
//
// Exit statuses (worker.h): 0 the host closed the channel; 1 a plugin could not be loaded
// (after reporting it in Hello); 2 started by hand or with bad arguments; 70 protocol error
// (the host sent something malformed); 71 only from fork-started workers (StartMethod::FORK),
// which could not set up their channel; 72 a remote worker could not reach its host, or lost
// its connection to it. A signal
// means the task or plugin crashed the process (or, for a remote worker, that its connection
// ended while it ran a task).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>

#include "launcher.h"
#include "tcp.h"
#include "worker.h"

namespace {

using namespace plugpool::detail;

// How long a remote worker tries to reach its host.
constexpr int CONNECT_TIMEOUT_MS = 30'000;

// "IDLE,INTERVAL,PROBES,USER_TIMEOUT_MS" (seconds, seconds, count, milliseconds).
bool parseLiveness(const char* text, plugpool::Liveness& liveness) {
  long idle = 0, interval = 0, probes = 0, user = 0;
  if (std::sscanf(text, "%ld,%ld,%ld,%ld", &idle, &interval, &probes, &user) != 4 || idle < 1 ||
      interval < 1 || probes < 1 || user < 0) {
    return false;
  }
  liveness.idle = std::chrono::seconds(idle);
  liveness.interval = std::chrono::seconds(interval);
  liveness.probes = static_cast<int>(probes);
  liveness.userTimeout = std::chrono::milliseconds(user);
  return true;
}

// Connects to the host, proves who we are, and puts the connection on WORKER_CHANNEL_FD.
// Returns 0, or the status to exit with.
int connectBack(const std::string& endpoint, const plugpool::Liveness& liveness) {
  const char* hex = std::getenv(SECRET_VARIABLE);
  Secret secret;
  if (hex == nullptr || !fromHex(hex, secret)) {
    std::fprintf(stderr,
                 "plugpool-worker: --connect needs the secret its pool passes in %s; it is "
                 "started by a plugpool host (Options::remote), not by hand\n",
                 SECRET_VARIABLE);
    return EXIT_USAGE;
  }
  ::unsetenv(SECRET_VARIABLE);  // tasks, and what they start, never see it
  try {
    UniqueFd fd = connectTo(endpoint, CONNECT_TIMEOUT_MS);
    setLiveness(fd.get(), liveness);
    const auto preamble = encodePreamble(secret);
    std::size_t sent = 0;
    while (sent < preamble.size()) {
      const ssize_t n =
          ::send(fd.get(), preamble.data() + sent, preamble.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::system_error(errno, std::generic_category(), "send");
      sent += static_cast<std::size_t>(n);
    }
    if (fd.get() == WORKER_CHANNEL_FD) {
      fd.release();  // already where the serving loop expects it (close-on-exec)
    } else if (::dup3(fd.get(), WORKER_CHANNEL_FD, O_CLOEXEC) < 0) {
      throw std::system_error(errno, std::generic_category(), "dup3");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plugpool-worker[%d]: %s\n", ::getpid(), e.what());
    return EXIT_NO_HOST;
  }
  return 0;
}

// Ends a remote worker: SIGKILL to every other process of its group (what its tasks left
// there; a remote worker's host cannot signal the group itself), then exits with `status`: 0
// when the host ended the conversation, so that a launcher reports a normal end (srun prints
// an error line for any other).
[[noreturn]] void leave(int status) {
  const pid_t self = ::getpid();
  if (::getpgrp() == self) {
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = static_cast<pid_t>(std::stol(name));
      if (pid != self && ::getpgid(pid) == self) ::kill(pid, SIGKILL);
    }
  }
  ::_exit(status);
}

// The watchdog: once the host's end of the connection is gone the worker has nothing left to
// do, even in the middle of a task, and no launcher can be trusted to end it (SIGKILL to
// mpiexec leaves its child running). Closed by the host: status 0. Failed (timed out, reset:
// the host or the link is gone): EXIT_NO_HOST, which the host reads as a lost connection.
void watchConnection() {
  std::thread([] {
    pollfd p{WORKER_CHANNEL_FD, POLLRDHUP, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    int error = 0;
    socklen_t length = sizeof error;
    ::getsockopt(WORKER_CHANNEL_FD, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) {
      std::fprintf(stderr, "plugpool-worker[%d]: lost its connection to the host: %s\n", ::getpid(),
                   std::strerror(error));
    }
    const int status = error == 0 ? 0 : EXIT_NO_HOST;
    try {
      leave(status);
    } catch (...) {  // no /proc: at least the worker goes
      ::_exit(status);
    }
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  long hostPid = -1;
  std::string endpoint;
  plugpool::Liveness liveness;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.starts_with("--host-pid=")) {
      hostPid = std::strtol(argv[i] + 11, nullptr, 10);
    } else if (arg == "--connect" && i + 1 < argc) {
      endpoint = argv[++i];
    } else if (arg.starts_with("--liveness=") && parseLiveness(argv[i] + 11, liveness)) {
    } else {
      std::fprintf(stderr, "plugpool-worker: unknown argument %s\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (!endpoint.empty()) {
    // Lead a group of our own, as a local worker does, so that what our tasks start ends with
    // us (a launcher such as env that execs us already made us its leader: then a no-op).
    ::setpgid(0, 0);
    if (const int status = connectBack(endpoint, liveness); status != 0) return status;
    ::signal(SIGPIPE, SIG_IGN);
    watchConnection();
    const int status = serveWorker(WORKER_CHANNEL_FD);
    if (status != 0) return status;
    leave(0);  // the host ended the conversation; so does the worker, with what it started
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
