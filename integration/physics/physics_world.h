// PhysicsWorld: rigid spheres in a box, stepped frame by frame with every
// per-frame buffer either on the heap or on frame memory, serially or in
// parallel on the job runtime, with bitwise identical results.
//
// For: the physics integration of framealloc (the reference guide's
// PhysicsFrame pattern) and the simulation suite's "physics" scenario
// (physics_scenario.h). Not for: production physics (spheres and the
// container's walls only; no sleeping, joints or continuous collision).
//
// One frame:
//   1. per block of 1024 bodies: the frame's solver bodies (velocities with
//      gravity applied, 48 bytes per body), each body binned into the
//      vertical slab (a band of x) holding its center;
//   2. per slab: sort and sweep along z (the slab's long axis) over the
//      slab's bodies and those of the next slab (candidate pairs), narrow phase
//      into contact manifolds (sphere-sphere and sphere-wall, with a
//      speculative margin), and the solver's per-contact constants;
//   3. an iterative sequential-impulse solver (normal impulses with
//      restitution, two-direction Coulomb friction, split-impulse position
//      correction, warm-started from the previous frame's impulses of the
//      same pair), `iterations` sweeps, each solving the even slabs and
//      then the odd ones; a slab's manifolds touch only its bodies and the
//      next slab's (a slab is wider than any pair's reach), so slabs of one
//      parity never share a body;
//   4. per slab: damping, positions from the velocities, velocities back
//      into the persistent state.
// Serially these run in that order. On the runtime every block is a job,
// and phases 2 to 4 of a slab are steps (phase 2, each sweep, phase 4) run
// by one slab job per worker: each owns a contiguous range of its node's
// slabs (its worker's own when free, so frames keep a slab on one core)
// and runs a step once the steps touching the same bodies earlier in the
// serial order are done (no global barrier between phases 2 to 4); when
// none of its own is ready it runs another range's ready step, so one slab
// job alone can finish a frame. The state after a frame is therefore
// bitwise the same for any worker count, topology or schedule. The number
// of slabs depends on the body count only, never on the workers.
//
// Per-frame memory (Memory): kHeap is what an engine writes without a frame
// allocator: std::vectors of bins, sweep entries and pairs built each frame,
// one std::unique_ptr<Manifold> per colliding pair with its own
// std::vector of contact points, freed when the slab is done. kArena puts
// the bins, sweep entries and pairs on frame memory (ArenaAllocator
// vectors) and each slab's manifolds and contact points in two frame
// slices taken once after the sweep, sized for the most the slab can make
// (the reference guide's PhysicsFrame::frame_slice(max_contacts)): the
// given FrameArena serially, or each job's JobContext::arena() on the
// runtime (valid until the runtime's EndFrame, for every job of the frame).
// The arithmetic is the same code for both kinds.
//
// Thread safety: one thread calls the methods of a world; Step may run jobs.
// Errors: Create returns InvalidArgument naming a bad PhysicsConfig field;
// Step returns InvalidArgument for a missing arena, or a job's failure; an
// exception inside a step, serial or not, is returned as Unknown, never
// thrown (see Step).
//
// Example:
//   auto world = PhysicsWorld::Create(PhysicsConfig().set_bodies(4096));
//   if (!world.ok()) return world.status();    // names the bad field
//   FrameArena arena(&cache);
//   for (int f = 0; f < 600; ++f) {
//     absl::Status s = (*world)->Step(StepOptions::Arena(&arena));
//     arena.Reset();                            // the frame's memory goes
//     if (!s.ok()) return s;
//   }
//   double e = (*world)->Energy();
//   // On the runtime: rt->BeginFrame(); (*world)->Step(
//   //     StepOptions::RuntimeArena(rt.get())); rt->EndFrame();
#ifndef INTEGRATION_PHYSICS_PHYSICS_WORLD_H_
#define INTEGRATION_PHYSICS_PHYSICS_WORLD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/frame_arena.h"
#include "integration/physics/collision.h"
#include "jobs/runtime.h"

