// thread_annotations.h — lock annotations that clang's -Wthread-safety checks. Internal.
//
// GUARDED_BY(mu) on a member says that it is read and written only with `mu` held; REQUIRES
// on a function that its caller holds it. Under clang (the fuzz build compiles the runtime
// with -Wthread-safety -Werror=thread-safety) a violation is a compile error; under g++ the
// macros expand to nothing. std::mutex and std::lock_guard carry no annotations in
// libstdc++, so annotated state is guarded by Mutex and locked with MutexLock.
#pragma once

#include <mutex>

#if defined(__clang__)
#define PLUGPOOL_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define PLUGPOOL_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) PLUGPOOL_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY PLUGPOOL_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) PLUGPOOL_THREAD_ANNOTATION(guarded_by(x))
#define REQUIRES(...) PLUGPOOL_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define ACQUIRE(...) PLUGPOOL_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) PLUGPOOL_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define EXCLUDES(...) PLUGPOOL_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))

namespace plugpool::detail {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

// Holds a Mutex for its scope.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() RELEASE() { mutex_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mutex_;
};

}  // namespace plugpool::detail
