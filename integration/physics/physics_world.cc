// PhysicsWorld (see physics_world.h): the frame's four phases, templated on
// where the frame's temporaries live, run serially or as jobs (blocks, then
// slab jobs running slab steps).
#include "integration/physics/physics_world.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "alloc/arena_allocator.h"
#include "alloc/frame_arena.h"
#include "integration/physics/collision.h"
#include "jobs/runtime.h"

namespace framealloc {
namespace integration {

namespace {

constexpr float kBounceThreshold = 0.5f;  // m/s: slower contacts do not bounce.
constexpr float kPositionSlop = 0.005f;   // Penetration left uncorrected.
// A sphere of the smallest radius rests at most half its radius deep.
static_assert(PhysicsConfig::kMinRadius >= 2 * kPositionSlop);
constexpr float kPositionBeta = 0.2f;  // Share of the rest corrected per frame.
constexpr float kPi = 3.14159265358979f;
// A slab job that has found nothing to run for this long also takes ready
// steps of other nodes: soon when the runtime steals when idle, and
// otherwise only as a liveness fallback (their jobs may not run).
constexpr std::chrono::microseconds kStealAfter{200};
constexpr std::chrono::milliseconds kStallAfter{20};

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// The heap: what a frame's temporaries look like without a frame allocator.
struct HeapMemory {
  // Manifolds are objects of their own (one allocation each, with a vector
  // of points), listed by pointer.
  static constexpr bool kFlatManifolds = false;
  template <typename T>
  using Vec = std::vector<T>;
  template <typename T>
  using Owned = std::unique_ptr<T>;

  template <typename T>
  std::allocator<T> alloc() const {
    return {};
  }
  template <typename T, typename... Args>
  Owned<T> Make(Args&&... args) const {
    return std::make_unique<T>(std::forward<Args>(args)...);
  }
  template <typename T>
  static T* Get(const Owned<T>& p) {
    return p.get();
  }
  // Hands ownership to a type-erased table entry; Destroy takes it back.
  template <typename T>
  static void* Release(Owned<T>& p) {
    return p.release();
  }
  template <typename T>
  static void Destroy(void* p) {
    delete static_cast<T*>(p);
  }
};

// Frame memory: the same structures, their buffers and objects bumped from a
// FrameArena and dropped with it. Objects are never destroyed: their only
// members with destructors are ArenaAllocator vectors of trivially
// destructible elements, whose destruction would free nothing.
struct ArenaMemory {
  // A slab's manifolds and their contact points are two arrays taken from
  // the frame in one piece each, sized for the most the slab can produce
  // (the reference guide's PhysicsFrame: frame_slice(max_contacts)), left
  // unwritten until a manifold is added: no per-manifold allocation, no
  // growth, and the solver walks them in memory order.
  static constexpr bool kFlatManifolds = true;
  FrameArena* arena;

  template <typename T>
  using Vec = std::vector<T, ArenaAllocator<T>>;
  template <typename T>
  using Owned = T*;

  template <typename T>
  ArenaAllocator<T> alloc() const {
    return ArenaAllocator<T>(arena);
  }
  template <typename T, typename... Args>
  T* Make(Args&&... args) const {
    void* p = arena->Allocate(sizeof(T), alignof(T));
    return new (p) T(std::forward<Args>(args)...);
  }
  template <typename T>
  static T* Get(T* p) {
    return p;
  }
  template <typename T>
  static void* Release(T*& p) {
    return p;
  }
  template <typename T>
  static void Destroy(void*) {}
};

}  // namespace

// A body as the solver sees it during one frame: velocities (gravity
// applied), pseudo-velocity (split-impulse position correction, zero at the
// start of the frame) and inverse mass and inertia, in 48 bytes. The
// frame's solver bodies are a per-frame buffer (one array per block of
// bodies); the persistent state is written back when the slab finishes.
struct alignas(16) SolverBody {
  Vec3 v;
  float inv_mass = 0;
  Vec3 w;
  float inv_inertia = 0;
  Vec3 vp;
  float pad = 0;
};
static_assert(sizeof(SolverBody) == 48);

namespace physics_internal {

// Solver data of one manifold that does not depend on the memory kind.
struct ManifoldHeader {
  uint64_t key = 0;         // The pair (a's id or a wall's, b's id).
  SolverBody* a = nullptr;  // Null: a wall or the floor.
  SolverBody* b = nullptr;
  Vec3 normal;   // From a to b.
  float ra = 0;  // a's center to the contact, along +normal.
  float rb = 0;  // b's center to the contact, along -normal.
  float friction = 0;
};

// One contact point with its solver state.
struct ContactPoint {
  Vec3 point;
  float separation = 0;
  Vec3 t1, t2;  // Friction directions.
  float normal_mass = 0;
  float tangent_mass = 0;
  float velocity_target = 0;  // Normal velocity the solver aims at.
  float position_target = 0;  // Pseudo-velocity correcting penetration.
  float pn = 0, pt1 = 0, pt2 = 0, pp = 0;  // Accumulated impulses.
};
static_assert(std::is_trivially_destructible_v<ContactPoint>);
static_assert(std::is_trivially_destructible_v<ManifoldHeader>);

}  // namespace physics_internal

using physics_internal::ContactPoint;
using physics_internal::ManifoldHeader;

namespace {

// A contact manifold: one per colliding pair (or sphere and wall), holding
// its own list of contact points, as engines write them.
template <typename M>
struct Manifold : ManifoldHeader {
  explicit Manifold(const M& m) : points(m.template alloc<ContactPoint>()) {}
  typename M::template Vec<ContactPoint> points;
};

// Phase 1's output for one block of bodies: the block's bodies binned by
// slab, and the block's solver bodies.
template <typename M>
struct BlockFrame {
  using Ids = typename M::template Vec<uint32_t>;
  explicit BlockFrame(const M& m)
      : bins(m.template alloc<Ids>()), bodies(m.template alloc<SolverBody>()) {}
  typename M::template Vec<Ids> bins;
  typename M::template Vec<SolverBody> bodies;
};

// Phase 2's output for one slab: its bodies, the sweep, the candidate pairs
// and the manifolds the solver iterates over.
template <typename M>
struct SlabFrame {
  explicit SlabFrame(const M& m)
      : own(m.template alloc<uint32_t>()),
        sweep(m.template alloc<SweepEntry>()),
        pairs(m.template alloc<BodyPair>()),
        manifolds(m.template alloc<typename M::template Owned<Manifold<M>>>()) {
  }
  typename M::template Vec<uint32_t> own;
  typename M::template Vec<SweepEntry> sweep;
  typename M::template Vec<BodyPair> pairs;
  typename M::template Vec<typename M::template Owned<Manifold<M>>> manifolds;
  // M::kFlatManifolds: manifold k is flat_headers[k] with the single point
  // flat_points[k]; `manifolds` stays empty.
  ManifoldHeader* flat_headers = nullptr;
  ContactPoint* flat_points = nullptr;
  size_t flat_count = 0;

