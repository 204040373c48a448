// A correct host: compiled without C++20 it must stop at pool.h's one #error.
#include <cstdint>

#include <plugpool/pool.h>

int main() {
  plugpool::Pool pool(1, {"examples"});
  auto square = pool.task<std::int64_t(std::int64_t)>("examples", "square");
  return static_cast<int>(pool.apply(square, 3));
}
