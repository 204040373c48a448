// plugpool — the command line: list a plugin's tasks, call one once, or map one over the
// lines of a file or stream, on a pool of worker processes.
//
//   plugpool tasks PLUGIN [--json]
//   plugpool run PLUGIN TASK [ARG...]
//   plugpool map PLUGIN TASK [INPUT] [--workers N] [--chunksize N] [--unordered]
//                [--timeout SECONDS] [--retries N] [--output text|jsonl]
//                [--slurm | --launch 'PREFIX'...] [--address ADDRESS]
//   plugpool --version
//
// PLUGIN is a path to a plugin (anything with a '/') or a bare name found as Options::plugins
// says (pool.h). Values are converted from and to text and JSON as values.h says.
//
// Exit status: 0 success; 1 a call or item failed (the task threw, crashed, timed out, or the
// item's input line does not convert), the pool could not run, or standard output could not
// be written (closed, a full disk, a pipe whose reader left while SIGPIPE is ignored); 2 a
// usage error — bad command line, unknown plugin or task, unreadable file or not a plugin, a
// closed standard input to read from, `run`'s wrong argument count or type — reported as one
// line on stderr.
//
// `map` streams: it reads its input only as fast as results are written (Pool::imap's bounded
// window), so memory stays flat however long the input is. A line that does not convert to
// the task's arguments is never sent: it fails in its place as a failed call does (an
// InputError), and the lines after it run. Once a write fails, `map` reads no more input and
// stops its workers: the results could go nowhere.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wordexp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <kj/exception.h>
#include <CLI/CLI.hpp>

#include "plugpool/pool.h"
#include "progress.h"
#include "values.h"