  size_t manifold_count() const {
    if constexpr (M::kFlatManifolds) {
      return flat_count;
    } else {
      return manifolds.size();
    }
  }
  // Calls f(ManifoldHeader&, ContactPoint* points, size_t count) for every
  // manifold in the order they were added.
  template <typename F>
  void ForEachManifold(F&& f) const {
    if constexpr (M::kFlatManifolds) {
      for (size_t k = 0; k < flat_count; ++k) {
        f(flat_headers[k], flat_points + k, size_t{1});
      }
    } else {
      for (const auto& m : manifolds) {
        Manifold<M>* manifold = M::Get(m);
        f(static_cast<ManifoldHeader&>(*manifold), manifold->points.data(),
          manifold->points.size());
      }
    }
  }
};

uint64_t Fnv(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

// The memory-independent arithmetic: one copy of each kernel, whatever the
// variant, so every variant computes bit for bit the same.
struct PhysicsKernels {
  static SolverBody& Body(const PhysicsWorld& w, uint32_t i) {
    return w
        .solver_[i / PhysicsWorld::kBlockSize][i % PhysicsWorld::kBlockSize];
  }

  // The solver bodies of [begin, end), gravity applied.
  static void LoadBodies(const PhysicsWorld& w, size_t begin, size_t end,
                         SolverBody* out) {
    const float dv = w.config_.gravity * w.config_.dt;
    for (size_t i = begin; i < end; ++i) {
      SolverBody& sb = out[i - begin];
      sb.v = {w.vx_[i], w.vy_[i] + dv, w.vz_[i]};
      sb.w = {w.wx_[i], w.wy_[i], w.wz_[i]};
      sb.vp = {};
      sb.inv_mass = w.inv_mass_[i];
      sb.inv_inertia = w.inv_inertia_[i];
    }
  }

  static void Prepare(const PhysicsWorld& w, const SphereContact& c, uint32_t a,
                      uint32_t b, ManifoldHeader& h, ContactPoint& p) {
    h.normal = c.normal;
    h.friction = w.config_.friction;
    h.b = &Body(w, b);
    h.rb = w.radius_[b];
    const float imb = h.b->inv_mass;
    const float iib = h.b->inv_inertia;
    float ima = 0, iia = 0;
    Vec3 va;
    if (a != PhysicsWorld::kStatic) {
      h.a = &Body(w, a);
      h.ra = w.radius_[a];
      ima = h.a->inv_mass;
      iia = h.a->inv_inertia;
      va = h.a->v;
    }
    const Vec3 n = c.normal;
    p.point = c.point;
    p.separation = c.separation;
    const Vec3 axis = std::fabs(n.x) < 0.9f ? Vec3{1, 0, 0} : Vec3{0, 1, 0};
    Vec3 t1 = Cross(n, axis);
    t1 = t1 * (1.0f / std::sqrt(Dot(t1, t1)));
    p.t1 = t1;
    p.t2 = Cross(n, t1);
    p.normal_mass = 1.0f / (ima + imb);
    p.tangent_mass = 1.0f / (ima + imb + h.ra * h.ra * iia + h.rb * h.rb * iib);
    const float dt = w.config_.dt;
    const float vn = Dot(h.b->v - va, n);
    if (c.separation > 0) {
      p.velocity_target =
          -c.separation / dt;  // Speculative: may close the gap.
    } else if (vn < -kBounceThreshold) {
      p.velocity_target = -w.config_.restitution * vn;
    }
    if (c.separation < -kPositionSlop) {
      p.position_target = kPositionBeta * (-c.separation - kPositionSlop) / dt;
    }
  }

  // Applies the impulses carried over from the previous frame (warm
  // starting: a resting pile converges from where it was).
  static void WarmStart(const ManifoldHeader& h, const ContactPoint* pts,
                        size_t count) {
    const Vec3 n = h.normal;
    const Vec3 ra = n * h.ra;
    const Vec3 rb = n * -h.rb;
    for (size_t k = 0; k < count; ++k) {
      const ContactPoint& p = pts[k];
      const Vec3 impulse = n * p.pn + p.t1 * p.pt1 + p.t2 * p.pt2;
      if (h.a != nullptr) {
        h.a->v = h.a->v - impulse * h.a->inv_mass;
        h.a->w = h.a->w - Cross(ra, impulse) * h.a->inv_inertia;
      }
      h.b->v = h.b->v + impulse * h.b->inv_mass;
      h.b->w = h.b->w + Cross(rb, impulse) * h.b->inv_inertia;
    }
  }

  // One sequential-impulse sweep over a manifold's points: normal impulse
  // (clamped accumulated, >= 0), friction along t1 and t2 (clamped to the
  // friction cone's box), then the pseudo-velocity impulse.
  static void Solve(const ManifoldHeader& h, ContactPoint* pts, size_t count) {
    static const SolverBody kWall;  // Infinite mass, at rest.
    const SolverBody& a0 = h.a != nullptr ? *h.a : kWall;
    SolverBody& bb = *h.b;
    Vec3 va = a0.v, wa = a0.w, vpa = a0.vp;
    const float ima = a0.inv_mass, iia = a0.inv_inertia;
    Vec3 vb = bb.v, wb = bb.w, vpb = bb.vp;
    const float imb = bb.inv_mass, iib = bb.inv_inertia;
    const Vec3 n = h.normal;
    const Vec3 ra = n * h.ra;
    const Vec3 rb = n * -h.rb;
    for (size_t k = 0; k < count; ++k) {
      ContactPoint& p = pts[k];
      // Normal.
      {
        const float vn = Dot(vb - va, n);
        const float want = p.pn - p.normal_mass * (vn - p.velocity_target);
        const float next = std::max(want, 0.0f);
        const Vec3 impulse = n * (next - p.pn);
        p.pn = next;
        va = va - impulse * ima;
        vb = vb + impulse * imb;
      }
      // Friction, one direction at a time.
      const float limit = h.friction * p.pn;
      for (int axis = 0; axis < 2; ++axis) {
        const Vec3 t = axis == 0 ? p.t1 : p.t2;
        float& acc = axis == 0 ? p.pt1 : p.pt2;
        const Vec3 dv = (vb + Cross(wb, rb)) - (va + Cross(wa, ra));
        const float want = acc - p.tangent_mass * Dot(dv, t);
        const float next = std::clamp(want, -limit, limit);
        const Vec3 impulse = t * (next - acc);
        acc = next;
        va = va - impulse * ima;
        wa = wa - Cross(ra, impulse) * iia;
        vb = vb + impulse * imb;
        wb = wb + Cross(rb, impulse) * iib;
      }
      // Position error, on pseudo-velocities only (adds no kinetic energy).
      {
        const float vn = Dot(vpb - vpa, n);
        const float want = p.pp - p.normal_mass * (vn - p.position_target);
        const float next = std::max(want, 0.0f);
        const Vec3 impulse = n * (next - p.pp);
        p.pp = next;
        vpa = vpa - impulse * ima;
        vpb = vpb + impulse * imb;
      }
    }
    if (h.a != nullptr) {
      h.a->v = va;
      h.a->w = wa;
      h.a->vp = vpa;
    }
    bb.v = vb;
    bb.w = wb;
    bb.vp = vpb;
  }

  // Damping, then positions from velocity plus pseudo-velocity; the
  // velocities go back to the persistent state.
  static void Integrate(PhysicsWorld& w, const uint32_t* ids, size_t count) {
    const float dt = w.config_.dt;
    const float lin = 1.0f / (1.0f + dt * w.config_.linear_damping);
    const float ang = 1.0f / (1.0f + dt * w.config_.angular_damping);
    for (size_t k = 0; k < count; ++k) {
      const uint32_t i = ids[k];
      const SolverBody& sb = Body(w, i);
      const Vec3 v = sb.v * lin;
      const Vec3 wv = sb.w * ang;
      w.vx_[i] = v.x, w.vy_[i] = v.y, w.vz_[i] = v.z;
      w.wx_[i] = wv.x, w.wy_[i] = wv.y, w.wz_[i] = wv.z;
      w.px_[i] += (v.x + sb.vp.x) * dt;
      w.py_[i] += (v.y + sb.vp.y) * dt;
      w.pz_[i] += (v.z + sb.vp.z) * dt;
    }
  }
};

// The phases for one memory kind. RunBlock is one job's work on the
// runtime; RunSlab, Solve and Finish are a slab's steps, run by the slab
// jobs (RunSlabJob); serially each is one call in the serial order.
template <typename M>
struct PhysicsStepper {
  using Block = BlockFrame<M>;
  using Slab = SlabFrame<M>;

  static Block* BlockAt(const PhysicsWorld& w, size_t b) {
    return static_cast<Block*>(w.block_frames_[b]);
  }
  static Slab* SlabAt(const PhysicsWorld& w, int s) {
    return static_cast<Slab*>(w.slab_frames_[s]);
  }

  // Phase 1: gravity and binning for bodies [b * kBlockSize, ...).
  static void RunBlock(PhysicsWorld& w, const M& mem, size_t b) {
    auto owned = mem.template Make<Block>(mem);
    Block* f = M::Get(owned);
    w.block_frames_[b] = M::Release(owned);
    const size_t begin = b * PhysicsWorld::kBlockSize;
    const size_t end = std::min(w.size(), begin + PhysicsWorld::kBlockSize);
    f->bodies.resize(end - begin);
    PhysicsKernels::LoadBodies(w, begin, end, f->bodies.data());
    w.solver_[b] = f->bodies.data();
    f->bins.reserve(w.slabs_);
    for (int s = 0; s < w.slabs_; ++s) {
      f->bins.emplace_back(mem.template alloc<uint32_t>());
    }
    for (size_t i = begin; i < end; ++i) {
      f->bins[w.SlabOf(w.px_[i])].push_back(static_cast<uint32_t>(i));
    }
  }

  // Phase 2: broad phase, narrow phase and solver constants of slab s.
  static void RunSlab(PhysicsWorld& w, const M& mem, int s) {
    auto owned = mem.template Make<Slab>(mem);
    Slab* f = M::Get(owned);
    w.slab_frames_[s] = M::Release(owned);
    for (size_t b = 0; b < w.blocks_; ++b) {
      for (uint32_t id : BlockAt(w, b)->bins[s]) f->own.push_back(id);
    }
    size_t ghosts = 0;
    if (s + 1 < w.slabs_) {
      for (size_t b = 0; b < w.blocks_; ++b) {
        ghosts += BlockAt(w, b)->bins[s + 1].size();
      }
    }
    f->sweep.reserve(f->own.size() + ghosts);
    for (uint32_t id : f->own) f->sweep.push_back({w.BoxOf(id), id, 1});
    if (s + 1 < w.slabs_) {
      for (size_t b = 0; b < w.blocks_; ++b) {
        for (uint32_t id : BlockAt(w, b)->bins[s + 1]) {
          f->sweep.push_back({w.BoxOf(id), id, 0});
        }
      }
    }
    SortAndSweep(absl::MakeSpan(f->sweep), PhysicsWorld::kSweepAxis, f->pairs);
    const struct {
      Vec3 normal;
      float offset;
    } walls[5] = {{{0, 1, 0}, 0.0f},
                  {{1, 0, 0}, 0.0f},
                  {{-1, 0, 0}, -w.width_},
                  {{0, 0, 1}, 0.0f},
                  {{0, 0, -1}, -w.depth_}};
    const float margin = w.config_.contact_margin;
    if constexpr (M::kFlatManifolds) {
      // At most one manifold per candidate pair, plus the wall contacts
      // (counted exactly: a cheap test per body and wall).
      size_t most = f->pairs.size();
      SphereContact unused;
      for (uint32_t id : f->own) {
        for (const auto& wall : walls) {
          most += CollideSpherePlane(w.position(id), w.radius_[id], wall.normal,
                                     wall.offset, margin, &unused);
        }
      }
      f->flat_headers = mem.arena->template AllocateArray<ManifoldHeader>(most);
      f->flat_points = mem.arena->template AllocateArray<ContactPoint>(most);
    }

    PhysicsWorld::SlabCounts& counts = w.slab_counts_[s];
    counts = {};
    SphereContact c;
    auto add = [&](uint32_t a, uint32_t b, uint64_t key) {
      ManifoldHeader* manifold;
      ContactPoint* points;
      if constexpr (M::kFlatManifolds) {
        manifold = new (f->flat_headers + f->flat_count) ManifoldHeader();
        points = new (f->flat_points + f->flat_count) ContactPoint();
        ++f->flat_count;
      } else {
        auto m = mem.template Make<Manifold<M>>(mem);
        Manifold<M>* made = M::Get(m);
        made->points.emplace_back();
        manifold = made;
        points = &made->points.back();
        f->manifolds.push_back(std::move(m));
      }
      ContactPoint& point = *points;
      PhysicsKernels::Prepare(w, c, a, b, *manifold, point);
      manifold->key = key;
      if (const PhysicsWorld::CachedImpulse* cached = w.FindCached(key, s)) {
        point.pn = cached->pn;
        point.pt1 = cached->pt1;
        point.pt2 = cached->pt2;
      }
      counts.max_penetration = std::max(counts.max_penetration, -c.separation);
    };
    for (const BodyPair& pair : f->pairs) {
      if (CollideSpheres(w.position(pair.first), w.radius_[pair.first],
                         w.position(pair.second), w.radius_[pair.second],
                         margin, &c)) {
        add(pair.first, pair.second,
            (uint64_t{pair.first} << 32) | pair.second);
      }
    }
    const size_t sphere_manifolds = f->manifold_count();
    for (uint32_t id : f->own) {
      for (uint32_t k = 0; k < 5; ++k) {
        if (CollideSpherePlane(w.position(id), w.radius_[id], walls[k].normal,
                               walls[k].offset, margin, &c)) {
          add(PhysicsWorld::kStatic, id,
              (uint64_t{PhysicsWorld::kStatic - k} << 32) | id);
        }
      }
    }
    counts.stats.candidate_pairs = f->pairs.size();
    counts.stats.manifolds = f->manifold_count();
    counts.stats.wall_manifolds = f->manifold_count() - sphere_manifolds;
    f->ForEachManifold([&](ManifoldHeader&, ContactPoint*, size_t count) {
      counts.stats.contact_points += count;
    });
  }

  // Phase 3: one solver sweep over slab s's manifolds (the first one
  // warm-starts them).
  static void Solve(PhysicsWorld& w, int s, bool first) {
    SlabAt(w, s)->ForEachManifold(
        [first](ManifoldHeader& h, ContactPoint* points, size_t count) {
          if (first) PhysicsKernels::WarmStart(h, points, count);
          PhysicsKernels::Solve(h, points, count);
        });
  }

  // Phase 4: integrate slab s's bodies; the slab's frame data is done.
  static void Finish(PhysicsWorld& w, int s) {
    Slab* f = SlabAt(w, s);
    PhysicsKernels::Integrate(w, f->own.data(), f->own.size());
    std::vector<PhysicsWorld::CachedImpulse>& cache =
        w.impulse_cache_[1 - w.cache_parity_][s];
    cache.clear();
    f->ForEachManifold(
        [&cache](ManifoldHeader& h, ContactPoint* points, size_t) {
          const ContactPoint& p = points[0];
          cache.push_back({h.key, p.pn, p.pt1, p.pt2});
        });
    std::sort(
        cache.begin(), cache.end(),
        [](const PhysicsWorld::CachedImpulse& a,
           const PhysicsWorld::CachedImpulse& b) { return a.key < b.key; });
    M::template Destroy<Slab>(f);
    w.slab_frames_[s] = nullptr;
  }

  static void FreeBlocks(PhysicsWorld& w) {
    for (size_t b = 0; b < w.blocks_; ++b) {
      M::template Destroy<Block>(w.block_frames_[b]);
      w.block_frames_[b] = nullptr;
      w.solver_[b] = nullptr;
    }
  }

  // The frame data of a failed frame: slabs whose last step did not run,
  // and every block.
  static void DropFrame(PhysicsWorld& w) {
    for (int s = 0; s < w.slabs_; ++s) {
      if (w.slab_frames_[s] != nullptr) {
        M::template Destroy<Slab>(w.slab_frames_[s]);
        w.slab_frames_[s] = nullptr;
      }
    }
    FreeBlocks(w);
  }

  // An exception (std::bad_alloc from the heap, or an arena's out-of-memory
  // report whose error handler throws) becomes the step's Unknown status,
  // as a job's does on the runtime, and the frame's data is freed: the heap
  // variant's blocks and slabs are owned only by the type-erased tables.
  // No cost when nothing throws (table-based unwinding).
  static absl::Status RunSerial(PhysicsWorld& w, const M& mem) {
    try {
      for (size_t b = 0; b < w.blocks_; ++b) RunBlock(w, mem, b);
      for (int s = 0; s < w.slabs_; ++s) RunSlab(w, mem, s);
      for (int k = 0; k < w.config_.iterations; ++k) {
        for (int parity = 0; parity < 2; ++parity) {
          for (int s = parity; s < w.slabs_; s += 2) Solve(w, s, k == 0);
        }
      }
      for (int s = 0; s < w.slabs_; ++s) Finish(w, s);
    } catch (const std::exception& e) {
      DropFrame(w);
      return absl::UnknownError(
          absl::StrCat("PhysicsWorld::Step threw: ", e.what()));
    } catch (...) {
      DropFrame(w);
      return absl::UnknownError("PhysicsWorld::Step threw a non-std exception");
    }
    FreeBlocks(w);
    return absl::OkStatus();
  }

  static M MemoryOf(jobs::JobContext& ctx) {
    if constexpr (std::is_same_v<M, ArenaMemory>) {
      return ArenaMemory{&ctx.arena()};
    } else {
      return HeapMemory{};
    }
  }

  // Phases 2 to 4 on the runtime are steps of slabs: step 0 is slab s's
  // phase 2 (RunSlab), step 1 + k its solver sweep k, step iterations + 1
  // its phase 4 (Finish). A step may run once the steps that touch the same
  // bodies earlier in the serial order are done (the same conditions a job
  // graph with one job per step would wait for), read from the neighbours'
  // progress.
  static bool StepReady(const PhysicsWorld& w, int s, int step) {
    const int slabs = w.slabs_;
    const int iterations = w.config_.iterations;
    auto done = [&w](int n) {
      return static_cast<int>(
          w.progress_[n].state.load(std::memory_order_acquire) >> 1);
    };
    if (step == 0) return true;  // After phase 1 (the job's predecessors).
    if (step <= iterations) {
      // Sweep k = step - 1. An even slab follows its neighbours' phase 2
      // (k = 0) or their sweep k - 1; an odd slab their sweep k.
      const int need = (s % 2 == 0) ? step : step + 1;
      if (s > 0 && done(s - 1) < need) return false;
      if (s + 1 < slabs && done(s + 1) < need) return false;
      return true;
    }
    // Phase 4 writes the bodies the left neighbour's manifolds touch.
    return s == 0 || done(s - 1) >= iterations + 1;
  }

  // Claims a ready step of [begin, end), looking at the slabs in order from
  // *cursor (an offset into the range, advanced past the slab claimed):
  // one pass over a range in steady state claims the even slabs' sweep,
  // the next the odd slabs', as the serial order does, and a claim costs
  // the slabs looked at since the last one, not the whole range. Returns
  // the slab (its step in *step), or -1 if none is ready.
  static int ClaimStep(PhysicsWorld& w, int begin, int end, int* cursor,
                       int* step) {
    const int steps = w.config_.iterations + 2;
    const int n = end - begin;
    for (int i = 0; i < n; ++i) {
      const int s = begin + (*cursor + i) % n;
      uint32_t state = w.progress_[s].state.load(std::memory_order_acquire);
      const int next = static_cast<int>(state >> 1);
      if ((state & 1) != 0 || next >= steps || !StepReady(w, s, next)) {
        continue;
      }
      if (w.progress_[s].state.compare_exchange_strong(
              state, state | 1, std::memory_order_acq_rel)) {
        *cursor = (s - begin + 1) % n;
        *step = next;
        return s;
      }
      // Another job took it first.
    }
    return -1;
  }

  static void RunStep(PhysicsWorld& w, const M& mem, int s, int step) {
    if (step == 0) {
      RunSlab(w, mem, s);
    } else if (step <= w.config_.iterations) {
      Solve(w, s, step == 1);
    } else {
      Finish(w, s);
    }
    w.progress_[s].state.store(static_cast<uint32_t>(step + 1) << 1,
                               std::memory_order_release);
  }

  // One slab job: it takes a range of slabs of its node (the one of its
  // worker slot when free) and runs their steps as they become ready, so a
  // slab's sweeps stay in one core's caches. When none of its own is ready
  // it runs a ready step of another range of its node, and once it has
  // found nothing to run for a while (kStealAfter when the runtime steals
  // when idle, kStallAfter otherwise: a liveness fallback in case another
  // node's slab jobs do not run), a ready step of any node. Otherwise it
  // spins until a step finishes. A single slab job can finish the whole
  // frame alone, so the frame completes whichever jobs get to run.
  static void RunSlabJob(PhysicsWorld& w, jobs::JobContext& ctx) {
    using Clock = std::chrono::steady_clock;
    PhysicsWorld::SlabRun& run = *w.slab_run_;
    const int node = ctx.node();
    const int ranges = static_cast<int>(w.slab_ranges_.size());
    // The node's ranges, and the one this job owns.
    int first_range = 0;
    while (first_range < ranges && w.slab_ranges_[first_range].node != node) {
      ++first_range;
    }
    int last_range = first_range;
    while (last_range < ranges && w.slab_ranges_[last_range].node == node) {
      ++last_range;
    }
    int own = -1;
    const int preferred = first_range + ctx.worker();
    if (preferred < last_range && !w.slab_ranges_[preferred].taken.exchange(
                                      true, std::memory_order_acq_rel)) {
      own = preferred;
    }
    for (int r = first_range; own < 0 && r < last_range; ++r) {
      if (!w.slab_ranges_[r].taken.exchange(true, std::memory_order_acq_rel)) {
        own = r;
      }
    }
    const int own_begin = own >= 0 ? w.slab_ranges_[own].begin : 0;
    const int own_end = own >= 0 ? w.slab_ranges_[own].end : 0;
    const int node_begin =
        first_range < last_range ? w.slab_ranges_[first_range].begin : 0;
    const int node_end =
        first_range < last_range ? w.slab_ranges_[last_range - 1].end : 0;
    const Clock::duration cross_node_after =
        ctx.runtime().config().stealing == jobs::StealPolicy::kWhenIdle
            ? Clock::duration(kStealAfter)
            : Clock::duration(kStallAfter);
    const M mem = MemoryOf(ctx);
    int own_cursor = 0, node_cursor = 0, any_cursor = 0;
    uint64_t steps = 0;
    uint64_t moved = 0;
    Clock::duration waited{};
    bool idle = false;
    Clock::time_point idle_since;
    const int total = w.slabs_ * (w.config_.iterations + 2);
    for (;;) {
      if (run.failed.load(std::memory_order_acquire)) break;
      // Read before looking for a step: a step becomes ready only when one
      // finishes, so if none is ready now the count moves before one is.
      const int seen = run.finished.load(std::memory_order_acquire);
      int step = 0;
      int s = -1;
      if (own >= 0) s = ClaimStep(w, own_begin, own_end, &own_cursor, &step);
      if (s < 0) s = ClaimStep(w, node_begin, node_end, &node_cursor, &step);
      if (s < 0 && idle && Clock::now() - idle_since >= cross_node_after) {
        s = ClaimStep(w, 0, w.slabs_, &any_cursor, &step);
      }
      if (s < 0) {
        if (seen >= total) break;
        // Everything left runs elsewhere or waits for what does.
        const Clock::time_point start = Clock::now();
        if (!idle) {
          idle = true;
          idle_since = start;
        }
        int spins = 0;
        while (run.finished.load(std::memory_order_acquire) == seen &&
               !run.failed.load(std::memory_order_acquire)) {
          if (++spins < 256) {
            CpuRelax();
            continue;
          }
          std::this_thread::yield();
          // Look at the other nodes' steps once it is time to.
          if (Clock::now() - idle_since >= cross_node_after) break;
        }
        waited += Clock::now() - start;
        continue;
      }
      idle = false;
      const bool mine = s >= own_begin && s < own_end;
      try {
        RunStep(w, mem, s, step);
      } catch (...) {
        run.failed.store(true, std::memory_order_release);
        throw;  // The job fails; the frame's Wait reports it.
      }
      run.finished.fetch_add(1, std::memory_order_acq_rel);
      ++steps;
      if (!mine) ++moved;
    }
    run.steps.fetch_add(steps, std::memory_order_relaxed);
    run.moved_steps.fetch_add(moved, std::memory_order_relaxed);
    run.wait_ns.fetch_add(
        static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(waited)
                .count()),
        std::memory_order_relaxed);
  }

  // Phase 1 as one job per block; then one slab job per worker, after all
  // of them (RunSlabJob). Bitwise the serial state: every step runs after
  // the steps it depends on, and steps that do not depend on each other
  // touch different bodies.
  static absl::Status RunJobs(PhysicsWorld& w, jobs::Runtime& rt) {
    // The homes depend on the runtime's layout: recomputed for another
    // runtime, or one with another layout at the same address (a runtime
    // destroyed and another created in its memory).
    bool same_layout =
        w.homes_for_ == &rt &&
        w.homes_layout_.size() == static_cast<size_t>(rt.num_nodes());
    for (int n = 0; same_layout && n < rt.num_nodes(); ++n) {
      same_layout = w.homes_layout_[n] == rt.workers(n);
    }
    if (!same_layout) {
      w.homes_layout_.assign(static_cast<size_t>(rt.num_nodes()), 0);
      for (int n = 0; n < rt.num_nodes(); ++n) {
        w.homes_layout_[n] = rt.workers(n);
      }
      const jobs::NodePartition blocks = rt.Partition(w.blocks_);
      const jobs::NodePartition slabs = rt.Partition(w.slabs_);
      for (size_t b = 0; b < w.blocks_; ++b) {
        w.block_home_[b] = blocks.HomeOf(b);
      }
      // Each node's slabs in one contiguous range per worker.
      int total_workers = 0;
      for (int n = 0; n < rt.num_nodes(); ++n) total_workers += rt.workers(n);
      w.slab_ranges_ = std::vector<PhysicsWorld::SlabRange>(
          static_cast<size_t>(total_workers));
      size_t r = 0;
      for (const jobs::NodeRange& range : slabs.ranges()) {
        const int workers = rt.workers(range.node);
        for (int k = 0; k < workers; ++k, ++r) {
          PhysicsWorld::SlabRange& out = w.slab_ranges_[r];
          out.node = range.node;
          out.begin =
              static_cast<int>(range.begin + range.size() * k / workers);
          out.end =
              static_cast<int>(range.begin + range.size() * (k + 1) / workers);
        }
      }
      w.homes_for_ = &rt;
    }
    for (int s = 0; s < w.slabs_; ++s) {
      w.progress_[s].state.store(0, std::memory_order_relaxed);
    }
    for (PhysicsWorld::SlabRange& range : w.slab_ranges_) {
      range.taken.store(false, std::memory_order_relaxed);
    }
    PhysicsWorld::SlabRun& run = *w.slab_run_;
    run.finished.store(0, std::memory_order_relaxed);
    run.failed.store(false, std::memory_order_relaxed);
    run.steps.store(0, std::memory_order_relaxed);
    run.moved_steps.store(0, std::memory_order_relaxed);
    run.wait_ns.store(0, std::memory_order_relaxed);

    jobs::JobCounter counter;
    PhysicsWorld* world = &w;
    for (size_t b = 0; b < w.blocks_; ++b) {
      w.block_jobs_[b] = rt.Submit(
          [world, b](jobs::JobContext& ctx) {
            RunBlock(*world, MemoryOf(ctx), b);
          },
          jobs::SubmitOptions()
              .on_node(w.block_home_[b])
              .with_counter(&counter)
              .named("physics.velocities"));
    }
    for (const PhysicsWorld::SlabRange& range : w.slab_ranges_) {
      jobs::SubmitOptions options = jobs::SubmitOptions()
                                        .on_node(range.node)
                                        .with_counter(&counter)
                                        .named("physics.slabs");
      for (const jobs::JobRef& block : w.block_jobs_) {
        options.predecessors.push_back(block);
      }
      rt.Spawn([world](jobs::JobContext& ctx) { RunSlabJob(*world, ctx); },
               std::move(options))
          .IgnoreError();  // A refusal reaches the counter too.
    }
    absl::Status status = counter.Wait();
    for (jobs::JobRef& ref : w.block_jobs_) ref = jobs::JobRef();
    w.last_runtime_ = {run.steps.load(std::memory_order_relaxed),
                       run.moved_steps.load(std::memory_order_relaxed),
                       1e-9 * static_cast<double>(
                                  run.wait_ns.load(std::memory_order_relaxed))};
    if (status.ok() && run.finished.load(std::memory_order_acquire) !=
                           w.slabs_ * (w.config_.iterations + 2)) {
      status = absl::InternalError(
          "PhysicsWorld: the frame's slab jobs finished with steps left");
    }
    if (!status.ok()) {
      DropFrame(w);
    } else {
      FreeBlocks(w);
    }
    return status;
  }
};

absl::Status PhysicsConfig::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PhysicsConfig.", field, " must be ", want, ", got ", value));
  };
  if (bodies < 1 || bodies > (size_t{1} << 24)) {
    return bad("bodies", bodies, "in 1..16777216");
  }
  if (!std::isfinite(dt) || !(dt > 0.0f) || dt > 0.1f) {
    return bad("dt", dt, "finite and in (0, 0.1]");
  }
  if (!std::isfinite(gravity)) return bad("gravity", gravity, "finite");
  if (iterations < 1 || iterations > 256) {
    return bad("iterations", iterations, "in 1..256");
  }
  if (!(restitution >= 0.0f && restitution <= 1.0f)) {
    return bad("restitution", restitution, "in [0, 1]");
  }
  if (!(friction >= 0.0f && friction <= 10.0f)) {
    return bad("friction", friction, "in [0, 10]");
  }
  if (slabs < 0 || slabs > 4096) return bad("slabs", slabs, "in 0..4096");
  // Not just 0 < min_radius: tiny spheres have an inverse inertia that
  // overflows float (physics_world.h, kMinRadius).
  if (!(min_radius >= kMinRadius && min_radius <= max_radius &&
        max_radius <= kMaxRadius)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PhysicsConfig.min_radius and max_radius must satisfy ",
                     kMinRadius, " <= min_radius <= max_radius <= ", kMaxRadius,
                     ", got ", min_radius, " and ", max_radius));
  }
  if (!(contact_margin >= 0.0f && contact_margin <= max_radius)) {
    return bad("contact_margin", contact_margin, "in [0, max_radius]");
  }
  if (!(linear_damping >= 0.0f && linear_damping <= 100.0f)) {
    return bad("linear_damping", linear_damping, "in [0, 100]");
  }
  if (!(angular_damping >= 0.0f && angular_damping <= 100.0f)) {
    return bad("angular_damping", angular_damping, "in [0, 100]");
  }
  return absl::OkStatus();
}

