// test_framing.cc — the stream framing (FrameReader / FrameWriter) over real socketpairs, and the
// worker executable's handling of host messages, which it must treat as untrusted.
//
// Nothing here blocks without a limit: reads and writes poll with a timeout first, and a worker
// is waited for through its pidfd, killed and reported if it does not exit in time.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "fd.h"
#include "framing.h"
#include "support.h"
#include "wire.capnp.h"

extern char** environ;

namespace {

using plugpool::detail::FrameReader;
using plugpool::detail::FrameWriter;
using plugpool::detail::MAX_SEGMENTS;
using plugpool::detail::ProtocolViolation;
using plugpool::detail::readerOptions;
using plugpool::detail::UniqueFd;
using Status = FrameReader::Status;
namespace wire = plugpool::wire;

static_assert(std::endian::native == std::endian::little, "the tests write little-endian words");

constexpr int TIMEOUT_MS = 10'000;
constexpr std::uint64_t WORKER_MAX_WORDS = std::uint64_t{1} << 20;

// ---------------------------------------------------------------------------------------------
// Descriptors and timed I/O. Nothing here uses Catch assertions, so the writer threads may call
// it; failures are exceptions.

struct SocketPair {
  UniqueFd first, second;
};

SocketPair socketPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw std::system_error(errno, std::generic_category(), "socketpair");
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void setNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    throw std::system_error(errno, std::generic_category(), "fcntl");
  }
}

// True once `fd` is ready for `events`, false if TIMEOUT_MS passed first.
bool waitFor(int fd, short events) {
  pollfd p{fd, events, 0};
  for (;;) {
    int n = ::poll(&p, 1, TIMEOUT_MS);
    if (n >= 0) return n > 0;
    if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");
  }
}

// Writes everything queued in `writer` to a non-blocking `fd`.
void flushAll(FrameWriter& writer, int fd) {
  while (!writer.flush(fd)) {
    if (!waitFor(fd, POLLOUT)) throw std::runtime_error("the peer took nothing for 10 s");
  }
}

void sendBytes(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n > 0) {
      p += n;
      size -= static_cast<std::size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd, POLLOUT)) throw std::runtime_error("the peer took nothing for 10 s");
    } else if (errno != EINTR) {
      throw std::system_error(errno, std::generic_category(), "send");
    }
  }
}

void sendWords(int fd, const std::vector<std::uint32_t>& words) {
  sendBytes(fd, words.data(), words.size() * sizeof(std::uint32_t));
}

// Reads one message (or the end of the stream) from a non-blocking `fd`; fails the test if
// nothing arrives for 10 s.
Status readMessage(FrameReader& reader, int fd, kj::Array<capnp::word>& out) {
  for (;;) {
    Status status = reader.read(fd, out);
    if (status != Status::AGAIN) return status;
    if (!waitFor(fd, POLLIN)) FAIL("nothing arrived for 10 s");
  }
}

// Runs `body` in a thread; join() rethrows whatever it threw. The destructor joins too (the
// body gives up on its own within 10 s), so a failing test never abandons a running thread.
class Background {
 public:
  template <typename F>
  explicit Background(F body)
      : thread_([this, body = std::move(body)]() mutable {
          try {
            body();
          } catch (...) {
            error_ = std::current_exception();
          }
        }) {}
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  ~Background() {
    if (thread_.joinable()) thread_.join();
  }

