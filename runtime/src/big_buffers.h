// big_buffers.h — memory for large messages, on both sides of the channel. Internal.
//
// A large payload costs more in page faults than in copying when its buffers are fresh 4 KiB
// pages: on the 2-core test VM, faulting in 64 MiB took ~48 ms and copying it ~6.5 ms, and a
// round trip allocates several such buffers (the request, its copy in the worker, the reply,
// its copy in the host). Buffers of at least BIG_BUFFER_BYTES are therefore mapped on their
// own and asked for transparent huge pages (madvise MADV_HUGEPAGE; honoured unless THP is
// "never"): 512 times fewer faults, and the memory goes back to the system when freed.
//
// Thread-safe: nothing is shared.
#pragma once

#include <cstddef>
#include <vector>

#include <capnp/message.h>
#include <kj/array.h>

#include "shared_memory.h"

namespace plugpool::detail {

inline constexpr std::size_t BIG_BUFFER_BYTES = std::size_t{1} << 20;

// `words` words, zeroed unless `zeroed` is false: from BIG_BUFFER_BYTES on, a mapping of
// their own, huge-page backed, or a freed one of the same size kept for reuse (below); heap
// memory below that. Throws std::bad_alloc if the memory cannot be had.
kj::Array<capnp::word> allocateWords(std::size_t words, bool zeroed = true);

// While at least one of these lives (each host pool holds one), the last two freed large
// buffers (of up to 256 MiB) are kept for the next ones of the same size: a steady stream of
// large messages then writes to pages it has faulted in already, which costs a fraction of
// fresh ones. When the last one goes, and at releaseFreedBuffers() (a pool that has been
// idle), the kept buffers are given back. Thread-safe.
class KeepFreedBuffers {
 public:
  KeepFreedBuffers();
  ~KeepFreedBuffers();
  KeepFreedBuffers(const KeepFreedBuffers&) = delete;
  KeepFreedBuffers& operator=(const KeepFreedBuffers&) = delete;
};
void releaseFreedBuffers();
// A worker keeps none, even one forked from a host that did.
void stopKeepingFreedBuffers();

// A MallocMessageBuilder whose large segments come from allocateWords, or, after placeIn(),
// the first of them from a SharedRegion (shared_memory.h) the builder claims, so that the
// message is built where its receiver reads it. It is a MallocMessageBuilder in every other
// respect (first segment size, growth, output).
namespace big_buffers {
struct Segments {
  std::vector<kj::Array<capnp::word>> big;  // outlives the builder's base (declared first)
};
}  // namespace big_buffers

class BigSegmentBuilder : private big_buffers::Segments, public capnp::MallocMessageBuilder {
 public:
  using capnp::MallocMessageBuilder::MallocMessageBuilder;
  // Releases a claimed region unless handOver() was called.
  ~BigSegmentBuilder() override;
  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimumSize) override;

  // Builds the first large segment in `region` if it can be claimed then. Call before
  // building; `region` must outlive the builder.
  void placeIn(SharedRegion* region) { region_ = region; }
  // The message was sent with its segment in the region: the receiver releases it now.
  void handOver() { claimed_ = false; }
  // Whether a segment is in the region placeIn() named.
  bool inRegion() const { return claimed_; }
  // Builds the message's first segment in `first` (zeroed words, such as a reply log's,
  // reply_log.h), however large it is asked to be; later segments are allocated as above.
  // Call before building.
  void startIn(kj::ArrayPtr<capnp::word> first) { first_ = first; }

 private:
  SharedRegion* region_ = nullptr;
  bool claimed_ = false;
  kj::ArrayPtr<capnp::word> first_;
  bool started_ = false;  // first_ is in use
};

}  // namespace plugpool::detail
