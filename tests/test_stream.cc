// imap and imapUnordered with real workers: order, laziness and backpressure, unbounded
// input, per-item errors, adaptive chunking, streams meeting a closed pool, and inputs that
// fail.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <plugpool/dynamic.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "support.h"

using plugpool::Pool;
using Int = std::int64_t;

TEST_CASE("imap yields results in input order, imapUnordered yields every result") {
  testing::ProcessSnapshot before;
  testing::Gate first, open;  // outlive the pool, whose destructor waits for their calls
  {
    Pool pool(3, {"examples", testing::fixture("faults")});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    std::vector<Int> items(5000);
    std::iota(items.begin(), items.end(), 0);
    for (std::size_t chunksize : {0, 1, 13, 10'000}) {
      std::vector<Int> ordered;
      for (Int v : pool.imap(square, items, chunksize)) ordered.push_back(v);
      REQUIRE(ordered.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(ordered[i] == items[i] * items[i]);

      std::multiset<Int> unordered;
      for (Int v : pool.imapUnordered(square, items, chunksize, 2)) unordered.insert(v);
      REQUIRE(unordered == std::multiset<Int>(ordered.begin(), ordered.end()));
    }
    // Later items finishing first: imap still waits for order, imapUnordered does not.
    std::vector<Int> delays = {300, 0, 0, 0};
    std::vector<Int> inOrder;
    for (Int v : pool.imap(sleep, delays, 1)) inOrder.push_back(v);
    REQUIRE(inOrder == delays);
    // The first item runs until its gate opens, so another one is always first to end.
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    open.open();
    auto asDone = pool.imapUnordered(
        waiting, std::vector<std::string>{first.path(), open.path(), open.path(), open.path()}, 1);
    REQUIRE(asDone.next() == 1);
    REQUIRE(asDone.index() != 0);
    first.open();
    std::size_t ended = 1;
    while (asDone.next()) ++ended;
    REQUIRE(ended == 4);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("imap reads its input only as results are read") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    std::atomic<Int> pulled{0};
    auto counted = std::views::iota(Int{0}, Int{1'000'000}) |
                   std::views::transform([&](Int i) { return ++pulled, i; });
    constexpr std::size_t chunk = 10, window = 3;
    auto stream = pool.imap(square, counted, chunk, window);
    REQUIRE(pulled == 0);  // nothing is read before the first result is asked for
    for (Int i = 0; i < 25; ++i) REQUIRE(*stream.next() == i * i);
    // At most `window` chunks beyond what was read, however long the reader takes.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    REQUIRE(pulled <= 25 + Int{chunk * window});
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("imapUnordered streams an unbounded generator, and can be abandoned") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    Int count = 0, sum = 0;
    {
      auto stream = pool.imapUnordered(square, std::views::iota(Int{0}));  // never ends
      for (Int v : stream) {
        sum += v;
        if (++count == 100'000) break;
      }
      REQUIRE(stream.nextChunkSize() > 1);  // adaptive chunking grew past single items
    }                                       // abandoned: queued chunks are dropped
    REQUIRE(count == 100'000);
    REQUIRE(sum > 0);
    REQUIRE(pool.apply(square, 9) == 81);  // the pool goes on
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("adaptive chunks are small for slow tasks and large for trivial ones") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto square = pool.task<Int(Int)>("examples", "square");
    // 20 ms per item is past the 10 ms a chunk should take: one item per chunk.
    auto slow = pool.imap(sleep, std::vector<Int>(12, 20));
    for (int i = 0; i < 12; ++i) REQUIRE(*slow.next() == 20);
    REQUIRE(slow.nextChunkSize() == 1);
    // Nanoseconds per item: chunks grow to the cap.
    // (The largest size seen, not the last: one chunk whose worker a loaded machine
    // descheduled measures slow and shrinks the next ones for a while.)
    auto fast = pool.imap(square, std::views::iota(Int{0}, Int{200'000}));
    std::size_t largest = 0;
    for (Int i = 0; i < 200'000; ++i) {
      REQUIRE(*fast.next() == i * i);
      largest = std::max(largest, fast.nextChunkSize());
    }
    REQUIRE(largest == plugpool::Stream<Int>::MAX_ADAPTIVE_CHUNK);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a failed item raises at its place in the stream, and the stream goes on") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("faults")});
    auto segv = pool.task<Int(Int)>("faults", "segfault_if_negative");
    auto throwInt = pool.task<Int(Int)>("faults", "throw_int");
    std::vector<Int> items = {1, 2, -3, 4, 5, 6};
    auto stream = pool.imap(segv, items, 1);
    std::vector<Int> got;
    int crashed = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      try {
        got.push_back(*stream.next());
      } catch (const plugpool::WorkerCrashed& e) {
        ++crashed;
        REQUIRE(e.signal() == 11);
      }
    }
    REQUIRE(stream.next() == std::nullopt);
    REQUIRE(crashed == 1);
    REQUIRE(got == std::vector<Int>{1, 2, 4, 5, 6});

    auto errors = pool.imapUnordered(throwInt, std::vector<Int>{1, 2, 3}, 3);
    int thrown = 0;
    for (int i = 0; i < 3; ++i) {
      REQUIRE_THROWS_AS(errors.next(), plugpool::TaskError);
      ++thrown;
    }
    REQUIRE(thrown == 3);
    REQUIRE(errors.next() == std::nullopt);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a stream whose pool closes ends its unsent input with PoolClosed") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto stream = pool.imap(square, std::views::iota(Int{0}, Int{1000}), 10, 2);
    REQUIRE(*stream.next() == 0);
    pool.close();
    Int results = 1, closed = 0;
    for (;;) {
      try {
        if (!stream.next()) break;
        ++results;
      } catch (const plugpool::PoolClosed&) {
        ++closed;
      }
    }
    REQUIRE(results >= 10);             // what was sent before close still arrives
    REQUIRE(closed >= 1);               // then the unsent input reports the closed pool
    REQUIRE(results + closed == 1000);  // each item, to the end of the input
    pool.join();
  }
  testing::requireCleanShutdown(before);
}

namespace {

// How one item of a stream ended, as its reader met it.
struct Ending {
  enum Kind { RESULT, POOL_CLOSED, CANCELLED } kind;
  std::uint64_t index;  // its input position, Stream::index()
  Int result = 0;
};

// Reads `stream` to its end. A stream that yields more than `limit` items fails the test
// instead of hanging it; an error other than PoolClosed or Cancelled propagates.
std::vector<Ending> readToEnd(plugpool::Stream<Int>& stream, std::size_t limit) {
  std::vector<Ending> endings;
  while (endings.size() <= limit) {
    try {
      auto v = stream.next();
      if (!v) return endings;
      endings.push_back({Ending::RESULT, stream.index(), *v});
    } catch (const plugpool::PoolClosed&) {
      endings.push_back({Ending::POOL_CLOSED, stream.index()});
    } catch (const plugpool::Cancelled&) {
      endings.push_back({Ending::CANCELLED, stream.index()});
    }
  }
  FAIL("the stream went on past " << limit << " items");
  return endings;
}

}  // namespace

TEST_CASE("every item of a stream whose pool is closed or destroyed ends as one result or error") {
  testing::ProcessSnapshot before;
  constexpr Int N = 1000;
  // A sized input, and one whose length the stream cannot know before it reads it all.
  auto sized = std::views::iota(Int{0}, N);
  auto unsized = std::views::iota(Int{0}) | std::views::take_while([](Int i) { return i < N; });
  enum Stop { CLOSE, TERMINATE, DESTROY };
  for (Stop stop : {CLOSE, TERMINATE, DESTROY}) {
    for (bool ordered : {true, false}) {
      for (bool isSized : {true, false}) {
        CAPTURE(stop, ordered, isSized);
        std::optional<Pool> pool;
        pool.emplace(2, std::vector<std::string>{"examples"});
        auto square = pool->task<Int(Int)>("examples", "square");
        // Chunks of 10, at most 2 outstanding: when the pool stops after the first result,
        // at most 20 items have been sent and the rest of the input is still to be read.
        constexpr std::size_t chunk = 10, window = 2;
        auto stream = isSized ? (ordered ? pool->imap(square, sized, chunk, window)
                                         : pool->imapUnordered(square, sized, chunk, window))
                              : (ordered ? pool->imap(square, unsized, chunk, window)
                                         : pool->imapUnordered(square, unsized, chunk, window));
        auto first = stream.next();
        REQUIRE(first);
        std::vector<Ending> endings = {{Ending::RESULT, stream.index(), *first}};
        if (stop == CLOSE) pool->close();
        if (stop == TERMINATE) pool->terminate();
        if (stop == DESTROY) pool.reset();  // waits for what was sent; the stream lives on
        for (const Ending& e : readToEnd(stream, N)) endings.push_back(e);

        std::size_t results = 0, closed = 0, cancelled = 0;
        for (const Ending& e : endings) {
          results += e.kind == Ending::RESULT;
          closed += e.kind == Ending::POOL_CLOSED;
          cancelled += e.kind == Ending::CANCELLED;
          if (e.kind == Ending::RESULT) REQUIRE(e.result == Int(e.index * e.index));
        }
        CAPTURE(results, closed, cancelled);
        REQUIRE(endings.size() == std::size_t{N});       // every item, none twice
        REQUIRE(results >= chunk);                       // the chunk read from before the stop
        REQUIRE(closed >= N - chunk * window);           // the input not sent
        if (stop != TERMINATE) REQUIRE(cancelled == 0);  // sent work runs to its end
        std::vector<std::uint64_t> indices;
        for (const Ending& e : endings) indices.push_back(e.index);
        if (ordered) {
          for (std::size_t i = 0; i < endings.size(); ++i) REQUIRE(indices[i] == i);
          // Results and Cancelled first, then PoolClosed to the end of the input.
          auto firstClosed = std::ranges::find(endings, Ending::POOL_CLOSED, &Ending::kind);
          REQUIRE(std::all_of(firstClosed, endings.end(),
                              [](const Ending& e) { return e.kind == Ending::POOL_CLOSED; }));
        } else {
          std::ranges::sort(indices);
          for (std::size_t i = 0; i < indices.size(); ++i) REQUIRE(indices[i] == i);
        }
        REQUIRE(stream.next() == std::nullopt);  // and the stream stays at its end
      }
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a stream over an endless input whose pool is closed reports PoolClosed for each item") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    std::atomic<Int> pulled{0};
    auto endless =
        std::views::iota(Int{0}) | std::views::transform([&](Int i) { return ++pulled, i; });
    auto stream = pool.imap(square, endless, 10, 2);
    REQUIRE(*stream.next() == 0);
    pool.close();
    const Int sent = pulled;
    // The reader decides when to stop: the stream goes on, one PoolClosed per further item.
    Int results = 1, closed = 0;
    while (results + closed < 100'000) {
      try {
        auto v = stream.next();  // outside REQUIRE, which would catch what it throws
        REQUIRE(v == results * results);
        REQUIRE(closed == 0);  // results only before the first PoolClosed
        ++results;
      } catch (const plugpool::PoolClosed&) {
        REQUIRE(stream.index() == std::uint64_t(results + closed));
        ++closed;
      }
    }
    REQUIRE(results >= 10);
    REQUIRE(closed >= 100'000 - 30);
    // The items not sent were read past, never made: the transform ran only for those sent.
    REQUIRE(pulled <= sent + 10);
  }
  testing::requireCleanShutdown(before);
}

namespace {

// The error of an input that fails (Python's SayWhenError).
struct SayWhenError : std::runtime_error {
  explicit SayWhenError(Int at) : std::runtime_error("input failed at " + std::to_string(at)) {}
};

// 0, 1, ..., total - 1 read through a transform that throws SayWhenError for element `when`
// (Python's exception_throwing_generator(total, when)); `reads` counts the elements read.
auto failingAt(Int total, Int when, std::atomic<Int>& reads) {
  return std::views::iota(Int{0}, total) | std::views::transform([when, &reads](Int i) {
           ++reads;
           if (i == when) throw SayWhenError(i);
           return i;
         });
}

// An input range 0, 1, ..., total - 1 whose iterator throws SayWhenError when it moves on to
// element `when`, and again at every later try: an input that, once it fails, fails on every
// element from there on. `tries` counts the moves asked of it.
class FailingInput {
 public:
  FailingInput(Int total, Int when) : total_(total), when_(when) {}

  class iterator {
   public:
    using value_type = Int;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(FailingInput* input) : input_(input) {}
    Int operator*() const { return at_; }
    iterator& operator++() {
      ++input_->tries;
      if (at_ + 1 >= input_->when_) throw SayWhenError(at_ + 1);
      ++at_;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return at_ == input_->total_; }

   private:
    FailingInput* input_ = nullptr;
    Int at_ = 0;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

  Int tries = 0;

 private:
  Int total_;
  Int when_;
};

}  // namespace

TEST_CASE("imap yields the results read before an input error, then the error, then ends") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    // (CPython test_imap_handle_iterable_exception; the items read before the error in its
    // chunk are sent in a shorter chunk, where Python loses them.)
    for (auto [when, chunksize] : {std::pair<Int, std::size_t>{3, 1}, {3, 2}, {7, 2}, {7, 4}}) {
      CAPTURE(when, chunksize);
      std::atomic<Int> reads{0};
      auto stream = pool.imap(square, failingAt(20, when, reads), chunksize);
      for (Int i = 0; i < when; ++i) {
        REQUIRE(stream.next() == i * i);
        REQUIRE(stream.index() == std::uint64_t(i));
      }
      REQUIRE_THROWS_MATCHES(stream.next(), SayWhenError,
                             Catch::Message("input failed at " + std::to_string(when)));
      REQUIRE(stream.index() == std::uint64_t(when));
      REQUIRE(stream.next() == std::nullopt);  // a failed input is finished, as in Python
      REQUIRE(stream.next() == std::nullopt);
      REQUIRE(reads == when + 1);  // nothing read after the error
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("imapUnordered yields every result read before an input error, and the error once") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    for (std::size_t chunksize : {1, 2}) {
      CAPTURE(chunksize);
      std::atomic<Int> reads{0};
      auto stream = pool.imapUnordered(square, failingAt(10, 3, reads), chunksize);
      std::set<std::uint64_t> results;
      int errors = 0;
      for (int k = 0; k < 20; ++k) {
        try {
          auto v = stream.next();  // outside REQUIRE, which would catch what it throws
          if (!v) break;
          REQUIRE(errors == 0);  // the error comes after the results of the items before it
          REQUIRE(*v == Int(stream.index() * stream.index()));
          results.insert(stream.index());
        } catch (const SayWhenError& e) {
          REQUIRE(std::string(e.what()) == "input failed at 3");
          REQUIRE(stream.index() == 3u);
          ++errors;
        }
      }
      REQUIRE(errors == 1);
      REQUIRE(results == std::set<std::uint64_t>{0, 1, 2});
      REQUIRE(stream.next() == std::nullopt);
      REQUIRE(reads == 4);
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a stream stops reading an input that fails on every element from its error on") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    for (bool ordered : {true, false}) {
      for (std::size_t chunksize : {1, 2}) {
        CAPTURE(ordered, chunksize);
        FailingInput input(1000, 3);
        auto stream = ordered ? pool.imap(square, input, chunksize)
                              : pool.imapUnordered(square, input, chunksize);
        std::vector<Int> got;
        for (int i = 0; i < 3; ++i) got.push_back(*stream.next());
        if (!ordered) std::ranges::sort(got);
        REQUIRE(got == std::vector<Int>{0, 1, 4});
        REQUIRE_THROWS_AS(stream.next(), SayWhenError);
        REQUIRE(stream.index() == 3u);
        const Int tries = input.tries;
        REQUIRE(stream.next() == std::nullopt);
        REQUIRE(stream.next() == std::nullopt);
        REQUIRE(input.tries == tries);  // not asked again
      }
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("an input error met while a closed pool's stream reads past its input ends it there") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    FailingInput input(1000, 50);
    auto stream = pool.imap(square, input, 10, 2);
    REQUIRE(*stream.next() == 0);
    pool.close();
    // What was sent arrives, each unsent item before the error reports the closed pool, then
    // comes the input's error at its place, then the end.
    Int results = 1, closed = 0;
    for (;;) {
      try {
        auto v = stream.next();  // outside REQUIRE, which would catch what it throws
        REQUIRE(v);              // the error comes before the end
        REQUIRE(closed == 0);    // results only before the first PoolClosed
        REQUIRE(stream.index() == std::uint64_t(results));
        REQUIRE(*v == results * results);
        ++results;
      } catch (const plugpool::PoolClosed&) {
        REQUIRE(stream.index() == std::uint64_t(results + closed));
        ++closed;
      } catch (const SayWhenError& e) {
        REQUIRE(std::string(e.what()) == "input failed at 50");
        break;
      }
      REQUIRE(results + closed <= 50);  // no item twice, nothing past the error
    }
    CAPTURE(results, closed);
    REQUIRE(stream.index() == 50u);
    REQUIRE(results >= 10);
    REQUIRE(results + closed == 50);
    REQUIRE(stream.next() == std::nullopt);
    REQUIRE(input.tries == 50);  // not asked again
    pool.join();
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a dynamic stream whose Encode throws sends the items before it, then the error") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.dynamicTask("examples", "square");
    std::vector<Int> items(20);
    std::iota(items.begin(), items.end(), 0);
    int encoded = 0;
    auto encode = [&encoded](capnp::AnyStruct::Builder args, Int x) {
      ++encoded;
      if (x == 5) throw SayWhenError(x);
      std::memcpy(args.getDataSection().begin(), &x, 8);
    };
    for (bool ordered : {true, false}) {
      for (std::size_t chunksize : {1, 4}) {  // 4: the chunk of 4, 5, 6, 7 goes as 4 alone
        CAPTURE(ordered, chunksize);
        auto stream = ordered ? pool.imap(square, items, encode, chunksize)
                              : pool.imapUnordered(square, items, encode, chunksize);
        std::set<std::uint64_t> results;
        for (int i = 0; i < 5; ++i) {
          auto r = stream.next();
          REQUIRE(r);
          Int x;
          std::memcpy(&x, r->tuple().getDataSection().begin(), 8);
          REQUIRE(x == Int(stream.index() * stream.index()));
          if (ordered) REQUIRE(stream.index() == std::uint64_t(i));
          results.insert(stream.index());
        }
        REQUIRE(results == std::set<std::uint64_t>{0, 1, 2, 3, 4});
        REQUIRE_THROWS_MATCHES(stream.next(), SayWhenError, Catch::Message("input failed at 5"));
        REQUIRE(stream.index() == 5u);
        REQUIRE(stream.next() == std::nullopt);
      }
    }
  }
  testing::requireCleanShutdown(before);
}