  void join() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;  // declared first: set by the thread
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Test messages: a wire::Setup root whose `plugins` holds `texts` texts of `length` characters,
// filled with a pattern that depends on the message's index, so any reordering, loss or
// corruption shows. A 4-word first segment and FIXED_SIZE make every text its own segment.

struct Shape {
  unsigned texts;
  std::size_t length;
};

char patternChar(unsigned message, unsigned text, std::size_t k) {
  return static_cast<char>('a' + (message * 7 + text * 13 + k) % 26);
}

std::unique_ptr<capnp::MallocMessageBuilder> patternMessage(unsigned index, Shape shape) {
  auto message =
      std::make_unique<capnp::MallocMessageBuilder>(4, capnp::AllocationStrategy::FIXED_SIZE);
  auto setup = message->initRoot<wire::Setup>();
  setup.setProtocolVersion(index);
  setup.setMaxMessageWords(shape.length);
  auto texts = setup.initPlugins(shape.texts);
  for (unsigned t = 0; t < shape.texts; ++t) {
    auto text = texts.init(t, static_cast<unsigned>(shape.length));
    char* p = text.begin();
    for (std::size_t k = 0; k < shape.length; ++k) p[k] = patternChar(index, t, k);
  }
  return message;
}

// Empty if `words` is exactly patternMessage(index, shape), else what differs.
std::string patternMismatch(kj::ArrayPtr<const capnp::word> words, std::uint64_t cap,
                            unsigned index, Shape shape) {
  capnp::FlatArrayMessageReader message(words, readerOptions(cap));
  auto setup = message.getRoot<wire::Setup>();
  if (setup.getProtocolVersion() != index) {
    return "message " + std::to_string(setup.getProtocolVersion()) + " arrived in place of " +
           std::to_string(index);
  }
  if (setup.getMaxMessageWords() != shape.length) return "wrong length field";
  auto texts = setup.getPlugins();
  if (texts.size() != shape.texts) return "wrong number of texts";
  for (unsigned t = 0; t < shape.texts; ++t) {
    auto text = texts[t];
    if (text.size() != shape.length) return "text " + std::to_string(t) + " has the wrong length";
    const char* p = text.begin();
    for (std::size_t k = 0; k < shape.length; ++k) {
      if (p[k] != patternChar(index, t, k)) {
        return "text " + std::to_string(t) + " differs at character " + std::to_string(k);
      }
    }
  }
  return {};
}

std::vector<capnp::word> flatten(capnp::MessageBuilder& message) {
  auto flat = capnp::messageToFlatArray(message);
  return {flat.begin(), flat.end()};
}

// What a reader makes of a stream: how many messages it read, then the ProtocolViolation's
// message, or "" if the stream ended cleanly.
struct Outcome {
  unsigned messages = 0;
  std::string violation;
};

Outcome readToTheEnd(FrameReader& reader, int fd) {
  Outcome outcome;
  kj::Array<capnp::word> words;
  try {
    while (readMessage(reader, fd, words) == Status::MESSAGE) ++outcome.messages;
  } catch (const ProtocolViolation& e) {
    outcome.violation = e.what();
    if (outcome.violation.empty()) outcome.violation = "(empty what())";
  }
  return outcome;
}

// The ProtocolViolation `reader.read` throws for what is already on `fd`; fails the test if it
// returns instead (e.g. AGAIN, waiting for a body it should have refused).
std::string violationOf(FrameReader& reader, int fd) {
  kj::Array<capnp::word> words;
  try {
    Status status = reader.read(fd, words);
    INFO("read returned status " << static_cast<int>(status) << " with " << words.size()
                                 << " words");
    FAIL("read did not throw ProtocolViolation");
  } catch (const ProtocolViolation& e) {
    return e.what();
  }
  return {};
}

}  // namespace

// =============================================================================================
// FrameReader / FrameWriter

