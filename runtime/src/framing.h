// framing.h — Cap'n Proto stream framing over a file descriptor, for both ends. Internal.
//
// FrameReader reads the standard segment-table framing incrementally, so the same code serves
// the worker (blocking descriptor, one message at a time) and the host's dispatcher
// (non-blocking descriptor, whatever has arrived). It checks a message's declared size
// against its cap before allocating, and tells a clean end of stream (at a message boundary)
// from a truncated message.
//
// FrameWriter queues built messages and writes them with sendmsg(MSG_NOSIGNAL): a closed peer
// is an error return (EPIPE), never SIGPIPE. It writes the builder's segments in place.
//
// Both also speak the extension for shared segments (wire.capnp, "Shared segments"): given
// its own SharedRegion, a writer puts a message's large segments there instead of on the
// stream; given the peer's, a reader accepts such frames and Received reads them in place.
//
// Neither is thread-safe; each belongs to one thread at a time.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <stdexcept>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include "fd.h"
#include "shared_memory.h"

namespace plugpool::detail {

// What reading a peer's messages can throw besides std::system_error (the descriptor failed:
// the peer is gone), and what each costs:
//   ProtocolViolation   the peer broke the framing or the protocol: costs that peer.
//   TruncatedStream     (a ProtocolViolation) the stream ended inside a message: a peer that
//                       was killed while it wrote, or one that broke off. Its reader decides
//                       which, from how the peer then ended.
//   MessageUnallocatable  a message the caps allow could not be allocated (std::bad_alloc):
//                       costs that message and the stream it was on, never the reader.
// kj::Exception from a getter of a received message is treated as a ProtocolViolation.
class ProtocolViolation : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class TruncatedStream : public ProtocolViolation {
 public:
  TruncatedStream() : ProtocolViolation("stream ended inside a message") {}
};

class MessageUnallocatable : public std::runtime_error {
 public:
  explicit MessageUnallocatable(std::uint64_t bytes);
  std::uint64_t bytes() const { return bytes_; }

 private:
  std::uint64_t bytes_;
};

// Cap'n Proto reader limits for one received message of `words` words: nesting 64, and a
// traversal budget of 8 reads of every word (decoding checks a list's kind before reading
// it, and a host may read a result more than once), so a message that points at the same
// data many times ("amplification") cannot cost more than 8 times its size.
capnp::ReaderOptions readerOptions(std::uint64_t words);

// The most segments a message may declare. Cap'n Proto writers use a handful; 512 is the
// limit capnp's own stream reader applies.
inline constexpr std::uint32_t MAX_SEGMENTS = 512;

// A received frame, read in place: a whole message in the standard framing, or a frame of the
// shared-segments extension whose large segments lie in the sender's region. Decodes with
// readerOptions() for the message's whole size. The region, if any, is released (the sender
// may reuse it) when this object is destroyed; the words and the region stay valid until
// then, and so does everything read from reader().
class Received {
 public:
  // Throws ProtocolViolation if `frame` is not one whole frame, or uses shared segments
  // without `region` or outside it.
  explicit Received(kj::Array<capnp::word> frame, std::shared_ptr<SharedRegion> region = nullptr);
  ~Received();
  Received(const Received&) = delete;
  Received& operator=(const Received&) = delete;

  capnp::MessageReader& reader() { return *reader_; }
  bool shared() const { return region_ != nullptr; }

 private:
  kj::Array<capnp::word> words_;
  std::shared_ptr<SharedRegion> region_;  // set only if the frame has segments in it
  std::vector<kj::ArrayPtr<const capnp::word>> segments_;
  std::unique_ptr<capnp::MessageReader> reader_;
};

class FrameReader {
 public:
  explicit FrameReader(std::uint64_t maxWords);

  enum class Status {
    MESSAGE,  // `out` holds one complete message
    AGAIN,    // the descriptor would block (non-blocking descriptors only)
    END,      // the peer closed the stream at a message boundary
  };

  // Reads until one message is complete, the descriptor would block, or the stream ends.
  // Throws ProtocolViolation for a bad segment table or an oversized message, TruncatedStream
  // for end of stream inside a message, MessageUnallocatable if a message within the cap
  // cannot be allocated (the stream cannot be read further); std::system_error for other read
  // errors. EINTR is retried. `out` is
  // the whole frame, for Received (shared segments counted against the size cap too).
  Status read(int fd, kj::Array<capnp::word>& out);

  void setMaxWords(std::uint64_t maxWords) { maxWords_ = maxWords; }
  // Whether bytes of the next message are already read (read() may not need the descriptor).
  bool hasBuffered() const { return end_ > begin_ || message_ != nullptr; }
  // From now on, frames may place segments in `peer`, the sender's region.
  void acceptShared(std::shared_ptr<SharedRegion> peer) { peer_ = std::move(peer); }
  const std::shared_ptr<SharedRegion>& peerRegion() const { return peer_; }
  // While `into` is set, descriptors the peer passes (SCM_RIGHTS) are appended to it; otherwise
  // the kernel closes them.
  void acceptDescriptors(std::vector<UniqueFd>* into) { descriptors_ = into; }

 private:
  bool startMessage();  // parses a segment table from the staging buffer if it is all there
  std::size_t buffered() const { return end_ - begin_; }
  ssize_t receive(int fd, std::byte* into, std::size_t size);

  std::uint64_t maxWords_;
  std::shared_ptr<SharedRegion> peer_;
  std::vector<UniqueFd>* descriptors_ = nullptr;
  std::vector<std::byte> staging_;
  std::size_t begin_ = 0, end_ = 0;
  kj::Array<capnp::word> message_;  // being filled; empty when between messages
  std::size_t filled_ = 0;          // bytes of message_ filled
};

class FrameWriter {
 public:
  // Queues `message`. With `region`, its large segments go there if the region can be claimed
  // (or already lie in it, claimed by whoever built them); returns whether any did. `fds` are
  // passed along with the message's bytes (SCM_RIGHTS); they must stay open until written.
  bool push(std::shared_ptr<capnp::MessageBuilder> message, SharedRegion* region = nullptr,
            std::vector<int> fds = {});
  // Writes as much as the descriptor takes, several queued messages per system call. Returns
  // true once everything queued is written. Throws std::system_error (EPIPE when the peer is
  // gone). EINTR is retried.
  bool flush(int fd);
  bool empty() const { return queue_.empty(); }
  std::size_t queued() const { return queue_.size(); }

 private:
  struct Outgoing {
    std::shared_ptr<capnp::MessageBuilder> message;  // shared: the host keeps chunks to resend
    kj::Array<capnp::word> table;
    std::vector<iovec> pieces;
    std::size_t next = 0;  // first piece not completely written
    std::vector<int> fds;  // to pass with the first bytes written; cleared once passed
  };
  std::deque<Outgoing> queue_;
  std::vector<iovec> gather_;  // the pieces of one sendmsg, reused
};

// Blocking convenience for a worker: writes one message completely, its large segments in
// `region` as FrameWriter::push says. Returns whether any went there; if so, the region was
// locked for its reader (SharedRegion::lockForReader) before the message was sent.
bool writeMessage(int fd, capnp::MessageBuilder& message, SharedRegion* region = nullptr);

}  // namespace plugpool::detail
