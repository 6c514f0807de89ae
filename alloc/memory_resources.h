// std::pmr::memory_resource implementations over framealloc.
//
// For: running any std::pmr container (pmr::vector, pmr::string,
// pmr::unordered_map, ...) on frame memory or on the pools without changing
// its type. Three resources:
// - FrameArenaResource: one FrameArena directly (a scoped arena, say).
// - FrameMemoryResource: the calling thread's frame memory of a SmartAlloc
//   (budgets, tags and counters apply); deallocation is a no-op.
// - PoolMemoryResource: a SmartAlloc's pools (tracked heap beyond 4 KiB);
//   deallocation frees, from any thread.
// Not for: memory that must outlive the frame (the two frame resources).
//
// Out of memory or a refusing budget: std::bad_alloc, as std::pmr expects
// (the adapter boundary is the one place this library throws). The std::pmr
// containers survive it; Abseil's hash containers on a polymorphic_allocator
// do not when it comes during a rehash (abseil/abseil-cpp#1581).
// Thread safety: that of the underlying arena (one owner) or SmartAlloc
// (any thread).
#ifndef ALLOC_MEMORY_RESOURCES_H_
#define ALLOC_MEMORY_RESOURCES_H_

#include <cstddef>
#include <memory_resource>
#include <new>

#include "alloc/frame_arena.h"
#include "alloc/smart_alloc.h"

namespace framealloc {

// A std::pmr::memory_resource over one FrameArena: do_deallocate is a no-op,
// the memory comes back at the arena's Reset().
class FrameArenaResource final : public std::pmr::memory_resource {
 public:
  // REQUIRES: `arena` outlives the resource and every container using it.
  explicit FrameArenaResource(FrameArena* arena) : arena_(arena) {}
  FrameArena* arena() const { return arena_; }

 private:
  void* do_allocate(size_t bytes, size_t alignment) override {
    void* p = arena_->TryAllocate(bytes, alignment);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void*, size_t, size_t) override {}
  bool do_is_equal(
      const std::pmr::memory_resource& other) const noexcept override {
    auto* same = dynamic_cast<const FrameArenaResource*>(&other);
    return same != nullptr && same->arena_ == arena_;
  }

  FrameArena* const arena_;
};

// A std::pmr::memory_resource over the calling thread's frame memory of a
// SmartAlloc (frame_alloc): valid as long as frame_alloc's memory is (the
// frame's end, or later with AllocConfig::frames_in_flight).
class FrameMemoryResource final : public std::pmr::memory_resource {
 public:
  explicit FrameMemoryResource(SmartAlloc* alloc) : alloc_(alloc) {}
  SmartAlloc* alloc() const { return alloc_; }

 private:
  void* do_allocate(size_t bytes, size_t alignment) override {
    void* p = alloc_->try_frame_allocate(bytes, alignment);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void*, size_t, size_t) override {}
  bool do_is_equal(
      const std::pmr::memory_resource& other) const noexcept override {
    auto* same = dynamic_cast<const FrameMemoryResource*>(&other);
    return same != nullptr && same->alloc_ == alloc_;
  }

  SmartAlloc* const alloc_;
};

// A std::pmr::memory_resource over a SmartAlloc's pools (pool_alloc and
// pool_free): memory that lives across frames, freed one block at a time.
class PoolMemoryResource final : public std::pmr::memory_resource {
 public:
  explicit PoolMemoryResource(SmartAlloc* alloc) : alloc_(alloc) {}
  SmartAlloc* alloc() const { return alloc_; }

 private:
  void* do_allocate(size_t bytes, size_t alignment) override {
    void* p = alloc_->try_pool_allocate(bytes, alignment);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, size_t bytes, size_t alignment) override {
    alloc_->pool_deallocate(p, bytes, alignment);
  }
  bool do_is_equal(
      const std::pmr::memory_resource& other) const noexcept override {
    auto* same = dynamic_cast<const PoolMemoryResource*>(&other);
    return same != nullptr && same->alloc_ == alloc_;
  }

  SmartAlloc* const alloc_;
};

}  // namespace framealloc

#endif  // ALLOC_MEMORY_RESOURCES_H_