TEST_CASE(
    "Messages from a few bytes to several MiB, many with hundreds of segments, arrive intact and "
    "in order across a non-blocking socket, and a close at a message boundary reads as END") {
  const std::vector<Shape> shapes = {
      {0, 0},    {1, 0},       {1, 1},       {3, 7},  {1, 100},     {40, 3},
      {200, 50}, {450, 20},    {1, 5 << 20}, {2, 64}, {2, 3 << 20}, {16, 200'000},
      {1, 8},    {1, 1 << 20}, {300, 1'000}, {0, 0},  {5, 65'536},  {100, 9},
  };
  struct Planned {
    unsigned index;
    Shape shape;
    std::size_t words;
  };
  std::vector<Planned> plan;
  std::vector<std::unique_ptr<capnp::MallocMessageBuilder>> messages;
  std::size_t mostSegments = 0, largestWords = 0;
  for (unsigned round = 0; round < 2; ++round) {
    for (Shape shape : shapes) {
      if (shape.length > 0) shape.length += round * 3;  // not every size a multiple of 8
      auto index = static_cast<unsigned>(plan.size());
      messages.push_back(patternMessage(index, shape));
      std::size_t segments = messages.back()->getSegmentsForOutput().size();
      std::size_t words = capnp::computeSerializedSizeInWords(*messages.back());
      REQUIRE(segments <= MAX_SEGMENTS);
      mostSegments = std::max(mostSegments, segments);
      largestWords = std::max(largestWords, words);
      plan.push_back({index, shape, words});
    }
  }
  REQUIRE(mostSegments > 400);             // the builders really are multi-segment
  REQUIRE(largestWords * 8 > (5u << 20));  // and some messages are several MiB
  constexpr std::uint64_t cap = std::uint64_t{1} << 21;

  SocketPair pair = socketPair();
  UniqueFd readEnd = std::move(pair.first);
  setNonBlocking(readEnd.get());
  Background writer([fd = std::move(pair.second), messages = std::move(messages)]() mutable {
    setNonBlocking(fd.get());
    FrameWriter frames;
    // Queue a few at a time so flush has several messages (and partial writes) to get through.
    for (std::size_t i = 0; i < messages.size(); ++i) {
      frames.push(std::move(messages[i]));
      if (i % 3 == 2) flushAll(frames, fd.get());
    }
    flushAll(frames, fd.get());
    if (!frames.empty()) throw std::logic_error("FrameWriter not empty after a complete flush");
    fd.reset();  // a clean close, at a message boundary
  });

  FrameReader reader(cap);
  kj::Array<capnp::word> words;
  std::size_t received = 0;
  while (readMessage(reader, readEnd.get(), words) == Status::MESSAGE) {
    REQUIRE(received < plan.size());
    const Planned& expected = plan[received];
    INFO("message " << received << ": " << expected.shape.texts << " texts of "
                    << expected.shape.length << " characters");
    REQUIRE(words.size() == expected.words);
    REQUIRE(patternMismatch(words, cap, expected.index, expected.shape) == "");
    ++received;
  }
  writer.join();
  CHECK(received == plan.size());
  // END is not a one-off: the stream stays ended.
  CHECK(reader.read(readEnd.get(), words) == Status::END);
}

TEST_CASE(
    "On a non-blocking socket, read returns AGAIN while nothing or only part of a message has "
    "arrived, and assembles the message delivered a byte at a time") {
  SocketPair pair = socketPair();
  setNonBlocking(pair.first.get());
  FrameReader reader(WORKER_MAX_WORDS);
  kj::Array<capnp::word> words;

  CHECK(reader.read(pair.first.get(), words) == Status::AGAIN);
  CHECK(reader.read(pair.first.get(), words) == Status::AGAIN);

  auto builder = patternMessage(7, {3, 21});
  std::vector<capnp::word> flat = flatten(*builder);
  const auto* bytes = reinterpret_cast<const char*>(flat.data());
  std::size_t size = flat.size() * sizeof(capnp::word);
  for (std::size_t i = 0; i + 1 < size; ++i) {
    sendBytes(pair.second.get(), bytes + i, 1);
    INFO("after byte " << i);
    REQUIRE(reader.read(pair.first.get(), words) == Status::AGAIN);
  }
  sendBytes(pair.second.get(), bytes + size - 1, 1);
  REQUIRE(reader.read(pair.first.get(), words) == Status::MESSAGE);
  REQUIRE(words.size() == flat.size());
  CHECK(patternMismatch(words, WORKER_MAX_WORDS, 7, {3, 21}) == "");

  // Two messages in one write: both come out, one per call, then AGAIN.
  auto second = patternMessage(8, {1, 5});
  auto third = patternMessage(9, {0, 0});
  std::vector<capnp::word> both = flatten(*second);
  std::vector<capnp::word> more = flatten(*third);
  both.insert(both.end(), more.begin(), more.end());
  sendBytes(pair.second.get(), both.data(), both.size() * sizeof(capnp::word));
  REQUIRE(reader.read(pair.first.get(), words) == Status::MESSAGE);
  CHECK(patternMismatch(words, WORKER_MAX_WORDS, 8, {1, 5}) == "");
  REQUIRE(reader.read(pair.first.get(), words) == Status::MESSAGE);
  CHECK(patternMismatch(words, WORKER_MAX_WORDS, 9, {0, 0}) == "");
  CHECK(reader.read(pair.first.get(), words) == Status::AGAIN);

  pair.second.reset();
  CHECK(reader.read(pair.first.get(), words) == Status::END);
}

TEST_CASE(
    "A stream that ends inside a message is a ProtocolViolation, not a clean end, wherever in "
    "the message it stops") {
  auto small = patternMessage(1, {2, 30});
  auto large = patternMessage(2, {1, 1 << 20});  // read straight into the message, past staging
  std::vector<capnp::word> smallFlat = flatten(*small);
  std::vector<capnp::word> largeFlat = flatten(*large);
  const std::size_t smallBytes = smallFlat.size() * sizeof(capnp::word);
  const std::size_t largeBytes = largeFlat.size() * sizeof(capnp::word);

  std::vector<char> stream;
  auto append = [&stream](const std::vector<capnp::word>& flat, std::size_t bytes) {
    const auto* p = reinterpret_cast<const char*>(flat.data());
    stream.insert(stream.end(), p, p + bytes);
  };
  unsigned completeBefore = 0;
  SECTION("in the first half of the segment table's first word") {
    append(smallFlat, 3);
  }
  SECTION("in the segment table") {
    append(smallFlat, 4);
  }
  SECTION("just after the segment table") {
    append(smallFlat, 8);
  }
  SECTION("in a small message's body") {
    append(smallFlat, smallBytes - 1);
  }
  SECTION("in a large message's body") {
    append(largeFlat, largeBytes / 2);
  }
  SECTION("one byte short of a large message's end") {
    append(largeFlat, largeBytes - 1);
  }
  SECTION("after a complete message, inside the next") {
    append(smallFlat, smallBytes);
    append(largeFlat, largeBytes - 8);
    completeBefore = 1;
  }

  SocketPair pair = socketPair();
  UniqueFd readEnd = std::move(pair.first);
  setNonBlocking(readEnd.get());
  Background writer([fd = std::move(pair.second), &stream]() mutable {
    setNonBlocking(fd.get());
    sendBytes(fd.get(), stream.data(), stream.size());
    fd.reset();
  });
  FrameReader reader(WORKER_MAX_WORDS);
  Outcome outcome = readToTheEnd(reader, readEnd.get());
  writer.join();
  CHECK(outcome.messages == completeBefore);
  CHECK_THAT(outcome.violation, Catch::Matchers::Contains("ended inside a message"));
}

TEST_CASE(
    "A segment table declaring more words than the reader's cap is refused before any of the "
    "body is sent") {
  SocketPair pair = socketPair();
  setNonBlocking(pair.first.get());
  // The writer's end stays open: a reader that waited for the body would return AGAIN.

  SECTION("one segment of 1 << 30 words against a cap of 1 << 20") {
    FrameReader reader(std::uint64_t{1} << 20);
    sendWords(pair.second.get(), {0, 1u << 30});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("exceeds"));
  }
  SECTION("two segments whose sizes only exceed the cap together") {
    FrameReader reader(std::uint64_t{1} << 20);
    sendWords(pair.second.get(), {1, 1u << 19, 1u << 19, 0});  // + 2 table words > 1 << 20
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("exceeds"));
  }
  SECTION("segment sizes that would overflow 32 bits when added") {
    FrameReader reader(std::uint64_t{1} << 20);
    sendWords(pair.second.get(), {1, 0xFFFFFFFFu, 0xFFFFFFFFu, 0});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("exceeds"));
  }
  SECTION("exactly the cap, segment table included, is accepted; one word more is not") {
    constexpr std::uint32_t cap = 4096;
    FrameReader reader(cap);
    std::vector<std::uint32_t> atCap = {0, cap - 1};
    atCap.resize(2 + 2 * (cap - 1), 0xA5A5A5A5u);
    sendWords(pair.second.get(), atCap);
    kj::Array<capnp::word> words;
    REQUIRE(readMessage(reader, pair.first.get(), words) == Status::MESSAGE);
    CHECK(words.size() == cap);

    sendWords(pair.second.get(), {0, cap});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("exceeds"));
  }
  SECTION("a cap lowered with setMaxWords applies to the next message") {
    FrameReader reader(std::uint64_t{1} << 20);
    reader.setMaxWords(16);
    sendWords(pair.second.get(), {0, 16});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("exceeds"));
  }
}