PhysicsWorld::PhysicsWorld(const PhysicsConfig& config) : config_(config) {}

PhysicsWorld::~PhysicsWorld() = default;

absl::StatusOr<std::unique_ptr<PhysicsWorld>> PhysicsWorld::Create(
    const PhysicsConfig& config) {
  absl::Status valid = config.Validate();
  if (!valid.ok()) return valid;
  std::unique_ptr<PhysicsWorld> world(new PhysicsWorld(config));
  world->Build();
  return world;
}

void PhysicsWorld::Build() {
  const size_t n = config_.bodies;
  slabs_ = config_.slabs > 0
               ? config_.slabs
               : static_cast<int>(std::clamp<size_t>(n / 512, 2, 4096));
  // A body-centred lattice: two columns per slab across x, up to 32 rows in
  // z, layers shifted by half a cell so that each rests in a hollow.
  const float cell = 2.0f * config_.max_radius + 0.05f;
  const size_t nx = 2 * static_cast<size_t>(slabs_);
  const size_t nz = std::clamp<size_t>((n + nx - 1) / nx, 1, 32);
  width_ = (static_cast<float>(nx) + 0.5f) * cell;
  depth_ = (static_cast<float>(nz) + 0.5f) * cell;
  slab_width_ = width_ / static_cast<float>(slabs_);
  blocks_ = (n + kBlockSize - 1) / kBlockSize;

  for (auto* v : {&px_, &py_, &pz_, &vx_, &vy_, &vz_, &wx_, &wy_, &wz_,
                  &radius_, &inv_mass_, &inv_inertia_}) {
    v->assign(n, 0.0f);
  }
  std::mt19937_64 rng(config_.seed);
  // Uniform in [0, 1) from 24 random bits: the same on every platform.
  auto uniform = [&rng] {
    return static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f);
  };
  const size_t per_layer = nx * nz;
  for (size_t i = 0; i < n; ++i) {
    const size_t layer = i / per_layer;
    const size_t in_layer = i % per_layer;
    const float shift = (layer % 2 == 1) ? 0.5f * cell : 0.0f;
    const float r = config_.min_radius +
                    (config_.max_radius - config_.min_radius) * uniform();
    px_[i] = (static_cast<float>(in_layer % nx) + 0.5f) * cell + shift +
             (uniform() - 0.5f) * 0.04f * cell;
    pz_[i] = (static_cast<float>(in_layer / nx) + 0.5f) * cell + shift +
             (uniform() - 0.5f) * 0.04f * cell;
    py_[i] = config_.max_radius + 0.05f + static_cast<float>(layer) * cell;
    vx_[i] = uniform() - 0.5f;
    vy_[i] = uniform() - 0.5f;
    vz_[i] = uniform() - 0.5f;
    const float mass = (4.0f / 3.0f) * kPi * r * r * r;
    radius_[i] = r;
    inv_mass_[i] = 1.0f / mass;
    inv_inertia_[i] = 1.0f / (0.4f * mass * r * r);
  }

  block_frames_.assign(blocks_, nullptr);
  slab_frames_.assign(slabs_, nullptr);
  solver_.assign(blocks_, nullptr);
  slab_counts_.assign(slabs_, SlabCounts());
  // Room for six manifolds per body of an average slab, so that steady
  // frames never grow the caches (no heap allocation in a step).
  const size_t per_slab = 6 * (n / slabs_) + 64;
  for (auto& caches : impulse_cache_) {
    caches.assign(slabs_, {});
    for (auto& cache : caches) cache.reserve(per_slab);
  }
  block_jobs_.resize(blocks_);
  progress_ = std::make_unique<SlabProgress[]>(static_cast<size_t>(slabs_));
  slab_run_ = std::make_unique<SlabRun>();
  block_home_.assign(blocks_, 0);
}

