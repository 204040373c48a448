#include "process_link.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include <kj/exception.h>

#include "big_buffers.h"
#include "framing.h"
#include "plugpool/errors.h"
#include "reply_log.h"
#include "shared_memory.h"
#include "termination.h"
#include "wire.capnp.h"
#include "worker.h"

namespace plugpool::detail {

namespace {

// A worker's shared regions hold at most this much each (or maxMessageBytes if less); larger
// segments go through the channel. They keep their pages for the next large message, and give
// them back once they have carried none for LinkConfig::idleMemoryTimeout.
constexpr std::size_t SHARED_REGION_BYTES = std::size_t{1} << 30;

// An exit status of 128 + N, which launchers (srun, ssh, shells) report for a task that
// signal N killed: N, or 0 for any other status.
int signalByLauncher(int exitStatus) {
  return exitStatus > 128 && exitStatus < 128 + NSIG ? exitStatus - 128 : 0;
}

class ProcessLink final : public WorkerLink {
 public:
  ProcessLink(SpawnedProcess process, HostSession session, LinkEvents& events,
              const LinkConfig& config, std::unique_ptr<Rendezvous> rendezvous,
              std::shared_ptr<const void> placement)
      : process_(std::move(process)),
        session_(std::move(session)),
        reader_(session_.maxWords()),
        events_(events),
        config_(config),
        rendezvous_(std::move(rendezvous)),
        placement_(std::move(placement)) {}

