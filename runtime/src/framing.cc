#include "framing.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>

#include "big_buffers.h"

namespace plugpool::detail {

namespace {

constexpr std::size_t STAGING_BYTES = 64 * 1024;

std::uint32_t readLe32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little-endian host (codec.h asserts it)
}

std::uint64_t readLe64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// The shared-segments extension (wire.capnp): bit 31 of the segment count marks a frame whose
// segment table is followed by one location per segment, INLINE or a word offset into the
// sender's region.
constexpr std::uint32_t SHARED_FLAG = std::uint32_t{1} << 31;
constexpr std::uint64_t INLINE = ~std::uint64_t{0};

// What a frame's table says, once all of the table has arrived.
struct TableInfo {
  std::size_t sizesBytes;  // the segment count and sizes, padded to a word
  std::size_t tableBytes;  // that, and the locations if extended
  std::uint64_t segments;
  bool extended;
  std::uint64_t inlineWords;  // on the stream after the table
  std::uint64_t sharedWords;  // in the sender's region
};

// Reads the table at `p`, of which `available` bytes are at hand. Returns false if more are
// needed. `peer` is the sender's region, if shared segments were agreed. Throws
// ProtocolViolation.
bool scanTable(const std::byte* p, std::size_t available, const SharedRegion* peer,
               TableInfo& info) {
  if (available < 4) return false;
  const std::uint32_t first = readLe32(p);
  info.extended = (first & SHARED_FLAG) != 0;
  info.segments = std::uint64_t{first & ~SHARED_FLAG} + 1;
  if (info.segments > MAX_SEGMENTS) {
    throw ProtocolViolation("message declares " + std::to_string(info.segments) +
                            " segments; at most " + std::to_string(MAX_SEGMENTS) + " allowed");
  }
  if (info.extended && peer == nullptr) {
    throw ProtocolViolation("message has shared segments, but no shared memory was agreed");
  }
  info.sizesBytes = ((4 + 4 * info.segments) + 7) & ~std::size_t{7};
  info.tableBytes = info.sizesBytes + (info.extended ? 8 * info.segments : 0);
  if (available < info.tableBytes) return false;
  info.inlineWords = info.sharedWords = 0;
  for (std::uint64_t i = 0; i < info.segments; ++i) {
    const std::uint64_t words = readLe32(p + 4 + 4 * i);
    const std::uint64_t at = info.extended ? readLe64(p + info.sizesBytes + 8 * i) : INLINE;
    if (at == INLINE) {
      info.inlineWords += words;
    } else if (at > peer->capacityWords() || words > peer->capacityWords() - at) {
      throw ProtocolViolation("message places a segment outside the shared region");
    } else {
      info.sharedWords += words;
    }
  }
  return true;
}

// Fills `table` with the frame's table for `segments` and `pieces` with the table and the
// segments that go on the stream, ready for sendmsg. With `region`, segments of
// SHARED_SEGMENT_BYTES or more go there instead when they can (FrameWriter::push). Returns
// whether any did.
bool framePieces(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, SharedRegion* region,
                 kj::Array<capnp::word>& table, std::vector<iovec>& pieces) {
  // Per segment, INLINE or its offset in `region`; left empty (no allocation) while no
  // segment goes there, as for every small message.
  std::vector<std::uint64_t> at;
  if (region != nullptr) {
    bool claimed = false, refused = false;
    std::size_t cursor = 0;
    for (std::size_t i = 0; i < segments.size(); ++i) {
      auto s = segments[i];
      if (s.size() * sizeof(capnp::word) < SHARED_SEGMENT_BYTES) continue;
      std::optional<std::size_t> offset = region->offsetOf(s);  // built in place
      if (!offset) {
        if (!claimed && !refused) (region->claim() ? claimed : refused) = true;
        if (!claimed || s.size() > region->capacityWords() - cursor) continue;
        auto into = region->words(cursor, s.size());
        std::memcpy(into.begin(), s.begin(), s.size() * sizeof(capnp::word));
        offset = cursor;
        cursor += s.size();
      }
      if (at.empty()) at.assign(segments.size(), INLINE);
      at[i] = *offset;
    }
    if (claimed && at.empty()) region->release();
  }
  const bool extended = !at.empty();
  const std::size_t sizesWords = (segments.size() + 2) / 2;  // count, then one size each
  table = kj::heapArray<capnp::word>(sizesWords + (extended ? segments.size() : 0));
  std::memset(table.begin(), 0, table.size() * sizeof(capnp::word));
  auto* t = reinterpret_cast<std::uint32_t*>(table.begin());
  t[0] = static_cast<std::uint32_t>(segments.size() - 1) | (extended ? SHARED_FLAG : 0);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    t[i + 1] = static_cast<std::uint32_t>(segments[i].size());
  }
  if (extended)
    std::memcpy(reinterpret_cast<std::byte*>(table.begin() + sizesWords), at.data(), at.size() * 8);
  pieces.clear();
  pieces.push_back({table.begin(), table.size() * sizeof(capnp::word)});
  for (std::size_t i = 0; i < segments.size(); ++i) {
    auto s = segments[i];
    if (s.size() > 0 && (!extended || at[i] == INLINE)) {
      pieces.push_back({const_cast<capnp::word*>(s.begin()), s.size() * sizeof(capnp::word)});
    }
  }
  return extended;
}

