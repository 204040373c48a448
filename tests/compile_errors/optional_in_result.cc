// An unsupported type inside a supported one, in a result: the error names the inner type.
#include <cstdint>
#include <optional>
#include <vector>

#include <plugpool/sdk.h>

namespace {
std::vector<std::optional<std::int64_t>> maybe_squares(std::int64_t n) {
  return std::vector<std::optional<std::int64_t>>(static_cast<std::size_t>(n));
}
}  // namespace

PLUGPOOL_PLUGIN("optional", PLUGPOOL_TASK(maybe_squares, "Returns n empty values."));
