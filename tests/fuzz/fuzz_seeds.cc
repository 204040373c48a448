// fuzz_seeds.cc — writes the fuzz targets' seed inputs: real conversations, not random bytes.
//
//   fuzz-seeds DIR     writes DIR/worker/* (Run messages for the example plugin's tasks, with
//                      valid arguments) and DIR/host/* (the Hello and the ChunkDone replies a
//                      real WorkerSession gives to those Runs, each after its item-count byte)
//                      and DIR/preamble/* (a remote worker's preamble, and two refused ones)
//                      and DIR/log/* (the reply log a real WorkerSession leaves of each of
//                      those Runs, as fuzz_log reads it: whole, and as if the worker had died
//                      at each of its items)
//
// Starting from valid messages lets the fuzzers reach the deep paths (argument and result
// decoding) at once instead of rediscovering the framing first.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "fuzz_support.h"
#include "geometry.capnp.h"
#include "plugpool/codec.h"
#include "reply_log.h"
#include "shared_memory.h"
#include "tcp.h"
#include "wire.capnp.h"
#include "worker.h"

namespace {

using namespace plugpool;
using namespace plugpool::detail;

void writeBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  if (!out) {
    std::fprintf(stderr, "fuzz-seeds: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

void writeFile(const std::string& path, const std::string& prefix,
               kj::ArrayPtr<const capnp::word> words) {
  const auto bytes = words.asBytes();
  writeBytes(path, prefix + std::string(bytes.begin(), bytes.end()));
}

// How a seed holds an argument of wire type T: by value, or as a Reader for a struct.
template <typename T, typename = void>
struct HeldAs {
  using type = T;
};
template <typename T>
struct HeldAs<T, std::enable_if_t<codec::IsSchemaStruct<T>::value>> {
  using type = typename T::Reader;
};

class SeedWriter {
 public:
  explicit SeedWriter(std::string dir) : dir_(std::move(dir)) {
    ::mkdir(dir_.c_str(), 0755);
    ::mkdir((dir_ + "/worker").c_str(), 0755);
    ::mkdir((dir_ + "/host").c_str(), 0755);
    ::mkdir((dir_ + "/preamble").c_str(), 0755);
    ::mkdir((dir_ + "/log").c_str(), 0755);
    ::mkdir((dir_ + "/ring").c_str(), 0755);
    capnp::MallocMessageBuilder builder;
    auto setup = builder.initRoot<wire::HostMessage>().initSetup();
    setup.setProtocolVersion(wire::PROTOCOL_VERSION);
    setup.setMaxMessageWords(std::uint64_t{1} << 20);
    setup.initPlugins(1).set(0, EXAMPLES_PLUGIN);
    auto flat = capnp::messageToFlatArray(builder);
    writeFile(dir_ + "/worker/setup", "", flat);
    capnp::FlatArrayMessageReader reader(flat);
    auto hello = session_.setUp(reader);
    if (!session_.loaded()) {
      std::fprintf(
          stderr, "fuzz-seeds: %s\n",
          hello->getRoot<wire::WorkerMessage>().getHello().getLoadError().getMessage().cStr());
      std::exit(1);
    }
    writeFile(dir_ + "/host/hello", std::string(1, '\x80'), capnp::messageToFlatArray(*hello));
    tasks_ = session_.plugins().at(0).tasks;
    setUpLogged(builder);
  }

  // Writes a Run of `task` over `items` (each a tuple of the task's argument values) and the
  // ChunkDone the real worker answers it with.
  template <typename... T>
  void run(const std::string& task,
           const std::vector<std::tuple<typename HeldAs<T>::type...>>& items) {
    capnp::MallocMessageBuilder builder;
    auto run = builder.initRoot<wire::HostMessage>().initRun();
    run.setId(1);  // each host seed is a conversation of its own: its first run
    run.setPlugin(0);
    run.setTask(indexOf(task));
    using Layout = codec::TupleLayout<T...>;
    auto list = run.initItems().initAsListOfAnyStruct(Layout::dataWords, Layout::pointers,
                                                      static_cast<unsigned>(items.size()));
    for (unsigned i = 0; i < items.size(); ++i) {
      std::apply([&](const auto&... v) { codec::writeTuple<T...>(list[i], v...); }, items[i]);
    }
    auto flat = capnp::messageToFlatArray(builder);
    writeFile(dir_ + "/worker/" + task, "", flat);
    capnp::FlatArrayMessageReader reader(flat);
    auto done = session_.run(reader);
    writeFile(dir_ + "/host/" + task, std::string(1, static_cast<char>(items.size())),
              capnp::messageToFlatArray(*done));
    logged(task, builder);
  }

  // Writes DIR/preamble/*: the preamble fuzz_preamble accepts (split at each of a few
  // places, its first byte), one with another secret, and one with another version.
  void preambles() {
    const auto valid = detail::encodePreamble(fuzzing::preambleSecret());
    const std::string bytes(valid.begin(), valid.end());
    for (char split : {'\0', '\x11', '\x7f'}) {
      writeBytes(dir_ + "/preamble/valid-" + std::to_string(split), split + bytes);
    }
    std::string stranger = bytes;
    stranger[20] ^= 1;
    writeBytes(dir_ + "/preamble/wrong-secret", '\0' + stranger);
    std::string other = bytes;
    other[8] = 9;
    writeBytes(dir_ + "/preamble/wrong-version", '\0' + other);
  }

  // Writes a Crash as a worker's crash handler sends it (crash_handler.cc).
  void crash() {
    capnp::MallocMessageBuilder builder;
    auto crash = builder.initRoot<wire::WorkerMessage>().initCrash();
    crash.setRunId(1);
    crash.setItem(1);
    crash.setSignal(11);
    auto frames = crash.initFrames(3);
    frames[0].setFunction("_ZN12_GLOBAL__N_112read_throughEPKl");
    frames[0].setFile("../tests/fixtures/faults.cc");
    frames[0].setLine(31);
    frames[1].setFunction("null_deref");
    frames[2].setPc(0x7f0000001234);
    writeFile(dir_ + "/host/crash", std::string(1, '\2'), capnp::messageToFlatArray(builder));
  }

 private:
  unsigned indexOf(const std::string& task) const {
    for (unsigned i = 0; i < tasks_.size(); ++i) {
      if (tasks_[i].name == task) return i;
    }
    std::fprintf(stderr, "fuzz-seeds: the examples plugin has no task %s\n", task.c_str());
    std::exit(1);
  }

  // A second worker, set up as a local one is (its two regions and a reply log), whose
  // replies are built in `log_`.
  void setUpLogged(capnp::MallocMessageBuilder& message) {
    auto setup = message.getRoot<wire::HostMessage>().getSetup();
    inbound_ = SharedRegion::create(SHARED_SEGMENT_BYTES, true);
    outbound_ = SharedRegion::create(SHARED_SEGMENT_BYTES, false);
    log_ = SharedRegion::create(REPLY_LOG_BYTES, false, "plugpool-log");
    setup.setSharedMemory(true);
    setup.setReplyLog(true);
    std::vector<UniqueFd> descriptors;
    for (const auto* region : {&inbound_, &outbound_, &log_}) {
      descriptors.emplace_back(::dup((*region)->fd()));
    }
    auto flat = capnp::messageToFlatArray(message);
    capnp::FlatArrayMessageReader reader(flat);
    auto hello = logSession_.setUp(reader, std::move(descriptors));
    if (!hello->getRoot<wire::WorkerMessage>().getHello().getReplyLog()) {
      std::fprintf(stderr, "fuzz-seeds: the worker did not take the reply log\n");
      std::exit(1);
    }
  }

  // Runs `run` (a Run message) in the logged worker, timing its items, and writes the log it
  // leaves: DIR/log/TASK as it is once the chunk has run, and DIR/log/TASK-died-in-K and
  // TASK-reported-K as if the worker had died running item K (the header says K is running,
  // or its crash report does; the message is the same). Each is the header's words 1 to 6,
  // then the data the reply used.
  void logged(const std::string& task, capnp::MallocMessageBuilder& run) {
    run.getRoot<wire::HostMessage>().getRun().setItemStartTimes(true);
    auto flat = capnp::messageToFlatArray(run);
    capnp::FlatArrayMessageReader reader(flat);
    auto done = logSession_.run(reader);
    const auto used = done->getSegmentsForOutput()[0];
    std::uint64_t header[6];
    for (std::size_t i = 0; i < 6; ++i) header[i] = log_->headerWord(LOG_RUN + i).load();
    const unsigned items = static_cast<unsigned>(header[LOG_ITEMS - 1]);
    const auto data = log_->words(0, used.size()).asBytes();
    auto write = [&](const std::string& name) {
      std::string bytes(reinterpret_cast<const char*>(header), sizeof header);
      bytes.append(data.begin(), data.end());
      writeBytes(dir_ + "/log/" + name, bytes);
    };
    write(task);
    for (unsigned k = 0; k < items; ++k) {
      header[LOG_RUNNING - 1] = k;
      write(task + "-died-in-" + std::to_string(k));
      // A chunk entry that does not say which item runs, and a crash report that does
      // (fuzz_log reads it from the high half).
      header[LOG_RUNNING - 1] = (std::uint64_t{k} + 1) << 32 | LOG_ITEM_UNKNOWN;
      write(task + "-reported-" + std::to_string(k));
    }
    // The reply, finished, in the log's ring behind the earlier seeds' (fuzz_ring reads it):
    // the ring's head and tail, then its words from its start.
    if (logSession_.logReply(*done)) {
      const std::uint64_t ends[2] = {log_->headerWord(LOG_HEAD).load(),
                                     log_->headerWord(LOG_TAIL).load()};
      const std::size_t half = log_->capacityWords() / 2;
      const auto ring = log_->words(half, std::min<std::size_t>(ends[0], half)).asBytes();
      std::string bytes(reinterpret_cast<const char*>(ends), sizeof ends);
      bytes.append(ring.begin(), ring.end());
      writeBytes(dir_ + "/ring/" + task, bytes);
    }
    logSession_.replySent();  // the log takes the next reply from its start
  }

  std::string dir_;
  WorkerSession session_;
  std::vector<TaskInfo> tasks_;
  std::shared_ptr<SharedRegion> inbound_, outbound_, log_;
  WorkerSession logSession_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz-seeds DIR\n");
    return 2;
  }
  SeedWriter seeds(argv[1]);
  seeds.run<std::int64_t>("square", {{0}, {7}, {-3}});
  seeds.run<double, double>("add", {{1.5, 2.25}, {-1, 1}});
  seeds.run<std::string>("upper", {{"hello"}, {""}});
  seeds.run<std::string>("word_count", {{"the cat and the hat"}});
  seeds.run<Bytes>("echo_bytes", {{Bytes{std::byte{1}, std::byte{2}, std::byte{3}}}});
  seeds.run<std::int64_t>("fail", {{42}});
  seeds.crash();
  seeds.run<std::vector<std::int64_t>>("sum", {{{1, 2, 3}}});
  seeds.run<std::vector<std::string>>("sort_words", {{{"b", "a", "c"}}});
  seeds.run<std::vector<double>>("min_max", {{{3.5, -1, 8}}, {{}}});
  Message<geometry::Polygon> square;
  square.builder().setName("unit");
  auto points = square.builder().initPoints(4);
  for (unsigned i = 0; i < 4; ++i) {
    points[i].setX(i == 1 || i == 2 ? 1 : 0);
    points[i].setY(i >= 2 ? 1 : 0);
  }
  seeds.run<geometry::Polygon>("polygon_stats", {{square.get()}});
  seeds.preambles();
  return 0;
}
