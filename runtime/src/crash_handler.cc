#include "crash_handler.h"

#include <signal.h>
#include <sys/socket.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <new>

#include <capnp/message.h>

#include "wire.capnp.h"

#if PLUGPOOL_HAVE_BACKTRACE
#include <backtrace.h>
#else
#include <unwind.h>
#endif

namespace plugpool::detail {
namespace {

constexpr int FATAL_SIGNALS[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr std::size_t ALT_STACK_BYTES = 256 * 1024;
// Frames above the faulting one (the handler, the kernel's signal trampoline) are walked
// too, then dropped.
constexpr unsigned WALKED_FRAMES = CRASH_MAX_FRAMES + 16;
// Room for the largest Crash message: per frame a 2-word, 2-pointer struct and two texts of
// at most CRASH_MAX_TEXT bytes (plus the NUL, rounded up to words), and the envelope.
constexpr std::size_t TEXT_WORDS = (CRASH_MAX_TEXT + 1 + 7) / 8;
constexpr std::size_t MESSAGE_WORDS = 64 + CRASH_MAX_FRAMES * (4 + 2 * TEXT_WORDS);

struct Frame {
  std::uintptr_t pc;
  char function[CRASH_MAX_TEXT + 1];
  char file[CRASH_MAX_TEXT + 1];
  int line;
};

// Everything the handler touches, allocated once by installCrashHandler: the handler itself
// allocates nothing.
struct Report {
  Frame frames[WALKED_FRAMES];
  unsigned count;
  capnp::word words[MESSAGE_WORDS];
};

#if PLUGPOOL_HAVE_BACKTRACE
backtrace_state* backtraces = nullptr;
#endif
Report* report = nullptr;
char* alternateStack = nullptr;  // held here for the process's life (the kernel only has it)
int channelFd = -1;
std::atomic<std::uint64_t> runningId{0};
std::atomic<std::uint32_t> runningItem{CRASH_ITEM_UNKNOWN};
std::atomic<volatile std::uint32_t*> pluginRunningItem{nullptr};
std::atomic<bool> handling{false};
volatile sig_atomic_t crashSignal = 0;

// Copies at most CRASH_MAX_TEXT bytes of `text` (null: empty) into `to`.
void copyText(char* to, const char* text) {
  std::size_t n = 0;
  if (text != nullptr) {
    while (n < CRASH_MAX_TEXT && text[n] != '\0') {
      to[n] = text[n];
      ++n;
    }
  }
  to[n] = '\0';
}

int onFrame(void*, std::uintptr_t pc, const char* file, int line, const char* function) {
  if (report->count == WALKED_FRAMES) return 1;
  Frame& f = report->frames[report->count++];
  f.pc = pc;
  copyText(f.function, function);
  copyText(f.file, file);
  f.line = line;
  return 0;
}

#if PLUGPOOL_HAVE_BACKTRACE
void onSymbol(void* data, std::uintptr_t, const char* name, std::uintptr_t, std::uintptr_t) {
  if (name != nullptr) copyText(static_cast<Frame*>(data)->function, name);
}

// Missing debug information and the like: the frame is reported with what there is.
void onError(void*, const char*, int) {}

void walkStack() {
  backtrace_full(backtraces, 0, onFrame, onError, nullptr);
}
#else
// Without libbacktrace: bare program counters, from the unwinder.
_Unwind_Reason_Code onUnwound(_Unwind_Context* context, void*) {
  int beforeInstruction = 0;
  std::uintptr_t pc = _Unwind_GetIPInfo(context, &beforeInstruction);
  if (pc != 0 && beforeInstruction == 0) --pc;  // a return address: the call is before it
  return onFrame(nullptr, pc, nullptr, 0, nullptr) == 0 ? _URC_NO_REASON : _URC_END_OF_STACK;
}

void walkStack() {
  _Unwind_Backtrace(onUnwound, nullptr);
}
#endif

// Ends the process with `signal`, as its default action does.
[[noreturn]] void die(int signal) {
  ::signal(signal, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signal);
  ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(signal);
  ::_exit(128 + signal);  // not reached: the signal's default action ends the process
}

// The report took too long: die of the original signal without it.
void onAlarm(int) {
  die(crashSignal);
}

void sendAll(const void* data, std::size_t size) {
  const char* at = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::send(channelFd, at, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the host is gone: nobody to tell
    at += n;
    size -= static_cast<std::size_t>(n);
  }
}

std::uintptr_t faultingPc(void* context) {
#if defined(__x86_64__)
  return static_cast<std::uintptr_t>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
  return static_cast<std::uintptr_t>(static_cast<ucontext_t*>(context)->uc_mcontext.pc);
#else
  (void)context;
  return 0;
#endif
}

void writeReport(int signal, const siginfo_t* info, std::uintptr_t pc) {
  // The frames from the faulting instruction on (the first frame with its pc; inlined calls
  // share it). Without it (unknown architecture, an unwinder that could not pass the signal
  // frame): all but the handler's own and the trampoline.
  unsigned first = report->count > 2 ? 2 : 0;
  for (unsigned i = 0; pc != 0 && i < report->count; ++i) {
    if (report->frames[i].pc == pc) {
      first = i;
      break;
    }
  }
  unsigned count = report->count - first;
  if (count > CRASH_MAX_FRAMES) count = CRASH_MAX_FRAMES;
  // Debug information names a function by its plain name ("read_through"); the symbol table
  // by its linkage name, which demangles to the qualified one with its parameter types. Each
  // pc's last frame is the function the code lies in (the ones before it were inlined into
  // it): it takes the symbol's name where there is one.
  for (unsigned i = first; i < first + count; ++i) {
    Frame& f = report->frames[i];
    const bool outermost = i + 1 == report->count || report->frames[i + 1].pc != f.pc;
#if PLUGPOOL_HAVE_BACKTRACE
    if (outermost || f.function[0] == '\0') {
      backtrace_syminfo(backtraces, f.pc, onSymbol, onError, &f);
    }
#else
    (void)outermost;
#endif
  }

  std::memset(report->words, 0, sizeof report->words);
  capnp::FlatMessageBuilder message(kj::arrayPtr(report->words, MESSAGE_WORDS));
  auto crash = message.initRoot<wire::WorkerMessage>().initCrash();
  crash.setRunId(runningId.load(std::memory_order_relaxed));
  std::uint32_t item = runningItem.load(std::memory_order_relaxed);
  if (volatile std::uint32_t* told = pluginRunningItem.load(std::memory_order_relaxed)) {
    item = *told;
  }
  crash.setItem(item);
  crash.setSignal(signal);
  if (signal != SIGABRT && info != nullptr) {
    crash.setAddress(reinterpret_cast<std::uintptr_t>(info->si_addr));
  }
  auto frames = crash.initFrames(count);
  for (unsigned i = 0; i < count; ++i) {
    const Frame& f = report->frames[first + i];
    frames[i].setPc(f.pc);
    frames[i].setFunction(capnp::Text::Reader(f.function, std::strlen(f.function)));
    frames[i].setFile(capnp::Text::Reader(f.file, std::strlen(f.file)));
    frames[i].setLine(f.line > 0 ? static_cast<std::uint32_t>(f.line) : 0);
  }
  // One segment: its table is the segment count minus one, then its size in words.
  auto segments = message.getSegmentsForOutput();
  if (segments.size() != 1) return;
  const std::uint32_t table[2] = {0, static_cast<std::uint32_t>(segments[0].size())};
  sendAll(table, sizeof table);
  sendAll(segments[0].begin(), segments[0].size() * sizeof(capnp::word));
}

void onFatal(int signal, siginfo_t* info, void* context) {
  if (handling.exchange(true)) die(signal);  // a second crash, in the handler or elsewhere
  crashSignal = signal;
  struct sigaction alarmAction = {};
  alarmAction.sa_handler = onAlarm;
  sigfillset(&alarmAction.sa_mask);
  ::sigaction(SIGALRM, &alarmAction, nullptr);
  ::alarm(CRASH_REPORT_SECONDS);

  report->count = 0;
  walkStack();
  writeReport(signal, info, faultingPc(context));
  die(signal);
}

}  // namespace

void installCrashHandler(int channel) noexcept {
  if (report != nullptr) return;
#if PLUGPOOL_HAVE_BACKTRACE
  backtraces = backtrace_create_state(nullptr, /*threaded=*/0, onError, nullptr);
  if (backtraces == nullptr) return;  // no reports
#endif
  report = new (std::nothrow) Report;
  alternateStack = new (std::nothrow) char[ALT_STACK_BYTES];
  if (report == nullptr || alternateStack == nullptr) return;
  channelFd = channel;
  stack_t alternate = {};
  alternate.ss_sp = alternateStack;
  alternate.ss_size = ALT_STACK_BYTES;
  ::sigaltstack(&alternate, nullptr);
  struct sigaction action = {};
  action.sa_sigaction = onFatal;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  // Another fatal signal inside the handler takes its default action at once; SIGALRM (the
  // report's deadline), SIGTERM/SIGKILL from the host and the death signal stay deliverable.
  sigemptyset(&action.sa_mask);
  for (int signal : FATAL_SIGNALS) sigaddset(&action.sa_mask, signal);
  for (int signal : FATAL_SIGNALS) ::sigaction(signal, &action, nullptr);
}

void noteRunning(std::uint64_t runId, std::uint32_t item,
                 volatile std::uint32_t* pluginItem) noexcept {
  if (pluginItem != nullptr) *pluginItem = CRASH_ITEM_UNKNOWN;
  runningId.store(runId, std::memory_order_relaxed);
  runningItem.store(item, std::memory_order_relaxed);
  pluginRunningItem.store(pluginItem, std::memory_order_relaxed);
}

}  // namespace plugpool::detail
