// plugpool/sdk.h — everything a plugin author includes.
//
// A plugin is a shared library of ordinary C++ functions, each exported by name with one
// line. plugpool workers load it, look tasks up by name and call them; the SDK does all the
// conversion between your C++ types and Cap'n Proto (see codec.h for the supported types).
//
//   #include <plugpool/sdk.h>
//
//   int64_t square(int64_t x) { return x * x; }
//   std::string upper(std::string_view s) { ... }
//   void describe(Image::Reader in, Features::Builder out) { ... }   // your own schema
//
//   PLUGPOOL_PLUGIN("examples",
//       PLUGPOOL_TASK(square, "Returns x * x."),
//       PLUGPOOL_TASK(upper, "Upper-cases ASCII letters."),
//       PLUGPOOL_TASK(describe, "Computes features of an image."));
//
// Rules for plugin authors:
//
//  1. Write exactly one PLUGPOOL_PLUGIN per shared library, at namespace scope. Its name is
//     how hosts address the plugin; task names must be unique within it.
//  2. A task takes values (or const references, or the views std::string_view,
//     std::span<const std::byte>, X::Reader) and either returns a value or, for a Cap'n Proto
//     struct result, fills a trailing X::Builder parameter and returns void.
//  3. Throw to fail. Whatever you throw is caught inside your plugin and becomes an error
//     result for that item only, carrying the exception's type name and what(); the worker
//     and the other items go on. Nothing you throw reaches the host as a C++ exception.
//  4. Build with -std=c++20 and hidden visibility (plugpool's build does); the macro exports
//     the only symbols a worker needs (abi.h). Link capnp and kj dynamically, and with
//     -Wl,--no-undefined: a symbol that nothing defines then fails the link, not the load.
//  5. Your plugin is never unloaded while a worker lives, so statics are fine; but a worker
//     may run many items, one at a time, and may be replaced at any time: do not rely on
//     state surviving between items.
#pragma once

// The SDK is C++20 (concepts, std::span, std::bit_cast). Stop at this one error instead of
// the screens of errors its templates would give in an older mode.
#if __cplusplus < 202002L
#error "plugpool needs C++20: compile with -std=c++20 (or -std=gnu++20)"
#include <plugpool: stopping here, see the #error above>  // a missing file stops the compiler
#endif

#include <cxxabi.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <capnp/common.h>
#include <capnp/schema.h>

#include "plugpool/abi.h"
#include "plugpool/codec.h"

namespace plugpool::sdk {

// Demangles a type name ("St13runtime_error" -> "std::runtime_error").
inline std::string demangle(const char* mangled) {
  int status = 0;
  char* readable = ::abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = (status == 0 && readable != nullptr) ? readable : mangled;
  std::free(readable);
  return name;
}

inline void report(const abi::ErrorSink* sink, const std::string& type,
                   const std::string& message) noexcept {
  sink->report(sink->context, type.data(), type.size(), message.data(), message.size());
}

// Calls report(type name, message) for the exception being handled; call only inside a
// catch block.
template <typename Report>
void describeCurrentException(Report&& report) noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    report(demangle(typeid(e).name()), e.what());
  } catch (...) {
    const std::type_info* type = ::abi::__cxa_current_exception_type();
    report(type != nullptr ? demangle(type->name()) : "unknown",
           "a value that is not a std::exception was thrown");
  }
}

// Reports the exception being handled; call only inside a catch block.
inline void reportCurrentException(const abi::ErrorSink* sink) noexcept {
  describeCurrentException(
      [&](const std::string& type, const std::string& message) { report(sink, type, message); });
}

// Reports the exception being handled as the failure of item `index` of a chunk; call only
// inside a catch block.
inline void reportCurrentException(const abi::ChunkErrorSink* sink, std::uint32_t index) noexcept {
  describeCurrentException([&](const std::string& type, const std::string& message) {
    sink->report(sink->context, index, type.data(), type.size(), message.data(), message.size());
  });
}

