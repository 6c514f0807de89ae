// Debug aids: fill patterns, canaries, allocation tracking with call stacks
// (leaks, double frees, wrong sizes), an allocation-site profiler and a
// frame tracer.
//
// For: SmartAlloc's debug paths (DebugOptions in AllocConfig turn them on at
// run time; a build with --config=debug turns them on by default). Each
// piece is usable alone: AllocationTracker keeps live allocations and the
// sites that made them; FrameTracer writes the allocation events of chosen
// frames to a file. Not for: release hot paths: everything here takes a lock
// or captures a stack; SmartAlloc only calls it when a debug option is on.
//
// Thread-safe unless a class says otherwise.
#ifndef ALLOC_DEBUG_H_
#define ALLOC_DEBUG_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/budget.h"
#include "alloc/internal/mutex.h"

namespace framealloc {

#if defined(FRAMEALLOC_DEBUG)
inline constexpr bool kDebugBuild = true;
#else
inline constexpr bool kDebugBuild = false;
#endif

// Byte patterns: memory handed out and not yet written reads as kFreshFill;
// memory given back (frame end, rewind, free) reads as kReleasedFill, so a
// dangling read shows 0xDDDD... instead of plausible data.
inline constexpr unsigned char kFreshFill = 0xCD;
inline constexpr unsigned char kReleasedFill = 0xDD;
// Written just before and just after each guarded allocation.
inline constexpr uint64_t kCanary = 0xCA4A121ECA4A121Eull;
inline constexpr size_t kCanarySize = sizeof(kCanary);

// Which debug aids a SmartAlloc uses. Defaults: all on in a debug build
// (--config=debug) except profile_sites, which is always opt-in; all off
// otherwise.
struct DebugOptions {
  // Fresh memory filled with kFreshFill, released memory with kReleasedFill.
  bool fill_patterns = kDebugBuild;
  // A canary before and after every frame and pool allocation (and after
  // every heap allocation), checked at frame end and on free.
  bool canaries = kDebugBuild;
  // Pool and heap allocations recorded while live: double frees, foreign
  // pointers and wrong sizes are caught at the free; leak reports.
  bool track_allocations = kDebugBuild;
  // Call-stack frames captured per tracked allocation (0: none). Reports
  // then name where an allocation was made.
  int stack_depth = kDebugBuild ? 12 : 0;
  // Count allocations per call site (all kinds) for HottestSites().
  // REQUIRES stack_depth > 0.
  bool profile_sites = false;

  DebugOptions& set_fill_patterns(bool on) {
    fill_patterns = on;
    return *this;
  }
  DebugOptions& set_canaries(bool on) {
    canaries = on;
    return *this;
  }
  DebugOptions& set_track_allocations(bool on) {
    track_allocations = on;
    return *this;
  }
  DebugOptions& set_stack_depth(int depth) {
    stack_depth = depth;
    return *this;
  }
  DebugOptions& set_profile_sites(bool on) {
    profile_sites = on;
    return *this;
  }
  // Everything off, in every build (a release build's defaults).
  static DebugOptions None() {
    return DebugOptions()
        .set_fill_patterns(false)
        .set_canaries(false)
        .set_track_allocations(false)
        .set_stack_depth(0)
        .set_profile_sites(false);
  }
  // Everything on, with stacks: what a bug hunt wants.
  static DebugOptions All() {
    return DebugOptions()
        .set_fill_patterns(true)
        .set_canaries(true)
        .set_track_allocations(true)
        .set_stack_depth(12)
        .set_profile_sites(true);
  }

  bool any() const {
    return fill_patterns || canaries || track_allocations || profile_sites;
  }
  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

// A call stack, captured with absl::GetStackTrace.
struct CallStack {
  static constexpr int kMaxDepth = 64;
  void* frames[kMaxDepth];
  int depth = 0;

