// A host binding a task with a type the pool cannot carry.
#include <cstdint>
#include <optional>

#include <plugpool/pool.h>

int main() {
  plugpool::Pool pool(1, {"examples"});
  auto square = pool.task<std::int64_t(std::optional<std::int64_t>)>("examples", "square");
  return static_cast<int>(pool.apply(square, std::optional<std::int64_t>(3)));
}
