#include "big_buffers.h"

#include <sys/mman.h>

#include <new>

namespace plugpool::detail {

namespace {

constexpr std::size_t HUGE_PAGE_BYTES = std::size_t{2} << 20;

std::size_t mappedBytes(std::size_t bytes) {
  return (bytes + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
}

// Unmaps what allocateWords mapped. Stateless: one instance serves every array.
class MappingDisposer final : public kj::ArrayDisposer {
 protected:
  void disposeImpl(void* firstElement, std::size_t elementSize, std::size_t, std::size_t capacity,
                   void (*)(void*)) const override {
    ::munmap(firstElement, mappedBytes(elementSize * capacity));
  }
};

const MappingDisposer MAPPING_DISPOSER;

}  // namespace

kj::Array<capnp::word> allocateWords(std::size_t words) {
  const std::size_t bytes = words * sizeof(capnp::word);
  if (bytes < BIG_BUFFER_BYTES) return kj::heapArray<capnp::word>(words);
  // A length that is a multiple of the huge-page size gets a huge-page-aligned address.
  void* p = ::mmap(nullptr, mappedBytes(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  ::madvise(p, mappedBytes(bytes), MADV_HUGEPAGE);  // a hint: failure only costs speed
  return kj::Array<capnp::word>(static_cast<capnp::word*>(p), words, MAPPING_DISPOSER);
}

BigSegmentBuilder::~BigSegmentBuilder() {
  if (claimed_) region_->release();
}

kj::ArrayPtr<capnp::word> BigSegmentBuilder::allocateSegment(unsigned minimumSize) {
  if (std::size_t{minimumSize} * sizeof(capnp::word) < BIG_BUFFER_BYTES) {
    return MallocMessageBuilder::allocateSegment(minimumSize);
  }
  if (region_ != nullptr && !claimed_ && minimumSize <= region_->capacityWords() &&
      region_->claim()) {
    claimed_ = true;
    try {
      // What is asked, at offset 0: one message at a time uses the region.
      return region_->words(0, minimumSize);
    } catch (const std::bad_alloc&) {
      region_->release();  // cannot map that much here: an ordinary segment instead
      claimed_ = false;
    }
  }
  // Take the whole mapping: the builder fills the rest before asking again.
  const std::size_t words =
      mappedBytes(std::size_t{minimumSize} * sizeof(capnp::word)) / sizeof(capnp::word);
  big.push_back(allocateWords(words));
  return big.back();
}

}  // namespace plugpool::detail