  ~ProcessLink() override {
    if (ended_) return;
    signalGroup(SIGKILL);
    closeChannel();
    while (::waitpid(process_.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }

  // Queues Setup, with the regions if the worker is local and they could be made.
  void begin() {
    std::vector<int> fds;
    if (!rendezvous_) {  // shared memory is for local workers only
      try {
        const std::size_t bytes = std::min(SHARED_REGION_BYTES, config_.maxMessageBytes);
        toWorker_ = SharedRegion::create(bytes, true);
        toHost_ = SharedRegion::create(bytes, false);
        fds = {toWorker_->fd(), toHost_->fd()};
      } catch (const std::system_error&) {
        // No memfd here (or no room to map it): everything goes through the channel.
        toWorker_.reset();
        toHost_.reset();
      }
      if (!fds.empty()) {
        try {
          log_ = SharedRegion::create(REPLY_LOG_BYTES, false, "plugpool-log");
          fds.push_back(log_->fd());
        } catch (const std::system_error&) {
          log_.reset();  // without it, a crash costs its whole chunk
        }
      }
    }
    auto setup = session_.setup(/*offerSharedMemory=*/!fds.empty(), log_ != nullptr);
    writer_.push(std::move(setup), nullptr, std::move(fds));
  }

  int pid() const override { return process_.pid; }

  bool logsReplies() const override { return log_ && session_.replyLog(); }

  bool takeLogged() override {
    if (!logsReplies() || !channelOpen_ || !violation_.empty()) return false;
    bool took = false;
    while (channelOpen_ && violation_.empty()) {
      if (!logged_) {
        try {
          auto frame = takeRingReply(*log_, session_.maxWords());
          if (!frame) break;
          logged_ = std::make_shared<Received>(std::move(*frame));
        } catch (const ProtocolViolation& e) {
          violate(e.what());
          break;
        }
      }
      // A reply to a later run than the oldest unanswered one waits for those before it:
      // they come on the channel.
      if (answersLater(*logged_)) break;
      handle(std::move(logged_));
      logged_.reset();
      took = true;
    }
    return took;
  }

  bool hasLogged() const override { return logsReplies() && channelOpen_ && ringHasReplies(*log_); }

  bool mayWait() override {
    if (!logsReplies() || !channelOpen_) return true;
    sleeping(*log_, true);
    return !ringHasReplies(*log_);
  }

  void awake() override {
    if (logsReplies()) sleeping(*log_, false);
  }

  std::optional<ItemProgress> progress() const override {
    if (!log_ || !session_.replyLog() || ended_) return std::nullopt;
    auto running = session_.running();
    if (!running) return std::nullopt;
    return peek(*log_, running->id, running->items);
  }
  bool open() const override { return channelOpen_; }

  void send(std::shared_ptr<capnp::MessageBuilder> run, unsigned items,
            HostSession::RunKind kind) override {
    if (!channelOpen_) return;
    session_.number(*run, items, kind);
    if (writer_.push(std::move(run), session_.sharedMemory() ? toWorker_.get() : nullptr)) {
      noteShared();
    }
  }

  bool flush() override {
    if (!channelOpen_ || writer_.empty()) return false;
    if (!process_.channel) return true;  // the worker has not connected yet
    try {
      return !writer_.flush(process_.channel.get());
    } catch (const std::system_error& e) {
      // EPIPE: the worker closed its end, so it is exiting or dead; the pidfd will say how.
      // Whatever it answered before that is still in the socket: take it first, or the chunks
      // it finished would be taken for the one it was running when it died.
      if (violation_.empty()) drain();
      connectionFailed(e.code().value());
      channelEnded();
      return false;
    }
  }

  void stop(Stop how, const std::string& violation) override {
    if (!violation.empty() && violation_.empty()) violation_ = violation;
    if (ended_) return;
    // A remote worker that has not connected yet cannot read the end of its channel.
    if (how == Stop::CLOSE && rendezvous_) how = Stop::TERMINATE;
    if (how == Stop::TERMINATE) signalGroup(SIGTERM);
    if (how == Stop::KILL) signalGroup(SIGKILL);
    closeChannel();
  }

  std::size_t watch(std::vector<pollfd>& fds) const override {
    const short events = writer_.empty() ? POLLIN : POLLIN | POLLOUT;
    fds.push_back({channelOpen_ ? process_.channel.get() : -1, events, 0});
    fds.push_back({ended_ ? -1 : process_.pidfd.get(), POLLIN, 0});
    return 2 + (rendezvous_ ? rendezvous_->watch(fds) : 0);
  }

  void onEvents(const pollfd* fds) override {
    if (channelOpen_ && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !drain()) {
      channelEnded();
    }
    if (channelOpen_ && (fds[0].revents & POLLOUT) != 0) flush();
    if (rendezvous_) {
      if (UniqueFd channel = rendezvous_->onEvents(fds + 2)) {
        rendezvous_.reset();
        process_.channel = std::move(channel);
        flush();  // Setup, and whatever else waited for it
      }
    }
    if (!ended_ && (fds[1].revents & POLLIN) != 0) reap();
  }

  Clock::time_point nextTimer() const override {
    auto next = Clock::time_point::max();
    if (rendezvous_) next = rendezvous_->nextTimer();
    if (endBy_) next = std::min(next, *endBy_);
    if (sharedSince_) next = std::min(next, *sharedSince_ + config_.idleMemoryTimeout);
    return next;
  }

  void onTime(Clock::time_point now) override {
    if (rendezvous_) rendezvous_->onTime(now);
    if (endBy_ && now >= *endBy_) {
      endBy_.reset();
      if (config_.launcher) {
        // The worker's node may be gone with it, or its launcher cannot tell (srun did not
        // notice a dead node for 96 s): it is lost either way.
        if (lost_.empty()) {
          lost_ = "ended its connection, and its launcher was still running " +
                  std::to_string(config_.stopTimeout.count()) +
                  " ms later (the worker or its node died)";
        }
        signalGroup(SIGKILL);
      } else {
        violate("ended its channel inside a message and did not exit");
      }
    }
    if (sharedSince_ && now >= *sharedSince_ + config_.idleMemoryTimeout) {
      // A region still held (a result not yet decoded, a Run not yet run) is tried again later.
      const bool ours = toWorker_->trim();
      const bool theirs = toHost_->trim();
      sharedSince_ = ours && theirs ? std::nullopt : std::optional(now);
      releaseFreedBuffers();  // the large messages' own buffers, idle as long
    }
  }

 private:
  // Reads everything available; handles messages. False if the channel ended or broke.
  bool drain() {
    for (;;) {
      kj::Array<capnp::word> words;
      FrameReader::Status status;
      try {
        status = reader_.read(process_.channel.get(), words);
      } catch (const TruncatedStream& e) {
        truncated_ = e.what();  // channelEnded() and reap() decide what it means
        return false;
      } catch (const ProtocolViolation& e) {
        violate(e.what());
        return false;
      } catch (const MessageUnallocatable& e) {
        replyUnallocatable(e.bytes());
        return false;
      } catch (const std::system_error& e) {
        connectionFailed(e.code().value());
        return false;  // ECONNRESET and the like: the worker is gone
      }
      if (status == FrameReader::Status::AGAIN) return true;
      if (status == FrameReader::Status::END) {
        takeLogged();  // what it logged before it closed the channel
        return false;
      }
      handleMessage(std::move(words));
      if (!violation_.empty()) return false;
      if (!channelOpen_) return true;  // the pool stopped it as it answered (a load error)
    }
  }

  void handleMessage(kj::Array<capnp::word> words) {
    // What the worker logged before it wrote this goes first (and is all there: the write
    // came after).
    takeLogged();
    if (!violation_.empty()) return;
    std::shared_ptr<Received> received;
    try {
      received = std::make_shared<Received>(std::move(words), reader_.peerRegion());
      if (received->shared()) noteShared();
    } catch (const ProtocolViolation& e) {
      return violate(e.what());
    }
    handle(std::move(received));
  }

  // Whether `reply` (from the ring) answers a later run than the one the next reply must.
  bool answersLater(Received& reply) {
    try {
      auto root = reply.reader().getRoot<wire::WorkerMessage>();
      return root.isChunkDone() && session_.nextAnswer() != 0 &&
             root.getChunkDone().getId() > session_.nextAnswer();
    } catch (const kj::Exception&) {
      return false;  // malformed: handle() says so
    }
  }

  void handle(std::shared_ptr<Received> received) {
    HostSession::Incoming in;
    try {
      in = session_.receive(std::move(received));
    } catch (const ProtocolViolation& e) {
      return violate(e.what());
    }
    switch (in.kind) {
      case HostSession::Incoming::HELLO:
        reader_.setMaxWords(session_.maxWords());
        if (session_.sharedMemory()) {
          reader_.acceptShared(toHost_);
        } else {
          toWorker_.reset();  // the worker could not map them
          toHost_.reset();
        }
        break;
      case HostSession::Incoming::CRASH:
        crash_ = std::move(in.crash);
        crashItem_ = in.crashItem;
        return;
      case HostSession::Incoming::WAKE:
        return;  // takeLogged() has taken what it woke us for
      case HostSession::Incoming::INITIALIZED:
      case HostSession::Incoming::REPLY:
        break;
    }
    events_.received(*this, std::move(in));
  }

  // The channel ended or broke, or the worker broke the protocol: it can answer no more.
  void channelEnded() {
    if (violation_.empty() && unallocatable_ == 0 && lost_.empty() &&
        (!truncated_.empty() || config_.launcher)) {
      // Killed while it wrote, most likely: its pidfd will say so. Killing it now would hide
      // whether it died on its own (a crash) or broke off and lives on (a violation). A
      // launcher reports its worker's end a moment after the worker's connection ended: kill
      // it now and it would report our signal instead.
      endBy_ = Clock::now() + config_.stopTimeout;
    } else {
      signalGroup(SIGKILL);  // make sure it dies, and learn how from its pidfd
    }
    if (channelOpen_) {
      closeChannel();
      events_.closed(*this);
    }
  }

  // A reply of `bytes` could not be allocated: it costs the work the worker holds.
  void replyUnallocatable(std::uint64_t bytes) {
    if (session_.unanswered() == 0) {
      return violate("sent a message of " + std::to_string(bytes) +
                     " bytes that the host could not allocate, answering nothing");
    }
    if (unallocatable_ == 0) unallocatable_ = bytes;
    signalGroup(SIGKILL);
  }

  // A remote worker's connection failed in a way that says the worker, its node or the link
  // between is gone (a local socketpair reports none of these).
  void connectionFailed(int error) {
    if (!config_.launcher || !lost_.empty()) return;
    if (error == ETIMEDOUT || error == EHOSTUNREACH || error == ENETUNREACH || error == EHOSTDOWN ||
        error == ENETDOWN) {
      lost_ = std::string("lost its connection to the host (") + std::strerror(error) + ")";
    }
  }

  void violate(const std::string& why) {
    if (violation_.empty()) violation_ = why;
    signalGroup(SIGKILL);
    if (channelOpen_) {
      closeChannel();
      events_.closed(*this);
    }
  }

  void reap() {
    // Replies written just before the worker died are still in the socket and its log's
    // ring: take them first.
    if (channelOpen_ && violation_.empty()) {
      drain();
      takeLogged();
    }
    // Whatever its tasks started and left in its group (a forked copy, a `sleep &`) ends with
    // it, whichever way it ended; before waitpid, while its zombie still holds the group's id.
    signalGroup(SIGKILL);
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(process_.pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    const bool known = r == process_.pid;
    WorkerEnd end;
    end.signal = known && WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    end.exitStatus = known && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (config_.launcher && end.signal == 0) end.signal = signalByLauncher(end.exitStatus);
    end.how = describeTermination(end.signal, end.exitStatus);
    if (rendezvous_) {
      end.how += " (its launcher, before the worker connected)";
    } else if (config_.launcher && lost_.empty() && end.exitStatus == EXIT_NO_HOST) {
      lost_ = "lost its connection to the host (the worker saw it fail, and left)";
    }
    if (!lost_.empty()) {
      end = WorkerEnd{};  // what the launcher said, if anything, is not what happened
      end.how = lost_;
    }
    // A stream that ended inside a message is a crash only if a signal ended the worker then
    // (it was killed while it wrote); a worker that broke off and exited broke the protocol.
    end.violation = violation_.empty() && !truncated_.empty() && end.signal == 0
                        ? truncated_ + " (then it " + end.how + ")"
                        : violation_;
    // What a worker that died of a signal said as it died (a crash report from one that
    // exited is no crash: ignored).
    if (end.signal != 0) {
      end.crash = std::move(crash_);
      end.crashItem = crashItem_;
    }
    end.unallocatableBytes = unallocatable_;
    // What it had finished of the chunk it was running, unless it broke the protocol (then
    // nothing it wrote is believed).
    if (log_ && session_.replyLog() && end.violation.empty() && lost_.empty()) {
      if (auto running = session_.running()) {
        end.partial =
            readPartial(log_, running->id, running->items, session_.maxWords(), end.crashItem);
      }
    }
    closeChannel();
    process_.pidfd.reset();
    ended_ = true;
    events_.ended(*this, std::move(end));
  }

  void closeChannel() {
    // shutdown() ends the connection itself, not only this descriptor: a copy of it in a
    // process the host forked keeps the socket open, and the worker would never see its end.
    if (process_.channel) ::shutdown(process_.channel.get(), SHUT_RDWR);
    process_.channel.reset();
    rendezvous_.reset();
    channelOpen_ = false;
  }

  // Sends `signal` to the worker's process group: the worker and what its tasks started.
  // The only place the pool signals a worker process.
  void signalGroup(int signal) {
    // The worker leads its own process group (launcher.h): the signal reaches every process
    // its tasks left in it too. Until reap() has waited for the worker, the worker (or its
    // zombie) holds the group's id, so it names no other group. The fallback is for a worker
    // that does not lead a group (ESRCH).
    if (ended_) return;
    if (::kill(-process_.pid, signal) != 0) ::kill(process_.pid, signal);
  }

  void noteShared() {
    sharedSince_ = Clock::now();
    events_.sharedMessage();
  }

  SpawnedProcess process_;
  HostSession session_;
  FrameReader reader_;
  FrameWriter writer_;
  LinkEvents& events_;
  const LinkConfig& config_;
  // A remote worker's, until it has connected back (then process_.channel is its channel).
  std::unique_ptr<Rendezvous> rendezvous_;
  std::shared_ptr<const void> placement_;
  bool channelOpen_ = true;
  bool ended_ = false;
  // Shared segments (shared_memory.h): ours and the worker's, passed with Setup, used once
  // its Hello agrees. `sharedSince` is when they last carried a message, while they may hold
  // pages worth giving back.
  std::shared_ptr<SharedRegion> toWorker_, toHost_;
  std::shared_ptr<SharedRegion> log_;  // the worker's reply log (reply_log.h)
  std::shared_ptr<Received> logged_;   // taken from its ring, waiting for earlier replies
  std::optional<Clock::time_point> sharedSince_;
  std::string violation_;  // why it was stopped, if it broke the protocol
  // Its stream ended inside a message (TruncatedStream): until `endBy`, its own death (it was
  // killed while it wrote) is a crash; if it has not ended by then, it is a violation.
  std::string truncated_;
  std::optional<Clock::time_point> endBy_;
  std::optional<CrashContent> crash_;  // what it said as it died of a fatal signal
  std::optional<std::uint32_t> crashItem_;
  std::uint64_t unallocatable_ = 0;  // a reply of this many bytes could not be allocated
  // Non-empty: a remote worker is lost (its connection failed, or it ended while its launcher
  // lived on); its end says so instead of what its launcher reports.
  std::string lost_;
};

}  // namespace

std::unique_ptr<WorkerLink> newProcessLink(SpawnedProcess process, HostSession session,
                                           LinkEvents& events, const LinkConfig& config,
                                           std::unique_ptr<Rendezvous> rendezvous,
                                           std::shared_ptr<const void> placement) {
  auto link = std::make_unique<ProcessLink>(std::move(process), std::move(session), events, config,
                                            std::move(rendezvous), std::move(placement));
  link->begin();
  return link;
}

}  // namespace plugpool::detail