// One sendmsg of `count` pieces: the bytes written, or 0 if the descriptor would block.
// EINTR is retried; other errors throw std::system_error.
std::size_t sendOnce(int fd, iovec* pieces, std::size_t count,
                     const std::vector<int>* fds = nullptr) {
  msghdr msg{};
  msg.msg_iov = pieces;
  msg.msg_iovlen = std::min<std::size_t>(count, IOV_MAX);
  std::vector<char> control;
  if (fds != nullptr && !fds->empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds->size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds->size());
    std::memcpy(CMSG_DATA(c), fds->data(), sizeof(int) * fds->size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw std::system_error(errno, std::generic_category(), "sendmsg");
  }
}

// Takes `written` bytes off pieces[next…]: advances `next` past whole pieces and trims a
// partially written one. Returns the bytes left over once every piece is taken.
std::size_t consume(std::vector<iovec>& pieces, std::size_t& next, std::size_t written) {
  while (next < pieces.size() && written >= pieces[next].iov_len) {
    written -= pieces[next++].iov_len;
  }
  if (next < pieces.size() && written > 0) {
    pieces[next].iov_base = static_cast<char*>(pieces[next].iov_base) + written;
    pieces[next].iov_len -= written;
    written = 0;
  }
  return written;
}

// Writes pieces[next…]; advances `next`. Returns true when all are written, false if the
// descriptor would block.
bool sendPieces(int fd, std::vector<iovec>& pieces, std::size_t& next) {
  while (next < pieces.size()) {
    std::size_t n = sendOnce(fd, pieces.data() + next, pieces.size() - next);
    if (n == 0) return false;
    consume(pieces, next, n);
  }
  return true;
}

}  // namespace

capnp::ReaderOptions readerOptions(std::uint64_t words) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 8 * words + 1024;
  options.nestingLimit = 64;
  return options;
}

MessageUnallocatable::MessageUnallocatable(std::uint64_t bytes)
    : std::runtime_error("cannot allocate " + std::to_string(bytes) + " bytes for a message"),
      bytes_(bytes) {}

FrameReader::FrameReader(std::uint64_t maxWords) : maxWords_(maxWords), staging_(STAGING_BYTES) {}

bool FrameReader::startMessage() {
  TableInfo info;
  if (!scanTable(staging_.data() + begin_, buffered(), peer_.get(), info)) return false;
  const std::uint64_t words = info.tableBytes / 8 + info.inlineWords;
  if (words + info.sharedWords > maxWords_) {
    throw ProtocolViolation("message of " + std::to_string((words + info.sharedWords) * 8) +
                            " bytes exceeds the limit of " + std::to_string(maxWords_ * 8) +
                            " bytes");
  }
  try {
    message_ = allocateWords(words, false);  // filled from the stream
  } catch (const std::bad_alloc&) {
    throw MessageUnallocatable(words * sizeof(capnp::word));
  }
  filled_ = 0;
  return true;
}

ssize_t FrameReader::receive(int fd, std::byte* into, std::size_t size) {
  if (descriptors_ == nullptr) return ::read(fd, into, size);
  iovec piece{into, size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  msghdr msg{};
  msg.msg_iov = &piece;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      descriptors_->emplace_back(aboveStdio(received));
    }
  }
  return n;
}

