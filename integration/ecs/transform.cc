// The transform hierarchy's math, checks and ordering (see transform.h).
#include "integration/ecs/transform.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace framealloc::integration::ecs {
namespace {

std::string Name(Entity e) { return absl::StrCat(e.index, "v", e.generation); }

// Hierarchy versions: every value handed out once per process. Relaxed:
// only the uniqueness of the values matters (an atomic read-modify-write
// gives each caller its own), not their order against other memory.
std::atomic<uint64_t> next_hierarchy_version{1};

}  // namespace

uint64_t Transforms::NewHierarchyVersion() {
  return next_hierarchy_version.fetch_add(1, std::memory_order_relaxed);
}

Transforms::Transforms(Transforms&& other) noexcept
    : store_(std::move(other.store_)),
      hierarchy_version_(other.hierarchy_version_) {
  other.store_ = Store();  // Empty for certain, not "valid but unspecified".
  other.hierarchy_version_ = NewHierarchyVersion();
}

Transforms& Transforms::operator=(Transforms&& other) noexcept {
  if (this != &other) {
    store_ = std::move(other.store_);
    hierarchy_version_ = other.hierarchy_version_;
    other.store_ = Store();
    other.hierarchy_version_ = NewHierarchyVersion();
  }
  return *this;
}

Quat Quat::AxisAngle(float ax, float ay, float az, float radians) {
  const float h = radians * 0.5f;
  const float s = std::sin(h);
  return Quat{std::cos(h), ax * s, ay * s, az * s};
}

Quat Quat::operator*(const Quat& q) const {
  return Quat{w * q.w - x * q.x - y * q.y - z * q.z,
              w * q.x + x * q.w + y * q.z - z * q.y,
              w * q.y - x * q.z + y * q.w + z * q.x,
              w * q.z + x * q.y - y * q.x + z * q.w};
}

Quat Quat::Normalized() const {
  const float n = std::sqrt(w * w + x * x + y * y + z * z);
  if (n == 0) return Quat();
  const float inv = 1.0f / n;
  return Quat{w * inv, x * inv, y * inv, z * inv};
}

Mat4 Mat4::FromTrs(const Vec3& t, const Quat& r, float s) {
  const float xx = r.x * r.x, yy = r.y * r.y, zz = r.z * r.z;
  const float xy = r.x * r.y, xz = r.x * r.z, yz = r.y * r.z;
  const float wx = r.w * r.x, wy = r.w * r.y, wz = r.w * r.z;
  Mat4 out;
  out.m[0] = (1 - 2 * (yy + zz)) * s;
  out.m[1] = (2 * (xy + wz)) * s;
  out.m[2] = (2 * (xz - wy)) * s;
  out.m[3] = 0;
  out.m[4] = (2 * (xy - wz)) * s;
  out.m[5] = (1 - 2 * (xx + zz)) * s;
  out.m[6] = (2 * (yz + wx)) * s;
  out.m[7] = 0;
  out.m[8] = (2 * (xz + wy)) * s;
  out.m[9] = (2 * (yz - wx)) * s;
  out.m[10] = (1 - 2 * (xx + yy)) * s;
  out.m[11] = 0;
  out.m[12] = t.x;
  out.m[13] = t.y;
  out.m[14] = t.z;
  out.m[15] = 1;
  return out;
}

Mat4 Mat4::operator*(const Mat4& b) const {
  Mat4 out;
  for (int c = 0; c < 4; ++c) {
    for (int r = 0; r < 4; ++r) {
      out.m[c * 4 + r] =
          m[0 * 4 + r] * b.m[c * 4 + 0] + m[1 * 4 + r] * b.m[c * 4 + 1] +
          m[2 * 4 + r] * b.m[c * 4 + 2] + m[3 * 4 + r] * b.m[c * 4 + 3];
    }
  }
  return out;
}

Vec3 Mat4::TransformPoint(const Vec3& p) const {
  return {m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
          m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
          m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14]};
}

bool Transforms::Reaches(Entity from, Entity target) const {
  // Chains through removed entities end there (they are roots now).
  const auto parents = store_.column<kParent>();
  Entity a = from;
  for (size_t steps = 0; !a.is_null() && steps <= store_.size(); ++steps) {
    if (a == target) return true;
    const uint32_t s = store_.SlotOrAbsent(a);
    if (s == Store::kAbsent) return false;
    a = parents[s];
  }
  return false;
}

