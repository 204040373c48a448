// A task parameter of a type the SDK cannot carry.
#include <cstdint>
#include <optional>

#include <plugpool/sdk.h>

namespace {
std::int64_t first_or_zero(std::optional<std::int64_t> x) {
  return x.value_or(0);
}
}  // namespace

PLUGPOOL_PLUGIN("optional", PLUGPOOL_TASK(first_or_zero, "Returns x, or 0 without one."));
