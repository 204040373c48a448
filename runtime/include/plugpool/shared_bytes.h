// plugpool/shared_bytes.h — a task's bytes result, read where it arrived.
//
// A host that asks for `plugpool::SharedBytes` instead of `plugpool::Bytes` as a result type
// (the wire type is the same "data", so any task returning Bytes or a byte span binds) gets
// the bytes without a copy: they are read in place in the message that carried them — for a
// large result, in the worker's shared region (wire.capnp, "Shared segments"). The message
// stays alive while any copy of the SharedBytes does, also after the pool is gone.
//
// The price of holding one: while a large result lives, the worker's region that carries it
// is taken, and that worker's next large reply travels through the socket instead (slower,
// never blocked). Copy out (`toBytes()`) what you keep for long.
//
// Thread safety: immutable; copies may be used from any threads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include <capnp/any.h>

#include "plugpool/codec.h"

namespace plugpool {

class SharedBytes {
 public:
  SharedBytes() = default;
  // `bytes` stay valid while `owner` lives.
  SharedBytes(std::span<const std::byte> bytes, std::shared_ptr<const void> owner)
      : bytes_(bytes), owner_(std::move(owner)) {}

  std::span<const std::byte> bytes() const { return bytes_; }
  operator std::span<const std::byte>() const { return bytes_; }
  const std::byte* data() const { return bytes_.data(); }
  std::size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  auto begin() const { return bytes_.begin(); }
  auto end() const { return bytes_.end(); }
  std::byte operator[](std::size_t i) const { return bytes_[i]; }

  Bytes toBytes() const { return codec::copyBytes(bytes_); }

  friend bool operator==(const SharedBytes& a, std::span<const std::byte> b) {
    return std::ranges::equal(a.bytes_, b);
  }

 private:
  std::span<const std::byte> bytes_;
  std::shared_ptr<const void> owner_;
};

// Encodes like Bytes (a SharedBytes can be passed on as another task's argument). Decoding
// needs the message's owner, so only the pool does it (pool.h, decodeResult).
template <>
struct Codec<SharedBytes> : Codec<std::span<const std::byte>> {
  using Value = SharedBytes;
  static Value read(capnp::AnyPointer::Reader) = delete;
};

}  // namespace plugpool
