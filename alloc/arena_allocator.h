// ArenaAllocator<T>: an STL allocator that takes its memory from a FrameArena.
//
// For: standard containers whose whole life fits in one frame (a per-frame
// std::vector of contacts, a map built and dropped each frame). Deallocation
// is a no-op; the memory comes back at the arena's Reset(). Not for:
// containers that outlive the frame, or that grow and shrink many times in
// one frame (every regrowth leaves the old buffer in the arena until Reset).
//
// Allocation failure: allocate() never returns null; it goes to the fatal
// error path like FrameArena::Allocate. Thread safety: that of the arena.
#ifndef ALLOC_ARENA_ALLOCATOR_H_
#define ALLOC_ARENA_ALLOCATOR_H_

#include <cstddef>
#include <vector>

#include "alloc/frame_arena.h"

namespace framealloc {

template <typename T>
class ArenaAllocator {
 public:
  using value_type = T;

  // REQUIRES: `arena` outlives every container using this allocator.
  explicit ArenaAllocator(FrameArena* arena) noexcept : arena_(arena) {}
  template <typename U>
  ArenaAllocator(const ArenaAllocator<U>& other) noexcept  // NOLINT: rebind.
      : arena_(other.arena()) {}

  T* allocate(size_t n) { return arena_->AllocateArray<T>(n); }
  void deallocate(T*, size_t) noexcept {}

  FrameArena* arena() const { return arena_; }

  template <typename U>
  bool operator==(const ArenaAllocator<U>& other) const noexcept {
    return arena_ == other.arena();
  }

 private:
  FrameArena* arena_;
};

// A std::vector whose buffer lives in a FrameArena.
template <typename T>
using ArenaVector = std::vector<T, ArenaAllocator<T>>;

}  // namespace framealloc

#endif  // ALLOC_ARENA_ALLOCATOR_H_