const PhysicsWorld::CachedImpulse* PhysicsWorld::FindCached(uint64_t key,
                                                            int slab) const {
  const int first = std::max(0, slab - 1);
  const int last = std::min(slabs_ - 1, slab + 1);
  for (int s = first; s <= last; ++s) {
    const std::vector<CachedImpulse>& cache = impulse_cache_[cache_parity_][s];
    auto it = std::lower_bound(
        cache.begin(), cache.end(), key,
        [](const CachedImpulse& c, uint64_t k) { return c.key < k; });
    if (it != cache.end() && it->key == key) return &*it;
  }
  return nullptr;
}

int PhysicsWorld::SlabOf(float x) const {
  const float f = x / slab_width_;
  if (!(f >= 0.0f)) return 0;  // Also NaN.
  if (f >= static_cast<float>(slabs_)) return slabs_ - 1;
  return std::min(static_cast<int>(f), slabs_ - 1);
}

Aabb PhysicsWorld::BoxOf(uint32_t i) const {
  const float e = radius_[i] + 0.5f * config_.contact_margin;
  return {{px_[i] - e, py_[i] - e, pz_[i] - e},
          {px_[i] + e, py_[i] + e, pz_[i] + e}};
}

void PhysicsWorld::SetBody(uint32_t i, Vec3 position, Vec3 velocity) {
  px_[i] = position.x, py_[i] = position.y, pz_[i] = position.z;
  vx_[i] = velocity.x, vy_[i] = velocity.y, vz_[i] = velocity.z;
  wx_[i] = wy_[i] = wz_[i] = 0.0f;
}

