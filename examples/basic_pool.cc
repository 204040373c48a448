// basic_pool — the smallest host: four workers square 0..9.
//
//   $ build/examples/basic_pool
//   [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
#include <cstdint>
#include <iostream>
#include <numeric>
#include <vector>

#include <plugpool/pool.h>

int main() {
  plugpool::Pool pool(4, {"examples"});
  auto square = pool.task<std::int64_t(std::int64_t)>("examples", "square");

  std::vector<std::int64_t> numbers(10);
  std::iota(numbers.begin(), numbers.end(), 0);
  std::vector<std::int64_t> squares = pool.map(square, numbers);

  std::cout << "[";
  for (std::size_t i = 0; i < squares.size(); ++i) std::cout << (i ? ", " : "") << squares[i];
  std::cout << "]\n";
}