namespace framealloc {
namespace integration {

struct SolverBody;

// The world's parameters. Fluent setters; Validate() names the bad field.
struct PhysicsConfig {
  // The radii Validate() accepts. The floor: the solver leaves 0.005 of
  // penetration uncorrected, so a smaller sphere would rest with its centre
  // near or under the floor; and far below it the derived values leave
  // float's range (the inverse inertia 1 / (0.4 m r^2) of a density-1
  // sphere is infinite below about 1.8e-8, and the simulation turns NaN).
  // From 0.01 to 10, mass, inverse mass and inverse inertia are finite,
  // nonzero and far from float's limits (mass 4.2e-6 to 4.2e3, inverse
  // inertia 6.0e-6 to 6.0e9).
  static constexpr float kMinRadius = 0.01f;
  static constexpr float kMaxRadius = 10.0f;

  size_t bodies = 8192;
  uint64_t seed = 42;
  float dt = 1.0f / 60.0f;
  float gravity = -9.81f;
  // Solver sweeps per frame.
  int iterations = 8;
  // Bounce of approaching contacts faster than 0.5 m/s, 0 (none) to 1.
  float restitution = 0.1f;
  float friction = 0.5f;
  // Vertical slabs of the container (the unit of parallel work); 0: one per
  // 512 bodies, at least 2. Each slab is two lattice columns wide, so the
  // container's width grows with it.
  int slabs = 0;
  float min_radius = 0.4f;
  float max_radius = 0.5f;
  // Surfaces closer than this make a (speculative) contact.
  float contact_margin = 0.05f;
  // Velocity damping per second (linear, angular).
  float linear_damping = 0.05f;
  float angular_damping = 0.1f;

  PhysicsConfig& set_bodies(size_t n) {
    bodies = n;
    return *this;
  }
  PhysicsConfig& set_seed(uint64_t s) {
    seed = s;
    return *this;
  }
  PhysicsConfig& set_dt(float s) {
    dt = s;
    return *this;
  }
  PhysicsConfig& set_gravity(float g) {
    gravity = g;
    return *this;
  }
  PhysicsConfig& set_iterations(int n) {
    iterations = n;
    return *this;
  }
  PhysicsConfig& set_restitution(float e) {
    restitution = e;
    return *this;
  }
  PhysicsConfig& set_friction(float mu) {
    friction = mu;
    return *this;
  }
  PhysicsConfig& set_slabs(int n) {
    slabs = n;
    return *this;
  }
  PhysicsConfig& set_radii(float lo, float hi) {
    min_radius = lo;
    max_radius = hi;
    return *this;
  }
  PhysicsConfig& set_damping(float linear, float angular) {
    linear_damping = linear;
    angular_damping = angular;
    return *this;
  }

  // InvalidArgument naming the field unless: 1 <= bodies <= 2^24; dt finite
  // in (0, 0.1]; iterations in 1..256; restitution in [0, 1]; friction in
  // [0, 10]; slabs in 0..4096; kMinRadius (0.01) <= min_radius <= max_radius
  // <= kMaxRadius (10); contact_margin in [0, max_radius]; damping in
  // [0, 100]; gravity finite.
  absl::Status Validate() const;
};

// Where a frame's temporaries live.
enum class Memory { kHeap, kArena };

// How one Step runs. Serial: runtime null. kArena needs `arena` serially
// (reset by the caller after the step); on the runtime the jobs use their
// own arenas and the caller must have a frame open (BeginFrame) around the
// step and end it (EndFrame) after.
struct StepOptions {
  Memory memory = Memory::kHeap;
  FrameArena* arena = nullptr;
  jobs::Runtime* runtime = nullptr;

