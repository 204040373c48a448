// plugpool/local_plugin.h — a plugin's tasks called directly in the host process.
//
// For the serial baseline beside a pool (the same function, no processes), for debugging a
// task under gdb, and for tools. It applies exactly the worker's loading checks (abi.h) and
// the same type checks as Pool::task, and converts values with the same codec. But the plugin
// then runs *inside* your process: a crash in a task is your crash. Use a Pool for isolation.
//
// The plugin is loaded with RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE and never unloaded.
// Thread safety: a LocalPlugin and its LocalTasks are immutable; calls may run from many
// threads at once if the task itself is thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <tuple>

#include <capnp/message.h>

#include "plugpool/abi.h"
#include "plugpool/codec.h"
#include "plugpool/errors.h"
#include "plugpool/export.h"
#include "plugpool/manifest.h"

namespace plugpool {

template <typename Signature>
class LocalTask;

template <typename R, typename... A>
class LocalTask<R(A...)> {
 public:
  using Result = typename Codec<WireTypeOf<R>>::Value;

  // Calls the task. Throws TaskError if it throws.
  template <typename... U>
  Result operator()(const U&... args) const {
    static_assert(sizeof...(U) == sizeof...(A), "a task is called with exactly its arguments");
    using In = codec::TupleLayout<WireTypeOf<A>...>;
    capnp::MallocMessageBuilder message;
    auto pair = message.initRoot<capnp::AnyPointer>().initAsAnyStruct(0, 2);
    auto in = pair.getPointerSection()[0].initAsAnyStruct(In::dataWords, In::pointers);
    codec::writeTuple<WireTypeOf<A>...>(in, args...);
    auto out =
        pair.getPointerSection()[1].initAsAnyStruct(task_->resultDataWords, task_->resultPointers);
    capnp::AnyStruct::Reader inReader = in.asReader();
    Failure failure;
    abi::ErrorSink sink{&failure, &Failure::record};
    task_->invoke(&inReader, &out, &sink);
    if (failure.failed) throw TaskError(plugin_, task_->name, failure.type, failure.message);
    return std::get<0>(codec::readTuple<WireTypeOf<R>>(out.asReader()));
  }

  const std::string& plugin() const { return plugin_; }
  std::string name() const { return task_->name; }

 private:
  friend class LocalPlugin;
  LocalTask(std::string plugin, const abi::TaskDescriptor* task)
      : plugin_(std::move(plugin)), task_(task) {}

  struct Failure {
    bool failed = false;
    std::string type, message;
    static void record(void* self, const char* type, std::size_t typeSize, const char* message,
                       std::size_t messageSize) noexcept {
      auto* f = static_cast<Failure*>(self);
      f->failed = true;
      f->type.assign(type, typeSize);
      f->message.assign(message, messageSize);
    }
  };

  std::string plugin_;
  const abi::TaskDescriptor* task_;
};

class PLUGPOOL_API LocalPlugin {
 public:
  // Loads a plugin given as a path or a bare name (searched as for Options::plugins).
  // Throws PluginError if it cannot be found, fails the loader's checks, or (a bare name) is
  // another plugin.
  explicit LocalPlugin(const std::string& plugin);

  const PluginInfo& info() const { return info_; }

  // Binds task `name` with signature R(A...). Throws PluginError as Pool::task does.
  template <typename Signature>
  LocalTask<Signature> task(std::string_view name) const {
    return [&]<typename R, typename... A>(std::type_identity<R(A...)>) {
      return LocalTask<R(A...)>(info_.name, bind(name, {typeName<A>()...}, typeName<R>()));
    }(std::type_identity<Signature>{});
  }

 private:
  const abi::TaskDescriptor* bind(std::string_view name, const std::vector<std::string>& argTypes,
                                  const std::string& resultType) const;

  const abi::PluginDescriptor* descriptor_;
  PluginInfo info_;
};

}  // namespace plugpool
