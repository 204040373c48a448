// The fork launcher (StartMethod::FORK): the child is a copy of the host that serves as a
// worker from the host's memory image and never execs.
//
// The child holds only the thread that called spawn() (the pool's dispatcher); every other
// host thread is gone, and any lock one of them held stays locked (the hazard pool.h states).
// So the child does as little as it can before serveWorker: descriptor and signal setup with
// plain system calls, no allocation. It leaves only through _exit, so it never returns into
// the host's code and never runs the host's atexit handlers or static destructors.
//
// Death signal (dieWithHost, worker.h): PR_SET_PDEATHSIG fires when the *thread* that forked
// the child ends. That thread is the dispatcher, which outlives every worker it starts (it
// reaps them all before it returns), so the signal means what it should: the host is gone.
//
// Process group: the child leads a group of its own, as a posix_spawn'ed worker does. Both
// sides call setpgid, so the group exists before either goes on, whichever runs first: the
// host may signal the group (kill(-pid)) as soon as spawn() returns.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio_ext.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "launcher.h"
#include "launcher_common.h"
#include "worker.h"

namespace plugpool::detail {

namespace {

// The fork child's process setup, then the worker's conversation. Never returns.
// `channel` is the child's end of the socketpair, `hostEnd` its copy of the host's end.
[[noreturn]] void becomeWorker(int channel, int hostEnd, pid_t hostPid) noexcept {
  ::setpgid(0, 0);

  // Signals arrive blocked (spawn() blocked them all before forking), so no host handler
  // can run in the child. Reset every disposition to the default, then unblock everything:
  // the worker starts as an exec'd one would, whatever the host set for itself (a test
  // framework's SIGSEGV handler, ignored or blocked signals). sigaction fails harmlessly for
  // SIGKILL, SIGSTOP and glibc's internal signals.
  struct sigaction byDefault = {};
  byDefault.sa_handler = SIG_DFL;
  sigemptyset(&byDefault.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &byDefault, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  // Our copy of the host's end would keep the channel open after the host closes it, and
  // the worker would never see the end of its stream. Both ends are on 3 or above
  // (newChannelPair): the copy onto 3 overwrites nothing of the host's stdin/out/err, and
  // closing from 4 takes the original.
  ::close(hostEnd);
  if (channel != WORKER_CHANNEL_FD && ::dup2(channel, WORKER_CHANNEL_FD) < 0) {
    ::_exit(EXIT_CHILD_SETUP);
  }
  // Nothing of the host's but stdin/out/err and the channel. close_range needs Linux 5.9;
  // glibc's closefrom falls back to walking /proc/self/fd.
  if (::close_range(WORKER_CHANNEL_FD + 1, ~0U, 0) != 0) ::closefrom(WORKER_CHANNEL_FD + 1);
  // As in plugpool-worker: a task that execs something does not pass the channel on.
  ::fcntl(WORKER_CHANNEL_FD, F_SETFD, FD_CLOEXEC);
  // /dev/null for each of 0-2 the host has closed (as PosixLauncher gives), so that neither
  // the worker's own descriptors nor a task's output land there. Lower ones are open by the
  // time each is opened, so open() returns the very slot.
  for (int fd = 0; fd < WORKER_CHANNEL_FD; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    if (::open("/dev/null", O_RDWR) != fd) ::_exit(EXIT_CHILD_SETUP);
  }

  // Die with the host, even while stuck in a task, and take our process group with it.
  if (!dieWithHost(hostPid)) ::_exit(0);
  ::signal(SIGPIPE, SIG_IGN);

  // Output the host had buffered but not yet written is the host's to write; a worker task
  // that flushes stdout must not write it a second time.
  ::__fpurge(stdout);
  ::__fpurge(stderr);

  int status = EXIT_PROTOCOL;
  try {
    status = serveWorker(WORKER_CHANNEL_FD);
  } catch (...) {
    // serveWorker turns every std::exception into a status; anything else is a bug, and
    // must not unwind into the host's frames above us.
    std::fprintf(stderr, "plugpool-worker[%d]: unexpected exception\n", ::getpid());
  }
  endWithHost(hostPid);
  ::_exit(status);
}

class ForkLauncher final : public Launcher {
 public:
  SpawnedProcess spawn(const std::string& /*executable*/) override {
    ChannelPair pair = newChannelPair();
    const pid_t hostPid = ::getpid();

    // Block every signal across fork(), so that none is handled in the child before it has
    // reset the host's handlers. Only this thread's mask changes, and only for the moment.
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    const pid_t pid = ::fork();
    const int error = errno;
    if (pid == 0) becomeWorker(pair.worker.get(), pair.host.get(), hostPid);
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (pid < 0) throwSystemError(error, "fork");
    ::setpgid(pid, pid);  // the child's own call may not have run yet (see the top)

    pair.worker.reset();
    return adoptWorker(pid, std::move(pair.host));
  }
};

}  // namespace

std::unique_ptr<Launcher> newForkLauncher() {
  return std::make_unique<ForkLauncher>();
}

}  // namespace plugpool::detail
