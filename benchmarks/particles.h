// A particle system whose every frame builds temporary data, for the
// simulation benchmark and its tests.
//
// For: comparing where a frame's temporaries live (the heap against a frame
// arena) on the same algorithm. Particles are stored as a structure of
// arrays. Each frame bins them into a uniform grid (a list per cell), builds
// each particle's neighbour list, collects contacts, applies a soft
// repulsion and integrates. Every temporary container of a frame comes from
// the policy's allocator, so the two variants run the same code and must
// reach bit-identical states. Not for: physical accuracy.
#ifndef BENCHMARKS_PARTICLES_H_
#define BENCHMARKS_PARTICLES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "alloc/arena_allocator.h"
#include "alloc/frame_arena.h"

namespace framealloc {
namespace sim {

// Particle state, structure of arrays; lives across frames (on the heap).
struct Particles {
  std::vector<float> x, y, vx, vy;
  size_t size() const { return x.size(); }
};

// Parameters of the simulation, derived from the particle count so that a
// particle has about eight neighbours at any size.
struct Params {
  float radius;  // Interaction radius; also the grid cell size.
  int grid;      // Cells per side of the unit box.
  float stiffness = 40.0f;
  float dt = 1.0f / 240.0f;
  float gravity = -0.5f;
  static Params ForCount(size_t particles);
};

// `n` particles at random positions and velocities from `seed`.
Particles MakeParticles(size_t n, uint64_t seed);

// What one frame did (for the report and the tests).
struct FrameCounts {
  size_t contacts = 0;
  size_t neighbour_entries = 0;
  // Time of the frame's Integrate pass (steady clock), for the bandwidth
  // report: two clock reads per frame, in both variants alike.
  double integrate_seconds = 0;
};

// Heap allocations made through a HeapPolicy (plain counters: one thread).
struct HeapCounters {
  size_t allocations = 0;
  size_t bytes = 0;
};

// std::allocator that also counts, so the report can say how many heap
// allocations a frame made. The count costs two adds per call.
template <typename T>
class CountingHeapAllocator {
 public:
  using value_type = T;
  explicit CountingHeapAllocator(HeapCounters* counters)
      : counters_(counters) {}
  template <typename U>
  CountingHeapAllocator(const CountingHeapAllocator<U>& other)  // NOLINT
      : counters_(other.counters()) {}
  T* allocate(size_t n) {
    ++counters_->allocations;
    counters_->bytes += n * sizeof(T);
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) { std::allocator<T>().deallocate(p, n); }
  HeapCounters* counters() const { return counters_; }
  template <typename U>
  bool operator==(const CountingHeapAllocator<U>& other) const {
    return counters_ == other.counters();
  }

 private:
  HeapCounters* counters_;
};

// Temporaries on the heap (new/delete through std::allocator), freed one by
// one as the containers go out of scope.
struct HeapPolicy {
  HeapCounters* counters;
  template <typename T>
  using Allocator = CountingHeapAllocator<T>;
  template <typename T>
  Allocator<T> allocator() const {
    return Allocator<T>(counters);
  }
};

// Temporaries on a frame arena, dropped at once by Reset().
struct ArenaPolicy {
  FrameArena* arena;
  template <typename T>
  using Allocator = ArenaAllocator<T>;
  template <typename T>
  Allocator<T> allocator() const {
    return Allocator<T>(arena);
  }
};

// The last pass of a frame: velocities from the forces `fx`, `fy` (and
// gravity), positions from the velocities, reflected at the walls of the
// unit box. Streams the state: per particle it reads x, y, vx, vy, fx, fy
// (6 floats, 24 bytes) and writes x, y, vx, vy (4 floats, 16 bytes).
// REQUIRES: fx and fy hold particles.size() floats each.
void Integrate(Particles& particles, const Params& params, const float* fx,
               const float* fy);

// Runs one frame with the policy's temporaries. Defined for HeapPolicy and
// ArenaPolicy in particles.cc.
template <typename Policy>
FrameCounts Step(Particles& particles, const Params& params,
                 const Policy& policy);

// A hash of the exact bits of every particle's state.
uint64_t Checksum(const Particles& particles);

}  // namespace sim
}  // namespace framealloc

#endif  // BENCHMARKS_PARTICLES_H_
