// tcp.h — a remote worker's channel: a TCP connection it opens back to the host. Internal.
//
// The host listens on one port per starting worker (remote_link.cc), the worker connects
// (worker_main.cc, --connect HOST:PORT) and first sends a fixed-size preamble: a magic
// string, the protocol version and the secret its launcher passed it in its environment.
// The host accepts the first connection whose preamble matches and refuses every other;
// from then on the connection carries wire.capnp's conversation exactly as a local worker's
// socketpair does, without descriptors or shared memory.
//
// Both ends set the same liveness options (Liveness, remote.h), so a dead peer, node or link
// is reported as an error on the connection within seconds even while nothing is sent.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fd.h"
#include "plugpool/remote.h"

namespace plugpool::detail {

// The environment variable a remote worker finds its secret in (hexadecimal).
inline constexpr const char* SECRET_VARIABLE = "PLUGPOOL_WORKER_SECRET";

using Secret = std::array<std::uint8_t, 32>;

// A fresh secret from the kernel's random source. Throws std::system_error.
Secret newSecret();
std::string toHex(const Secret& secret);
// False if `hex` is not 64 hexadecimal digits.
bool fromHex(const std::string& hex, Secret& secret);

// What a worker sends first: "PLUGPOOL", the protocol version (4 bytes, little-endian), the
// secret.
inline constexpr std::size_t PREAMBLE_BYTES = 8 + 4 + 32;
std::array<std::uint8_t, PREAMBLE_BYTES> encodePreamble(const Secret& secret);

// The host's check of a preamble, fed the bytes as they arrive (any split). I/O-free: the
// fuzz target drives it. Once it has decided, it takes nothing more.
class PreambleCheck {
 public:
  enum class State { NEED_MORE, ACCEPTED, REFUSED };
  explicit PreambleCheck(const Secret& expected) : expected_(expected) {}
  // Takes at most needed() bytes of `data`; returns how many it took.
  std::size_t take(const std::uint8_t* data, std::size_t size);
  // Bytes still needed (0 once decided).
  std::size_t needed() const { return state_ == State::NEED_MORE ? PREAMBLE_BYTES - have_ : 0; }
  State state() const { return state_; }
  // Why it was refused, in words for a human.
  const std::string& why() const { return why_; }

 private:
  Secret expected_;
  std::array<std::uint8_t, PREAMBLE_BYTES> bytes_{};
  std::size_t have_ = 0;
  State state_ = State::NEED_MORE;
  std::string why_;
};

// The address workers connect back to when none is given: the first address the host's own
// name (gethostname) resolves to, numeric. Throws StartError if it does not resolve.
std::string defaultAddress();

// A non-blocking, close-on-exec socket listening on `address` (a name or a numeric address)
// at a port the kernel picks. Throws StartError.
UniqueFd listenOn(const std::string& address);
// "HOST:PORT" (IPv6 as "[HOST]:PORT") of a bound socket, numeric. Throws std::system_error.
std::string localEndpoint(int fd);

// Sets the liveness options and TCP_NODELAY on a connected socket. Throws std::system_error.
void setLiveness(int fd, const Liveness& liveness);

// The worker's side: connects to "HOST:PORT" (blocking), trying each address it resolves to
// for at most `timeout` in all. Throws std::runtime_error saying what failed.
UniqueFd connectTo(const std::string& endpoint, int timeoutMs);

}  // namespace plugpool::detail