absl::Status PhysicsWorld::Step(const StepOptions& options) {
  if (options.runtime == nullptr) {
    last_runtime_ = {};
    if (options.memory == Memory::kArena) {
      if (options.arena == nullptr) {
        return absl::InvalidArgumentError(
            "StepOptions.arena must be set for Memory::kArena without a "
            "runtime");
      }
    }
    absl::Status status =
        options.memory == Memory::kArena
            ? PhysicsStepper<ArenaMemory>::RunSerial(*this,
                                                     ArenaMemory{options.arena})
            : PhysicsStepper<HeapMemory>::RunSerial(*this, HeapMemory{});
    if (!status.ok()) return status;
  } else {
    if (options.memory == Memory::kArena && !options.runtime->frame_open()) {
      return absl::FailedPreconditionError(
          "PhysicsWorld::Step on the runtime with Memory::kArena needs an open "
          "frame (Runtime::BeginFrame): jobs outside frames get scratch "
          "arenas rewound when they return");
    }
    absl::Status status =
        options.memory == Memory::kArena
            ? PhysicsStepper<ArenaMemory>::RunJobs(*this, *options.runtime)
            : PhysicsStepper<HeapMemory>::RunJobs(*this, *options.runtime);
    if (!status.ok()) return status;
  }
  cache_parity_ = 1 - cache_parity_;
  last_frame_ = {};
  max_penetration_ = 0;
  for (const SlabCounts& c : slab_counts_) {
    last_frame_.candidate_pairs += c.stats.candidate_pairs;
    last_frame_.manifolds += c.stats.manifolds;
    last_frame_.wall_manifolds += c.stats.wall_manifolds;
    last_frame_.contact_points += c.stats.contact_points;
    last_frame_.max_slab_manifolds =
        std::max(last_frame_.max_slab_manifolds, c.stats.manifolds);
    max_penetration_ = std::max(max_penetration_, c.max_penetration);
  }
  return absl::OkStatus();
}

