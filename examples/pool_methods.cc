// pool_methods — a tour of the Pool's ways to run work, one labelled line per method (the
// seed lesson's tour of multiprocessing.Pool: map, starmap, apply_async, map_async, get with
// a timeout, callbacks, imap and imap_unordered).
//
//   $ build/examples/pool_methods
//   map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
//   starmap: [3, 7, 0.75]
//   applyAsync: 49
//   submit: HELLO
//   mapAsync: [100, 121, 144]
//   get(10ms): WaitTimeout (...); the task went on: get() = 25
//   then: callback got 64
//   imap: [300, 100, 200]
//   imapUnordered: [100, 200, 300]
#include <chrono>
#include <cstdint>
#include <future>
#include <iostream>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <plugpool/pool.h>

namespace {

using Int = std::int64_t;
using namespace std::chrono_literals;

template <typename T>
void printList(const char* label, const std::vector<T>& values) {
  std::cout << label << ": [";
  for (std::size_t i = 0; i < values.size(); ++i) std::cout << (i ? ", " : "") << values[i];
  std::cout << "]\n";
}

}  // namespace

int main() {
  plugpool::Pool pool(4, {"examples"});
  auto square = pool.task<Int(Int)>("examples", "square");
  auto add = pool.task<double(double, double)>("examples", "add");
  auto upper = pool.task<std::string(std::string)>("examples", "upper");
  auto slowTask = pool.task<Int(Int)>("examples", "slow_task");  // sleeps 100 ms, returns x * x
  auto sleepMs = pool.task<Int(Int)>("examples", "sleep_ms");    // sleeps ms, returns ms

  // map: one call per item, results in input order. Blocks until all are in.
  std::vector<Int> numbers(10);
  std::iota(numbers.begin(), numbers.end(), 0);
  printList("map", pool.map(square, numbers));

  // starmap: like map, for tasks of several arguments; each item is a tuple of them.
  std::vector<std::tuple<double, double>> pairs{{1, 2}, {3, 4}, {0.5, 0.25}};
  printList("starmap", pool.starmap(add, pairs));

  // applyAsync and submit (the same call): return a Future at once; get() waits for it.
  plugpool::Future<Int> seven = pool.applyAsync(square, 7);
  plugpool::Future<std::string> hello = pool.submit(upper, std::string("hello"));
  std::cout << "applyAsync: " << seven.get() << "\n";
  std::cout << "submit: " << hello.get() << "\n";

  // mapAsync: map without waiting; the future's value is the whole result list.
  auto squares = pool.mapAsync(square, std::vector<Int>{10, 11, 12});
  printList("mapAsync", squares.get());

  // get with a timeout only stops the wait: the task keeps running, and a later get() has it.
  auto slow = pool.submit(slowTask, 5);
  try {
    slow.get(10ms);
    std::cout << "get(10ms): returned early?\n";
  } catch (const plugpool::WaitTimeout& e) {
    std::cout << "get(10ms): WaitTimeout (" << e.what()
              << "); the task went on: get() = " << slow.get() << "\n";
  }

  // then: a callback run on the pool's callback thread once the result is in (Python's
  // apply_async(callback=...)). Here main waits for it, to keep the output in order.
  std::promise<void> called;
  pool.submit(square, 8).then([&](const Int& value) {
    std::cout << "then: callback got " << value << "\n";
    called.set_value();
  });
  called.get_future().wait();

  // imap and imapUnordered: lazy streams. The first item sleeps longest: imap still yields in
  // input order, imapUnordered yields each result as soon as it is in.
  std::vector<Int> delays{300, 100, 200};
  std::vector<Int> inOrder, asDone;
  for (Int ms : pool.imap(sleepMs, delays, 1)) inOrder.push_back(ms);
  for (Int ms : pool.imapUnordered(sleepMs, delays, 1)) asDone.push_back(ms);
  printList("imap", inOrder);
  printList("imapUnordered", asDone);
}
