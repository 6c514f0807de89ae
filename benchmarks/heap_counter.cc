// The counting global operator new/delete (see heap_counter.h).
#include "benchmarks/heap_counter.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace framealloc::sim {
namespace {

// One cache line per thread; only its owner writes it.
struct alignas(64) Slot {
  std::atomic<uint64_t> allocations{0};
  std::atomic<uint64_t> bytes{0};
};

constexpr int kSlots = 1024;
Slot g_slots[kSlots];
// Threads beyond kSlots share this one (with atomic adds).
Slot g_shared;
std::atomic<int> g_next_slot{0};
// Constant-initialized and trivially destructible: safe to read from
// operator new at any point of a thread's life, TLS teardown included.
thread_local int t_slot = -1;

inline void Count(size_t bytes) {
  int slot = t_slot;
  if (slot < 0) [[unlikely]] {
    slot = g_next_slot.fetch_add(1, std::memory_order_relaxed);
    if (slot >= kSlots) slot = kSlots;  // The shared slot.
    t_slot = slot;
  }
  if (slot < kSlots) [[likely]] {
    // Owner-only writes: a plain load and store, no locked instruction.
    // Relaxed: readers sum after synchronizing with the writers (the end
    // of the frame's jobs).
    Slot& s = g_slots[slot];
    s.allocations.store(s.allocations.load(std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
    s.bytes.store(s.bytes.load(std::memory_order_relaxed) + bytes,
                  std::memory_order_relaxed);
  } else {
    g_shared.allocations.fetch_add(1, std::memory_order_relaxed);
    g_shared.bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
}

inline void* Allocate(size_t size) {
  Count(size);
  void* p = std::malloc(size == 0 ? 1 : size);
  return p;
}

inline void* AllocateAligned(size_t size, std::align_val_t al) {
  Count(size);
  const size_t alignment = static_cast<size_t>(al);
  // Rounding such a size up to the alignment wraps (to 0, and then a block
  // of `alignment` bytes was returned): no block can be that large, so the
  // request fails, as malloc(SIZE_MAX) does on the unaligned path.
  if (size > SIZE_MAX - alignment) [[unlikely]] {
    return nullptr;
  }
  size_t rounded = (size + alignment - 1) / alignment * alignment;
  if (rounded == 0) rounded = alignment;
  return std::aligned_alloc(alignment, rounded);
}

}  // namespace

HeapCounts ReadHeapCounts() {
  HeapCounts c;
  const int used =
      std::min(g_next_slot.load(std::memory_order_relaxed), kSlots);
  for (int i = 0; i < used; ++i) {
    c.allocations += g_slots[i].allocations.load(std::memory_order_relaxed);
    c.bytes += g_slots[i].bytes.load(std::memory_order_relaxed);
  }
  c.allocations += g_shared.allocations.load(std::memory_order_relaxed);
  c.bytes += g_shared.bytes.load(std::memory_order_relaxed);
  return c;
}

}  // namespace framealloc::sim

using framealloc::sim::Allocate;
using framealloc::sim::AllocateAligned;

void* operator new(size_t size) {
  void* p = Allocate(size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t size) {
  void* p = Allocate(size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return Allocate(size);
}
void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return Allocate(size);
}
void* operator new(size_t size, std::align_val_t al) {
  void* p = AllocateAligned(size, al);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t size, std::align_val_t al) {
  void* p = AllocateAligned(size, al);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new(size_t size, std::align_val_t al,
                   const std::nothrow_t&) noexcept {
  return AllocateAligned(size, al);
}
void* operator new[](size_t size, std::align_val_t al,
                     const std::nothrow_t&) noexcept {
  return AllocateAligned(size, al);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t,
                     const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t,
                       const std::nothrow_t&) noexcept {
  std::free(p);
}
