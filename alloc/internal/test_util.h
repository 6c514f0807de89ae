// Test helpers for alloc/ and the packages above it.
//
// For: tests only (testonly). A MemorySource that counts every call and can
// be told to refuse, and a recorder that captures error reports instead of
// aborting. Not for: production code.
#ifndef ALLOC_INTERNAL_TEST_UTIL_H_
#define ALLOC_INTERNAL_TEST_UTIL_H_

#include <atomic>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "alloc/error.h"
#include "alloc/internal/mutex.h"
#include "alloc/memory_source.h"

namespace framealloc {
namespace alloc_internal {

// Wraps the system source; counts calls and can refuse after a budget.
class CountingSource final : public MemorySource {
 public:
  absl::string_view name() const override { return "counting"; }

  // Calls into the source (DoAllocate/DoDeallocate), refused ones included.
  int allocate_calls() const { return allocate_calls_.load(); }
  int deallocate_calls() const { return deallocate_calls_.load(); }
  // After `n` more successful allocations, every request is refused with
  // ResourceExhausted. -1 (the default) never refuses.
  void RefuseAfter(int n) { refuse_after_.store(n); }

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
    allocate_calls_.fetch_add(1);
    int budget = refuse_after_.load();
    if (budget == 0) {
      return absl::ResourceExhaustedError("counting source: budget spent");
    }
    if (budget > 0) refuse_after_.store(budget - 1);
    return SystemMemorySource::Default().Allocate(size, alignment);
  }
  void DoDeallocate(const Block& block) override {
    deallocate_calls_.fetch_add(1);
    SystemMemorySource::Default().Deallocate(block);
  }

 private:
  std::atomic<int> allocate_calls_{0};
  std::atomic<int> deallocate_calls_{0};
  std::atomic<int> refuse_after_{-1};
};

// Installs itself as the error handler for its lifetime and records every
// report (non-fatal reports then return to the library).
class ErrorRecorder {
 public:
  ErrorRecorder() : scope_(&ErrorRecorder::Record, this) {}

  std::vector<ErrorReport> reports() const {
    MutexLock lock(&mu_);
    return reports_;
  }
  size_t count() const {
    MutexLock lock(&mu_);
    return reports_.size();
  }

 private:
  static void Record(const ErrorReport& report, void* self) {
    auto* recorder = static_cast<ErrorRecorder*>(self);
    MutexLock lock(&recorder->mu_);
    recorder->reports_.push_back(report);
  }

  mutable Mutex mu_;
  std::vector<ErrorReport> reports_;
  ScopedErrorHandler scope_;
};

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_TEST_UTIL_H_