  static StepOptions Heap() { return {}; }
  static StepOptions Arena(FrameArena* a) {
    return {Memory::kArena, a, nullptr};
  }
  static StepOptions RuntimeHeap(jobs::Runtime* rt) {
    return {Memory::kHeap, nullptr, rt};
  }
  static StepOptions RuntimeArena(jobs::Runtime* rt) {
    return {Memory::kArena, nullptr, rt};
  }
};

// What the last frame built.
struct FrameStats {
  size_t candidate_pairs = 0;  // Broad-phase pairs (boxes overlap).
  size_t manifolds = 0;        // Of which touching or within the margin,
                               // plus sphere-wall contacts.
  size_t wall_manifolds = 0;   // ...of which with a wall or the floor.
  size_t contact_points = 0;
  size_t max_slab_manifolds = 0;  // The busiest slab's.
};

// How the last frame's slab steps ran on the runtime (zero after a serial
// step). Phases 2 to 4 of a slab are steps (phase 2, each solver sweep,
// phase 4) run by one slab job per worker, each owning a contiguous range
// of its node's slabs.
struct RuntimeFrameStats {
  uint64_t steps = 0;        // slabs x (iterations + 2) after a whole frame.
  uint64_t moved_steps = 0;  // ...of which run by a job not owning the slab.
  // Time slab jobs spun with nothing to run: waiting for a neighbour's
  // step, or for the frame's last steps to finish elsewhere.
  double wait_seconds = 0;
};

class PhysicsWorld {
 public:
  // Bodies per block of the velocity pass (a fixed size, so the work split
  // never depends on the workers).
  static constexpr size_t kBlockSize = 1024;
  // Body ids; kStatic stands for the container (infinite mass).
  static constexpr uint32_t kStatic = 0xffffffffu;
  // The broad phase sweeps along z, the long axis of a slab (slabs cut x).
  static constexpr int kSweepAxis = 2;

  // `config.bodies` spheres (radii uniform in [min_radius, max_radius],
  // density 1) on a jittered body-centred lattice in a container with a
  // floor and four walls, with small random velocities, all from
  // `config.seed`. InvalidArgument naming a bad field.
  static absl::StatusOr<std::unique_ptr<PhysicsWorld>> Create(
      const PhysicsConfig& config);
  ~PhysicsWorld();
  PhysicsWorld(const PhysicsWorld&) = delete;
  PhysicsWorld& operator=(const PhysicsWorld&) = delete;

  // Advances one frame (dt). InvalidArgument for kArena without an arena
  // serially; on the runtime, the first failure of the frame's jobs (a
  // job's exception: Unknown with its text). Serially an exception thrown
  // inside the step (std::bad_alloc from the heap, an arena's out-of-memory
  // report whose error handler throws) is caught in the same way: Step
  // returns Unknown with its text. Either way the failed frame's data is
  // freed and the world can step again; bodies whose slab finished (phase
  // 4) before the failure have moved, the others have not. Serially, no
  // body has moved when the frame arena failed (every arena allocation, in
  // phases 1 and 2, comes before the first slab finishes). On the runtime
  // any slab may have finished by then: a slab's steps wait only for its
  // neighbours', so slab 0 can finish before a distant slab's phase 2
  // allocates, and some bodies may have moved.
  absl::Status Step(const StepOptions& options);

  // Kinetic (linear and rotational) plus potential energy (height above the
  // floor), summed in id order in double precision.
  double Energy() const;
  // Largest penetration of any contact of the last frame (>= 0), before
  // that frame's solve.
  float max_penetration() const { return max_penetration_; }
  // FNV-1a over every body's position, velocity and angular velocity.
  uint64_t StateHash() const;
  // Bytes of persistent body state.
  size_t WorkingSetBytes() const;
  const FrameStats& last_frame() const { return last_frame_; }
  const RuntimeFrameStats& last_runtime_frame() const { return last_runtime_; }

  // Broad phase of the current state through the slabs (phase 1's binning
  // and phase 2's sweep, heap memory), without stepping: every candidate
  // pair, sorted. For tests against brute force.
  std::vector<BodyPair> CandidatePairs() const;
  // Each body's box as the broad phase sees it (radius plus half the
  // margin on every side).
  Aabb BoxOf(uint32_t body) const;

