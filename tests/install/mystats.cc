// A decoy, built by the install tests: an unrelated plugin that they put as libexamples.so
// in LIBDIR/../plugins, the folder a build tree's rule would find beside an installed
// library. No installed pool may pick it up for "examples" (see installed.py, step 5).
#include <cstdint>

#include <plugpool/sdk.h>

namespace {

std::int64_t mean(std::int64_t x) {
  return x;
}

}  // namespace

PLUGPOOL_PLUGIN("mystats", PLUGPOOL_TASK(mean, "A decoy; the installed examples has square."));
