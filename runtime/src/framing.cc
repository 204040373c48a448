#include "framing.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
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

// Fills `table` with the segment table for `segments` and `pieces` with the table and the
// segments themselves, ready for sendmsg.
void framePieces(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                 kj::Array<capnp::word>& table, std::vector<iovec>& pieces) {
  std::size_t entries = segments.size() + 1;  // count, then one size per segment
  table = kj::heapArray<capnp::word>((entries + 1) / 2);
  std::memset(table.begin(), 0, table.size() * sizeof(capnp::word));
  auto* t = reinterpret_cast<std::uint32_t*>(table.begin());
  t[0] = static_cast<std::uint32_t>(segments.size() - 1);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    t[i + 1] = static_cast<std::uint32_t>(segments[i].size());
  }
  pieces.clear();
  pieces.push_back({table.begin(), table.size() * sizeof(capnp::word)});
  for (auto s : segments) {
    if (s.size() > 0) {
      pieces.push_back({const_cast<capnp::word*>(s.begin()), s.size() * sizeof(capnp::word)});
    }
  }
}

// One sendmsg of `count` pieces: the bytes written, or 0 if the descriptor would block.
// EINTR is retried; other errors throw std::system_error.
std::size_t sendOnce(int fd, iovec* pieces, std::size_t count) {
  msghdr msg{};
  msg.msg_iov = pieces;
  msg.msg_iovlen = std::min<std::size_t>(count, IOV_MAX);
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

FrameReader::FrameReader(std::uint64_t maxWords) : maxWords_(maxWords), staging_(STAGING_BYTES) {}

bool FrameReader::startMessage() {
  if (buffered() < 4) return false;
  const std::byte* p = staging_.data() + begin_;
  std::uint64_t segments = std::uint64_t{readLe32(p)} + 1;
  if (segments > MAX_SEGMENTS) {
    throw ProtocolViolation("message declares " + std::to_string(segments) + " segments; at most " +
                            std::to_string(MAX_SEGMENTS) + " allowed");
  }
  std::size_t tableBytes = ((4 + 4 * segments) + 7) & ~std::size_t{7};
  if (buffered() < tableBytes) return false;
  std::uint64_t words = tableBytes / 8;
  for (std::uint64_t i = 0; i < segments; ++i) words += readLe32(p + 4 + 4 * i);
  if (words > maxWords_) {
    throw ProtocolViolation("message of " + std::to_string(words * 8) +
                            " bytes exceeds the limit of " + std::to_string(maxWords_ * 8) +
                            " bytes");
  }
  message_ = allocateWords(words);
  filled_ = 0;
  return true;
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
        ssize_t n = ::read(fd, dest + filled_, total - filled_);
        if (n > 0) {
          filled_ += static_cast<std::size_t>(n);
          continue;
        }
        if (n == 0) throw ProtocolViolation("stream ended inside a message");
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
    ssize_t n = ::read(fd, staging_.data() + end_, staging_.size() - end_);
    if (n > 0) {
      end_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) {
      if (message_ == nullptr && buffered() == 0) return Status::END;
      throw ProtocolViolation("stream ended inside a message");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::AGAIN;
    throw std::system_error(errno, std::generic_category(), "read");
  }
}

void FrameWriter::push(std::shared_ptr<capnp::MessageBuilder> message) {
  Outgoing out;
  framePieces(message->getSegmentsForOutput(), out.table, out.pieces);
  out.message = std::move(message);
  queue_.push_back(std::move(out));
}

bool FrameWriter::flush(int fd) {
  while (!queue_.empty()) {
    gather_.clear();
    for (const Outgoing& out : queue_) {
      for (std::size_t i = out.next; i < out.pieces.size() && gather_.size() < IOV_MAX; ++i) {
        gather_.push_back(out.pieces[i]);
      }
      if (gather_.size() == IOV_MAX) break;
    }
    std::size_t left = sendOnce(fd, gather_.data(), gather_.size());
    if (left == 0) return false;
    // Take the written bytes off the queued messages' pieces, in order.
    while (left > 0) {
      Outgoing& front = queue_.front();
      left = consume(front.pieces, front.next, left);
      if (front.next == front.pieces.size()) queue_.pop_front();
    }
  }
  return true;
}

void writeMessage(int fd, capnp::MessageBuilder& message) {
  kj::Array<capnp::word> table;
  std::vector<iovec> pieces;
  framePieces(message.getSegmentsForOutput(), table, pieces);
  std::size_t next = 0;
  while (!sendPieces(fd, pieces, next)) {
    // A blocking descriptor only returns EAGAIN with a send timeout set; keep going.
  }
}

}  // namespace plugpool::detail
