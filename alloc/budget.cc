// Tags and budgets (see budget.h).
#include "alloc/budget.h"

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "alloc/internal/no_unwind.h"

namespace framealloc {

TagRegistry::TagRegistry() {
  alloc_internal::MutexLock lock(&mu_);
  paths_.push_back("");
  parents_.push_back(kRoot);
  size_.store(1, std::memory_order_release);
}

absl::StatusOr<TagId> TagRegistry::Child(TagId parent, absl::string_view name) {
  if (name.empty() || name.find('/') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tag name '", name, "' must be non-empty and contain no '/'"));
  }
  alloc_internal::MutexLock lock(&mu_);
  if (parent >= paths_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tag parent id ", parent, " does not exist"));
  }
  auto key = std::make_pair(parent, std::string(name));
  if (auto it = children_.find(key); it != children_.end()) return it->second;
  if (paths_.size() >= static_cast<size_t>(kMaxTags)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "too many tags: at most ", kMaxTags, " (root included); cannot add '",
        paths_[parent].empty() ? "" : paths_[parent] + "/", name, "'"));
  }
  const TagId id = static_cast<TagId>(paths_.size());
  paths_.push_back(parent == kRoot ? std::string(name)
                                   : absl::StrCat(paths_[parent], "/", name));
  parents_.push_back(parent);
  children_.emplace(std::move(key), id);
  size_.store(static_cast<int>(paths_.size()), std::memory_order_release);
  return id;
}

absl::StatusOr<TagId> TagRegistry::FromPath(absl::string_view path) {
  TagId id = kRoot;
  if (path.empty()) return id;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    absl::StatusOr<TagId> child = Child(id, part);
    if (!child.ok()) return child.status();
    id = *child;
  }
  return id;
}

std::string TagRegistry::Path(TagId id) const {
  alloc_internal::MutexLock lock(&mu_);
  return id < paths_.size() ? paths_[id] : std::string("<unknown tag>");
}

TagId TagRegistry::Parent(TagId id) const {
  alloc_internal::MutexLock lock(&mu_);
  return id < parents_.size() ? parents_[id] : kRoot;
}

absl::string_view BudgetScopeName(BudgetScope scope) {
  switch (scope) {
    case BudgetScope::kGlobal:
      return "global";
    case BudgetScope::kTag:
      return "tag";
    case BudgetScope::kFrame:
      return "frame";
  }
  return "unknown";
}

absl::string_view AllocEventKindName(AllocEventKind kind) {
  return kind == AllocEventKind::kBudgetWarning ? "budget warning"
                                                : "budget refused";
}

BudgetManager::BudgetManager(
    size_t global_limit,
    const std::vector<std::pair<std::string, TagBudget>>& tag_budgets,
    TagRegistry* registry, AllocEventCallback callback)
    : global_limit_(global_limit),
      registry_(registry),
      callback_(std::move(callback)) {
  for (const auto& [path, budget] : tag_budgets) {
    Budget& b = budgets_.emplace_back();
    b.path = path;
    b.budget = budget;
  }
  for (int i = 0; i < TagRegistry::kMaxTags; ++i) {
    budget_index_[i].store(-1, std::memory_order_relaxed);
    parent_[i].store(-1, std::memory_order_relaxed);
  }
  active_ = global_limit_ != 0 || !budgets_.empty();
}

BudgetManager::Budget* BudgetManager::BudgetOf(TagId tag) {
  int index = budget_index_[tag].load(std::memory_order_relaxed);
  if (index < 0) {
    const std::string path = registry_->Path(tag);
    index = 0;
    for (size_t i = 0; i < budgets_.size(); ++i) {
      if (budgets_[i].path == path) index = static_cast<int>(i) + 1;
    }
    budget_index_[tag].store(index, std::memory_order_relaxed);
  }
  return index == 0 ? nullptr : &budgets_[index - 1];
}

TagId BudgetManager::ParentOf(TagId tag) {
  int parent = parent_[tag].load(std::memory_order_relaxed);
  if (parent < 0) {
    parent = registry_->Parent(tag);
    parent_[tag].store(parent, std::memory_order_relaxed);
  }
  return static_cast<TagId>(parent);
}