absl::Status Transforms::Add(Entity e, const LocalTransform& t) {
  if (!t.parent.is_null()) {
    if (t.parent == e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Transforms::Add: entity ", Name(e), " cannot be its own parent"));
    }
    if (!store_.Contains(t.parent)) {
      return absl::NotFoundError(
          absl::StrCat("Transforms::Add: parent ", Name(t.parent), " of ",
                       Name(e), " has no transform (add parents first)"));
    }
    // An entity removed and added again may still be named as the parent
    // of its old children: under one of them it would close a cycle.
    if (Reaches(t.parent, e)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Transforms::Add: ", Name(t.parent), " descends from ",
                       Name(e), " (it still names ", Name(e),
                       " as an ancestor); parenting would make a cycle"));
    }
  }
  absl::Status s = store_.Add(e, t.position, t.rotation, t.scale, t.parent);
  if (s.ok()) hierarchy_version_ = NewHierarchyVersion();
  return s;
}

absl::Status Transforms::Remove(Entity e) {
  absl::Status s = store_.Remove(e);
  if (s.ok()) hierarchy_version_ = NewHierarchyVersion();
  return s;
}

absl::Status Transforms::Reorder(std::span<const uint32_t> slots) {
  absl::Status s = store_.Permute(slots);
  if (s.ok()) hierarchy_version_ = NewHierarchyVersion();
  return s;
}

absl::Status Transforms::SetParent(Entity child, Entity parent) {
  absl::StatusOr<size_t> slot = store_.IndexOf(child);
  if (!slot.ok()) return slot.status();
  if (!parent.is_null()) {
    if (!store_.Contains(parent)) {
      return absl::NotFoundError(absl::StrCat(
          "Transforms::SetParent: parent ", Name(parent), " has no transform"));
    }
    // Walk up from the new parent: meeting the child means a cycle.
    if (Reaches(parent, child)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Transforms::SetParent: ", Name(parent), " is ", Name(child),
          " or one of its descendants; parenting would make a cycle"));
    }
  }
  store_.column<kParent>()[*slot] = parent;
  hierarchy_version_ = NewHierarchyVersion();
  return absl::OkStatus();
}

absl::Status HierarchyOrder::Update(const Transforms& tf) {
  if (IsUpToDate(tf)) return absl::OkStatus();
  const auto& store = tf.store();
  const size_t n = store.size();
  const auto parents = store.column<Transforms::kParent>();
  // Depth of every slot, memoized; -1 unknown, -2 on the current path.
  std::vector<int32_t> depth(n, -1);
  std::vector<uint32_t> path;
  for (size_t i = 0; i < n; ++i) {
    uint32_t cur = static_cast<uint32_t>(i);
    path.clear();
    while (depth[cur] == -1) {
      depth[cur] = -2;
      path.push_back(cur);
      const uint32_t p = store.SlotOrAbsent(parents[cur]);
      if (p == Transforms::Store::kAbsent) break;
      if (depth[p] == -2) {
        return absl::InternalError(
            absl::StrCat("HierarchyOrder: cycle through dense slot ", p));
      }
      cur = p;
    }
    // Unwind: the last on the path is a root or has a known parent depth.
    for (size_t j = path.size(); j > 0; --j) {
      const uint32_t s = path[j - 1];
      const uint32_t p = store.SlotOrAbsent(parents[s]);
      depth[s] = p == Transforms::Store::kAbsent ? 0 : depth[p] + 1;
    }
  }
  int32_t max_depth = -1;
  for (int32_t d : depth) max_depth = std::max(max_depth, d);
  // Counting sort by depth, stable in slot order.
  level_begin_.assign(static_cast<size_t>(max_depth + 2), 0);
  for (int32_t d : depth) ++level_begin_[d + 1];
  for (size_t d = 1; d < level_begin_.size(); ++d) {
    level_begin_[d] += level_begin_[d - 1];
  }
  std::vector<size_t> next(level_begin_.begin(), level_begin_.end() - 1);
  slot_.assign(n, 0);
  position_of_slot_.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const size_t k = next[depth[i]]++;
    slot_[k] = static_cast<uint32_t>(i);
    position_of_slot_[i] = static_cast<uint32_t>(k);
  }
  parent_pos_.assign(n, -1);
  for (size_t k = 0; k < n; ++k) {
    const uint32_t p = store.SlotOrAbsent(parents[slot_[k]]);
    if (p != Transforms::Store::kAbsent) {
      parent_pos_[k] = static_cast<int32_t>(position_of_slot_[p]);
    }
  }
  BuildTreeGroups();
  version_ = tf.hierarchy_version();
  return absl::OkStatus();
}