// The item a chunk entry is running, for the worker's crash report (abi.h convention 10): in
// the plugin's own word, or in the one the worker gave (convention 11: its reply log). One
// per plugin (hidden: never shared with another library through symbol interposition).
__attribute__((visibility("hidden"))) inline volatile std::uint32_t ownRunningItem = 0;
__attribute__((visibility("hidden"))) inline volatile std::uint32_t* runningItem = &ownRunningItem;

inline void startingItem(std::uint32_t index) noexcept {
  // The items before it are wholly in memory before it is said to run (a worker that dies
  // keeps their results), and it is said to run before the task's first instruction, even
  // one inlined here (a crash in it must find this index).
  std::atomic_signal_fence(std::memory_order_seq_cst);
  *runningItem = index;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// A chunk entry's general path: Invoke on each item, its failures reported with the item's
// index. For any layout of arguments and results.
template <abi::InvokeFn Invoke>
void invokeEach(const capnp::List<capnp::AnyStruct>::Reader& args,
                capnp::List<capnp::AnyStruct>::Builder& results,
                const abi::ChunkErrorSink* sink) noexcept {
  struct Item {
    const abi::ChunkErrorSink* chunk;
    std::uint32_t index;
  } item{sink, 0};
  const abi::ErrorSink itemSink{&item, [](void* context, const char* type, std::size_t typeSize,
                                          const char* message, std::size_t messageSize) noexcept {
                                  const auto* at = static_cast<const Item*>(context);
                                  at->chunk->report(at->chunk->context, at->index, type, typeSize,
                                                    message, messageSize);
                                }};
  for (unsigned i = 0; i < args.size(); ++i) {
    item.index = i;
    startingItem(i);
    capnp::AnyStruct::Reader in = args[i];
    capnp::AnyStruct::Builder out = results[i];
    Invoke(&in, &out, &itemSink);
  }
}

template <typename Fn>
struct FunctionTraits;

template <typename R, typename... P>
struct FunctionTraits<R (*)(P...)> {
  using Result = R;
  using Params = std::tuple<P...>;
};
template <typename R, typename... P>
struct FunctionTraits<R (*)(P...) noexcept> : FunctionTraits<R (*)(P...)> {};

template <typename P>
constexpr bool isBuilder() {
  return codec::HasBuilds<std::remove_cvref_t<P>>::value;
}

// Parameters are passed decoded values, so they may be values or const references only.
template <typename Param>
constexpr bool validParam() {
  return !std::is_lvalue_reference_v<Param> || std::is_const_v<std::remove_reference_t<Param>>;
}

template <auto Fn, typename Result, typename ArgsTuple, typename OutParam>
struct Invoker;

// Tasks that return their result.
template <auto Fn, typename Result, typename... P>
struct Invoker<Fn, Result, std::tuple<P...>, void> {
  using Args = std::tuple<WireTypeOf<P>...>;
  using Out = WireTypeOf<Result>;
  static void invoke(const capnp::AnyStruct::Reader* args, capnp::AnyStruct::Builder* result,
                     const abi::ErrorSink* sink) noexcept {
    try {
      auto values = codec::readTuple<std::remove_cvref_t<P>...>(*args);
      codec::writeTuple<Out>(*result, std::apply(Fn, values));
    } catch (...) {
      reportCurrentException(sink);
    }
  }

  // Scalar arguments and a scalar result: a chunk is two arrays of words (codec.h), read and
  // written directly when laid out exactly so; anything else goes item by item.
  static constexpr bool PACKED =
      codec::IS_SCALAR_TUPLE<std::remove_cvref_t<P>...> && codec::IS_SCALAR_TUPLE<Out>;

  static void invokeChunk(const capnp::List<capnp::AnyStruct>::Reader* args,
                          capnp::List<capnp::AnyStruct>::Builder* results,
                          const abi::ChunkErrorSink* sink) noexcept {
    if constexpr (PACKED) {
      constexpr unsigned WORDS = codec::TupleLayout<std::remove_cvref_t<P>...>::dataWords;
      const capnp::byte* in = codec::packedWords(*args, WORDS);
      capnp::byte* out = codec::packedWords(*results, 1);
      if (in != nullptr && out != nullptr && results->size() == args->size()) {
        const unsigned n = args->size();
        for (unsigned i = 0; i < n; ++i, in += WORDS * 8, out += 8) {
          startingItem(i);
          try {
            codec::writeWords<Out>(out,
                                   std::apply(Fn, codec::readWords<std::remove_cvref_t<P>...>(in)));
          } catch (...) {
            reportCurrentException(sink, i);
          }
        }
        return;
      }
    }
    invokeEach<&invoke>(*args, *results, sink);
  }
};

// Tasks that fill a trailing X::Builder.
template <auto Fn, typename... P, typename OutBuilder>
struct Invoker<Fn, void, std::tuple<P...>, OutBuilder> {
  using Args = std::tuple<WireTypeOf<P>...>;
  using Out = WireTypeOf<OutBuilder>;
  static void invoke(const capnp::AnyStruct::Reader* args, capnp::AnyStruct::Builder* result,
                     const abi::ErrorSink* sink) noexcept {
    try {
      auto values = codec::readTuple<std::remove_cvref_t<P>...>(*args);
      auto out = result->getPointerSection()[0].initAs<Out>();
      std::apply([&](auto&... v) { Fn(v..., out); }, values);
    } catch (...) {
      reportCurrentException(sink);
    }
  }
  static void invokeChunk(const capnp::List<capnp::AnyStruct>::Reader* args,
                          capnp::List<capnp::AnyStruct>::Builder* results,
                          const abi::ChunkErrorSink* sink) noexcept {
    invokeEach<&invoke>(*args, *results, sink);
  }
};

// Splits a parameter pack into (all but last, last).
template <typename... P>
struct SplitLast;
template <typename Last>
struct SplitLast<Last> {
  using Init = std::tuple<>;
  using Tail = Last;
};
template <typename First, typename... Rest>
struct SplitLast<First, Rest...> {
  using Init = decltype(std::tuple_cat(std::declval<std::tuple<First>>(),
                                       std::declval<typename SplitLast<Rest...>::Init>()));
  using Tail = typename SplitLast<Rest...>::Tail;
};

template <auto Fn, typename Fun = decltype(Fn)>
struct TaskOf;

template <auto Fn, typename R, typename... P>
struct TaskOf<Fn, R (*)(P...)> {
  static_assert((validParam<P>() && ...),
                "task parameters must be values, const references or views; "
                "a struct result goes in a trailing X::Builder");
  static constexpr bool BY_BUILDER = std::is_void_v<R>;
  static_assert(!BY_BUILDER || sizeof...(P) > 0,
                "a task must return a value or fill a trailing Cap'n Proto X::Builder");
  using Split = std::conditional_t<BY_BUILDER, SplitLast<P...>, SplitLast<P..., void>>;
  using Params = std::conditional_t<BY_BUILDER, typename Split::Init, std::tuple<P...>>;
  using OutBuilder = std::conditional_t<BY_BUILDER, typename Split::Tail, void>;
  static_assert(!BY_BUILDER || isBuilder<OutBuilder>(),
                "a task returning void must take a Cap'n Proto X::Builder as its last "
                "parameter, which it fills with its result");
  using Call = Invoker<Fn, R, Params, OutBuilder>;
};
template <auto Fn, typename R, typename... P>
struct TaskOf<Fn, R (*)(P...) noexcept> : TaskOf<Fn, R (*)(P...)> {};

template <typename Call, typename ArgsTuple>
struct Manifest;
template <typename Call, typename... A>
struct Manifest<Call, std::tuple<A...>> {
  // Function-local statics: built once, on first use, never destroyed before the worker
  // exits (abi.h convention 2). Hidden visibility keeps them private to this plugin.
  static const char* const* argTypes() {
    static const std::string names[sizeof...(A) + 1] = {Codec<A>::typeName()..., ""};
    static const auto pointers = [] {
      std::array<const char*, sizeof...(A) + 1> p{};
      for (std::size_t i = 0; i < p.size(); ++i) p[i] = names[i].c_str();
      return p;
    }();
    return pointers.data();
  }
  static const char* resultType() {
    static const std::string name = Codec<typename Call::Out>::typeName();
    return name.c_str();
  }
  static abi::TaskDescriptor describe(const char* name, const char* doc) {
    using ArgLayout = codec::TupleLayout<A...>;
    using ResultLayout = codec::TupleLayout<typename Call::Out>;
    return abi::TaskDescriptor{name,
                               doc,
                               static_cast<std::uint32_t>(sizeof...(A)),
                               argTypes(),
                               resultType(),
                               ArgLayout::dataWords,
                               ArgLayout::pointers,
                               ResultLayout::dataWords,
                               ResultLayout::pointers,
                               &Call::invoke};
  }
};

// The schema nodes of the struct and enum types in task signatures (abi.h convention 8):
// each type's node once, with the nodes its fields need.
class SchemaCollector {
 public:
  void add(capnp::Schema schema) {
    auto node = schema.getProto();
    if (!seen_.insert(node.getId()).second) return;
    nodes_.push_back(node);
    if (node.isStruct()) {
      for (auto field : schema.asStruct().getFields()) add(field.getType());
    }
  }
  void add(capnp::Type type) {
    if (type.isStruct()) {
      add(type.asStruct());
    } else if (type.isEnum()) {
      add(type.asEnum());
    } else if (type.isList()) {
      add(type.asList().getElementType());
    }
  }
  const std::vector<capnp::schema::Node::Reader>& nodes() const { return nodes_; }

 private:
  std::set<std::uint64_t> seen_;
  std::vector<capnp::schema::Node::Reader> nodes_;
};

// Adds the schemas a value of wire type T contains (see codec.h for the types).
template <typename T>
struct SchemasOf {
  static void add(SchemaCollector& out) {
    if constexpr (codec::IsSchemaStruct<T>::value) {
      out.add(capnp::Schema::from<T>());
    } else if constexpr (codec::HasReads<T>::value) {
      out.add(capnp::Schema::from<typename T::Reads>());
    }
  }
};
template <typename T>
struct SchemasOf<Message<T>> : SchemasOf<T> {};
template <typename E>
struct SchemasOf<std::vector<E>> : SchemasOf<E> {};
template <typename... T>
struct SchemasOf<std::tuple<T...>> {
  static void add(SchemaCollector& out) { (SchemasOf<T>::add(out), ...); }
};
template <typename A, typename B>
struct SchemasOf<std::pair<A, B>> : SchemasOf<std::tuple<A, B>> {};
template <typename K, typename V>
struct SchemasOf<std::map<K, V>> : SchemasOf<std::tuple<K, V>> {};
template <typename K, typename V>
struct SchemasOf<std::unordered_map<K, V>> : SchemasOf<std::tuple<K, V>> {};

// What PLUGPOOL_TASK yields: a task's descriptor, and how to find the schemas its signature
// names.
struct TaskEntry {
  abi::TaskDescriptor descriptor;
  void (*schemas)(SchemaCollector&);
  abi::InvokeChunkFn invokeChunk;
};

template <auto Fn>
TaskEntry task(const char* name, const char* doc) {
  using T = TaskOf<Fn>;
  using Call = typename T::Call;
  return {Manifest<Call, typename Call::Args>::describe(name, doc),
          [](SchemaCollector& out) {
            SchemasOf<typename Call::Args>::add(out);
            SchemasOf<typename Call::Out>::add(out);
          },
          &Call::invokeChunk};
}

// The descriptor table of a plugin's task entries.
template <std::size_t N>
std::array<abi::TaskDescriptor, N> descriptors(const TaskEntry (&entries)[N]) {
  std::array<abi::TaskDescriptor, N> out{};
  for (std::size_t i = 0; i < N; ++i) out[i] = entries[i].descriptor;
  return out;
}

// The schema table of a plugin's task entries; built once, lives until the process exits.
struct SchemaStore {
  template <std::size_t N>
  explicit SchemaStore(const TaskEntry (&entries)[N]) {
    for (const TaskEntry& e : entries) e.schemas(collector);
    table = {static_cast<std::uint32_t>(collector.nodes().size()), collector.nodes().data()};
  }
  SchemaCollector collector;
  abi::SchemaTable table;
};

// The chunk table of a plugin's task entries (abi.h convention 9); built once, lives until the
// process exits.
struct ChunkStore {
  template <std::size_t N>
  explicit ChunkStore(const TaskEntry (&entries)[N]) {
    for (const TaskEntry& e : entries) functions.push_back(e.invokeChunk);
    table = {static_cast<std::uint32_t>(functions.size()), functions.data()};
  }
  std::vector<abi::InvokeChunkFn> functions;
  abi::ChunkTable table;
};

}  // namespace plugpool::sdk