namespace plugpool::cli {
namespace {

constexpr int EXIT_FAILED = 1;
constexpr int EXIT_USAGE = 2;

// A usage error: reported as one line, status 2.
class UsageFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Standard output cannot be written: reported as one line ("write error: why"), status 1.
class WriteFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void errorLine(const std::string& text) {
  std::string line = "plugpool: " + text + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

// False only if `fd` is closed (names no open file).
bool isOpen(int fd) {
  return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

// Buffered standard output, the one path by which results reach stdout: written in large
// blocks, and at least every 100 ms so results of slow tasks show up promptly; after each line
// when stdout is a terminal. Every write is checked: endLine() and flush() throw WriteFailure
// when stdout cannot take the text, and the Output is not to be used after that. Nothing is
// written on destruction: the caller flushes, so that a failure has a caller to report it.
class Output {
 public:
  // With `progress` drawing on the terminal stdout also is, lines go out through it.
  explicit Output(Progress* progress = nullptr)
      : terminal_(::isatty(STDOUT_FILENO) == 1),
        progress_(terminal_ && progress != nullptr && progress->enabled() ? progress : nullptr) {}
  std::string& buffer() { return buffer_; }
  void endLine() {
    buffer_ += '\n';
    auto now = std::chrono::steady_clock::now();
    if (terminal_ || buffer_.size() >= (1 << 16) || now - last_ >= std::chrono::milliseconds(100)) {
      flush();
      last_ = now;
    }
  }
  void flush() {
    if (buffer_.empty()) return;
    if (progress_ != nullptr) {
      progress_->output([this] { writeAll(buffer_); });
    } else {
      writeAll(buffer_);
    }
    buffer_.clear();
  }

 private:
  // Writes all of `text` to stdout, waiting while a non-blocking stdout is full; retries
  // EINTR. Throws WriteFailure with the reason for any other failure.
  static void writeAll(std::string_view text) {
    while (!text.empty()) {
      ssize_t n = ::write(STDOUT_FILENO, text.data(), text.size());
      if (n > 0) {
        text.remove_prefix(static_cast<std::size_t>(n));
      } else if (n < 0 && errno == EAGAIN) {
        pollfd ready{STDOUT_FILENO, POLLOUT, 0};
        ::poll(&ready, 1, -1);
      } else if (n == 0 || errno != EINTR) {
        throw WriteFailure(std::string("write error: ") +
                           (n == 0 ? "nothing was written" : std::strerror(errno)));
      }
    }
  }

  bool terminal_;
  Progress* progress_;
  std::string buffer_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

std::unique_ptr<Pool> startPool(const std::string& plugin, int workers,
                                std::optional<Remote> remote = std::nullopt,
                                unsigned crashRetries = 0) {
  Options options;
  options.workers = workers;
  options.crashRetries = crashRetries;
  options.plugins = {plugin};
  options.remote = std::move(remote);
  try {
    return std::make_unique<Pool>(std::move(options));
  } catch (const PluginError& e) {
    throw UsageFailure(e.what());
  }
}

DynamicTask bindTask(Pool& pool, const std::string& name) {
  try {
    return pool.dynamicTask(pool.plugins().front().name, name);
  } catch (const PluginError& e) {
    throw UsageFailure(e.what());
  }
}

Values valuesOf(const Pool& pool, const DynamicTask& task) {
  try {
    return Values(pool.plugins().front(), task.info());
  } catch (const ValueError& e) {
    throw UsageFailure(task.plugin() + "." + task.name() + ": " + e.what());
  }
}

// --- tasks -------------------------------------------------------------------------------

int listTasks(const std::string& plugin, bool json) {
  auto pool = startPool(plugin, 1);
  const PluginInfo& info = pool->plugins().front();
  Output output;
  std::string& out = output.buffer();
  if (json) {
    out += "{\"plugin\":";
    appendJsonString(info.name, out);
    out += ",\"path\":";
    appendJsonString(info.path, out);
    out += ",\"abiVersion\":" + std::to_string(info.abiVersion) + ",\"tasks\":[";
    for (std::size_t i = 0; i < info.tasks.size(); ++i) {
      const TaskInfo& t = info.tasks[i];
      out += i > 0 ? ",{\"name\":" : "{\"name\":";
      appendJsonString(t.name, out);
      out += ",\"argTypes\":[";
      for (std::size_t a = 0; a < t.argTypes.size(); ++a) {
        if (a > 0) out += ',';
        appendJsonString(t.argTypes[a], out);
      }
      out += "],\"resultType\":";
      appendJsonString(t.resultType, out);
      out += ",\"doc\":";
      appendJsonString(t.doc, out);
      out += '}';
    }
    out += "]}\n";
  } else {
    out += info.name + " (" + info.path + "): " + std::to_string(info.tasks.size()) + " tasks\n";
    std::size_t width = 0;
    for (const TaskInfo& t : info.tasks) width = std::max(width, t.name.size());
    for (const TaskInfo& t : info.tasks) {
      out += "  " + t.name + std::string(width - t.name.size() + 2, ' ') + t.signature() + "\n";
      if (!t.doc.empty()) out += "  " + std::string(width + 2, ' ') + t.doc + "\n";
    }
  }
  output.flush();
  return 0;
}

// --- run ---------------------------------------------------------------------------------

int runOnce(const std::string& plugin, const std::string& taskName,
            const std::vector<std::string>& args) {
  auto pool = startPool(plugin, 1);
  DynamicTask task = bindTask(*pool, taskName);
  Values values = valuesOf(*pool, task);
  const std::string qualified = task.plugin() + "." + task.name();
  if (args.size() != task.info().argTypes.size()) {
    throw UsageFailure(qualified + " takes " + std::to_string(task.info().argTypes.size()) +
                       " argument" + (task.info().argTypes.size() == 1 ? "" : "s") + " " +
                       task.info().signature() + ", got " + std::to_string(args.size()));
  }
  // Converted here first, so that a bad argument is a usage error before anything runs.
  capnp::MallocMessageBuilder scratch;
  auto shape = task.argumentShape();
  auto tuple =
      scratch.getRoot<capnp::AnyPointer>().initAsAnyStruct(shape.dataWords, shape.pointers);
  try {
    values.argsFromText(args, tuple);
  } catch (const ValueError& e) {
    throw UsageFailure(qualified + ": " + e.what());
  }
  const capnp::AnyStruct::Reader encoded = tuple.asReader();
  std::vector<int> one{0};
  auto stream = pool->imap(task, one, [&](capnp::AnyStruct::Builder out, int) {
    std::memcpy(out.getDataSection().begin(), encoded.getDataSection().begin(),
                encoded.getDataSection().size());
    for (unsigned p = 0; p < shape.pointers; ++p) {
      out.getPointerSection()[p].set(encoded.getPointerSection()[p]);
    }
  });
  Output output;
  try {
    std::optional<DynamicResult> result = stream.next();
    values.resultText(result->tuple(), output.buffer());
  } catch (const Error& e) {
    errorLine(e.what());
    return EXIT_FAILED;
  } catch (const std::exception& e) {  // an undecodable result
    errorLine(qualified + " returned a result that does not decode: " + e.what());
    return EXIT_FAILED;
  }
  output.endLine();
  output.flush();
  return 0;
}

// --- map ---------------------------------------------------------------------------------

// Why an input line is not an item: it does not convert to the task's arguments. The line
// fails in its place as a failed call does (status 1); it is never sent to a worker.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One input line, converted: either left as text (re-read by the encoder: a text-form line of
// a one-argument task) or already encoded as an argument tuple in its own message.
struct InputItem {
  std::uint64_t line = 0;  // 1-based
  std::string text;
  std::unique_ptr<capnp::MallocMessageBuilder> encoded;  // root: the argument tuple
};

// How many rejected lines the input holds back at most, waiting for the results of the lines
// before them. With that many held, the input of the current stream ends there (paused); the
// lines go out once the stream is drained, and a new stream goes on from the next line. This
// bounds the memory of an input of bad lines (a wrong file) to REJECTED_HELD messages, and
// restarts streams only where bad lines come in runs that long.
constexpr std::size_t REJECTED_HELD = 1024;

// The input line of each item of a stream, by the item's index, from when the item is read
// until its outcome is taken. An item's line grows with its index and jumps only past rejected
// lines, so runs of consecutive lines are kept, each dropped once all its items are taken:
// constant work per item, and constant memory unless bad lines keep coming.
class ItemLines {
 public:
  void add(std::uint64_t index, std::uint64_t line) {
    if (runs_.empty() || runs_.back().firstIndex + runs_.back().count != index ||
        runs_.back().firstLine + runs_.back().count != line) {
      runs_.push_back(Run{index, line, 0, 0});
    }
    ++runs_.back().count;
  }
  // The line of item `index`, if it has been added and not taken.
  std::optional<std::uint64_t> find(std::uint64_t index) const {
    auto run = runOf(index);
    if (run == runs_.end()) return std::nullopt;
    return run->firstLine + (index - run->firstIndex);
  }
  // The line of item `index`, as find(); forgets it. Each item is taken once.
  std::optional<std::uint64_t> take(std::uint64_t index) {
    auto run = runOf(index);
    if (run == runs_.end()) return std::nullopt;
    const std::uint64_t line = run->firstLine + (index - run->firstIndex);
    ++run->taken;
    while (!runs_.empty() && runs_.front().taken == runs_.front().count) runs_.pop_front();
    return line;
  }
  void clear() { runs_.clear(); }

 private:
  struct Run {
    std::uint64_t firstIndex, firstLine, count, taken;
  };
  std::deque<Run>::iterator runOf(std::uint64_t index) {
    if (!runs_.empty() && index >= runs_.front().firstIndex &&
        index - runs_.front().firstIndex < runs_.front().count) {
      return runs_.begin();  // always, in order and without rejected lines
    }
    auto after = std::upper_bound(runs_.begin(), runs_.end(), index,
                                  [](std::uint64_t i, const Run& r) { return i < r.firstIndex; });
    if (after == runs_.begin()) return runs_.end();
    auto run = std::prev(after);
    return index < run->firstIndex + run->count ? run : runs_.end();
  }
  std::deque<Run>::const_iterator runOf(std::uint64_t index) const {
    return const_cast<ItemLines*>(this)->runOf(index);
  }

  std::deque<Run> runs_;
};

// The lines of an input file, read lazily, each converted as it is taken: the items of one
// stream (Pool::imap) at a time. A line that does not convert is not an item: it is held back
// in `rejected` for Outcomes to put in its place, and reading goes on. A read error ends the
// input: it is recorded in `error`.
class LineInput : public std::ranges::view_base {
 public:
  struct Rejected {
    std::uint64_t line = 0;
    std::string why;
  };
  struct State {
    std::FILE* file = nullptr;
    Values* values = nullptr;
    TupleShape shape;
    std::string name;  // for messages
    char* buffer = nullptr;
    std::size_t capacity = 0;
    std::uint64_t line = 0;
    std::optional<InputItem> current;
    std::string error;              // set at a read error
    std::deque<Rejected> rejected;  // lines that did not convert, not yet reported, in order
    bool paused = false;            // REJECTED_HELD lines are held: this stream's input ends
    std::uint64_t items = 0;        // items given to the current stream
    ItemLines lineOf;               // the lines of the current stream's items

    std::unique_ptr<capnp::MallocMessageBuilder> scratch;  // validates text-form scalars
    capnp::AnyStruct::Builder scratchTuple = nullptr;
    ~State() { std::free(buffer); }

    void advance() {
      current.reset();
      while (error.empty() && !paused) {
        errno = 0;
        ssize_t n = ::getline(&buffer, &capacity, file);
        if (n < 0) {
          if (std::ferror(file)) error = "cannot read " + name + ": " + std::strerror(errno);
          return;
        }
        ++line;
        std::string_view text(buffer, static_cast<std::size_t>(n));
        if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
        InputItem item;
        item.line = line;
        try {
          if (values->lineIsText()) {
            if (values->argTypes()[0].scalar()) values->argsFromLine(text, scratchTuple);
            item.text = std::string(text);
          } else {
            item.encoded = std::make_unique<capnp::MallocMessageBuilder>(64);
            auto tuple = item.encoded->getRoot<capnp::AnyPointer>().initAsAnyStruct(shape.dataWords,
                                                                                    shape.pointers);
            values->argsFromLine(text, tuple);
          }
        } catch (const ValueError& e) {
          rejected.push_back({line, e.what()});
          paused = rejected.size() >= REJECTED_HELD;
          continue;
        }
        lineOf.add(items++, line);
        current = std::move(item);
        return;
      }
    }
  };

  class iterator {
   public:
    using value_type = InputItem;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;
    iterator() = default;
    explicit iterator(State* state) : state_(state) {}
    InputItem operator*() const { return std::move(*state_->current); }
    iterator& operator++() {
      state_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !state_->current; }

   private:
    State* state_ = nullptr;
  };

  LineInput() = default;
  explicit LineInput(std::shared_ptr<State> state) : state_(std::move(state)) {}
  iterator begin() {
    state_->advance();
    return iterator(state_.get());
  }
  std::default_sentinel_t end() const { return {}; }

 private:
  std::shared_ptr<State> state_;
};

// How one input line ended: its result, or why it failed (the pool's error for the item, or
// an InputError for a line that was never sent).
struct Outcome {
  std::uint64_t line = 0;
  std::optional<DynamicResult> result;
  std::exception_ptr error;
};

// The outcome of every input line, one at a time: in input order, or with `ordered` false as
// soon as each is known. The items go through a stream that `start` makes over a LineInput
// (a new one after the input paused); the lines it rejected are put back in their places: in
// input order, a rejected line comes once every line before it has.
class Outcomes {
 public:
  using Start = std::function<Stream<DynamicResult>(LineInput)>;
  Outcomes(std::shared_ptr<LineInput::State> state, bool ordered, Start start)
      : state_(std::move(state)), ordered_(ordered), start_(std::move(start)) {}

  // The next outcome, or nullopt once every line has one (or the input could not be read
  // further: state's error).
  std::optional<Outcome> next() {
    for (;;) {
      if (!state_->rejected.empty() && rejectedIsDue()) {
        LineInput::Rejected rejected = std::move(state_->rejected.front());
        state_->rejected.pop_front();
        return Outcome{rejected.line, std::nullopt,
                       std::make_exception_ptr(InputError(rejected.why))};
      }
      if (held_) return std::exchange(held_, std::nullopt);
      if (!stream_) {
        if (ended_) return std::nullopt;
        state_->paused = false;
        state_->items = 0;
        state_->lineOf.clear();
        taken_ = 0;
        stream_.emplace(start_(LineInput(state_)));
      }
      Outcome outcome;
      try {
        outcome.result = stream_->next();
        if (!outcome.result) {  // this stream's input ended: at the end, or paused
          stream_.reset();
          ended_ = !state_->paused;
          continue;
        }
      } catch (...) {
        outcome.error = std::current_exception();
      }
      // (No line: the input itself failed there, at the last line read.)
      outcome.line = state_->lineOf.take(stream_->index()).value_or(state_->line);
      ++taken_;
      if (state_->rejected.empty()) return outcome;
      held_ = std::move(outcome);
    }
  }

 private:
  // Whether the first rejected line may go out now: no line before it is still to come.
  bool rejectedIsDue() const {
    if (!ordered_ || !stream_) return true;
    const std::uint64_t line = state_->rejected.front().line;
    if (held_) return line < held_->line;
    auto next = state_->lineOf.find(taken_);  // the stream's next item, if it has been read
    return !next || line < *next;
  }

  std::shared_ptr<LineInput::State> state_;
  const bool ordered_;
  Start start_;
  std::optional<Stream<DynamicResult>> stream_;
  std::optional<Outcome> held_;  // the stream's next outcome, behind rejected lines before it
  std::uint64_t taken_ = 0;      // outcomes taken from the current stream
  bool ended_ = false;           // the input has ended: no stream is to start
};

// Counts the lines of regular file `fd` with pread (not moving its offset) and reports the
// count to `progress`; for the total of the progress line. Gives up once `stop` is set.
void countLines(int fd, Progress& progress, const std::atomic<bool>& stop) {
  std::vector<char> block(1 << 20);
  std::uint64_t lines = 0;
  off_t at = 0;
  char last = '\n';
  while (!stop) {
    ssize_t n = ::pread(fd, block.data(), block.size(), at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) lines += block[static_cast<std::size_t>(i)] == '\n';
    last = block[static_cast<std::size_t>(n - 1)];
    at += n;
  }
  if (stop) return;
  if (last != '\n') ++lines;
  progress.setTotal(lines);
}

// How many frames of a crashed worker's stack a failed line shows (WorkerCrashed::stack()).
constexpr std::size_t CRASH_FRAMES_SHOWN = 5;

// A crash's message, the item it names told as its input line.
std::string crashText(const WorkerCrashed& e) {
  std::string text = e.what();
  if (e.item()) {
    const std::string item = " on item " + std::to_string(*e.item());
    if (auto at = text.find(item); at != std::string::npos) {
      text.replace(at, item.size(), " on line " + std::to_string(*e.item() + 1));
    }
  }
  return text;
}

// The top frames of a crash that belong to the plugin, formatted as stackTrace() does: the
// standard library's templates inlined between them (std::apply, std::__invoke) are left
// out, and so is everything from plugpool's own code on (the SDK's entry, the worker).
std::vector<std::string> taskFrames(const WorkerCrashed& e) {
  std::vector<std::string> frames;
  for (std::size_t i = 0; i < e.stack().size() && frames.size() < CRASH_FRAMES_SHOWN; ++i) {
    const StackFrame& f = e.stack()[i];
    if (f.function.find("plugpool::sdk::") != std::string::npos ||
        f.function.find("plugpool::detail::") != std::string::npos) {
      break;
    }
    if (f.file.starts_with("/usr/include/")) continue;
    std::string text = "#" + std::to_string(i) + " " + (f.function.empty() ? "??" : f.function);
    if (!f.file.empty()) text += " at " + f.file + ":" + std::to_string(f.line);
    frames.push_back(std::move(text));
  }
  return frames;
}

// What a failed item's report says: its kind (errors.h's name; InputError, DecodeError for a
// result that does not decode), the type (what the task threw for a TaskError, else the kind
// again, so that every jsonl record has one), the message, and a crash's top frames.
struct Failure {
  std::string kind, type, message;
  std::vector<std::string> frames;  // innermost first
};

Failure describe(std::exception_ptr error) {
  Failure f;
  try {
    std::rethrow_exception(error);
  } catch (const TaskError& e) {
    f = {"TaskError", e.remoteType(), e.what(), {}};
  } catch (const WorkerCrashed& e) {
    f = {"WorkerCrashed", "", crashText(e), taskFrames(e)};
  } catch (const TaskTimeout& e) {
    f = {"TaskTimeout", "", e.what(), {}};
  } catch (const ProtocolError& e) {
    f = {"ProtocolError", "", e.what(), {}};
  } catch (const Cancelled& e) {
    f = {"Cancelled", "", e.what(), {}};
  } catch (const PoolClosed& e) {
    f = {"PoolClosed", "", e.what(), {}};
  } catch (const StartError& e) {
    f = {"StartError", "", e.what(), {}};
  } catch (const InputError& e) {
    f = {"InputError", "", e.what(), {}};
  } catch (const kj::Exception& e) {
    f = {"DecodeError",
         "",
         std::string("the result does not decode: ") + e.getDescription().cStr(),
         {}};
  } catch (const DecodeError& e) {
    f = {"DecodeError", "", e.what(), {}};
  } catch (const std::exception& e) {
    f = {"Error", "", e.what(), {}};
  } catch (...) {
    f = {"Error", "", "an exception that is not a std::exception", {}};
  }
  if (f.type.empty()) f.type = f.kind;
  return f;
}

// -w: what Options::workers takes, refused as a usage error that says so.
CLI::Validator workerCount() {
  return CLI::Validator(
      [](std::string& input) {
        int n = -1;
        const char* end = input.data() + input.size();
        auto [at, error] = std::from_chars(input.data(), end, n);
        if (error == std::errc() && at == end && n >= 0) return std::string();
        return "workers must be 1 or more, or 0 for one per core; got " + input;
      },
      "0 or more");
}

// --retries: what Options::crashRetries takes, refused as a usage error that says so.
CLI::Validator retryCount() {
  return CLI::Validator(
      [](std::string& input) {
        unsigned n = 0;
        const char* end = input.data() + input.size();
        auto [at, error] = std::from_chars(input.data(), end, n);
        if (error == std::errc() && at == end && !input.empty()) return std::string();
        return "retries must be a whole number, 0 or more; got " + input;
      },
      "0 or more");
}

struct MapOptions {
  std::string input = "-";
  int workers = 0;
  std::size_t chunksize = 0;
  bool unordered = false;
  double timeout = 0;
  unsigned retries = 0;  // Options::crashRetries
  std::string output = "text";
  bool slurm = false;
  std::vector<std::string> launch;  // command prefixes, as a shell would split them
  std::string address;
};

// A command prefix given as one string, split into words as the shell would (quotes,
// backslashes, variables; never command substitution).
std::vector<std::string> splitWords(const std::string& prefix) {
  wordexp_t words;
  const int rc = ::wordexp(prefix.c_str(), &words, WRDE_NOCMD);
  if (rc != 0) {
    if (rc == WRDE_NOSPACE) ::wordfree(&words);
    throw UsageFailure("--launch '" + prefix + "': " +
                       (rc == WRDE_CMDSUB    ? "command substitution is not allowed"
                        : rc == WRDE_BADCHAR ? "unquoted | & ; < > ( ) { } or newline"
                                             : "cannot split it into words"));
  }
  std::vector<std::string> argv(words.we_wordv, words.we_wordv + words.we_wordc);
  ::wordfree(&words);
  if (argv.empty()) throw UsageFailure("--launch needs a command, e.g. --launch 'ssh node7'");
  return argv;
}

// Where --slurm, --launch and --address put the workers (none: this machine).
std::optional<Remote> remoteOf(const MapOptions& opt) {
  std::optional<Remote> remote;
  if (opt.slurm) remote = Slurm{};
  if (!opt.launch.empty()) {
    std::vector<std::vector<std::string>> prefixes;
    for (const auto& p : opt.launch) prefixes.push_back(splitWords(p));
    remote = LaunchCommand::spread(std::move(prefixes));
  }
  if (remote) {
    remote->address = opt.address;
  } else if (!opt.address.empty()) {
    throw UsageFailure(
        "--address is where remote workers connect back to: give --slurm or --launch");
  }
  return remote;
}

// Writes each outcome to `output` as it comes: a result as a line of text or a jsonl record; a
// failed item (a failed call or a rejected input line alike) as a line on stderr and, with
// `jsonl`, a record in its place. Returns how many failed. Throws WriteFailure when `output`
// cannot be written, without taking further outcomes.
std::uint64_t writeResults(Outcomes& outcomes, Values& values, bool jsonl,
                           const std::string& inputName, Output& output, Progress& progress) {
  std::uint64_t failed = 0;
  while (std::optional<Outcome> outcome = outcomes.next()) {
    const std::optional<DynamicResult>& result = outcome->result;
    std::exception_ptr error = outcome->error;
    const std::uint64_t line = outcome->line;
    std::string& out = output.buffer();
    const std::size_t mark = out.size();
    if (!error) {
      try {
        if (jsonl) {
          out += "{\"line\":" + std::to_string(line) + ",\"result\":";
          values.resultJson(result->tuple(), out);
          out += '}';
        } else {
          values.resultText(result->tuple(), out);
        }
      } catch (...) {
        out.resize(mark);
        error = std::current_exception();
      }
      if (!error) output.endLine();
    }
    if (error) {
      ++failed;
      const Failure f = describe(error);
      std::string report =
          "plugpool: " + inputName + ", line " + std::to_string(line) + ": " + f.message;
      for (const std::string& frame : f.frames) report += "\nplugpool:   " + frame;
      progress.message(report);
      if (jsonl) {
        out += "{\"line\":" + std::to_string(line) + ",\"error\":{\"kind\":\"" + f.kind +
               "\",\"type\":";
        appendJsonString(f.type, out);
        out += ",\"message\":";
        appendJsonString(f.message, out);
        if (!f.frames.empty()) {
          out += ",\"stack\":[";
          for (std::size_t i = 0; i < f.frames.size(); ++i) {
            if (i != 0) out += ',';
            appendJsonString(f.frames[i], out);
          }
          out += ']';
        }
        out += "}}";
        output.endLine();
      }
    }
    progress.add(static_cast<bool>(error));
  }
  output.flush();
  return failed;
}

int mapTask(const std::string& plugin, const std::string& taskName, const MapOptions& opt) {
  // The input first: an unreadable file is a usage error before any worker starts.
  std::FILE* file = stdin;
  std::string inputName = "standard input";
  // A closed stdin is told as such, and before the pool opens a descriptor that could take 0.
  if (opt.input == "-" && !isOpen(STDIN_FILENO)) throw UsageFailure("standard input is closed");
  if (opt.input != "-") {
    file = std::fopen(opt.input.c_str(), "re");
    if (file == nullptr)
      throw UsageFailure("cannot open " + opt.input + ": " + std::strerror(errno));
    inputName = opt.input;
  }
  struct Closer {
    std::FILE* f;
    ~Closer() {
      if (f != stdin) std::fclose(f);
    }
  } closer{file};

  auto pool = startPool(plugin, opt.workers, remoteOf(opt), opt.retries);
  DynamicTask task = bindTask(*pool, taskName);
  if (opt.timeout > 0) {
    task = task.withTimeout(
        std::chrono::milliseconds(std::max<long long>(1, std::llround(opt.timeout * 1000))));
  }
  Values values = valuesOf(*pool, task);
  const bool jsonl = opt.output == "jsonl";

  auto state = std::make_shared<LineInput::State>();
  state->file = file;
  state->values = &values;
  state->shape = task.argumentShape();
  state->name = inputName;
  state->scratch = std::make_unique<capnp::MallocMessageBuilder>(64);
  state->scratchTuple = state->scratch->getRoot<capnp::AnyPointer>().initAsAnyStruct(
      state->shape.dataWords, state->shape.pointers);

  Progress progress(::isatty(STDERR_FILENO) == 1);
  std::thread counter;
  std::atomic<bool> stopCounting{false};
  struct stat st {};
  if (progress.enabled() && ::fstat(::fileno(file), &st) == 0 && S_ISREG(st.st_mode)) {
    counter = std::thread(countLines, ::fileno(file), std::ref(progress), std::cref(stopCounting));
  }
  struct Joiner {
    std::thread& t;
    std::atomic<bool>& stop;
    ~Joiner() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } joiner{counter, stopCounting};

  const TupleShape shape = task.argumentShape();
  auto encode = [&values, shape](capnp::AnyStruct::Builder out, const InputItem& item) {
    if (!item.encoded) return values.argsFromLine(item.text, out);
    auto in = item.encoded->getRoot<capnp::AnyStruct>().asReader();
    std::memcpy(out.getDataSection().begin(), in.getDataSection().begin(), shape.dataWords * 8u);
    for (unsigned p = 0; p < shape.pointers; ++p) {
      out.getPointerSection()[p].set(in.getPointerSection()[p]);
    }
  };
  Outcomes outcomes(state, !opt.unordered, [&](LineInput input) {
    return opt.unordered ? pool->imapUnordered(task, std::move(input), encode, opt.chunksize)
                         : pool->imap(task, std::move(input), encode, opt.chunksize);
  });

  Output output(&progress);
  std::uint64_t failed = 0;
  try {
    failed = writeResults(outcomes, values, jsonl, inputName, output, progress);
  } catch (const WriteFailure&) {
    // The results can go nowhere: take no more input (the stream is not read again) and stop
    // the items running now rather than wait for them.
    pool->terminate();
    throw;
  }
  progress.finish();
  if (!state->error.empty()) {  // a read error: the input ended there
    errorLine(state->error);
    return EXIT_USAGE;
  }
  return failed > 0 ? EXIT_FAILED : 0;
}

int run(int argc, char** argv) {
  CLI::App app{"plugpool: run plugin tasks on a pool of worker processes", "plugpool"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show the help of every command");
  app.set_version_flag("--version", std::string("plugpool ") + PLUGPOOL_VERSION);

  std::string plugin, taskName;
  bool json = false;
  auto* tasks = app.add_subcommand("tasks", "List a plugin's tasks: types and doc strings");
  tasks->add_option("PLUGIN", plugin, "A plugin path or name")->required();
  tasks->add_flag("--json", json, "One JSON object, for machines");

  auto* once = app.add_subcommand("run", "Call a task once with arguments from the command line");
  once->add_option("PLUGIN", plugin, "A plugin path or name")->required();
  once->add_option("TASK", taskName, "The task's name")->required();
  // The arguments are what follows PLUGIN and TASK, verbatim (as an option's values, CLI11
  // would split an argument "[1,2]" at its commas), and everything after "--".
  once->prefix_command();
  once->footer(
      "Then ARG...: one argument each, converted to the task's types; after --, arguments\n"
      "may start with '-'.");

  MapOptions opt;
  auto* map = app.add_subcommand("map", "Map a task over the lines of a file or standard input");
  map->add_option("PLUGIN", plugin, "A plugin path or name")->required();
  map->add_option("TASK", taskName, "The task's name")->required();
  map->add_option("INPUT", opt.input, "Input file, one item per line; - or none: standard input");
  map->add_option("-w,--workers", opt.workers, "Worker processes (default: one per core)")
      ->check(workerCount());
  map->add_option("-c,--chunksize", opt.chunksize, "Items per message (default: adaptive)");
  map->add_flag("-u,--unordered", opt.unordered, "Write results as they finish, not in order");
  map->add_option("-t,--timeout", opt.timeout, "Seconds an item may run (default: no limit)")
      ->check(CLI::NonNegativeNumber);
  map->add_option("-r,--retries", opt.retries,
                  "Times a chunk whose worker crashed running it is sent again before its items "
                  "fail (default 0: a crash is usually the input's fault)")
      ->check(retryCount());
  map->add_option("-o,--output", opt.output, "text (default) or jsonl")
      ->check(CLI::IsMember({"text", "jsonl"}));
  auto* slurm = map->add_flag(
      "--slurm", opt.slurm,
      "Workers on other machines: each a Slurm job step of this allocation (inside salloc/sbatch)");
  map->add_option("--launch", opt.launch,
                  "Workers on other machines: each started by this command prefix, e.g. 'ssh "
                  "node7' (repeat to spread them over several)")
      ->excludes(slurm)
      ->allow_extra_args(false);
  map->add_option("--address", opt.address,
                  "The address of this host remote workers connect back to (default: what its "
                  "name resolves to)");
  map->footer(
      "Each input line is one item: the argument itself for a task of one scalar, text or\n"
      "data argument; otherwise a JSON array of the arguments (or the one argument's JSON).");

  if (argc > 1 && argv[1][0] != '-' && std::string_view(argv[1]) != "tasks" &&
      std::string_view(argv[1]) != "run" && std::string_view(argv[1]) != "map") {
    errorLine(std::string("unknown command \"") + argv[1] +
              "\"; the commands are tasks, run and map (see plugpool --help)");
    return EXIT_USAGE;
  }
  // `run … -- ARG…`: everything after "--" is an argument as it is, even "-x" or "--help".
  std::vector<std::string> verbatim;
  if (argc > 1 && std::string_view(argv[1]) == "run") {
    for (int i = 2; i < argc; ++i) {
      if (std::string_view(argv[i]) != "--") continue;
      verbatim.assign(argv + i + 1, argv + argc);
      argc = i;
      break;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::string what = e.what();
    errorLine(what + " (see plugpool --help)");
    return EXIT_USAGE;
  }

  // Checked before any worker starts (a descriptor the pool opened could take the number 1,
  // and results written "to stdout" would go into it) and before any input is read.
  if (!isOpen(STDOUT_FILENO)) {
    errorLine("write error: standard output is closed");
    return EXIT_FAILED;
  }
  try {
    if (tasks->parsed()) return listTasks(plugin, json);
    if (once->parsed()) {
      std::vector<std::string> args = once->remaining();
      args.insert(args.end(), verbatim.begin(), verbatim.end());
      return runOnce(plugin, taskName, args);
    }
    return mapTask(plugin, taskName, opt);
  } catch (const UsageFailure& e) {
    errorLine(e.what());
    return EXIT_USAGE;
  } catch (const WriteFailure& e) {
    errorLine(e.what());
    return EXIT_FAILED;
  } catch (const Error& e) {
    errorLine(e.what());
    return EXIT_FAILED;
  }
}

}  // namespace
}  // namespace plugpool::cli

int main(int argc, char** argv) {
  return plugpool::cli::run(argc, argv);
}
