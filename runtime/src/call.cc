#include "plugpool/detail/call.h"

#include "plugpool/errors.h"
#include "wire.capnp.h"

namespace plugpool::detail {

ChunkRequest::ChunkRequest(const TaskRef& task, unsigned count, std::uint16_t dataWords,
                           std::uint16_t pointers)
    : message_(std::make_unique<capnp::MallocMessageBuilder>(
          // One first segment that fits the whole chunk of fixed-size tuples, so building it
          // is one allocation: 2 words of list tag and envelope, 1 word per data word or
          // pointer of each item, plus room for whatever the pointers point at.
          std::max<unsigned>(1024, 16 + count * (dataWords + pointers * 3u)))),
      items_(nullptr) {
  auto run = message_->initRoot<wire::HostMessage>().initRun();
  run.setPlugin(task.plugin);
  run.setTask(task.task);
  items_ = run.initItems().initAsListOfAnyStruct(dataWords, pointers, count);
}

ChunkRequest::ChunkRequest(ChunkRequest&&) noexcept = default;
ChunkRequest& ChunkRequest::operator=(ChunkRequest&&) noexcept = default;
ChunkRequest::~ChunkRequest() = default;

std::unique_ptr<capnp::MallocMessageBuilder> ChunkRequest::finish(std::uint64_t id) {
  message_->getRoot<wire::HostMessage>().getRun().setId(id);
  return std::move(message_);
}

std::size_t Call::addChunk() {
  std::lock_guard lock(mutex_);
  outcomes_.push_back(std::make_unique<std::optional<ChunkOutcome>>());
  return outcomes_.size() - 1;
}

void Call::complete(std::size_t index, ChunkOutcome outcome) {
  {
    std::lock_guard lock(mutex_);
    *outcomes_[index] = std::move(outcome);
  }
  done_.notify_all();
}

const ChunkOutcome& Call::wait(std::size_t index) {
  std::unique_lock lock(mutex_);
  auto& slot = *outcomes_[index];
  done_.wait(lock, [&] { return slot.has_value(); });
  return *slot;
}

std::size_t Call::chunks() const {
  std::lock_guard lock(mutex_);
  return outcomes_.size();
}

void throwItemFailure(const TaskRef& task, const ItemFailure& f) {
  throw TaskError(task.pluginName, task.taskName, f.type, f.message);
}

void throwUndecodable(const TaskRef& task, const char* why) {
  throw ProtocolError("the results of " + task.pluginName + "." + task.taskName +
                      " could not be decoded: " + why);
}

}  // namespace plugpool::detail