std::vector<BodyPair> PhysicsWorld::CandidatePairs() const {
  std::vector<std::vector<uint32_t>> bins(slabs_);
  for (size_t i = 0; i < size(); ++i) {
    bins[SlabOf(px_[i])].push_back(static_cast<uint32_t>(i));
  }
  std::vector<BodyPair> pairs;
  for (int s = 0; s < slabs_; ++s) {
    std::vector<SweepEntry> sweep;
    for (uint32_t id : bins[s]) sweep.push_back({BoxOf(id), id, 1});
    if (s + 1 < slabs_) {
      for (uint32_t id : bins[s + 1]) sweep.push_back({BoxOf(id), id, 0});
    }
    SortAndSweep(absl::MakeSpan(sweep), kSweepAxis, pairs);
  }
  std::sort(pairs.begin(), pairs.end(), [](BodyPair a, BodyPair b) {
    return a.first != b.first ? a.first < b.first : a.second < b.second;
  });
  return pairs;
}

double PhysicsWorld::Energy() const {
  double e = 0;
  for (size_t i = 0; i < size(); ++i) {
    const double m = 1.0 / inv_mass_[i];
    const double inertia = 1.0 / inv_inertia_[i];
    const double v2 = double{vx_[i]} * vx_[i] + double{vy_[i]} * vy_[i] +
                      double{vz_[i]} * vz_[i];
    const double w2 = double{wx_[i]} * wx_[i] + double{wy_[i]} * wy_[i] +
                      double{wz_[i]} * wz_[i];
    e += 0.5 * m * v2 + 0.5 * inertia * w2 -
         m * double{config_.gravity} * py_[i];
  }
  return e;
}

uint64_t PhysicsWorld::StateHash() const {
  uint64_t h = 1469598103934665603ull;
  for (const auto* v : {&px_, &py_, &pz_, &vx_, &vy_, &vz_, &wx_, &wy_, &wz_}) {
    h = Fnv(v->data(), v->size() * sizeof(float), h);
  }
  return h;
}

size_t PhysicsWorld::WorkingSetBytes() const {
  return 12 * size() * sizeof(float);
}

}  // namespace integration
}  // namespace framealloc
