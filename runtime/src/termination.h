// termination.h — how a process ended, in words. Internal.
#pragma once

#include <string>

namespace plugpool::detail {

// "was killed by signal 11 (SIGSEGV)", "exited with status 3", or, for signal 0 and
// exitStatus -1, "ended (exit status unknown)".
std::string describeTermination(int signal, int exitStatus);

}  // namespace plugpool::detail
