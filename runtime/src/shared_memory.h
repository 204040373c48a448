// shared_memory.h — memory a host and one worker both map, for large message segments.
// Internal.
//
// Pushing a 64 MiB payload through a socket costs two kernel copies and, on the receiving
// side, a fresh buffer to read it into. Instead, each side of a channel owns one outbound
// SharedRegion (a memfd the host creates and passes with Setup, wire.capnp "Shared
// segments"): the sender writes a message's large segments into its region and sends only a
// small frame that says where they are; the receiver reads them in place, then releases the
// region. A region holds one message at a time; while the receiver still holds one, the
// sender's next large message goes through the socket as before, so nothing ever waits.
//
// The region's first page is a header shared by both processes; its first word is the
// region's state, changed only with atomic operations:
//   FREE     the sender may claim it for a message (claim(): FREE → HELD);
//   HELD     a message's segments are in it; the receiver releases it when done (→ FREE);
//   TRIMMING the host is giving its pages back to the system (trim(): FREE → TRIMMING → FREE).
// Data starts after the header. The memfd is sealed against shrinking and growing, so a
// mapping of it can never fault (SIGBUS) whatever the other process does.
//
// The host reads a worker's messages in place, so while it does, the worker could change them
// under it; Cap'n Proto's bounds checks hold only for memory that holds still. The worker
// therefore maps its region read-only from the moment it hands a message over until it claims
// the region again (lockForReader): a task that writes stray memory there faults, which ends
// that worker like any crash. A plugin that undoes the protection on purpose could still
// confuse its host, as it could by other means: plugins are trusted code, their bugs are not.
//
// Pages once written stay in the region, so the next message of that size writes to warm
// memory (fresh pages cost far more than copying: bench/PERFORMANCE.md); the host trims a
// region that has not carried a message for a while.
//
// Thread safety: claim, release, busy and trim may be called from any thread; words() and
// the mapping's growth belong to one thread (the worker's), and the host maps its regions
// whole so that pointers into them stay valid for as long as a reader holds the region.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include <capnp/common.h>
#include <kj/common.h>

#include "fd.h"

namespace plugpool::detail {

// Segments at least this large travel through shared memory when they can.
inline constexpr std::size_t SHARED_SEGMENT_BYTES = std::size_t{1} << 20;

class SharedRegion {
 public:
  // The host's side: a new memfd with room for `dataBytes` (rounded up to whole pages),
  // sealed, mapped whole; its data writable if this side sends through it. Throws
  // std::system_error.
  // `name` is the memfd's, as /proc/<pid>/maps shows it ("/memfd:plugpool-shared").
  static std::shared_ptr<SharedRegion> create(std::size_t dataBytes, bool writable,
                                              const char* name = "plugpool-shared");
  // The worker's side: a region the host created, received as `fd`. Maps its header now and
  // its data as needed, and closes `fd` (fd() is then -1; trim() is the host's). Throws
  // std::system_error if `fd` is not a sealed memfd of a region's shape.
  static std::shared_ptr<SharedRegion> adopt(UniqueFd fd, bool writable);

  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  int fd() const { return fd_.get(); }
  std::size_t capacityWords() const { return capacityWords_; }

  // The sender takes the region for one message (and makes it writable again after
  // lockForReader). False while the receiver holds the last.
  bool claim();
  // The sender is about to hand a message in the region over: it maps the region read-only
  // until it claims it again, so that a task that writes stray memory faults instead of
  // changing what the receiver reads. Call before the message is sent (writeMessage does),
  // or the receiver could find it still writable. (The worker does this; the host trusts
  // itself.)
  void lockForReader();
  // The receiver is done with the message in it (or the sender placed nothing after all).
  void release();
  bool held() const;

  // Data words [offset, offset + count), mapped writable or read-only as the region was
  // opened. In the worker the mapping grows to cover them, which may move it: pointers from
  // before are then invalid. Throws std::bad_alloc if they cannot be mapped, std::out_of_range
  // past the capacity.
  kj::ArrayPtr<capnp::word> words(std::size_t offset, std::size_t count);
  // The word offset of `segment` if it lies wholly in this region's mapped data.
  std::optional<std::size_t> offsetOf(kj::ArrayPtr<const capnp::word> segment) const;

  // Word `i` (1 to HEADER_WORDS - 1) of the header page, whose first word holds the state:
  // what else both sides keep there (the reply log's table, reply_log.h), used with atomic
  // operations only.
  static constexpr std::size_t HEADER_WORDS = 4096 / sizeof(std::uint64_t);
  std::atomic_ref<std::uint64_t> headerWord(std::size_t i) const;
  // The low 32 bits of header word `i` (its first four bytes: the machines are little-endian),
  // for a word written 32 bits at a time; its high half stays 0.
  std::uint32_t* headerHalfWord(std::size_t i) const;

  // Gives the data pages back to the system unless a message holds the region; the next
  // message then writes to fresh pages. Returns whether it did.
  bool trim();

 private:
  SharedRegion(UniqueFd fd, std::size_t capacityWords, bool writable);
  std::atomic_ref<std::uint32_t> state() const;
  void mapData(std::size_t bytes);

  UniqueFd fd_;
  std::size_t capacityWords_;
  bool writable_;
  bool locked_ = false;  // writable_, but read-only since lockForReader
  void* header_ = nullptr;
  capnp::word* data_ = nullptr;
  std::size_t mappedBytes_ = 0;  // of data
};

}  // namespace plugpool::detail