// A ChunkDone whose results are `bytes` bytes of Data, each byte (i * 7 + seed) mod 256: with
// a default first segment, anything over a few KiB lands in a second segment of its own.
std::shared_ptr<capnp::MallocMessageBuilder> blobMessage(std::size_t bytes, unsigned seed) {
  auto message = std::make_shared<capnp::MallocMessageBuilder>();
  auto done = message->initRoot<wire::WorkerMessage>().initChunkDone();
  done.setId(seed);
  auto data = done.initResults().initAs<capnp::Data>(static_cast<unsigned>(bytes));
  for (std::size_t i = 0; i < bytes; ++i) data[i] = static_cast<capnp::byte>(i * 7 + seed);
  return message;
}

bool blobIntact(capnp::MessageReader& reader, std::size_t bytes, unsigned seed) {
  auto done = reader.getRoot<wire::WorkerMessage>().getChunkDone();
  auto data = done.getResults().getAs<capnp::Data>();
  if (done.getId() != seed || data.size() != bytes) return false;
  for (std::size_t i = 0; i < bytes; ++i) {
    if (data[i] != static_cast<capnp::byte>(i * 7 + seed)) return false;
  }
  return true;
}

TEST_CASE(
    "Descriptors pass with a message; a large segment then travels through the sender's region, "
    "is read in place, and frees the region when the reader is done with it") {
  using plugpool::detail::Received;
  using plugpool::detail::SharedRegion;
  constexpr std::uint64_t cap = std::uint64_t{1} << 22;
  SocketPair pair = socketPair();
  setNonBlocking(pair.first.get());
  setNonBlocking(pair.second.get());
  const int in = pair.first.get(), out = pair.second.get();

  // The sender's region reaches the reader as the host's reach a worker: with a message.
  auto region = SharedRegion::create(std::size_t{8} << 20, true);
  FrameWriter writer;
  FrameReader reader(cap);
  kj::Array<capnp::word> words;
  std::vector<UniqueFd> passed;
  writer.push(blobMessage(10, 1), nullptr, {region->fd()});
  flushAll(writer, out);
  reader.acceptDescriptors(&passed);
  REQUIRE(readMessage(reader, in, words) == Status::MESSAGE);
  reader.acceptDescriptors(nullptr);
  REQUIRE(passed.size() == 1);
  reader.acceptShared(SharedRegion::adopt(std::move(passed[0]), false));

  // Writes what is queued while reading, until `reader` has a message (this test has one
  // thread, and a message on the stream may not fit the socket's buffer).
  auto transfer = [&](FrameReader& from) {
    for (;;) {
      writer.flush(out);
      if (from.read(in, words) == Status::MESSAGE) return;
      pollfd ready[2] = {{in, POLLIN, 0},
                         {out, static_cast<short>(writer.empty() ? 0 : POLLOUT), 0}};
      REQUIRE(::poll(ready, 2, TIMEOUT_MS) > 0);
    }
  };
  const std::size_t big = 3 << 20;
  REQUIRE(writer.push(blobMessage(big, 2), region.get()));
  REQUIRE(region->held());
  transfer(reader);
  REQUIRE(words.size() < 4096);  // the stream carried the table and the small first segment
  {
    Received received(std::move(words), reader.peerRegion());
    REQUIRE(received.shared());
    REQUIRE(blobIntact(received.reader(), big, 2));

    // While it is read, the region is held: the next large message takes the stream, intact.
    REQUIRE_FALSE(writer.push(blobMessage(big, 3), region.get()));
    transfer(reader);
    REQUIRE(words.size() > big / 8);
    Received inline_(std::move(words), reader.peerRegion());
    REQUIRE_FALSE(inline_.shared());
    REQUIRE(blobIntact(inline_.reader(), big, 3));
  }
  REQUIRE_FALSE(region->held());  // released with the reader of the shared one

  // A segment larger than the region goes on the stream; a smaller one in the region again.
  REQUIRE_FALSE(writer.push(blobMessage(std::size_t{9} << 20, 4), region.get()));
  REQUIRE_FALSE(region->held());
  REQUIRE(writer.push(blobMessage(big, 5), region.get()));
  transfer(reader);
  REQUIRE(Received(std::move(words), reader.peerRegion())
              .reader()
              .getRoot<wire::WorkerMessage>()
              .getChunkDone()
              .getId() == 4);
  transfer(reader);
  REQUIRE(blobIntact(Received(std::move(words), reader.peerRegion()).reader(), big, 5));

  // A reader that agreed to no shared memory refuses such a frame.
  REQUIRE(writer.push(blobMessage(big, 6), region.get()));
  FrameReader plain(cap);
  REQUIRE_THROWS_WITH(transfer(plain), Catch::Contains("no shared memory was agreed"));
}

