// Entities and structure-of-arrays component storage (a sparse set).
//
// For: the persistent state of an ECS world. An Entity is an index and a
// generation (a destroyed entity's handle never aliases its successor);
// SoaStore<Columns...> keeps one dense std::vector per column (structure of
// arrays), packed without holes: Add appends, Remove moves the last entity
// into the hole (swap-and-pop in every column), and a sparse array maps an
// entity's index to its dense slot in O(1). Systems iterate the dense
// columns directly (column<I>()), in dense order.
// Not for: per-frame components (FrameColumn in integration/ecs/transform.h
// lives on frame memory), nor sharing one store between threads that write
// (structural changes are single-threaded; jobs may write disjoint items of
// the columns concurrently).
//
// Thread safety: none for Add/Remove; const methods and column writes to
// disjoint items may run concurrently.
// Errors: Add on a null entity or one already present, Remove/IndexOf on one
// that is absent: InvalidArgument / AlreadyExists / NotFound naming the
// entity. Nothing aborts.
//
// Example:
//   EntityRegistry registry;
//   SoaStore<Vec3, float> bodies;          // column 0: position, 1: mass
//   Entity e = registry.Create();
//   absl::Status s = bodies.Add(e, Vec3{0, 1, 0}, 2.0f);
//   for (Vec3& p : bodies.column<0>()) p.y -= 0.1f;
//   s = bodies.Remove(e);
#ifndef INTEGRATION_ECS_SOA_STORE_H_
#define INTEGRATION_ECS_SOA_STORE_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <span>
#include <stdexcept>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace framealloc::integration::ecs {

// A handle to an entity: index into the registry and the generation of that
// index when the entity was created.
struct Entity {
  static constexpr uint32_t kNullIndex = std::numeric_limits<uint32_t>::max();
  uint32_t index = kNullIndex;
  uint32_t generation = 0;

  static constexpr Entity Null() { return Entity(); }
  constexpr bool is_null() const { return index == kNullIndex; }
  friend constexpr bool operator==(Entity a, Entity b) {
    return a.index == b.index && a.generation == b.generation;
  }
};

// Creates and destroys entities; reuses indexes with a new generation.
class EntityRegistry {
 public:
  Entity Create() {
    if (!free_.empty()) {
      const uint32_t index = free_.back();
      free_.pop_back();
      alive_[index] = true;
      return Entity{index, generations_[index]};
    }
    generations_.push_back(0);
    alive_.push_back(true);
    return Entity{static_cast<uint32_t>(generations_.size() - 1), 0};
  }
  // NotFound if `e` is not alive (never created, or destroyed already).
  absl::Status Destroy(Entity e) {
    if (!IsAlive(e)) {
      return absl::NotFoundError(
          absl::StrCat("EntityRegistry::Destroy: entity ", e.index, "v",
                       e.generation, " is not alive"));
    }
    alive_[e.index] = false;
    ++generations_[e.index];
    free_.push_back(e.index);
    return absl::OkStatus();
  }
  bool IsAlive(Entity e) const {
    return e.index < generations_.size() && alive_[e.index] &&
           generations_[e.index] == e.generation;
  }
  size_t alive_count() const { return generations_.size() - free_.size(); }

 private:
  std::vector<uint32_t> generations_;
  std::vector<bool> alive_;
  std::vector<uint32_t> free_;
};

template <typename... Columns>
class SoaStore {
 public:
  static constexpr uint32_t kAbsent = std::numeric_limits<uint32_t>::max();
  template <size_t I>
  using ColumnType = std::tuple_element_t<I, std::tuple<Columns...>>;

