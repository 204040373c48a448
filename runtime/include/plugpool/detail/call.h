// plugpool/detail/call.h — the type-erased machinery under Pool's typed calls.
//
// Not part of the stable API: the templates in pool.h are built on these. A Call is one
// user-level operation (a map, an apply); it is sent as chunks, each one Run message holding
// many items of one task, and each chunk ends with exactly one ChunkOutcome.
//
// Threads: a ChunkRequest is built by the calling thread and then owned by the pool's
// dispatcher. ChunkOutcomes are filled by the dispatcher and read by whoever waits on the
// Call; both sides synchronize through the Call's mutex.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>

#include "plugpool/export.h"

namespace plugpool::detail {

// A bound task: where it lives in the manifest, and its names for error messages.
struct TaskRef {
  std::uint32_t plugin = 0;
  std::uint32_t task = 0;
  std::string pluginName;
  std::string taskName;
};

// One Run message under construction: the typed layer fills items(), the dispatcher sends it.
class PLUGPOOL_API ChunkRequest {
 public:
  // Allocates `count` argument tuple structs of the given layout.
  ChunkRequest(const TaskRef& task, unsigned count, std::uint16_t dataWords,
               std::uint16_t pointers);
  ChunkRequest(ChunkRequest&&) noexcept;
  ChunkRequest& operator=(ChunkRequest&&) noexcept;
  ~ChunkRequest();

  capnp::List<capnp::AnyStruct>::Builder items() { return items_; }
  unsigned size() const { return items_.size(); }

  // For the dispatcher: sets the Run's id and gives up the message.
  std::unique_ptr<capnp::MallocMessageBuilder> finish(std::uint64_t id);

 private:
  std::unique_ptr<capnp::MallocMessageBuilder> message_;
  capnp::List<capnp::AnyStruct>::Builder items_;
};

struct ItemFailure {
  unsigned index;
  std::string type;
  std::string message;
};

// How one chunk ended: either `failure` (the whole chunk was lost: crash, protocol error,
// pool stopped) or one result per item, with the failed items listed in `errors`.
struct ChunkOutcome {
  std::exception_ptr failure;
  capnp::List<capnp::AnyStruct>::Reader results;  // valid while keepAlive lives
  std::vector<ItemFailure> errors;                // increasing index
  std::shared_ptr<const void> keepAlive;          // the received message behind `results`
};

// One user-level call's chunks, in submission order. Shared by the caller and the dispatcher.
class PLUGPOOL_API Call {
 public:
  Call(TaskRef task) : task_(std::move(task)) {}

  const TaskRef& task() const { return task_; }

  // Reserves the next chunk slot; returns its index. Caller thread.
  std::size_t addChunk();
  // Records how chunk `index` ended. Dispatcher thread; exactly once per chunk.
  void complete(std::size_t index, ChunkOutcome outcome);
  // Blocks until chunk `index` has ended. The reference stays valid while the Call lives.
  const ChunkOutcome& wait(std::size_t index);
  std::size_t chunks() const;

 private:
  TaskRef task_;
  mutable std::mutex mutex_;
  std::condition_variable done_;
  std::vector<std::unique_ptr<std::optional<ChunkOutcome>>> outcomes_;  // GUARDED_BY(mutex_)
};

// Throws the right plugpool error for item failure `f` of `task`.
[[noreturn]] PLUGPOOL_API void throwItemFailure(const TaskRef& task, const ItemFailure& f);
// Throws ProtocolError: the results of `task` from a worker could not be decoded.
[[noreturn]] PLUGPOOL_API void throwUndecodable(const TaskRef& task, const char* why);

}  // namespace plugpool::detail
