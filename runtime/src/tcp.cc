#include "tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>

#include "plugpool/errors.h"
#include "wire.capnp.h"

namespace plugpool::detail {

namespace {

constexpr char MAGIC[8] = {'P', 'L', 'U', 'G', 'P', 'O', 'O', 'L'};

[[noreturn]] void throwErrno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

struct AddrInfoDeleter {
  void operator()(addrinfo* list) const { ::freeaddrinfo(list); }
};
using AddrInfo = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// Resolves `host` (and `port`, may be null) for TCP; nullptr with `error` set if it fails.
AddrInfo resolve(const std::string& host, const char* port, int flags, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags;
  addrinfo* list = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port, &hints, &list);
  if (rc != 0) {
    error = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
    return nullptr;
  }
  return AddrInfo(list);
}

std::string numeric(const sockaddr* addr, socklen_t length, bool withPort) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (::getnameinfo(addr, length, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    throw std::system_error(EINVAL, std::generic_category(), "getnameinfo");
  }
  std::string h = addr->sa_family == AF_INET6 && withPort ? "[" + std::string(host) + "]" : host;
  return withPort ? h + ":" + port : h;
}

// A non-blocking, close-on-exec socket for `a`, off 0-2; empty with `error` set if none.
UniqueFd newSocket(const addrinfo* a, std::string& error) {
  UniqueFd fd(aboveStdio(
      ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol)));
  if (!fd) error = std::strerror(errno);
  return fd;
}

void setInt(int fd, int level, int option, int value, const char* what) {
  if (::setsockopt(fd, level, option, &value, sizeof value) != 0) throwErrno(what);
}

}  // namespace

Secret newSecret() {
  Secret secret;
  std::size_t have = 0;
  while (have < secret.size()) {
    const ssize_t n = ::getrandom(secret.data() + have, secret.size() - have, 0);
    if (n < 0 && errno != EINTR) throwErrno("getrandom");
    if (n > 0) have += static_cast<std::size_t>(n);
  }
  return secret;
}

std::string toHex(const Secret& secret) {
  static constexpr char DIGITS[] = "0123456789abcdef";
  std::string hex;
  for (std::uint8_t b : secret) {
    hex += DIGITS[b >> 4];
    hex += DIGITS[b & 15];
  }
  return hex;
}

bool fromHex(const std::string& hex, Secret& secret) {
  if (hex.size() != 2 * secret.size()) return false;
  auto digit = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < secret.size(); ++i) {
    const int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    secret[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::array<std::uint8_t, PREAMBLE_BYTES> encodePreamble(const Secret& secret) {
  std::array<std::uint8_t, PREAMBLE_BYTES> bytes{};
  std::memcpy(bytes.data(), MAGIC, sizeof MAGIC);
  const std::uint32_t version = wire::PROTOCOL_VERSION;
  for (int i = 0; i < 4; ++i) bytes[8 + i] = static_cast<std::uint8_t>(version >> (8 * i));
  std::memcpy(bytes.data() + 12, secret.data(), secret.size());
  return bytes;
}

std::size_t PreambleCheck::take(const std::uint8_t* data, std::size_t size) {
  const std::size_t n = std::min(size, needed());
  std::memcpy(bytes_.data() + have_, data, n);
  have_ += n;
  if (state_ != State::NEED_MORE || have_ < PREAMBLE_BYTES) return n;
  std::uint32_t version = 0;
  for (int i = 0; i < 4; ++i) version |= std::uint32_t{bytes_[8 + i]} << (8 * i);
  // Every byte of the secret is compared, whatever the first difference: the time taken says
  // nothing about how much of a guess was right.
  std::uint8_t difference = 0;
  for (std::size_t i = 0; i < expected_.size(); ++i) difference |= bytes_[12 + i] ^ expected_[i];
  if (std::memcmp(bytes_.data(), MAGIC, sizeof MAGIC) != 0) {
    why_ = "not a plugpool worker (no preamble)";
  } else if (version != wire::PROTOCOL_VERSION) {
    why_ = "a worker speaking protocol version " + std::to_string(version) + ", not " +
           std::to_string(wire::PROTOCOL_VERSION);
  } else if (difference != 0) {
    why_ = "a worker with the wrong secret";
  }
  state_ = why_.empty() ? State::ACCEPTED : State::REFUSED;
  return n;
}

std::string defaultAddress() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) {
    throw StartError(std::string("cannot tell the host's name: ") + std::strerror(errno) +
                     "; set Options::remote's address");
  }
  std::string error;
  AddrInfo list = resolve(name, nullptr, 0, error);
  if (!list) {
    throw StartError("the host's name " + std::string(name) + " does not resolve (" + error +
                     "); set Options::remote's address to one the workers can reach");
  }
  return numeric(list->ai_addr, list->ai_addrlen, false);
}

UniqueFd listenOn(const std::string& address) {
  std::string error;
  AddrInfo list = resolve(address, "0", AI_PASSIVE, error);
  if (!list) {
    throw StartError("cannot listen for remote workers on " + address + ": " + error);
  }
  for (const addrinfo* a = list.get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd = newSocket(a, error);
    if (!fd) continue;
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd.get(), 8) == 0) {
      return fd;
    }
    error = std::strerror(errno);
  }
  throw StartError("cannot listen for remote workers on " + address + ": " + error);
}

std::string localEndpoint(int fd) {
  sockaddr_storage addr{};
  socklen_t length = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    throwErrno("getsockname");
  }
  return numeric(reinterpret_cast<const sockaddr*>(&addr), length, true);
}

void setLiveness(int fd, const Liveness& liveness) {
  setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  setInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
  setInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, static_cast<int>(liveness.idle.count()), "TCP_KEEPIDLE");
  setInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, static_cast<int>(liveness.interval.count()),
         "TCP_KEEPINTVL");
  setInt(fd, IPPROTO_TCP, TCP_KEEPCNT, liveness.probes, "TCP_KEEPCNT");
  setInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(liveness.userTimeout.count()),
         "TCP_USER_TIMEOUT");
}

UniqueFd connectTo(const std::string& endpoint, int timeoutMs) {
  // "HOST:PORT" or "[V6]:PORT".
  const std::size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
    throw std::runtime_error("--connect wants HOST:PORT, got \"" + endpoint + "\"");
  }
  std::string host = endpoint.substr(0, colon);
  const std::string port = endpoint.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::string error;
  AddrInfo list = resolve(host, port.c_str(), 0, error);
  if (!list) throw std::runtime_error("cannot resolve " + endpoint + ": " + error);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  for (const addrinfo* a = list.get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd = newSocket(a, error);
    if (!fd) continue;
    int rc = ::connect(fd.get(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd.get(), POLLOUT, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      int ready;
      do {
        ready = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
      } while (ready < 0 && errno == EINTR);
      int soError = ETIMEDOUT;
      socklen_t length = sizeof soError;
      if (ready == 1) ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soError, &length);
      rc = soError == 0 ? 0 : -1;
      errno = soError;
    }
    if (rc == 0) {
      const int flags = ::fcntl(fd.get(), F_GETFL);
      ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
      return fd;
    }
    error = std::strerror(errno);
  }
  throw std::runtime_error("cannot connect to the host at " + endpoint + ": " + error);
}

}  // namespace plugpool::detail