void HierarchyOrder::BuildTreeGroups() {
  const size_t n = slot_.size();
  const size_t roots = level_begin_.size() > 1 ? level_begin_[1] : 0;
  groups_ = std::min(kTreeGroups, roots);
  // Each tree's size (by its root's position; parents come first).
  std::vector<uint32_t> root_of(n);
  std::vector<size_t> tree_size(roots, 0);
  for (size_t k = 0; k < n; ++k) {
    const int32_t p = parent_pos_[k];
    root_of[k] = p < 0 ? static_cast<uint32_t>(k) : root_of[p];
    ++tree_size[root_of[k]];
  }
  // Roots in slot (= position) order, cut where the running total reaches
  // the next multiple of n / groups; never more groups than roots.
  std::vector<uint32_t> group_of_root(roots, 0);
  size_t g = 0, total = 0;
  for (size_t r = 0; r < roots; ++r) {
    group_of_root[r] = static_cast<uint32_t>(g);
    total += tree_size[r];
    // Close group g once it holds its share, or when the roots left are
    // just enough for one per group still to come (no group is empty).
    if (g + 1 < groups_ &&
        (total * groups_ >= (g + 1) * n || roots - r - 1 == groups_ - g - 1)) {
      ++g;
    }
  }
  group_of_.assign(n, 0);
  std::vector<size_t> group_size(groups_, 0);
  for (size_t k = 0; k < n; ++k) {
    group_of_[k] = group_of_root[root_of[k]];
    ++group_size[group_of_[k]];
  }
  largest_group_ = group_size.empty() ? 0
                                      : *std::max_element(group_size.begin(),
                                                          group_size.end());
  // Grouped: within every level, group ids never decrease.
  grouped_ = groups_ > 0;
  group_level_.assign(levels() * (groups_ + 1), 0);
  for (size_t d = 0; d < levels() && grouped_; ++d) {
    size_t* bounds = &group_level_[d * (groups_ + 1)];
    const size_t b = level_begin_[d], e = level_begin_[d + 1];
    for (size_t k = b + 1; k < e; ++k) {
      if (group_of_[k] < group_of_[k - 1]) grouped_ = false;
    }
    // bounds[h]: the first position of level d in group h or later.
    size_t k = b;
    for (size_t h = 0; h <= groups_; ++h) {
      while (k < e && group_of_[k] < h) ++k;
      bounds[h] = k;
    }
  }
  if (!grouped_) group_level_.clear();
}

std::vector<uint32_t> HierarchyOrder::GroupedSlotOrder() const {
  // Positions are by depth, then slot: a stable counting sort by group
  // gives group, depth, slot.
  std::vector<size_t> next(groups_ + 1, 0);
  for (const uint32_t g : group_of_) ++next[g + 1];
  for (size_t g = 1; g <= groups_; ++g) next[g] += next[g - 1];
  std::vector<uint32_t> slots(slot_.size());
  for (size_t k = 0; k < slot_.size(); ++k)
    slots[next[group_of_[k]]++] = slot_[k];
  return slots;
}

absl::StatusOr<size_t> HierarchyOrder::PositionOf(const Transforms& tf,
                                                  Entity e) const {
  absl::StatusOr<size_t> slot = tf.store().IndexOf(e);
  if (!slot.ok()) return slot.status();
  // A stale order may hold the slot and still give a wrong position (an
  // entity added at a lower depth shifts the deeper ones).
  if (!IsUpToDate(tf) || *slot >= position_of_slot_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "HierarchyOrder::PositionOf: the order is not up to date: built for "
        "hierarchy version ",
        version_, ", the transforms are at version ", tf.hierarchy_version(),
        "; they must be equal (call Update(tf) first)"));
  }
  return static_cast<size_t>(position_of_slot_[*slot]);
}

std::vector<Mat4> ReferenceWorldTransforms(const Transforms& tf) {
  const auto& store = tf.store();
  const size_t n = store.size();
  const auto pos = store.column<Transforms::kPosition>();
  const auto rot = store.column<Transforms::kRotation>();
  const auto scl = store.column<Transforms::kScale>();
  const auto parents = store.column<Transforms::kParent>();
  std::vector<Mat4> world(n);
  std::vector<bool> done(n, false);
  std::vector<uint32_t> chain;
  for (size_t i = 0; i < n; ++i) {
    // Collect the chain of not-yet-computed ancestors, then compute them
    // from the top down.
    chain.clear();
    uint32_t cur = static_cast<uint32_t>(i);
    while (cur != Transforms::Store::kAbsent && !done[cur]) {
      chain.push_back(cur);
      cur = store.SlotOrAbsent(parents[cur]);
    }
    for (size_t j = chain.size(); j > 0; --j) {
      const uint32_t s = chain[j - 1];
      const Mat4 local = Mat4::FromTrs(pos[s], rot[s], scl[s]);
      const uint32_t p = store.SlotOrAbsent(parents[s]);
      world[s] = p == Transforms::Store::kAbsent ? local : world[p] * local;
      done[s] = true;
    }
  }
  return world;
}

}  // namespace framealloc::integration::ecs