TEST_CASE("A region must be a sealed memfd: anything else is refused") {
  using plugpool::detail::SharedRegion;
  UniqueFd unsealed(::memfd_create("plain", MFD_CLOEXEC));
  REQUIRE(::ftruncate(unsealed.get(), 1 << 20) == 0);
  REQUIRE_THROWS_AS(SharedRegion::adopt(std::move(unsealed), false), std::system_error);
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  ::close(fds[1]);
  REQUIRE_THROWS_AS(SharedRegion::adopt(UniqueFd(fds[0]), false), std::system_error);
}

TEST_CASE("A segment table declaring more than MAX_SEGMENTS segments is a ProtocolViolation") {
  SocketPair pair = socketPair();
  setNonBlocking(pair.first.get());
  FrameReader reader(WORKER_MAX_WORDS);

  SECTION("MAX_SEGMENTS + 1 segments") {
    sendWords(pair.second.get(), {MAX_SEGMENTS, 0});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("segments"));
  }
  SECTION("a segment count that wraps to 0 when 1 is added in 32 bits") {
    sendWords(pair.second.get(), {0xFFFFFFFFu, 0});
    CHECK_THAT(violationOf(reader, pair.first.get()), Catch::Matchers::Contains("segments"));
  }
  SECTION("exactly MAX_SEGMENTS segments are accepted") {
    std::vector<std::uint32_t> table(1 + MAX_SEGMENTS + 1, 0);  // count, sizes, padding
    table[0] = MAX_SEGMENTS - 1;
    table[MAX_SEGMENTS] = 1;  // the last segment holds one word
    table.push_back(0x12345678u);
    table.push_back(0x9ABCDEF0u);
    sendWords(pair.second.get(), table);
    kj::Array<capnp::word> words;
    REQUIRE(readMessage(reader, pair.first.get(), words) == Status::MESSAGE);
    CHECK(words.size() == table.size() / 2);
  }
}

TEST_CASE(
    "Writing to a socket whose peer has closed throws std::system_error (EPIPE) and does not "
    "raise SIGPIPE") {
  // SIGPIPE keeps its default disposition here: if it were raised, this process would die.
  SocketPair pair = socketPair();
  setNonBlocking(pair.first.get());
  auto checkEpipe = [](auto&& write) {
    try {
      write();
      FAIL("the write did not throw");
    } catch (const std::system_error& e) {
      INFO(e.what());
      CHECK(e.code().value() == EPIPE);
    }
  };

  SECTION("FrameWriter::flush, peer closed before the write") {
    pair.second.reset();
    FrameWriter writer;
    writer.push(patternMessage(0, {3, 100}));
    checkEpipe([&] { writer.flush(pair.first.get()); });
  }
  SECTION("FrameWriter::flush, peer closed while a large message is half written") {
    FrameWriter writer;
    writer.push(patternMessage(0, {4, 1 << 20}));
    REQUIRE_FALSE(writer.flush(pair.first.get()));  // the socket buffer holds far less
    pair.second.reset();
    checkEpipe([&] { writer.flush(pair.first.get()); });
  }
  SECTION("writeMessage, peer closed") {
    pair.second.reset();
    auto message = patternMessage(0, {1, 10});
    checkEpipe([&] { plugpool::detail::writeMessage(pair.first.get(), *message); });
  }
}

// =============================================================================================
// The worker executable

