// Compiles cleanly: the control case (the same flags, nothing wrong).
#include <cstdint>
#include <string>
#include <vector>

#include <plugpool/sdk.h>

namespace {
std::int64_t square(std::int64_t x) {
  return x * x;
}
std::vector<std::string> words(const std::string& s) {
  return {s};
}
}  // namespace

PLUGPOOL_PLUGIN("good", PLUGPOOL_TASK(square, "Returns x * x."),
                PLUGPOOL_TASK(words, "Returns the text as one word."));
