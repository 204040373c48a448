#include "shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>

namespace plugpool::detail {

namespace {

constexpr std::size_t HEADER_BYTES = 4096;
constexpr std::size_t GROWTH_BYTES = std::size_t{2} << 20;  // the worker maps in these steps
constexpr unsigned SEALS = F_SEAL_SHRINK | F_SEAL_GROW;

enum : std::uint32_t { FREE = 0, HELD = 1, TRIMMING = 2 };

[[noreturn]] void fail(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

void* mapOrThrow(std::size_t bytes, int prot, int fd, off_t offset) {
  void* p = ::mmap(nullptr, bytes, prot, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) fail("mmap of a shared region");
  // A worker started by fork (StartMethod::FORK) must not inherit the regions of the others:
  // it would keep their pages alive after the host let them go.
  ::madvise(p, bytes, MADV_DONTFORK);
  return p;
}

}  // namespace

SharedRegion::SharedRegion(UniqueFd fd, std::size_t capacityWords, bool writable)
    : fd_(std::move(fd)), capacityWords_(capacityWords), writable_(writable) {
  header_ = mapOrThrow(HEADER_BYTES, PROT_READ | PROT_WRITE, fd_.get(), 0);
}

SharedRegion::~SharedRegion() {
  if (data_ != nullptr) ::munmap(data_, mappedBytes_);
  ::munmap(header_, HEADER_BYTES);
}

std::shared_ptr<SharedRegion> SharedRegion::create(std::size_t dataBytes, bool writable,
                                                   const char* name) {
  dataBytes = (dataBytes + HEADER_BYTES - 1) & ~(HEADER_BYTES - 1);
  UniqueFd fd(aboveStdio(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)));
  if (!fd) fail("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(HEADER_BYTES + dataBytes)) != 0) fail("ftruncate");
  if (::fcntl(fd.get(), F_ADD_SEALS, SEALS | F_SEAL_SEAL) != 0) fail("sealing a shared region");
  std::shared_ptr<SharedRegion> region(
      new SharedRegion(std::move(fd), dataBytes / sizeof(capnp::word), writable));
  region->mapData(dataBytes);
  return region;
}

std::shared_ptr<SharedRegion> SharedRegion::adopt(UniqueFd fd, bool writable) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail("fstat of a shared region");
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  const auto size = static_cast<std::size_t>(st.st_size);
  if (seals < 0 || (static_cast<unsigned>(seals) & SEALS) != SEALS || size <= HEADER_BYTES ||
      size % HEADER_BYTES != 0) {
    errno = EINVAL;
    fail("a shared region must be a sealed memfd of whole pages");
  }
  std::shared_ptr<SharedRegion> region(
      new SharedRegion(std::move(fd), (size - HEADER_BYTES) / sizeof(capnp::word), writable));
  // Map a first stretch of data now; later growth (mremap) needs no descriptor, so the worker
  // holds none beyond its channel.
  region->mapData(std::min(GROWTH_BYTES, size - HEADER_BYTES));
  region->fd_.reset();
  return region;
}

std::atomic_ref<std::uint32_t> SharedRegion::state() const {
  return std::atomic_ref<std::uint32_t>(*static_cast<std::uint32_t*>(header_));
}

std::atomic_ref<std::uint64_t> SharedRegion::headerWord(std::size_t i) const {
  if (i == 0 || i >= HEADER_WORDS) throw std::out_of_range("not a header word of a region");
  return std::atomic_ref<std::uint64_t>(static_cast<std::uint64_t*>(header_)[i]);
}

std::uint32_t* SharedRegion::headerHalfWord(std::size_t i) const {
  if (i == 0 || i >= HEADER_WORDS) throw std::out_of_range("not a header word of a region");
  return reinterpret_cast<std::uint32_t*>(static_cast<std::uint64_t*>(header_) + i);
}

bool SharedRegion::claim() {
  std::uint32_t expected = FREE;
  if (!state().compare_exchange_strong(expected, HELD, std::memory_order_acq_rel)) return false;
  if (locked_) {
    if (::mprotect(data_, mappedBytes_, PROT_READ | PROT_WRITE) != 0) {
      release();  // cannot write to it: the message takes the channel
      return false;
    }
    locked_ = false;
  }
  return true;
}

void SharedRegion::lockForReader() {
  if (writable_ && !locked_ && data_ != nullptr)
    locked_ = ::mprotect(data_, mappedBytes_, PROT_READ) == 0;
}

void SharedRegion::release() {
  state().store(FREE, std::memory_order_release);
}

bool SharedRegion::held() const {
  return state().load(std::memory_order_acquire) != FREE;
}

bool SharedRegion::trim() {
  std::uint32_t expected = FREE;
  if (!state().compare_exchange_strong(expected, TRIMMING, std::memory_order_acq_rel)) return false;
  ::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, HEADER_BYTES,
              static_cast<off_t>(capacityWords_ * sizeof(capnp::word)));
  release();
  return true;
}

void SharedRegion::mapData(std::size_t bytes) {
  const int prot = writable_ ? PROT_READ | PROT_WRITE : PROT_READ;
  if (data_ == nullptr) {
    data_ = static_cast<capnp::word*>(
        mapOrThrow(bytes, prot, fd_.get(), static_cast<off_t>(HEADER_BYTES)));
  } else {
    void* p = ::mremap(data_, mappedBytes_, bytes, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<capnp::word*>(p);
  }
  mappedBytes_ = bytes;
}

kj::ArrayPtr<capnp::word> SharedRegion::words(std::size_t offset, std::size_t count) {
  if (offset > capacityWords_ || count > capacityWords_ - offset) {
    throw std::out_of_range("beyond the shared region");
  }
  const std::size_t need = (offset + count) * sizeof(capnp::word);
  if (need > mappedBytes_) {
    const std::size_t capacity = capacityWords_ * sizeof(capnp::word);
    const std::size_t rounded = (need + GROWTH_BYTES - 1) & ~(GROWTH_BYTES - 1);
    mapData(std::min(capacity, std::max(rounded, 2 * mappedBytes_)));
  }
  return {data_ + offset, count};
}

std::optional<std::size_t> SharedRegion::offsetOf(kj::ArrayPtr<const capnp::word> segment) const {
  const std::size_t mapped = mappedBytes_ / sizeof(capnp::word);
  if (data_ == nullptr || segment.begin() < data_ || segment.begin() >= data_ + mapped ||
      segment.size() > static_cast<std::size_t>(data_ + mapped - segment.begin())) {
    return std::nullopt;
  }
  return static_cast<std::size_t>(segment.begin() - data_);
}

}  // namespace plugpool::detail