namespace {

// Adds `bytes` to `used` unless that would pass `limit` (0: none), in one
// compare-and-swap: a refused request never shows in `used`, so it cannot
// make a concurrent request that fits look over the limit (adding first
// and undoing on refusal did). Returns whether it was added; `*before` is
// the value it was added to (or refused against).
bool Reserve(std::atomic<size_t>& used, size_t bytes, size_t limit,
             size_t* before) {
  size_t seen = used.load(std::memory_order_relaxed);
  for (;;) {
    // (limit - seen < bytes, not seen + bytes > limit: no wrap for a size
    // near SIZE_MAX. Without a limit, a sum that would wrap is refused too:
    // no allocator could serve such a request.)
    if ((limit != 0 && (seen > limit || limit - seen < bytes)) ||
        bytes > SIZE_MAX - seen) {
      *before = seen;
      return false;
    }
    if (used.compare_exchange_weak(seen, seen + bytes,
                                   std::memory_order_relaxed)) {
      *before = seen;
      return true;
    }
  }
}

}  // namespace

absl::Status BudgetManager::Charge(TagId tag, size_t bytes, uint64_t frame) {
  // Tag budgets on the path, innermost first (paths are short), then the
  // global one. Warnings wait until every budget took the request: a
  // request one of them refuses crossed no threshold for real.
  Budget* charged[TagRegistry::kMaxTags];
  size_t charged_before[TagRegistry::kMaxTags];
  int count = 0;
  const auto undo = [&charged, &count, bytes] {
    for (int i = 0; i < count; ++i) {
      charged[i]->used.fetch_sub(bytes, std::memory_order_relaxed);
    }
  };
  for (TagId t = tag; t != TagRegistry::kRoot; t = ParentOf(t)) {
    Budget* b = BudgetOf(t);
    if (b == nullptr) continue;
    size_t before;
    if (!Reserve(b->used, bytes, b->budget.limit_bytes, &before)) {
      undo();
      Emit({AllocEventKind::kBudgetRefused, BudgetScope::kTag, b->path, bytes,
            before, b->budget.limit_bytes, frame});
      return absl::ResourceExhaustedError(absl::StrCat(
          "tag budget '", b->path, "' refused ", bytes, " bytes: ", before,
          " of ", b->budget.limit_bytes, " bytes in use"));
    }
    charged_before[count] = before;
    charged[count++] = b;
  }
  if (global_limit_ != 0) {
    size_t before;
    if (!Reserve(global_used_, bytes, global_limit_, &before)) {
      undo();
      Emit({AllocEventKind::kBudgetRefused, BudgetScope::kGlobal, "", bytes,
            before, global_limit_, frame});
      return absl::ResourceExhaustedError(
          absl::StrCat("global budget refused ", bytes, " bytes: ", before,
                       " of ", global_limit_, " bytes in use"));
    }
  }
  for (int i = 0; i < count; ++i) {
    const Budget& b = *charged[i];
    const size_t before = charged_before[i];
    if (b.budget.warn_bytes != 0 && before < b.budget.warn_bytes &&
        b.budget.warn_bytes - before <= bytes) {
      Emit({AllocEventKind::kBudgetWarning, BudgetScope::kTag, b.path, bytes,
            before, b.budget.warn_bytes, frame});
    }
  }
  return absl::OkStatus();
}

void BudgetManager::Release(TagId tag, size_t bytes) {
  for (TagId t = tag; t != TagRegistry::kRoot; t = ParentOf(t)) {
    if (Budget* b = BudgetOf(t)) {
      b->used.fetch_sub(bytes, std::memory_order_relaxed);
    }
  }
  if (global_limit_ != 0) {
    global_used_.fetch_sub(bytes, std::memory_order_relaxed);
  }
}

void BudgetManager::Emit(const AllocEvent& event) {
  (event.kind == AllocEventKind::kBudgetWarning ? warnings_ : refusals_)
      .fetch_add(1, std::memory_order_relaxed);
  if (!callback_) return;
  // Charges are taken or given back around this call: an exception must
  // not leave one half done.
  alloc_internal::CallDroppingExceptions("an AllocConfig::on_event callback",
                                         "a budget charge or release",
                                         [&] { callback_(event); });
}

std::vector<BudgetManager::Use> BudgetManager::Uses() const {
  std::vector<Use> uses;
  for (const Budget& b : budgets_) {
    uses.push_back({b.path, b.budget, b.used.load(std::memory_order_relaxed)});
  }
  return uses;
}

size_t BudgetManager::tag_used(absl::string_view path) const {
  for (const Budget& b : budgets_) {
    if (b.path == path) return b.used.load(std::memory_order_relaxed);
  }
  return 0;
}

}  // namespace framealloc