namespace {

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// A worker started the way the pool starts one: the other end of a socketpair as descriptor 3
// (unless `withChannel` is false), "--host-pid=" ours, and its stderr captured. The destructor
// kills and reaps a worker the test did not wait for.
class Worker {
 public:
  explicit Worker(bool withChannel = true) {
    int pipe[2];
    REQUIRE(::pipe2(pipe, O_CLOEXEC) == 0);
    errors_.reset(pipe[0]);
    UniqueFd errorsWrite(pipe[1]);
    UniqueFd theirs;
    if (withChannel) {
      SocketPair pair = socketPair();
      channel_ = std::move(pair.first);
      theirs = std::move(pair.second);
    }

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, errorsWrite.get(), STDERR_FILENO);
    if (withChannel) posix_spawn_file_actions_adddup2(&actions, theirs.get(), 3);
    // Nothing else of ours, in particular no descriptor 3 when there is no channel.
    posix_spawn_file_actions_addclosefrom_np(&actions, withChannel ? 4 : 3);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    std::string path = WORKER_PATH;
    std::string hostPid = "--host-pid=" + std::to_string(::getpid());
    char* argv[] = {path.data(), hostPid.data(), nullptr};
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, path.c_str(), &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    INFO("posix_spawn " << path << ": " << std::strerror(rc));
    REQUIRE(rc == 0);
    pid_ = pid;
    pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    REQUIRE(pidfd_);
    if (channel_) setNonBlocking(channel_.get());
    setNonBlocking(errors_.get());
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }

  pid_t pid() const { return pid_; }
  int channel() const { return channel_.get(); }
  void closeChannel() { channel_.reset(); }

  void send(std::unique_ptr<capnp::MessageBuilder> message) {
    FrameWriter writer;
    writer.push(std::move(message));
    flushAll(writer, channel_.get());
  }

  // Waits up to 10 s for the worker to exit, reaps it and describes how it ended ("exit 70").
  // Past that, kills it and fails the test.
  std::string waitForExit() {
    REQUIRE(pid_ > 0);
    bool exited = waitFor(pidfd_.get(), POLLIN);
    if (!exited) ::kill(pid_, SIGKILL);
    int status = 0;
    pid_t reaped;
    while ((reaped = ::waitpid(pid_, &status, 0)) < 0 && errno == EINTR) {
    }
    REQUIRE(reaped == pid_);
    pid_ = -1;
    pidfd_.reset();
    if (!exited) FAIL("the worker did not exit within 10 s; killed it");
    return describeStatus(status);
  }

  // What the worker wrote to stderr; call once it has exited.
  std::string stderrText() {
    std::string text;
    char buffer[4096];
    for (;;) {
      ssize_t n = ::read(errors_.get(), buffer, sizeof buffer);
      if (n > 0) {
        text.append(buffer, static_cast<std::size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        break;  // EOF, or nothing more (EAGAIN)
      }
    }
    return text;
  }

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_, channel_, errors_;
};

std::string examplesPlugin() {
  char resolved[PATH_MAX];
  const char* found = ::realpath(FIXTURES_DIR "/../../plugins/libexamples.so", resolved);
  INFO("realpath of " FIXTURES_DIR "/../../plugins/libexamples.so: " << std::strerror(errno));
  REQUIRE(found != nullptr);
  return resolved;
}

std::unique_ptr<capnp::MallocMessageBuilder> setupMessage(std::uint32_t version,
                                                          const std::vector<std::string>& plugins,
                                                          std::uint64_t maxWords) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto setup = message->initRoot<wire::HostMessage>().initSetup();
  setup.setProtocolVersion(version);
  auto list = setup.initPlugins(static_cast<unsigned>(plugins.size()));
  for (unsigned i = 0; i < plugins.size(); ++i) list.set(i, plugins[i]);
  setup.setMaxMessageWords(maxWords);
  return message;
}

wire::Run::Builder initRun(capnp::MessageBuilder& message, std::uint64_t id, std::uint32_t plugin,
                           std::uint32_t task) {
  auto run = message.initRoot<wire::HostMessage>().initRun();
  run.setId(id);
  run.setPlugin(plugin);
  run.setTask(task);
  return run;
}

// A Run whose items are one-word tuple structs holding `values`.
std::unique_ptr<capnp::MallocMessageBuilder> runMessage(std::uint64_t id, std::uint32_t plugin,
                                                        std::uint32_t task,
                                                        const std::vector<std::int64_t>& values) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto run = initRun(*message, id, plugin, task);
  auto items = run.initItems().initAsListOfAnyStruct(1, 0, static_cast<unsigned>(values.size()));
  for (unsigned i = 0; i < values.size(); ++i) {
    auto data = items[i].getDataSection();
    std::memcpy(data.begin(), &values[i], sizeof(std::int64_t));
  }
  return message;
}

struct Examples {
  std::uint32_t square;
  std::uint32_t sleepMs;
  std::uint32_t taskCount;
};

