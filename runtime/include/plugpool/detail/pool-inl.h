// plugpool/detail/pool-inl.h — the bodies of pool.h's templates, and the helpers behind them.
//
// Not a header of its own: pool.h includes it at its end, after every declaration, so that
// pool.h reads as the contract and this file as how it is kept (kj's -inl.h convention).
#pragma once

#ifndef PLUGPOOL_POOL_INL_ALLOWED
#error "plugpool/detail/pool-inl.h is part of plugpool/pool.h: include that instead"
#endif

namespace plugpool {

namespace detail {

// Pool's template helpers, a friend of Pool: how its calls become chunks and streams.
struct PoolImpl {
  // Sends the elements of sized range `items` in chunks of argument tuples of types A...,
  // encoding each with encode(tuple builder, element), and seals the call.
  template <typename... A, typename Range, typename Encode>
  static std::shared_ptr<Call> send(const Pool& pool, const TaskRef& task, const Range& items,
                                    std::size_t chunksize, Encode&& encode);
  // As send(), for any input range: unsized ones are read into a vector first.
  template <typename... A, typename Range, typename Encode>
  static std::shared_ptr<Call> sendAll(const Pool& pool, const TaskRef& task, Range&& items,
                                       std::size_t chunksize, Encode&& encode);
  // Waits for every chunk of a sealed call and decodes its results in order (wire type W).
  template <typename W>
  static std::vector<typename Codec<W>::Value> collect(Call& call);
  template <typename W, typename... A, typename Range, typename Encode>
  static Stream<typename Codec<W>::Value> stream(const Pool& pool, const TaskRef& task,
                                                 Range&& items, bool ordered, std::size_t chunksize,
                                                 std::size_t window, Encode encode);
  // As send(), for a dynamic task: every chunk is encoded first (encode(tuple, element)), and
  // only then are they submitted, so an encoding error leaves nothing sent.
  template <typename Range, typename Encode>
  static std::shared_ptr<Call> sendDynamic(const Pool& pool, const DynamicTask& task,
                                           const Range& items, std::size_t chunksize,
                                           Encode& encode);
  // The result tuples of a sealed call of a dynamic task, in order.
  static std::vector<DynamicResult> collectDynamic(Call& call, TupleShape result);
  // The stream of a dynamic task: arguments written by encode(tuple, element).
  template <typename Range, typename Encode>
  static Stream<DynamicResult> dynamicStream(const Pool& pool, const DynamicTask& task,
                                             Range&& items, bool ordered, std::size_t chunksize,
                                             std::size_t window, Encode encode);
  // The stream of any value type: argument tuples of shape `shape` filled by encode(tuple,
  // element); result i of a chunk made by decodeOne(task, outcome, i).
  template <typename Value, typename Range, typename Encode, typename DecodeOne>
  static Stream<Value> streamOf(const Pool& pool, const TaskRef& task, Range&& items, bool ordered,
                                std::size_t chunksize, std::size_t window, TupleShape shape,
                                Encode encode, DecodeOne decodeOne);
};

}  // namespace detail

namespace detail {

// Encoders from an element of the caller's range to an argument tuple. When the arguments
// are scalars only (PACKED), words(out, element) writes the tuple's WORDS data words at `out`
// instead, for encodeChunk.
template <typename... A>
struct EncodeOne {
  static constexpr bool PACKED = codec::IS_SCALAR_TUPLE<WireTypeOf<A>...>;
  static constexpr unsigned WORDS = codec::TupleLayout<WireTypeOf<A>...>::dataWords;
  template <typename T>
  void operator()(capnp::AnyStruct::Builder out, const T& item) const {
    codec::writeTuple<WireTypeOf<A>...>(out, item);
  }
  template <typename T>
  void words(capnp::byte* out, const T& item) const {
    codec::writeWords<WireTypeOf<A>...>(out, item);
  }
};
template <typename... A>
struct EncodeStar {
  static constexpr bool PACKED = codec::IS_SCALAR_TUPLE<WireTypeOf<A>...>;
  static constexpr unsigned WORDS = codec::TupleLayout<WireTypeOf<A>...>::dataWords;
  template <typename T>
  void operator()(capnp::AnyStruct::Builder out, const T& args) const {
    std::apply([&](const auto&... a) { codec::writeTuple<WireTypeOf<A>...>(out, a...); }, args);
  }
  template <typename T>
  void words(capnp::byte* out, const T& args) const {
    std::apply([&](const auto&... a) { codec::writeWords<WireTypeOf<A>...>(out, a...); }, args);
  }
};

template <typename Encode>
concept PackedEncoder = Encode::PACKED;

// Fills the argument tuples of `list`, allocated with the layout of `encode`'s argument types,
// from the elements at `it` (one per tuple; `it` ends past them, or at the one whose encoding
// threw). A packed encoder writes a list laid out as one array of words (codec.h packedWords)
// directly; anything else goes tuple by tuple.
template <typename Encode, typename It>
void encodeChunk(capnp::List<capnp::AnyStruct>::Builder list, It& it, const Encode& encode) {
  const unsigned n = list.size();
  if constexpr (PackedEncoder<Encode>) {
    if (capnp::byte* words = codec::packedWords(list, Encode::WORDS)) {
      for (unsigned i = 0; i < n; ++i, ++it, words += Encode::WORDS * 8) encode.words(words, *it);
      return;
    }
  }
  for (unsigned i = 0; i < n; ++i, ++it) encode(list[i], *it);
}

// Decodes result i of a finished chunk; throws ProtocolError if it does not decode.
template <typename W>
typename Codec<W>::Value decodeResult(const TaskRef& task, const ChunkOutcome& outcome,
                                      unsigned i) {
  try {
    if constexpr (std::is_same_v<W, SharedBytes>) {
      // Read in place: the bytes keep the received message alive.
      auto view = std::get<0>(codec::readTuple<std::span<const std::byte>>(outcome.results[i]));
      return SharedBytes(view, outcome.keepAlive);
    } else {
      return std::get<0>(codec::readTuple<W>(outcome.results[i]));
    }
  } catch (const DecodeError& e) {
    throwUndecodable(task, e.what());
  } catch (const kj::Exception& e) {
    throwUndecodable(task, e.getDescription().cStr());
  }
}

// Appends the results of a finished chunk to `out`, in order; throws ProtocolError if one
// does not decode. Scalar results laid out exactly as a worker makes them (one data word, no
// pointers) are read as one array of words; any other layout goes result by result with
// decodeResult's checks.
template <typename W>
void decodeResults(const TaskRef& task, const ChunkOutcome& outcome,
                   std::vector<typename Codec<W>::Value>& out) {
  const unsigned n = outcome.results.size();
  if constexpr (codec::IS_SCALAR_TUPLE<W>) {
    if (const capnp::byte* words = codec::packedWords(outcome.results, 1)) {
      const std::size_t at = out.size();
      out.resize(at + n);
      for (unsigned i = 0; i < n; ++i) {
        out[at + i] = std::get<0>(codec::readWords<W>(words + i * 8));
      }
      return;
    }
  }
  for (unsigned i = 0; i < n; ++i) out.push_back(decodeResult<W>(task, outcome, i));
}

struct InitializerAccess {
  template <typename R, typename... A, typename... U>
  static Initializer make(std::string plugin, std::string task, U&&... args) {
    static_assert(sizeof...(U) == sizeof...(A),
                  "the initializer takes exactly its task's arguments");
    using Layout = codec::TupleLayout<WireTypeOf<A>...>;
    Initializer init;
    init.plugin_ = std::move(plugin);
    init.task_ = std::move(task);
    init.argTypes_ = {typeName<A>()...};
    init.resultType_ = typeName<R>();
    init.dataWords_ = Layout::dataWords;
    init.pointers_ = Layout::pointers;
    init.encode_ = [values = std::make_tuple(std::decay_t<U>(std::forward<U>(args))...)](
                       capnp::AnyStruct::Builder out) { EncodeStar<A...>{}(out, values); };
    return init;
  }
};

}  // namespace detail

template <typename Signature, typename... U>
Initializer initializer(std::string plugin, std::string task, U&&... args) {
  return [&]<typename R, typename... A>(std::type_identity<R(A...)>) {
    return detail::InitializerAccess::make<R, A...>(std::move(plugin), std::move(task),
                                                    std::forward<U>(args)...);
  }(std::type_identity<Signature>{});
}

template <typename Signature>
Task<Signature> Pool::task(std::string_view plugin, std::string_view name) const {
  return [&]<typename R, typename... A>(std::type_identity<R(A...)>) {
    return Task<R(A...)>(bind(plugin, name, {typeName<A>()...}, typeName<R>()));
  }(std::type_identity<Signature>{});
}

template <typename W>
std::vector<typename Codec<W>::Value> detail::PoolImpl::collect(detail::Call& call) {
  std::vector<typename Codec<W>::Value> out;
  const std::size_t chunks = call.chunks();
  for (std::size_t c = 0; c < chunks; ++c) {
    const detail::ChunkOutcome& outcome = *call.wait(c);
    if (outcome.failure) std::rethrow_exception(outcome.failure);
    if (!outcome.errors.empty())
      detail::throwItemFailure(call.task(), outcome, outcome.errors.front());
    // Every chunk but the last has the first one's size (send()), so one reservation holds
    // them all; reserving chunk by chunk would reallocate and copy the results so far each time.
    if (c == 0) out.reserve(chunks * outcome.results.size());
    detail::decodeResults<W>(call.task(), outcome, out);
    call.release(c);
  }
  return out;
}

template <typename... A, typename Range, typename Encode>
std::shared_ptr<detail::Call> detail::PoolImpl::send(const Pool& pool, const detail::TaskRef& task,
                                                     const Range& items, std::size_t chunksize,
                                                     Encode&& encode) {
  using Layout = codec::TupleLayout<WireTypeOf<A>...>;
  const auto n = static_cast<std::size_t>(std::ranges::size(items));
  if (chunksize == 0)
    chunksize = task.timeout.count() != 0 ? 1 : defaultChunksize(n, pool.workers());
  auto call = pool.newCall(task);
  auto it = std::ranges::begin(items);
  for (std::size_t start = 0; start < n; start += chunksize) {
    auto count = static_cast<unsigned>(std::min(chunksize, n - start));
    detail::ChunkRequest chunk(task, count, Layout::dataWords, Layout::pointers);
    detail::encodeChunk(chunk.items(), it, encode);
    call->submit(std::move(chunk));
  }
  call->seal();
  return call;
}

template <typename... A, typename Range, typename Encode>
std::shared_ptr<detail::Call> detail::PoolImpl::sendAll(const Pool& pool,
                                                        const detail::TaskRef& task, Range&& items,
                                                        std::size_t chunksize, Encode&& encode) {
  if constexpr (std::ranges::sized_range<const std::remove_reference_t<Range>&>) {
    return send<A...>(pool, task, std::as_const(items), chunksize, encode);
  } else {
    std::vector<std::ranges::range_value_t<Range>> all;
    for (auto&& item : items) all.push_back(std::forward<decltype(item)>(item));
    return send<A...>(pool, task, all, chunksize, encode);
  }
}

template <typename R, typename A, typename Range>
std::vector<typename Task<R(A)>::Result> Pool::map(const Task<R(A)>& task, Range&& items,
                                                   std::size_t chunksize) {
  auto call = detail::PoolImpl::sendAll<A>(*this, task.ref_, std::forward<Range>(items), chunksize,
                                           detail::EncodeOne<A>{});
  return detail::PoolImpl::collect<WireTypeOf<R>>(*call);
}

template <typename R, typename... A, typename Range>
std::vector<typename Task<R(A...)>::Result> Pool::starmap(const Task<R(A...)>& task, Range&& items,
                                                          std::size_t chunksize) {
  auto call = detail::PoolImpl::sendAll<A...>(*this, task.ref_, std::forward<Range>(items),
                                              chunksize, detail::EncodeStar<A...>{});
  return detail::PoolImpl::collect<WireTypeOf<R>>(*call);
}

template <typename R, typename A, typename Range>
Future<std::vector<typename Task<R(A)>::Result>> Pool::mapAsync(const Task<R(A)>& task,
                                                                Range&& items,
                                                                std::size_t chunksize) {
  using V = std::vector<typename Task<R(A)>::Result>;
  auto call = detail::PoolImpl::sendAll<A>(*this, task.ref_, std::forward<Range>(items), chunksize,
                                           detail::EncodeOne<A>{});
  return Future<V>(std::make_shared<detail::FutureState<V>>(
      call, [](detail::Call& c) { return detail::PoolImpl::collect<WireTypeOf<R>>(c); }));
}

template <typename R, typename... A, typename Range>
Future<std::vector<typename Task<R(A...)>::Result>> Pool::starmapAsync(const Task<R(A...)>& task,
                                                                       Range&& items,
                                                                       std::size_t chunksize) {
  using V = std::vector<typename Task<R(A...)>::Result>;
  auto call = detail::PoolImpl::sendAll<A...>(*this, task.ref_, std::forward<Range>(items),
                                              chunksize, detail::EncodeStar<A...>{});
  return Future<V>(std::make_shared<detail::FutureState<V>>(
      call, [](detail::Call& c) { return detail::PoolImpl::collect<WireTypeOf<R>>(c); }));
}

template <typename R, typename... A, typename... U>
Future<typename Task<R(A...)>::Result> Pool::submit(const Task<R(A...)>& task, U&&... args) {
  static_assert(sizeof...(U) == sizeof...(A), "submit takes exactly the task's arguments");
  using V = typename Task<R(A...)>::Result;
  auto one = std::forward_as_tuple(args...);
  auto call = detail::PoolImpl::send<A...>(*this, task.ref_, std::span(&one, 1), 1,
                                           detail::EncodeStar<A...>{});
  return Future<V>(std::make_shared<detail::FutureState<V>>(call, [](detail::Call& c) {
    return std::move(detail::PoolImpl::collect<WireTypeOf<R>>(c).front());
  }));
}

template <typename R, typename... A, typename... U>
typename Task<R(A...)>::Result Pool::apply(const Task<R(A...)>& task, U&&... args) {
  static_assert(sizeof...(U) == sizeof...(A), "apply takes exactly the task's arguments");
  auto one = std::forward_as_tuple(args...);
  auto call = detail::PoolImpl::send<A...>(*this, task.ref_, std::span(&one, 1), 1,
                                           detail::EncodeStar<A...>{});
  return std::move(detail::PoolImpl::collect<WireTypeOf<R>>(*call).front());
}

template <typename W, typename... A, typename Range, typename Encode>
Stream<typename Codec<W>::Value> detail::PoolImpl::stream(const Pool& pool,
                                                          const detail::TaskRef& task,
                                                          Range&& items, bool ordered,
                                                          std::size_t chunksize, std::size_t window,
                                                          Encode encode) {
  using Layout = codec::TupleLayout<WireTypeOf<A>...>;
  return streamOf<typename Codec<W>::Value>(
      pool, task, std::forward<Range>(items), ordered, chunksize, window,
      TupleShape{Layout::dataWords, Layout::pointers}, std::move(encode),
      [](const detail::TaskRef& t, const detail::ChunkOutcome& outcome, unsigned i) {
        return detail::decodeResult<W>(t, outcome, i);
      });
}

template <typename Value, typename Range, typename Encode, typename DecodeOne>
Stream<Value> detail::PoolImpl::streamOf(const Pool& pool, const detail::TaskRef& task,
                                         Range&& items, bool ordered, std::size_t chunksize,
                                         std::size_t window, TupleShape shape, Encode encode,
                                         DecodeOne decodeOne) {
  using View = std::views::all_t<Range>;
  // The input and where reading it has got to; shared by copies of the feed function.
  struct Input {
    explicit Input(View v) : view(std::move(v)) {}
    View view;
    std::optional<std::ranges::iterator_t<View>> at;
    std::vector<std::ranges::range_value_t<View>> buffer;  // unsized inputs: one chunk's items
  };
  auto input = std::make_shared<Input>(std::views::all(std::forward<Range>(items)));
  using Fed = typename Stream<Value>::Fed;
  auto feed = [input, task, encode, shape](std::size_t n) -> Fed {
    auto& buffer = input->buffer;
    buffer.clear();
    Fed fed;
    try {
      if (!input->at) input->at.emplace(std::ranges::begin(input->view));
      auto& it = *input->at;
      const auto end = std::ranges::end(input->view);
      for (; buffer.size() < n && it != end; ++it) buffer.push_back(*it);
    } catch (...) {
      fed.error = std::current_exception();  // after the items in `buffer`
    }
    // Encodes the items read; if item j fails, the j before it, in a chunk of their own.
    for (std::size_t count = buffer.size(); count != 0;) {
      detail::ChunkRequest chunk(task, static_cast<unsigned>(count), shape.dataWords,
                                 shape.pointers);
      auto from = buffer.begin();
      try {
        detail::encodeChunk(chunk.items(), from, encode);
        fed.chunk.emplace(std::move(chunk));
        break;
      } catch (...) {
        fed.error = std::current_exception();  // comes first: it is at an earlier item
        count = static_cast<std::size_t>(from - buffer.begin());
      }
    }
    return fed;
  };
  using Skipped = typename Stream<Value>::Skipped;
  auto skip = [input](std::size_t n) -> Skipped {
    Skipped skipped;
    try {
      if (!input->at) input->at.emplace(std::ranges::begin(input->view));
      auto& it = *input->at;
      const auto end = std::ranges::end(input->view);
      if constexpr (std::sized_sentinel_for<std::ranges::sentinel_t<View>,
                                            std::ranges::iterator_t<View>>) {
        // In one step for a random-access input with a sized end (if that step throws, the
        // error counts as at the first item).
        using Difference = std::ranges::range_difference_t<View>;
        const auto asked = static_cast<Difference>(n);
        skipped.items = static_cast<std::size_t>(asked - std::ranges::advance(it, asked, end));
      } else {
        for (; skipped.items < n && it != end; ++it) ++skipped.items;
      }
    } catch (...) {
      skipped.error = std::current_exception();  // after the items counted
    }
    return skipped;
  };
  using Item = typename Stream<Value>::Item;
  auto decode = [task, decodeOne](const detail::ChunkOutcome& outcome, unsigned items,
                                  std::vector<Item>& out) {
    std::size_t e = 0;
    for (unsigned i = 0; i < items; ++i) {
      if (outcome.failure) {
        out.push_back({std::nullopt, outcome.failure});
      } else if (e < outcome.errors.size() && outcome.errors[e].index == i) {
        out.push_back({std::nullopt, detail::itemError(task, outcome, outcome.errors[e++])});
      } else {
        try {
          out.push_back({decodeOne(task, outcome, i), nullptr});
        } catch (...) {
          out.push_back({std::nullopt, std::current_exception()});
        }
      }
    }
  };
  if (chunksize == 0 && task.timeout.count() != 0) chunksize = 1;  // a timeout is per item
  return Stream<Value>(pool.newCall(task), std::move(feed), std::move(skip), std::move(decode),
                       ordered, chunksize, pool.streamWindow(window),
                       pool.streamWindowGrows(window));
}

namespace detail {
// Result i of a finished chunk of a DynamicTask, checked against the result's shape; throws
// ProtocolError if the tuple is smaller.
inline DynamicResult decodeDynamic(const TaskRef& task, TupleShape shape,
                                   const ChunkOutcome& outcome, unsigned i) {
  try {
    capnp::AnyStruct::Reader tuple = outcome.results[i];
    codec::checkTupleSize(tuple, shape.dataWords, shape.pointers);
    return DynamicResult(tuple, outcome.keepAlive);
  } catch (const DecodeError& e) {
    throwUndecodable(task, e.what());
  } catch (const kj::Exception& e) {
    throwUndecodable(task, e.getDescription().cStr());
  }
}
}  // namespace detail

template <typename Range, typename Encode>
Stream<DynamicResult> detail::PoolImpl::dynamicStream(const Pool& pool, const DynamicTask& task,
                                                      Range&& items, bool ordered,
                                                      std::size_t chunksize, std::size_t window,
                                                      Encode encode) {
  const TupleShape result = task.resultShape();
  return streamOf<DynamicResult>(
      pool, task.ref_, std::forward<Range>(items), ordered, chunksize, window, task.argumentShape(),
      std::move(encode),
      [result](const detail::TaskRef& t, const detail::ChunkOutcome& outcome, unsigned i) {
        return detail::decodeDynamic(t, result, outcome, i);
      });
}

template <typename Range, typename Encode>
std::shared_ptr<detail::Call> detail::PoolImpl::sendDynamic(const Pool& pool,
                                                            const DynamicTask& task,
                                                            const Range& items,
                                                            std::size_t chunksize, Encode& encode) {
  const auto n = static_cast<std::size_t>(std::ranges::size(items));
  if (chunksize == 0) {
    chunksize = task.timeout().count() != 0 ? 1 : defaultChunksize(n, pool.workers());
  }
  const TupleShape shape = task.argumentShape();
  std::vector<detail::ChunkRequest> chunks;
  auto it = std::ranges::begin(items);
  for (std::size_t start = 0; start < n; start += chunksize) {
    auto count = static_cast<unsigned>(std::min(chunksize, n - start));
    detail::ChunkRequest chunk(task.ref_, count, shape.dataWords, shape.pointers);
    auto tuples = chunk.items();
    for (unsigned i = 0; i < count; ++i, ++it) encode(tuples[i], *it);
    chunks.push_back(std::move(chunk));
  }
  auto call = pool.newCall(task.ref_);
  for (auto& chunk : chunks) call->submit(std::move(chunk));
  call->seal();
  return call;
}

inline std::vector<DynamicResult> detail::PoolImpl::collectDynamic(detail::Call& call,
                                                                   TupleShape result) {
  std::vector<DynamicResult> out;
  for (std::size_t c = 0; c < call.chunks(); ++c) {
    const detail::ChunkOutcome& outcome = *call.wait(c);
    if (outcome.failure) std::rethrow_exception(outcome.failure);
    if (!outcome.errors.empty())
      detail::throwItemFailure(call.task(), outcome, outcome.errors.front());
    for (unsigned i = 0; i < outcome.results.size(); ++i) {
      out.push_back(detail::decodeDynamic(call.task(), result, outcome, i));
    }
    call.release(c);  // the results keep the chunk's message (DynamicResult's share)
  }
  return out;
}

template <typename Range, typename Encode>
Future<std::vector<DynamicResult>> Pool::mapAsync(const DynamicTask& task, Range&& items,
                                                  Encode encode, std::size_t chunksize) {
  std::shared_ptr<detail::Call> call;
  if constexpr (std::ranges::sized_range<const std::remove_reference_t<Range>&>) {
    call = detail::PoolImpl::sendDynamic(*this, task, std::as_const(items), chunksize, encode);
  } else {
    std::vector<std::ranges::range_value_t<Range>> all;
    for (auto&& item : items) all.push_back(std::forward<decltype(item)>(item));
    call = detail::PoolImpl::sendDynamic(*this, task, all, chunksize, encode);
  }
  const TupleShape result = task.resultShape();
  return Future<std::vector<DynamicResult>>(
      std::make_shared<detail::FutureState<std::vector<DynamicResult>>>(
          call, [result](detail::Call& c) { return detail::PoolImpl::collectDynamic(c, result); }));
}

template <typename Encode>
Future<DynamicResult> Pool::submit(const DynamicTask& task, Encode encode) {
  auto one = [&encode](capnp::AnyStruct::Builder args, int) { encode(args); };
  const int item = 0;
  auto call = detail::PoolImpl::sendDynamic(*this, task, std::span(&item, 1), 1, one);
  const TupleShape result = task.resultShape();
  return Future<DynamicResult>(
      std::make_shared<detail::FutureState<DynamicResult>>(call, [result](detail::Call& c) {
        return std::move(detail::PoolImpl::collectDynamic(c, result).front());
      }));
}

template <typename Range, typename Encode>
Stream<DynamicResult> Pool::imap(const DynamicTask& task, Range&& items, Encode encode,
                                 std::size_t chunksize, std::size_t window) {
  return detail::PoolImpl::dynamicStream(*this, task, std::forward<Range>(items), true, chunksize,
                                         window, std::move(encode));
}

template <typename Range, typename Encode>
Stream<DynamicResult> Pool::imapUnordered(const DynamicTask& task, Range&& items, Encode encode,
                                          std::size_t chunksize, std::size_t window) {
  return detail::PoolImpl::dynamicStream(*this, task, std::forward<Range>(items), false, chunksize,
                                         window, std::move(encode));
}

template <typename R, typename A, typename Range>
Stream<typename Task<R(A)>::Result> Pool::imap(const Task<R(A)>& task, Range&& items,
                                               std::size_t chunksize, std::size_t window) {
  return detail::PoolImpl::stream<WireTypeOf<R>, A>(*this, task.ref_, std::forward<Range>(items),
                                                    true, chunksize, window,
                                                    detail::EncodeOne<A>{});
}

template <typename R, typename A, typename Range>
Stream<typename Task<R(A)>::Result> Pool::imapUnordered(const Task<R(A)>& task, Range&& items,
                                                        std::size_t chunksize, std::size_t window) {
  return detail::PoolImpl::stream<WireTypeOf<R>, A>(*this, task.ref_, std::forward<Range>(items),
                                                    false, chunksize, window,
                                                    detail::EncodeOne<A>{});
}

}  // namespace plugpool
