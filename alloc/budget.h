// Tags and budgets: who allocated what, and how much each may hold.
//
// For: SmartAlloc's attribution and limits. A tag is a path ("render",
// "render/shadows") interned to a small id; every frame, pool and heap
// allocation made under a tag is attributed to it. The BudgetManager holds
// a global limit and per-tag budgets (a soft threshold that raises a warning
// event, a hard limit that refuses), charged and released on the allocation
// paths. A tag budget covers the tag's whole subtree ("render" includes
// "render/shadows"). Per-thread frame budgets are checked by SmartAlloc with
// the thread's own counters and reported through Emit() here.
// Not for: per-allocation bookkeeping when no budget is configured: then
// active() is false and SmartAlloc never calls Charge/Release.
//
// Thread-safe. Charge/Release are lock-free (relaxed atomics). Each budget
// takes a request in one compare-and-swap, so no budget ever holds more
// than its limit, and a refused request never shows in a counter. A
// request that one budget takes and an outer one (a parent tag, the global
// budget) then refuses holds the inner one for that moment: a concurrent
// request may be refused there meanwhile. Warnings are raised only for a
// request every budget took.
#ifndef ALLOC_BUDGET_H_
#define ALLOC_BUDGET_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/internal/mutex.h"

namespace framealloc {

// A tag's id: 0 is the root (untagged); ids are dense and never reused.
using TagId = uint16_t;

// Interns tag paths. Thread-safe.
class TagRegistry {
 public:
  // Tags per registry, the root included.
  static constexpr int kMaxTags = 128;
  static constexpr TagId kRoot = 0;

  TagRegistry();

  // The id of `parent`'s child `name` (path "parent/name"), created on first
  // use. InvalidArgument for an empty name or one containing '/';
  // ResourceExhausted once kMaxTags tags exist.
  absl::StatusOr<TagId> Child(TagId parent, absl::string_view name);
  // The id of a full path ("render/shadows"), creating each level.
  absl::StatusOr<TagId> FromPath(absl::string_view path);

  // "" for the root, else "a/b/c". REQUIRES: id < size().
  std::string Path(TagId id) const;
  TagId Parent(TagId id) const;
  int size() const { return size_.load(std::memory_order_acquire); }

 private:
  mutable alloc_internal::Mutex mu_;
  absl::flat_hash_map<std::pair<TagId, std::string>, TagId> children_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::string> paths_ ABSL_GUARDED_BY(mu_);
  std::vector<TagId> parents_ ABSL_GUARDED_BY(mu_);
  // Published after a tag is fully created (release/acquire).
  std::atomic<int> size_{0};
};

// A budget on one tag's subtree. 0 means "no threshold" / "no limit".
struct TagBudget {
  size_t warn_bytes = 0;   // Crossing it raises a kBudgetWarning event.
  size_t limit_bytes = 0;  // A request that would exceed it is refused.
};

// Which budget an event is about: the global limit, a tag's budget, or a
// thread's frame budget.
enum class BudgetScope { kGlobal, kTag, kFrame };
// A soft threshold crossed (the request is served), or a hard limit that
// refused the request.
enum class AllocEventKind { kBudgetWarning, kBudgetRefused };

// "global", "tag", "frame"; "budget warning", "budget refused".
absl::string_view BudgetScopeName(BudgetScope scope);
absl::string_view AllocEventKindName(AllocEventKind kind);

// One budget event, as the user callback and the statistics see it.
struct AllocEvent {
  AllocEventKind kind;
  BudgetScope scope;
  std::string tag;       // The budget's tag ("" for global and frame).
  size_t requested = 0;  // The request's bytes.
  size_t used = 0;       // Bytes charged before the request.
  size_t limit = 0;      // The threshold or limit involved.
  uint64_t frame = 0;    // The global frame number at the event.
};

// Called on any thread, possibly concurrently; must be thread-safe and must
// not allocate from the SmartAlloc that raised the event. It is called
// while charges are taken or given back, so an exception it throws is
// dropped (with a line on stderr).
using AllocEventCallback = std::function<void(const AllocEvent&)>;

// The global limit and the per-tag budgets of one SmartAlloc: Charge takes a
// request's bytes (or refuses it), Release gives them back, Emit reports an
// event (see the file comment). Thread-safe.
class BudgetManager {
 public:
  // `tag_budgets` by path. `registry` is not owned and must outlive this.
  BudgetManager(
      size_t global_limit,
      const std::vector<std::pair<std::string, TagBudget>>& tag_budgets,
      TagRegistry* registry, AllocEventCallback callback);

  // True when a global limit or any tag budget exists.
  bool active() const { return active_; }

  // Charges `bytes` to the global budget and to every budgeted tag on
  // `tag`'s path. Refuses, charging nothing, when a hard limit would be
  // exceeded: ResourceExhausted naming the budget, its use and limit (and a
  // kBudgetRefused event). Emits a kBudgetWarning event when a soft
  // threshold is crossed.
  absl::Status Charge(TagId tag, size_t bytes, uint64_t frame);
  // Releases a successful Charge.
  void Release(TagId tag, size_t bytes);

  // Sends an event to the callback and counts it.
  void Emit(const AllocEvent& event);

  size_t global_used() const {
    return global_used_.load(std::memory_order_relaxed);
  }
  size_t global_limit() const { return global_limit_; }
  // Bytes charged to `path`'s budget (0 if it has none).
  size_t tag_used(absl::string_view path) const;
  // Every tag budget with what is charged to it now.
  struct Use {
    std::string path;
    TagBudget budget;
    size_t used;
  };
  std::vector<Use> Uses() const;
  uint64_t warnings() const {
    return warnings_.load(std::memory_order_relaxed);
  }
  uint64_t refusals() const {
    return refusals_.load(std::memory_order_relaxed);
  }

 private:
  struct Budget {
    std::string path;
    TagBudget budget;
    std::atomic<size_t> used{0};
  };
  // The budget whose path is exactly `tag`'s, or nullptr; cached per tag.
  Budget* BudgetOf(TagId tag);
  TagId ParentOf(TagId tag);

  const size_t global_limit_;
  TagRegistry* const registry_;
  const AllocEventCallback callback_;
  bool active_;
  std::deque<Budget> budgets_;  // Stable addresses; fixed after construction.
  // Per tag: -1 unresolved, 0 no budget, k > 0 budgets_[k - 1]. And the
  // tag's parent, cached (-1 unresolved). Relaxed: a stale -1 only means
  // resolving again, and resolution always gives the same answer.
  std::atomic<int> budget_index_[TagRegistry::kMaxTags];
  std::atomic<int> parent_[TagRegistry::kMaxTags];
  // Relaxed: counters, published nothing.
  std::atomic<size_t> global_used_{0};
  std::atomic<uint64_t> warnings_{0};
  std::atomic<uint64_t> refusals_{0};
};

}  // namespace framealloc

#endif  // ALLOC_BUDGET_H_