FrameReader::Status FrameReader::read(int fd, kj::Array<capnp::word>& out) {
  for (;;) {
    if (message_ == nullptr && !startMessage()) {
      // Need more of the segment table: fall through to reading into staging.
    } else {
      auto* dest = reinterpret_cast<std::byte*>(message_.begin());
      std::size_t total = message_.size() * sizeof(capnp::word);
      std::size_t take = std::min(total - filled_, buffered());
      std::memcpy(dest + filled_, staging_.data() + begin_, take);
      filled_ += take;
      begin_ += take;
      if (filled_ == total) {
        out = std::move(message_);
        message_ = nullptr;
        return Status::MESSAGE;
      }
      // The staging buffer is empty now. Large remainders go straight into the message.
      if (total - filled_ >= staging_.size() / 2) {
        ssize_t n = receive(fd, dest + filled_, total - filled_);
        if (n > 0) {
          filled_ += static_cast<std::size_t>(n);
          continue;
        }
        if (n == 0) throw TruncatedStream();
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::AGAIN;
        throw std::system_error(errno, std::generic_category(), "read");
      }
    }
    if (begin_ == end_) {
      begin_ = end_ = 0;
    } else if (begin_ > 0) {
      std::memmove(staging_.data(), staging_.data() + begin_, buffered());
      end_ -= begin_;
      begin_ = 0;
    }
    ssize_t n = receive(fd, staging_.data() + end_, staging_.size() - end_);
    if (n > 0) {
      end_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) {
      if (message_ == nullptr && buffered() == 0) return Status::END;
      throw TruncatedStream();
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::AGAIN;
    throw std::system_error(errno, std::generic_category(), "read");
  }
}

bool FrameWriter::push(std::shared_ptr<capnp::MessageBuilder> message, SharedRegion* region,
                       std::vector<int> fds) {
  Outgoing out;
  const bool shared = framePieces(message->getSegmentsForOutput(), region, out.table, out.pieces);
  out.message = std::move(message);
  out.fds = std::move(fds);
  queue_.push_back(std::move(out));
  return shared;
}

bool FrameWriter::flush(int fd) {
  while (!queue_.empty()) {
    gather_.clear();
    Outgoing* passing = nullptr;  // whose descriptors go with this write: it ends the gather
    for (Outgoing& out : queue_) {
      for (std::size_t i = out.next; i < out.pieces.size() && gather_.size() < IOV_MAX; ++i) {
        gather_.push_back(out.pieces[i]);
      }
      if (!out.fds.empty()) passing = &out;
      if (gather_.size() == IOV_MAX || passing != nullptr) break;
    }
    std::size_t left =
        sendOnce(fd, gather_.data(), gather_.size(), passing ? &passing->fds : nullptr);
    if (left == 0) return false;
    if (passing != nullptr) passing->fds.clear();  // they went with the first byte written
    // Take the written bytes off the queued messages' pieces, in order.
    while (left > 0) {
      Outgoing& front = queue_.front();
      left = consume(front.pieces, front.next, left);
      if (front.next == front.pieces.size()) queue_.pop_front();
    }
  }
  return true;
}

bool writeMessage(int fd, capnp::MessageBuilder& message, SharedRegion* region) {
  kj::Array<capnp::word> table;
  std::vector<iovec> pieces;
  const bool shared = framePieces(message.getSegmentsForOutput(), region, table, pieces);
  // Read-only before the receiver can see the message, not after: it may read the region
  // the moment the first byte is sent.
  if (shared) region->lockForReader();
  std::size_t next = 0;
  while (!sendPieces(fd, pieces, next)) {
    // A blocking descriptor only returns EAGAIN with a send timeout set; keep going.
  }
  return shared;
}

Received::Received(kj::Array<capnp::word> frame, std::shared_ptr<SharedRegion> region)
    : words_(std::move(frame)) {
  const auto* bytes = reinterpret_cast<const std::byte*>(words_.begin());
  const std::size_t size = words_.size() * sizeof(capnp::word);
  TableInfo info;
  if (!scanTable(bytes, size, region.get(), info) ||
      words_.size() != info.tableBytes / 8 + info.inlineWords) {
    throw ProtocolViolation("a frame whose segment table does not match its size");
  }
  if (!info.extended) {
    reader_ = std::make_unique<capnp::FlatArrayMessageReader>(words_.asPtr(),
                                                              readerOptions(words_.size()));
    return;
  }
  // A held region is released when this object goes, even if reading it fails below.
  region_ = std::move(region);
  const capnp::word* next = words_.begin() + info.tableBytes / 8;
  for (std::uint64_t i = 0; i < info.segments; ++i) {
    const std::uint64_t words = readLe32(bytes + 4 + 4 * i);
    const std::uint64_t at = readLe64(bytes + info.sizesBytes + 8 * i);
    if (at == INLINE) {
      segments_.emplace_back(next, words);
      next += words;
    } else {
      segments_.push_back(region_->words(at, words));
    }
  }
  reader_ = std::make_unique<capnp::SegmentArrayMessageReader>(
      kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(segments_.data(), segments_.size()),
      readerOptions(info.inlineWords + info.sharedWords));
}

Received::~Received() {
  reader_.reset();
  if (region_ != nullptr) region_->release();
}

}  // namespace plugpool::detail
