// plugpool/export.h — marks the symbols libplugpool exports. Everything else is hidden.
#pragma once

#define PLUGPOOL_API __attribute__((visibility("default")))
