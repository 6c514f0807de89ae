// Collision kernels of the physics integration: vectors, bounding boxes, the
// one-axis sort-and-sweep broad phase, and exact sphere-sphere and
// sphere-plane contact generation.
//
// For: integration/physics/physics_world.h (which runs these per spatial slab
// on frame memory) and tests that check them against brute force and known
// configurations. Not for: general collision detection (spheres and planes
// only; no rotation state is needed because a sphere's shape does not depend
// on its orientation).
//
// Determinism: every function here is a pure function of its arguments; the
// broad phase orders its output by a total order (box start, then id), so equal
// inputs give equal pair lists on any thread. The package compiles with
// -ffp-contract=off so that no build contracts a * b + c differently in two
// copies of a kernel.
// Thread safety: none needed (pure functions; callers own the buffers).
// Errors: none; callers validate sizes (PhysicsConfig::Validate).
//
// Example:
//   std::vector<SweepEntry> entries = ...;  // one per body, own = 1
//   std::vector<BodyPair> pairs;
//   SortAndSweep(absl::MakeSpan(entries), /*axis=*/2, pairs);  // overlaps
//   SphereContact c;
//   if (CollideSpheres({0, 0, 0}, 0.5f, {0.9f, 0, 0}, 0.5f, 0.05f, &c)) {
//     // c.normal == {1, 0, 0}, c.separation == -0.1f
//   }
#ifndef INTEGRATION_PHYSICS_COLLISION_H_
#define INTEGRATION_PHYSICS_COLLISION_H_

#include <algorithm>
#include <cstdint>

#include "absl/types/span.h"

namespace framealloc {
namespace integration {

struct Vec3 {
  float x = 0, y = 0, z = 0;
};

inline Vec3 operator+(Vec3 a, Vec3 b) {
  return {a.x + b.x, a.y + b.y, a.z + b.z};
}
inline Vec3 operator-(Vec3 a, Vec3 b) {
  return {a.x - b.x, a.y - b.y, a.z - b.z};
}
inline Vec3 operator*(Vec3 a, float s) { return {a.x * s, a.y * s, a.z * s}; }
inline float Dot(Vec3 a, Vec3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
inline Vec3 Cross(Vec3 a, Vec3 b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}

// An axis-aligned box.
struct Aabb {
  Vec3 lo, hi;
};

inline bool Overlaps(const Aabb& a, const Aabb& b) {
  return a.lo.x <= b.hi.x && b.lo.x <= a.hi.x && a.lo.y <= b.hi.y &&
         b.lo.y <= a.hi.y && a.lo.z <= b.hi.z && b.lo.z <= a.hi.z;
}

// A body's box in the sweep. `own` says whether the body belongs to the
// slab doing the sweep: pairs of two foreign bodies are left to their own
// slab, so every pair is reported by exactly one slab.
struct SweepEntry {
  Aabb box;
  uint32_t id = 0;
  uint32_t own = 1;
};

// Two bodies whose boxes overlap; first < second.
struct BodyPair {
  uint32_t first = 0;
  uint32_t second = 0;
  friend bool operator==(BodyPair a, BodyPair b) {
    return a.first == b.first && a.second == b.second;
  }
};

// Coordinate `axis` (0: x, 1: y, 2: z) of v.
inline float Coord(const Vec3& v, int axis) {
  return axis == 0 ? v.x : (axis == 1 ? v.y : v.z);
}

// Sort and sweep on one axis: sorts `entries` by (box.lo[axis], id), then
// appends to `pairs` every pair whose boxes overlap on all three axes and of
// which at least one entry is `own`, in sweep order. `PairVec` is any
// vector-like container of BodyPair (std::vector, a frame-arena vector).
// REQUIRES: ids are distinct; axis in 0..2.
template <typename PairVec>
void SortAndSweep(absl::Span<SweepEntry> entries, int axis, PairVec& pairs) {
  std::sort(entries.begin(), entries.end(),
            [axis](const SweepEntry& a, const SweepEntry& b) {
              const float la = Coord(a.box.lo, axis);
              const float lb = Coord(b.box.lo, axis);
              if (la != lb) return la < lb;
              return a.id < b.id;
            });
  const size_t n = entries.size();
  for (size_t i = 0; i < n; ++i) {
    const SweepEntry& a = entries[i];
    const float end = Coord(a.box.hi, axis);
    for (size_t j = i + 1; j < n && Coord(entries[j].box.lo, axis) <= end;
         ++j) {
      const SweepEntry& b = entries[j];
      if ((a.own | b.own) == 0) continue;
      if (Overlaps(a.box, b.box)) {
        pairs.push_back(a.id < b.id ? BodyPair{a.id, b.id}
                                    : BodyPair{b.id, a.id});
      }
    }
  }
}

// One contact between two shapes: `normal` points from the first shape to
// the second (unit length), `point` is on the first shape's surface, and
// `separation` is the distance between the surfaces (negative: they
// penetrate that deep).
struct SphereContact {
  Vec3 normal;
  Vec3 point;
  float separation = 0;
};

// Spheres (center `ca`, radius `ra`) and (`cb`, `rb`): true and `*out`
// filled when their surfaces are closer than `margin` (speculative contacts
// let the solver stop bodies before they touch). Coincident centers get the
// normal +y.
bool CollideSpheres(Vec3 ca, float ra, Vec3 cb, float rb, float margin,
                    SphereContact* out);

// The plane {p : Dot(p, normal) == offset} (unit `normal` pointing into the
// free half-space) and the sphere (c, r): true when the sphere's surface is
// closer than `margin` to the plane. The contact's normal is the plane's
// (from the plane, the first shape, to the sphere).
bool CollideSpherePlane(Vec3 c, float r, Vec3 normal, float offset,
                        float margin, SphereContact* out);

}  // namespace integration
}  // namespace framealloc

#endif  // INTEGRATION_PHYSICS_COLLISION_H_