// Sends a valid Setup naming the examples plugin and checks the Hello that answers it.
Examples handshake(Worker& worker, FrameReader& reader) {
  const std::string plugin = examplesPlugin();
  worker.send(setupMessage(wire::PROTOCOL_VERSION, {plugin}, WORKER_MAX_WORDS));
  kj::Array<capnp::word> words;
  REQUIRE(readMessage(reader, worker.channel(), words) == Status::MESSAGE);
  capnp::FlatArrayMessageReader message(words, readerOptions(WORKER_MAX_WORDS));
  auto root = message.getRoot<wire::WorkerMessage>();
  REQUIRE(root.isHello());
  auto hello = root.getHello();
  CHECK(hello.getProtocolVersion() == wire::PROTOCOL_VERSION);
  CHECK(hello.getPid() == worker.pid());
  if (hello.isLoadError()) FAIL("load error: " << hello.getLoadError().getMessage().cStr());
  REQUIRE(hello.isPlugins());
  auto plugins = hello.getPlugins();
  REQUIRE(plugins.size() == 1);
  CHECK(std::string(plugins[0].getName().cStr()) == "examples");
  CHECK(std::string(plugins[0].getPath().cStr()) == plugin);
  auto tasks = plugins[0].getTasks();
  std::optional<std::uint32_t> square, sleepMs;
  for (unsigned t = 0; t < tasks.size(); ++t) {
    if (std::string(tasks[t].getName().cStr()) == "square") square = t;
    if (std::string(tasks[t].getName().cStr()) == "sleep_ms") sleepMs = t;
  }
  INFO("the examples plugin's manifest has " << tasks.size() << " tasks");
  REQUIRE(square.has_value());
  REQUIRE(sleepMs.has_value());
  CHECK(tasks[*square].getArgTypes().size() == 1);
  return {*square, *sleepMs, tasks.size()};
}

// After the worker has exited: the host end reads END, i.e. the worker sent nothing more.
void requireNothingMoreSent(Worker& worker, FrameReader& reader) {
  kj::Array<capnp::word> words;
  CHECK(readMessage(reader, worker.channel(), words) == Status::END);
}

}  // namespace