  // Appends `e` with one value per column. InvalidArgument for a null
  // entity, AlreadyExists if `e` (this generation) is present; an older
  // generation of the same index still present is InvalidArgument too
  // (remove it first); ResourceExhausted if the sparse index cannot grow to
  // e.index (a made-up handle far past any registry's).
  absl::Status Add(Entity e, Columns... values) {
    if (e.is_null()) {
      return absl::InvalidArgumentError("SoaStore::Add: null entity");
    }
    if (e.index < sparse_.size() && sparse_[e.index] != kAbsent) {
      const Entity there = dense_[sparse_[e.index]];
      if (there == e) {
        return absl::AlreadyExistsError(
            absl::StrCat("SoaStore::Add: entity ", e.index, "v", e.generation,
                         " already has this component"));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "SoaStore::Add: entity index ", e.index, " is held by generation ",
          there.generation, ", not ", e.generation));
    }
    if (e.index >= sparse_.size()) {
      // The sparse index grows to the entity's index: a made-up handle far
      // past what a registry hands out may ask for gigabytes.
      try {
        sparse_.resize(static_cast<size_t>(e.index) + 1, kAbsent);
      } catch (const std::bad_alloc&) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "SoaStore::Add: no memory for a sparse index up to entity ",
            e.index));
      } catch (const std::length_error&) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "SoaStore::Add: no memory for a sparse index up to entity ",
            e.index));
      }
    }
    sparse_[e.index] = static_cast<uint32_t>(dense_.size());
    dense_.push_back(e);
    AppendAll(std::index_sequence_for<Columns...>(), std::move(values)...);
    ++version_;
    return absl::OkStatus();
  }

  // Removes `e`: the last entity moves into its slot in every column.
  // NotFound if absent.
  absl::Status Remove(Entity e) {
    absl::StatusOr<size_t> slot = IndexOf(e);
    if (!slot.ok()) return slot.status();
    const size_t last = dense_.size() - 1;
    if (*slot != last) {
      dense_[*slot] = dense_[last];
      sparse_[dense_[*slot].index] = static_cast<uint32_t>(*slot);
      MoveAll(std::index_sequence_for<Columns...>(), last, *slot);
    }
    dense_.pop_back();
    PopAll(std::index_sequence_for<Columns...>());
    sparse_[e.index] = kAbsent;
    ++version_;
    return absl::OkStatus();
  }

  bool Contains(Entity e) const {
    return !e.is_null() && e.index < sparse_.size() &&
           sparse_[e.index] != kAbsent && dense_[sparse_[e.index]] == e;
  }
  // The dense slot of `e`; NotFound if absent.
  absl::StatusOr<size_t> IndexOf(Entity e) const {
    if (!Contains(e)) {
      return absl::NotFoundError(absl::StrCat("SoaStore: entity ", e.index, "v",
                                              e.generation,
                                              " has no such component"));
    }
    return static_cast<size_t>(sparse_[e.index]);
  }
  // The dense slot of `e`, or kAbsent: the unchecked form for hot loops.
  uint32_t SlotOrAbsent(Entity e) const {
    return Contains(e) ? sparse_[e.index] : kAbsent;
  }

  size_t size() const { return dense_.size(); }
  // Entities in dense order.
  std::span<const Entity> entities() const { return dense_; }
  // Column I in dense order.
  template <size_t I>
  std::span<ColumnType<I>> column() {
    return std::get<I>(columns_);
  }
  template <size_t I>
  std::span<const ColumnType<I>> column() const {
    return std::get<I>(columns_);
  }
  // Changes on every Add, Remove and Permute (the dense order changed).
  uint64_t version() const { return version_; }

  // Reorders the dense slots: new slot j holds what slot order[j] held, in
  // every column (a system that walks the store in dense order then walks
  // it in this order). InvalidArgument, and nothing changes, unless `order`
  // is a permutation of [0, size()).
  absl::Status Permute(std::span<const uint32_t> order) {
    const size_t n = dense_.size();
    if (order.size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("SoaStore::Permute: ", order.size(),
                       " slots given for a store of ", n));
    }
    std::vector<bool> seen(n, false);
    for (const uint32_t from : order) {
      if (from >= n || seen[from]) {
        return absl::InvalidArgumentError(
            absl::StrCat("SoaStore::Permute: slot ", from,
                         from >= n ? " is out of range" : " appears twice"));
      }
      seen[from] = true;
    }
    std::vector<Entity> dense(n);
    for (size_t j = 0; j < n; ++j) {
      dense[j] = dense_[order[j]];
      sparse_[dense[j].index] = static_cast<uint32_t>(j);
    }
    dense_ = std::move(dense);
    PermuteAll(std::index_sequence_for<Columns...>(), order);
    ++version_;
    return absl::OkStatus();
  }

 private:
  template <size_t... I>
  void PermuteAll(std::index_sequence<I...>, std::span<const uint32_t> order) {
    (PermuteColumn(std::get<I>(columns_), order), ...);
  }
  template <typename T>
  static void PermuteColumn(std::vector<T>& column,
                            std::span<const uint32_t> order) {
    std::vector<T> out;
    out.reserve(column.size());
    for (const uint32_t from : order) out.push_back(std::move(column[from]));
    column = std::move(out);
  }
  template <size_t... I>
  void AppendAll(std::index_sequence<I...>, Columns&&... values) {
    (std::get<I>(columns_).push_back(std::move(values)), ...);
  }
  template <size_t... I>
  void MoveAll(std::index_sequence<I...>, size_t from, size_t to) {
    ((std::get<I>(columns_)[to] = std::move(std::get<I>(columns_)[from])), ...);
  }
  template <size_t... I>
  void PopAll(std::index_sequence<I...>) {
    (std::get<I>(columns_).pop_back(), ...);
  }

  std::vector<uint32_t> sparse_;  // Entity index -> dense slot or kAbsent.
  std::vector<Entity> dense_;
  std::tuple<std::vector<Columns>...> columns_;
  uint64_t version_ = 0;
};

}  // namespace framealloc::integration::ecs

#endif  // INTEGRATION_ECS_SOA_STORE_H_
