#include "host_session.h"

#include <utility>

#include <kj/exception.h>

#include "wire.capnp.h"

namespace plugpool::detail {

HostSession::HostSession(std::shared_ptr<const SessionConfig> config)
    : config_(std::move(config)) {}

std::unique_ptr<capnp::MallocMessageBuilder> HostSession::setup(bool offerSharedMemory,
                                                                bool offerReplyLog) {
  offered_ = offerSharedMemory;
  logOffered_ = offerSharedMemory && offerReplyLog;
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto s = message->initRoot<wire::HostMessage>().initSetup();
  s.setProtocolVersion(wire::PROTOCOL_VERSION);
  s.setMaxMessageWords(config_->maxWords);
  auto limits = s.initLimits();
  limits.setAddressSpaceBytes(config_->limits.memoryBytes);
  limits.setCpuSeconds(static_cast<std::uint64_t>(config_->limits.cpuTime.count()));
  limits.setOpenFiles(config_->limits.openFiles);
  const auto& paths = config_->pluginPaths;
  auto list = s.initPlugins(static_cast<unsigned>(paths.size()));
  for (unsigned i = 0; i < paths.size(); ++i) list.set(i, paths[i]);
  s.setSharedMemory(offerSharedMemory);
  s.setReplyLog(logOffered_);
  return message;
}

void HostSession::number(capnp::MessageBuilder& run, unsigned items, RunKind kind) {
  const std::uint64_t id = nextId_++;
  run.getRoot<wire::HostMessage>().getRun().setId(id);
  sent_.push_back({id, items, kind});
}

std::optional<HostSession::Running> HostSession::running() const {
  if (sent_.empty() || sent_.front().kind != RunKind::CHUNK) return std::nullopt;
  return Running{sent_.front().id, sent_.front().items};
}

std::uint64_t HostSession::maxWords() const {
  return hello_ ? config_->maxWords : std::min(config_->maxWords, FIRST_MESSAGE_MAX_WORDS);
}

HostSession::Incoming HostSession::receive(std::shared_ptr<Received> message) {
  try {
    auto root = message->reader().getRoot<wire::WorkerMessage>();
    switch (root.which()) {
      case wire::WorkerMessage::HELLO: {
        if (hello_) throw ProtocolViolation("sent Hello twice");
        Incoming in{Incoming::HELLO, {}, {}, {}, {}};
        in.hello = decodeHello(root.getHello(), config_->pluginPaths.size());
        in.hello.sharedMemory = in.hello.sharedMemory && offered_;
        hello_ = true;
        shared_ = in.hello.sharedMemory;
        in.hello.replyLog = in.hello.replyLog && logOffered_;
        replyLog_ = in.hello.replyLog;
        return in;
      }
      case wire::WorkerMessage::CHUNK_DONE:
        if (!hello_) throw ProtocolViolation("sent ChunkDone before Hello");
        return receiveChunkDone(root.getChunkDone(), std::move(message));
      case wire::WorkerMessage::LOGGED:
        if (!replyLog_) throw ProtocolViolation("sent a wake-up without a reply log");
        return Incoming{Incoming::WAKE, {}, {}, {}, {}};
      case wire::WorkerMessage::CRASH: {
        if (crashed_) throw ProtocolViolation("sent Crash twice");
        crashed_ = true;
        Incoming in{Incoming::CRASH, {}, {}, decodeCrash(root.getCrash()), {}};
        // Only an item of the run it was running (the oldest unanswered chunk) is named.
        if (!sent_.empty() && sent_.front().kind == RunKind::CHUNK &&
            in.crash.runId == sent_.front().id && in.crash.item < sent_.front().items) {
          in.crashItem = in.crash.item;
        }
        return in;
      }
    }
    throw ProtocolViolation("sent a message of unknown kind");
  } catch (const kj::Exception& e) {
    throw ProtocolViolation(std::string("sent a malformed message: ") + e.getDescription().cStr());
  }
}

HostSession::Incoming HostSession::receiveChunkDone(wire::ChunkDone::Reader done,
                                                    std::shared_ptr<const void> keep) {
  if (sent_.empty()) throw ProtocolViolation("answered a chunk that was not sent");
  const Sent next = sent_.front();
  Incoming in{next.kind == RunKind::INITIALIZER ? Incoming::INITIALIZED : Incoming::REPLY,
              {},
              decodeChunkDone(done, next.id, next.items),
              {},
              {}};
  sent_.pop_front();
  in.outcome.keepAlive = std::move(keep);
  return in;
}

}  // namespace plugpool::detail