TEST_CASE("The worker exits with status 70 when the host sends 16 bytes of garbage") {
  testing::ProcessSnapshot snapshot;
  {
    std::vector<std::uint32_t> garbage;
    SECTION("a segment table claiming billions of segments") {
      garbage = {0xDEADBEEFu, 0x0BADF00Du, 0xFEEDFACEu, 0x8BADF00Du};
    }
    SECTION("a well-framed one-word message whose root pointer is nonsense") {
      garbage = {0, 1, 0xFFFFFFFFu, 0xFFFFFFFFu};
    }
    SECTION("a well-framed message whose root is a far pointer to a missing segment") {
      garbage = {0, 1, 0x00000002u | (5u << 3), 7};  // far pointer into segment 7
    }
    Worker worker;
    sendWords(worker.channel(), garbage);
    std::string stderrText;
    CHECK(worker.waitForExit() == "exit 70");
    stderrText = worker.stderrText();
    CHECK_THAT(stderrText, Catch::Matchers::Contains("protocol error"));
    FrameReader reader(WORKER_MAX_WORDS);
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE(
    "After a valid Setup and Hello, the worker exits with status 70 on a Run that names a task "
    "it does not have or carries items that are not a list of structs") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    Examples examples = handshake(worker, reader);

    SECTION("plugin index one past the end") {
      worker.send(runMessage(1, 1, examples.square, {2}));
    }
    SECTION("plugin index 0xFFFFFFFF") {
      worker.send(runMessage(1, 0xFFFFFFFFu, examples.square, {2}));
    }
    SECTION("task index one past the end") {
      worker.send(runMessage(1, 0, examples.taskCount, {2}));
    }
    SECTION("items a struct, not a list") {
      auto message = std::make_unique<capnp::MallocMessageBuilder>();
      initRun(*message, 1, 0, examples.square).initItems().initAsAnyStruct(1, 0);
      worker.send(std::move(message));
    }
    SECTION("items a list of Int64, not of structs") {
      auto message = std::make_unique<capnp::MallocMessageBuilder>();
      auto list =
          initRun(*message, 1, 0, examples.square).initItems().initAs<capnp::List<std::int64_t>>(3);
      for (unsigned i = 0; i < 3; ++i) list.set(i, i + 2);
      worker.send(std::move(message));
    }
    SECTION("a second Setup in place of a Run") {
      worker.send(setupMessage(wire::PROTOCOL_VERSION, {examplesPlugin()}, WORKER_MAX_WORDS));
    }
    CHECK(worker.waitForExit() == "exit 70");
    CHECK_THAT(worker.stderrText(), Catch::Matchers::Contains("protocol error"));
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE(
    "The worker answers pipelined Runs of square with ChunkDones in order, and exits 0 when the "
    "host closes its end") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    Examples examples = handshake(worker, reader);
    worker.send(runMessage(42, 0, examples.square, {2, 3, 4}));
    worker.send(runMessage(43, 0, examples.square, {}));
    worker.send(runMessage(44, 0, examples.square, {-5}));

    struct Expected {
      std::uint64_t id;
      std::vector<std::int64_t> results;
    };
    for (const Expected& expected :
         {Expected{42, {4, 9, 16}}, Expected{43, {}}, Expected{44, {25}}}) {
      INFO("chunk " << expected.id);
      kj::Array<capnp::word> words;
      REQUIRE(readMessage(reader, worker.channel(), words) == Status::MESSAGE);
      capnp::FlatArrayMessageReader message(words, readerOptions(WORKER_MAX_WORDS));
      auto root = message.getRoot<wire::WorkerMessage>();
      REQUIRE(root.isChunkDone());
      auto done = root.getChunkDone();
      CHECK(done.getId() == expected.id);
      CHECK(done.getErrors().size() == 0);
      auto list = done.getResults().getAs<capnp::AnyList>();
      if (list.size() > 0) REQUIRE(list.getElementSize() == capnp::ElementSize::INLINE_COMPOSITE);
      auto results = list.as<capnp::List<capnp::AnyStruct>>();
      REQUIRE(results.size() == expected.results.size());
      for (unsigned i = 0; i < results.size(); ++i) {
        auto data = results[i].getDataSection();
        REQUIRE(data.size() >= sizeof(std::int64_t));
        std::int64_t value;
        std::memcpy(&value, data.begin(), sizeof value);
        CHECK(value == expected.results[i]);
      }
    }

    worker.closeChannel();
    CHECK(worker.waitForExit() == "exit 0");
    CHECK(worker.stderrText() == "");
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE("ChunkDone.elapsedNs is the wall time the worker spent running the chunk's calls") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    Examples examples = handshake(worker, reader);
    worker.send(runMessage(1, 0, examples.sleepMs, {30, 20}));
    kj::Array<capnp::word> words;
    REQUIRE(readMessage(reader, worker.channel(), words) == Status::MESSAGE);
    capnp::FlatArrayMessageReader message(words, readerOptions(WORKER_MAX_WORDS));
    auto root = message.getRoot<wire::WorkerMessage>();
    REQUIRE(root.isChunkDone());
    const std::uint64_t elapsed = root.getChunkDone().getElapsedNs();
    CHECK(elapsed >= 50'000'000);     // both sleeps
    CHECK(elapsed < 10'000'000'000);  // and not some unrelated clock
    worker.closeChannel();
    CHECK(worker.waitForExit() == "exit 0");
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE(
    "A Setup naming a plugin file that does not exist gets a Hello with loadError, and the "
    "worker exits with status 1") {
  testing::ProcessSnapshot snapshot;
  {
    const std::string missing = std::string(FIXTURES_DIR) + "/no-such-dir/libmissing.so";
    std::vector<std::string> plugins;
    SECTION("the only plugin") {
      plugins = {missing};
    }
    SECTION("after a plugin that loads") {
      plugins = {examplesPlugin(), missing};
    }

    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    worker.send(setupMessage(wire::PROTOCOL_VERSION, plugins, WORKER_MAX_WORDS));
    kj::Array<capnp::word> words;
    REQUIRE(readMessage(reader, worker.channel(), words) == Status::MESSAGE);
    {
      capnp::FlatArrayMessageReader message(words, readerOptions(WORKER_MAX_WORDS));
      auto root = message.getRoot<wire::WorkerMessage>();
      REQUIRE(root.isHello());
      auto hello = root.getHello();
      CHECK(hello.getProtocolVersion() == wire::PROTOCOL_VERSION);
      REQUIRE(hello.isLoadError());
      CHECK(std::string(hello.getLoadError().getPlugin().cStr()) == missing);
      CHECK_THAT(std::string(hello.getLoadError().getMessage().cStr()),
                 Catch::Matchers::Contains("no such file"));
    }
    CHECK(worker.waitForExit() == "exit 1");
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE(
    "A Setup with another protocol version makes the worker exit with status 70 without a "
    "Hello") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    worker.send(setupMessage(999, {examplesPlugin()}, WORKER_MAX_WORDS));
    CHECK(worker.waitForExit() == "exit 70");
    CHECK_THAT(worker.stderrText(), Catch::Matchers::Contains("protocol"));
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE("A first message that is a Run rather than a Setup makes the worker exit with 70") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    worker.send(runMessage(1, 0, 0, {2}));
    CHECK(worker.waitForExit() == "exit 70");
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE(
    "The worker applies Setup.maxMessageWords to what it reads and exits with 70 on a larger "
    "Run") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker;
    FrameReader reader(WORKER_MAX_WORDS);
    constexpr std::uint64_t cap = 4096;
    worker.send(setupMessage(wire::PROTOCOL_VERSION, {examplesPlugin()}, cap));
    kj::Array<capnp::word> words;
    REQUIRE(readMessage(reader, worker.channel(), words) == Status::MESSAGE);
    {
      capnp::FlatArrayMessageReader message(words, readerOptions(WORKER_MAX_WORDS));
      auto root = message.getRoot<wire::WorkerMessage>();
      REQUIRE(root.isHello());
      REQUIRE(root.getHello().isPlugins());
    }
    // 5000 one-word items: more than 4096 words however they are framed.
    worker.send(runMessage(1, 0, 0, std::vector<std::int64_t>(5000, 3)));
    CHECK(worker.waitForExit() == "exit 70");
    CHECK_THAT(worker.stderrText(), Catch::Matchers::Contains("exceeds"));
    requireNothingMoreSent(worker, reader);
  }
  testing::requireCleanShutdown(snapshot);
}

TEST_CASE("The worker started without a descriptor 3 exits with status 2") {
  testing::ProcessSnapshot snapshot;
  {
    Worker worker(/*withChannel=*/false);
    CHECK(worker.waitForExit() == "exit 2");
    CHECK_THAT(worker.stderrText(), Catch::Matchers::Contains("not meant to be run by hand"));
  }
  testing::requireCleanShutdown(snapshot);
}
