// Test helpers for alloc/ and the packages above it.
//
// For: tests only (testonly). A MemorySource that counts every call and can
// be told to refuse, a MemorySource and an AllocatorBackend that fail chosen
// calls (fault injection: alloc/fault_injection_test.cc, the fuzzers), and a
// recorder that captures error reports instead of aborting; the resident
// page count of a range (mincore). Not for:
// production code.
#ifndef ALLOC_INTERNAL_TEST_UTIL_H_
#define ALLOC_INTERNAL_TEST_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
  bool DoDeallocate(const Block& block) override {
    deallocate_calls_.fetch_add(1);
    SystemMemorySource::Default().Deallocate(block);
    return true;
  }

 private:
  std::atomic<int> allocate_calls_{0};
  std::atomic<int> deallocate_calls_{0};
  std::atomic<int> refuse_after_{-1};
};

// Rounds every block up to a multiple of `granularity` bytes, as the mmap
// and node sources round to the kernel's page size (64 KiB on some arm64
// kernels), and counts the calls that reach it.
class RoundingSource final : public MemorySource {
 public:
  explicit RoundingSource(size_t granularity) : granularity_(granularity) {}
  absl::string_view name() const override { return "rounding"; }
  int allocate_calls() const { return allocate_calls_.load(); }

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
    allocate_calls_.fetch_add(1);
    const size_t rounded =
        (size + granularity_ - 1) / granularity_ * granularity_;
    return SystemMemorySource::Default().Allocate(rounded, alignment);
  }
  bool DoDeallocate(const Block& block) override {
    SystemMemorySource::Default().Deallocate(block);
    return true;
  }

 private:
  const size_t granularity_;
  std::atomic<int> allocate_calls_{0};
};

// Forwards to `next` and refuses chosen calls with ResourceExhausted, for
// fault-injection sweeps: calls to Allocate that reach the source are
// numbered from 1 (requests the base class rejects as invalid never reach
// it), and those in the fault window [first, first + count) fail; a negative
// count fails every call from `first` on (a source that ran dry). Requests
// above max_block_bytes (when set) fail too, as an exhausted source would.
// Thread-safe.
class FailingSource final : public MemorySource {
 public:
  explicit FailingSource(MemorySource* next = &SystemMemorySource::Default())
      : next_(next) {}

  absl::string_view name() const override { return "failing"; }

  // Fails calls number [first, first + count); count < 0: every call from
  // `first` on. Replaces any earlier window.
  void FailCalls(int64_t first, int64_t count = 1) {
    fail_first_.store(first);
    fail_count_.store(count);
  }
  // Fails the next `count` calls (count < 0: all of them).
  void FailNext(int64_t count) { FailCalls(calls() + 1, count); }
  void StopFailing() { fail_count_.store(0); }
  // Whether a call made now could still fail (the window is not behind us).
  bool armed() const {
    const int64_t count = fail_count_.load();
    return count < 0 || (count > 0 && calls() < fail_first_.load() + count);
  }
  // Refuses any request of more than `bytes`; 0 (the default): no cap.
  void set_max_block_bytes(size_t bytes) { max_block_bytes_.store(bytes); }

  // Allocate calls that reached the source, and how many it refused.
  int64_t calls() const { return calls_.load(); }
  int64_t injected_faults() const { return injected_.load(); }

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
    const int64_t call = calls_.fetch_add(1) + 1;
    const int64_t first = fail_first_.load();
    const int64_t count = fail_count_.load();
    const size_t cap = max_block_bytes_.load();
    if ((count != 0 && call >= first && (count < 0 || call < first + count)) ||
        (cap != 0 && size > cap)) {
      injected_.fetch_add(1);
      return absl::ResourceExhaustedError(
          absl::StrCat("failing source: injected fault at call #", call, " (",
                       size, " bytes at alignment ", alignment, ")"));
    }
    return next_->Allocate(size, alignment);
  }
  bool DoDeallocate(const Block& block) override {
    next_->Deallocate(block);
    return true;
  }

 private:
  MemorySource* const next_;
  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> injected_{0};
  std::atomic<int64_t> fail_first_{0};
  std::atomic<int64_t> fail_count_{0};
  std::atomic<size_t> max_block_bytes_{0};
};

// An AllocatorBackend that answers Error for the calls in its fault window
// (numbered as FailingSource's) and Fallback for every other, so the chain's
// next source serves them: fault injection at the backend boundary.
// Thread-safe.
class FailingBackend final : public AllocatorBackend {
 public:
  void FailCalls(int64_t first, int64_t count = 1) {
    fail_first_.store(first);
    fail_count_.store(count);
  }
  void StopFailing() { fail_count_.store(0); }
  int64_t calls() const { return calls_.load(); }
  int64_t injected_faults() const { return injected_.load(); }

  BackendResult Allocate(size_t size, size_t alignment) override {
    const int64_t call = calls_.fetch_add(1) + 1;
    const int64_t first = fail_first_.load();
    const int64_t count = fail_count_.load();
    if (count != 0 && call >= first && (count < 0 || call < first + count)) {
      injected_.fetch_add(1);
      return BackendResult::Error(absl::ResourceExhaustedError(
          absl::StrCat("failing backend: injected fault at call #", call)));
    }
    return BackendResult::Fallback();
  }
  // Never called: the backend serves nothing itself.
  void Deallocate(void*, size_t, size_t) override {}
  absl::string_view name() const override { return "failing-backend"; }

 private:
  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> injected_{0};
  std::atomic<int64_t> fail_first_{0};
  std::atomic<int64_t> fail_count_{0};
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

// How many of the `pages` pages from `page_aligned` are resident (mincore),
// or -1 if the kernel cannot say.
inline int ResidentPages(const void* page_aligned, size_t pages) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in_core(pages);
  if (mincore(const_cast<void*>(page_aligned), pages * page, in_core.data()) !=
      0) {
    return -1;
  }
  int resident = 0;
  for (unsigned char c : in_core) resident += c & 1;
  return resident;
}

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_TEST_UTIL_H_