  // Captures up to `depth` return addresses, skipping `skip` more. The
  // first is the call site of the function that calls Capture: a function
  // F that calls Capture(n, 0) records where F was called from, which is
  // what an allocation call wants to remember.
  ABSL_ATTRIBUTE_NOINLINE static CallStack Capture(int depth, int skip);
  uint64_t Hash() const;
  // "  #0 0x... function+0x12\n  #1 ..." through absl::Symbolize.
  std::string Symbolized() const;
};

// The kind of an allocation, for reports.
enum class AllocKind { kFrame, kPool, kHeap };
absl::string_view AllocKindName(AllocKind kind);

// One live pool or heap allocation.
struct AllocationRecord {
  AllocKind kind = AllocKind::kPool;
  size_t size = 0;
  size_t alignment = 0;
  TagId tag = 0;
  uint64_t frame = 0;   // Global frame number at allocation.
  uint64_t thread = 0;  // The allocating thread's serial.
  uint64_t site = 0;    // CallStack hash (0 without stacks).
};

// Live allocations that have lived at least N frames, grouped by site.
struct LeakGroup {
  uint64_t site = 0;
  std::string stack;  // Symbolized; empty without stacks.
  AllocKind kind = AllocKind::kPool;
  TagId tag = 0;
  size_t count = 0;
  size_t bytes = 0;
  uint64_t oldest_frame = 0;
};

// Allocation counts of one site.
struct SiteStats {
  uint64_t site = 0;
  std::string stack;
  uint64_t count = 0;
  uint64_t bytes = 0;
  // Per tag: (tag id, count, bytes).
  struct PerTag {
    TagId tag;
    uint64_t count;
    uint64_t bytes;
  };
  std::vector<PerTag> tags;
};

// Keeps live allocations and call sites. Thread-safe (one mutex).
class AllocationTracker {
 public:
  // Records a live allocation at `p`, with the stack that made it (depth 0:
  // none). Returns false if `p` was already live (a bug in the caller's
  // bookkeeping).
  bool Add(const void* p, AllocationRecord record, const CallStack* stack);
  // Removes and returns the record of `p`; NotFound when `p` is not live
  // (a double free, or a pointer never handed out).
  absl::StatusOr<AllocationRecord> Remove(const void* p);
  // As Remove, only if `p` is an allocation of `kind`: FailedPrecondition
  // naming the kind and size it has otherwise, and the record stays (the
  // allocation is still live, its owner frees it).
  absl::StatusOr<AllocationRecord> Remove(const void* p, AllocKind kind);
  // The record of a live pointer, or NotFound.
  absl::StatusOr<AllocationRecord> Find(const void* p) const;

  // Counts an allocation for the site profiler (any kind, also frame ones).
  void CountSite(const CallStack& stack, TagId tag, size_t bytes);
  // Keeps `stack` (uncounted) so reports can name the site by its hash:
  // leaks, canary and use-after-frame reports. Returns the hash (0 for an
  // empty stack).
  uint64_t InternSite(const CallStack& stack);

  // Live allocations made at least `min_age` frames before `current_frame`,
  // grouped by site, kind and tag; largest first.
  std::vector<LeakGroup> Leaks(uint64_t current_frame, uint64_t min_age) const;
  // The `n` sites with the most allocations (ties: most bytes).
  std::vector<SiteStats> HottestSites(size_t n) const;
  // The symbolized stack of a site, or "" when unknown.
  std::string SiteStack(uint64_t site) const;
  size_t live() const;

 private:
  struct Site {
    CallStack stack;
    uint64_t count = 0;
    uint64_t bytes = 0;
    absl::flat_hash_map<TagId, std::pair<uint64_t, uint64_t>> tags;
  };
  uint64_t InternSiteLocked(const CallStack& stack)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable alloc_internal::Mutex mu_;
  absl::flat_hash_map<const void*, AllocationRecord> live_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Site> sites_ ABSL_GUARDED_BY(mu_);
};

// One allocation event for the tracer.
struct TraceEvent {
  enum class Op { kAlloc, kFree, kFrameEnd };
  Op op;
  AllocKind kind;
  uint64_t frame;   // Global frame number.
  uint64_t thread;  // Thread serial.
  TagId tag;
  size_t size;
  const void* address;
};

// Records allocation events of chosen frames to a file, one JSON object per
// line: {"op":"alloc","kind":"pool","frame":12,"thread":1,"tag":"render",
// "size":64,"address":"0x...","ns":1234}. Thread-safe.
class FrameTracer {
 public:
  FrameTracer() = default;
  ~FrameTracer();
  FrameTracer(const FrameTracer&) = delete;
  FrameTracer& operator=(const FrameTracer&) = delete;

  // Starts recording the frames [first_frame, first_frame + frame_count)
  // into `path` (truncated). InvalidArgument for frame_count < 1;
  // FailedPrecondition if already recording; the OS error if the file
  // cannot be opened.
  absl::Status Start(const std::string& path, uint64_t first_frame,
                     uint64_t frame_count);
  // Stops and closes the file; returns the write error, if any.
  absl::Status Stop();
  // Whether events of `frame` are wanted (cheap; lock-free).
  bool Wants(uint64_t frame) const;
  // Appends an event; `tags` resolves tag ids to paths.
  void Record(const TraceEvent& event, const TagRegistry& tags);
  uint64_t events_written() const;

 private:
  mutable alloc_internal::Mutex mu_;
  std::FILE* file_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t start_nanos_ ABSL_GUARDED_BY(mu_) = 0;
  // Relaxed: a stale read only records or skips an event at the edges.
  std::atomic<uint64_t> first_{1};
  std::atomic<uint64_t> end_{0};  // first_ >= end_: not recording.
};

}  // namespace framealloc

#endif  // ALLOC_DEBUG_H_