// Exports task `fn` under its own name. `fn` must be an unqualified function name; use
// PLUGPOOL_TASK_AS for a qualified one or a different exported name.
#define PLUGPOOL_TASK(fn, doc) ::plugpool::sdk::task<&fn>(#fn, doc)
#define PLUGPOOL_TASK_AS(name, fn, doc) ::plugpool::sdk::task<&fn>(name, doc)

// Declares this shared library a plugpool plugin named `name` with the listed tasks, and
// exports the ABI symbols (abi.h conventions 1, 8 and 9).
#define PLUGPOOL_PLUGIN(name, ...)                                                             \
  namespace {                                                                                  \
  const auto& plugpoolTaskEntries() {                                                          \
    static const ::plugpool::sdk::TaskEntry entries[] = {__VA_ARGS__};                         \
    return entries;                                                                            \
  }                                                                                            \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) const std::uint32_t plugpool_abi_version = \
      PLUGPOOL_ABI_VERSION;                                                                    \
  extern "C" __attribute__((visibility("default"))) const ::plugpool::abi::PluginDescriptor*   \
  plugpool_plugin_v1() {                                                                       \
    static const auto tasks = ::plugpool::sdk::descriptors(plugpoolTaskEntries());             \
    static const ::plugpool::abi::PluginDescriptor plugin{                                     \
        PLUGPOOL_ABI_VERSION, CAPNP_VERSION, name, static_cast<std::uint32_t>(tasks.size()),   \
        tasks.data()};                                                                         \
    return &plugin;                                                                            \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) const ::plugpool::abi::SchemaTable*        \
  plugpool_schemas_v1() {                                                                      \
    static const ::plugpool::sdk::SchemaStore store(plugpoolTaskEntries());                    \
    return &store.table;                                                                       \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) const ::plugpool::abi::ChunkTable*         \
  plugpool_chunks_v1() {                                                                       \
    static const ::plugpool::sdk::ChunkStore store(plugpoolTaskEntries());                     \
    return &store.table;                                                                       \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) volatile std::uint32_t*                    \
  plugpool_running_item_v1() {                                                                 \
    return ::plugpool::sdk::runningItem;                                                       \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) void plugpool_set_running_item_v1(         \
      volatile std::uint32_t* word) {                                                          \
    ::plugpool::sdk::runningItem = word != nullptr ? word : &::plugpool::sdk::ownRunningItem;  \
  }                                                                                            \
  static_assert(true, "PLUGPOOL_PLUGIN ends with a semicolon")