  const PhysicsConfig& config() const { return config_; }
  size_t size() const { return radius_.size(); }
  int slabs() const { return slabs_; }
  // The container: x in [0, width], z in [0, depth], floor y = 0.
  float width() const { return width_; }
  float depth() const { return depth_; }
  Vec3 position(uint32_t i) const { return {px_[i], py_[i], pz_[i]}; }
  Vec3 velocity(uint32_t i) const { return {vx_[i], vy_[i], vz_[i]}; }
  float radius(uint32_t i) const { return radius_[i]; }
  // For tests: place body i (e.g. overlapping another).
  void SetBody(uint32_t i, Vec3 position, Vec3 velocity);

 private:
  template <typename M>
  friend struct PhysicsStepper;
  friend struct PhysicsKernels;
  explicit PhysicsWorld(const PhysicsConfig& config);
  void Build();
  int SlabOf(float x) const;

  template <typename M>
  absl::Status StepWith(const StepOptions& options);

  PhysicsConfig config_;
  int slabs_ = 0;
  float slab_width_ = 0;
  float width_ = 0;
  float depth_ = 0;
  size_t blocks_ = 0;

  // Persistent body state, structure of arrays, indexed by body id.
  std::vector<float> px_, py_, pz_, vx_, vy_, vz_, wx_, wy_, wz_;
  std::vector<float> radius_, inv_mass_, inv_inertia_;

  // Per-frame tables (one entry per block or slab, reused every frame):
  // type-erased pointers to the frame's BlockFrame/SlabFrame of the memory
  // kind in use, and each block's solver bodies.
  std::vector<void*> block_frames_;
  std::vector<void*> slab_frames_;
  std::vector<SolverBody*> solver_;
  struct alignas(64) SlabCounts {
    FrameStats stats;
    float max_penetration = 0;
  };
  std::vector<SlabCounts> slab_counts_;
  // Warm starting: each slab's manifolds' final impulses, sorted by pair
  // key, double-buffered: impulse_cache_[cache_parity_] holds the previous
  // frame's (read by phase 2), the other one receives this frame's (written
  // by phase 4). Persistent state, reused every frame.
  struct CachedImpulse {
    uint64_t key;
    float pn, pt1, pt2;
  };
  std::vector<std::vector<CachedImpulse>> impulse_cache_[2];
  int cache_parity_ = 0;
  // The previous frame's impulses of pair `key`, looked up in the caches of
  // slabs slab-1..slab+1 (a pair moves at most one slab per frame in
  // practice; a miss only means a cold start). Null if absent.
  const CachedImpulse* FindCached(uint64_t key, int slab) const;
  // Jobs of the frame on the runtime, and where each block is homed and
  // each slab range belongs (recomputed when the runtime or its layout,
  // workers per node, changes).
  std::vector<jobs::JobRef> block_jobs_;
  const jobs::Runtime* homes_for_ = nullptr;
  std::vector<int> homes_layout_;
  std::vector<int> block_home_;
  // The slab steps of a frame on the runtime (physics_world.cc, RunSlabJob).
  // Per slab: steps done times 2, plus 1 while one runs (0 none; 1 phase 2;
  // 1 + k + 1 sweep k; iterations + 2 phase 4), on a cache line of its own.
  struct alignas(64) SlabProgress {
    std::atomic<uint32_t> state{0};
  };
  std::unique_ptr<SlabProgress[]> progress_;
  // One contiguous range of a node's slabs per worker, owned by the slab
  // job that takes it first (its worker's own range when free).
  struct alignas(64) SlabRange {
    int node = 0;
    int begin = 0;
    int end = 0;
    std::atomic<bool> taken{false};
  };
  std::vector<SlabRange> slab_ranges_;
  struct alignas(64) SlabRun {
    std::atomic<int> finished{0};  // Steps done this frame.
    std::atomic<bool> failed{false};
    std::atomic<uint64_t> steps{0}, moved_steps{0}, wait_ns{0};
  };
  std::unique_ptr<SlabRun> slab_run_;
  RuntimeFrameStats last_runtime_;

  FrameStats last_frame_;
  float max_penetration_ = 0;
};

}  // namespace integration
}  // namespace framealloc

#endif  // INTEGRATION_PHYSICS_PHYSICS_WORLD_H_
