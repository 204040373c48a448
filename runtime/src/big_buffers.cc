#include "big_buffers.h"

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <utility>

namespace plugpool::detail {

namespace {

constexpr std::size_t HUGE_PAGE_BYTES = std::size_t{2} << 20;

std::size_t mappedBytes(std::size_t bytes) {
  return (bytes + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
}

// Freed mappings kept for the next buffer of the same mapped size, most recent first.
class MappingCache {
 public:
  void* take(std::size_t bytes) {
    std::lock_guard lock(mutex_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->second != bytes) continue;
      void* p = it->first;
      kept_.erase(it);
      return p;
    }
    return nullptr;
  }
  void put(void* p, std::size_t bytes) {
    std::pair<void*, std::size_t> evicted{nullptr, 0};
    if (keepers_.load(std::memory_order_relaxed) > 0 && bytes <= MAX_CACHED_BYTES) {
      std::lock_guard lock(mutex_);
      kept_.emplace_front(p, bytes);
      if (kept_.size() <= MAX_CACHED) return;
      evicted = kept_.back();
      kept_.pop_back();
    } else {
      evicted = {p, bytes};
    }
    ::munmap(evicted.first, evicted.second);
  }
  void release() {
    std::deque<std::pair<void*, std::size_t>> kept;
    {
      std::lock_guard lock(mutex_);
      kept.swap(kept_);
    }
    for (auto [p, bytes] : kept) ::munmap(p, bytes);
  }
  void keep() { keepers_.fetch_add(1, std::memory_order_relaxed); }
  void letGo() {
    if (keepers_.fetch_sub(1, std::memory_order_relaxed) == 1) release();
  }
  void stop() {
    keepers_.store(0, std::memory_order_relaxed);
    release();
  }

 private:
  static constexpr std::size_t MAX_CACHED = 2;
  static constexpr std::size_t MAX_CACHED_BYTES = std::size_t{256} << 20;
  std::atomic<int> keepers_{0};
  std::mutex mutex_;
  std::deque<std::pair<void*, std::size_t>> kept_;
};

MappingCache& cache() {
  static MappingCache* instance = new MappingCache;  // never destroyed: used until exit
  return *instance;
}

// Gives what allocateWords mapped to the cache (which unmaps it if it keeps nothing).
// Stateless: one instance serves every array.
class MappingDisposer final : public kj::ArrayDisposer {
 protected:
  void disposeImpl(void* firstElement, std::size_t elementSize, std::size_t, std::size_t capacity,
                   void (*)(void*)) const override {
    cache().put(firstElement, mappedBytes(elementSize * capacity));
  }
};

const MappingDisposer MAPPING_DISPOSER;

}  // namespace

KeepFreedBuffers::KeepFreedBuffers() {
  cache().keep();
}

KeepFreedBuffers::~KeepFreedBuffers() {
  cache().letGo();
}

void releaseFreedBuffers() {
  cache().release();
}

void stopKeepingFreedBuffers() {
  cache().stop();
}

kj::Array<capnp::word> allocateWords(std::size_t words, bool zeroed) {
  const std::size_t bytes = words * sizeof(capnp::word);
  if (bytes < BIG_BUFFER_BYTES) {
    auto small = kj::heapArray<capnp::word>(words);
    if (zeroed) std::memset(small.begin(), 0, bytes);
    return small;
  }
  void* p = cache().take(mappedBytes(bytes));
  if (p != nullptr) {
    if (zeroed) std::memset(p, 0, bytes);
  } else {
    // A length that is a multiple of the huge-page size gets a huge-page-aligned address.
    p = ::mmap(nullptr, mappedBytes(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
               0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ::madvise(p, mappedBytes(bytes), MADV_HUGEPAGE);  // a hint: failure only costs speed
  }
  return kj::Array<capnp::word>(static_cast<capnp::word*>(p), words, MAPPING_DISPOSER);
}

BigSegmentBuilder::~BigSegmentBuilder() {
  if (claimed_) region_->release();
}

kj::ArrayPtr<capnp::word> BigSegmentBuilder::allocateSegment(unsigned minimumSize) {
  if (first_.size() != 0 && !started_ && minimumSize <= first_.size()) {
    started_ = true;
    return first_;
  }
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
