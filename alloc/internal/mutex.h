// A mutex that ThreadSanitizer can see, with Abseil's lock annotations.
//
// For: every lock in framealloc. Why not absl::Mutex: Debian's Abseil is not
// built with TSan, so its Mutex (implemented in libabsl_synchronization.so)
// is invisible to TSan and every access it protects is reported as a race.
// std::mutex goes through pthread, which TSan intercepts. This wrapper keeps
// the capability annotations (ABSL_GUARDED_BY and friends) that clang's
// -Wthread-safety checks. Not for: condition waits (none are needed yet).
#ifndef ALLOC_INTERNAL_MUTEX_H_
#define ALLOC_INTERNAL_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace framealloc {
namespace alloc_internal {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds `mu` for the enclosing scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_MUTEX_H_
