// The particles scenario (see particles.h): one frame, written once for the
// heap and the arena temporaries and for one thread or the runtime.
#include "benchmarks/particles.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "alloc/arena_allocator.h"

namespace framealloc::sim {

ParticleParams ParticleParams::ForCount(size_t particles) {
  ParticleParams p;
  // About eight neighbours: n * pi * r^2 = 8 in the unit box.
  const double r =
      std::sqrt(8.0 / (3.14159265358979 * std::max<size_t>(particles, 16)));
  p.grid = std::max(1, static_cast<int>(1.0 / r));
  p.radius = 1.0f / static_cast<float>(p.grid);
  return p;
}

// Cloned for AVX2 (8 floats a step, chosen at load time where the CPU has
// it) and the portable x86-64 baseline (SSE2, 4 floats). No FMA in either,
// so every clone rounds alike.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("avx2", "default")))
#endif
void IntegrateParticles(float* __restrict x, float* __restrict y,
                        float* __restrict vx, float* __restrict vy,
                        const float* __restrict fx, const float* __restrict fy,
                        size_t n, const ParticleParams& params) {
  const float dt = params.dt;
  const float g = params.gravity;
  for (size_t i = 0; i < n; ++i) {
    float u = vx[i] + fx[i] * dt;
    float v = vy[i] + (fy[i] + g) * dt;
    float px = x[i] + u * dt;
    float py = y[i] + v * dt;
    // Reflect at the walls (selects, not branches), then clamp into the box
    // for a particle that crossed more than the box in one step.
    const bool flip_x = (px < 0.0f) | (px > 1.0f);
    const bool flip_y = (py < 0.0f) | (py > 1.0f);
    px = px < 0.0f ? -px : px;
    px = px > 1.0f ? 2.0f - px : px;
    py = py < 0.0f ? -py : py;
    py = py > 1.0f ? 2.0f - py : py;
    u = flip_x ? -u : u;
    v = flip_y ? -v : v;
    x[i] = std::min(std::max(px, 0.0f), 1.0f);
    y[i] = std::min(std::max(py, 0.0f), 1.0f);
    vx[i] = u;
    vy[i] = v;
  }
}

namespace {

// Temporaries on the heap: arrays from new[] (uninitialized, like the
// arena's), growing lists as std::vector; freed one by one at the end of
// the frame.
struct HeapTemps {
  static constexpr bool kArena = false;
  template <typename T>
  using Alloc = std::allocator<T>;
  template <typename T>
  static Alloc<T> Make(FrameArena*) {
    return {};
  }
  // An uninitialized array, owned by `owned` until the frame's end.
  template <typename T>
  static T* Array(FrameArena*, size_t n,
                  std::vector<std::unique_ptr<T[]>>& owned) {
    owned.emplace_back(new T[n]);
    return owned.back().get();
  }
};

// Temporaries on a frame arena: arrays and std::vectors with
// ArenaAllocator; nothing is freed one by one, the arena drops everything
// at the frame's end.
struct ArenaTemps {
  static constexpr bool kArena = true;
  template <typename T>
  using Alloc = ArenaAllocator<T>;
  template <typename T>
  static Alloc<T> Make(FrameArena* arena) {
    return Alloc<T>(arena);
  }
  template <typename T>
  static T* Array(FrameArena* arena, size_t n,
                  std::vector<std::unique_ptr<T[]>>&) {
    return arena->AllocateArray<T>(n);
  }
};

// A block's neighbour lists: particle j's neighbours are
// items[starts[j - first] .. starts[j - first + 1]).
struct NeighbourList {
  const uint32_t* starts = nullptr;
  const uint32_t* items = nullptr;
};

// The frame-wide temporaries of one frame: uninitialized arrays (every
// element is written before it is read), except the cell counts.
template <typename Temps>
struct FrameTemps {
  template <typename T>
  using Vec = std::vector<T, typename Temps::template Alloc<T>>;

  FrameTemps(FrameArena* arena, size_t n, size_t cells, size_t blocks) {
    cell = Temps::Array(arena, n, owned_u32);
    order = Temps::Array(arena, n, owned_u32);
    sorted_cell = Temps::Array(arena, n, owned_u32);
    cell_start = Temps::Array(arena, cells + 1, owned_u32);
    cursor = Temps::Array(arena, cells, owned_u32);
    rho = Temps::Array(arena, n, owned_f32);
    fx = Temps::Array(arena, n, owned_f32);
    fy = Temps::Array(arena, n, owned_f32);
    lists = Temps::Array(arena, blocks, owned_lists);
    entries = Temps::Array(arena, blocks, owned_u64);
    std::memset(cell_start, 0, (cells + 1) * sizeof(uint32_t));
    if constexpr (!Temps::kArena) owners.resize(2 * blocks);
  }

  uint32_t* cell;         // Cell of each particle (state order).
  uint32_t* order;        // Particle indices in cell order.
  uint32_t* sorted_cell;  // Cell of each particle (cell order).
  uint32_t* cell_start;   // Counts, then offsets (cells + 1).
  uint32_t* cursor;       // Scatter positions per cell.
  float* rho;             // Density (cell order).
  float* fx;              // Force (cell order).
  float* fy;
  NeighbourList* lists;  // One per block.
  uint64_t* entries;     // Neighbour entries per block.
  // Heap variants: the owners of the arrays, and the blocks' list buffers,
  // kept until the frame's end (arena memory lives in the arena).
  std::vector<std::unique_ptr<uint32_t[]>> owned_u32;
  std::vector<std::unique_ptr<float[]>> owned_f32;
  std::vector<std::unique_ptr<NeighbourList[]>> owned_lists;
  std::vector<std::unique_ptr<uint64_t[]>> owned_u64;
  struct None {};
  std::conditional_t<Temps::kArena, None, std::vector<std::vector<uint32_t>>>
      owners;
};

inline uint32_t CellOf(float x, float y, int grid) {
  const float g = static_cast<float>(grid);
  const int cx = std::clamp(static_cast<int>(x * g), 0, grid - 1);
  const int cy = std::clamp(static_cast<int>(y * g), 0, grid - 1);
  return static_cast<uint32_t>(cy * grid + cx);
}

// SplitMix64: a counter-based generator, so every particle's initial value
// depends on (seed, index) only, whoever computes it.
inline uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline float Unit(uint64_t seed, uint64_t counter) {
  return static_cast<float>(Mix(seed ^ Mix(counter)) >> 40) * 0x1p-24f;
}

using Clock = std::chrono::steady_clock;

}  // namespace

ParticlesSimulation::ParticlesSimulation() = default;
ParticlesSimulation::~ParticlesSimulation() = default;

template <typename Fn>
absl::Status ParticlesSimulation::ForBlocks(const FrameEnv& env, bool parallel,
                                            Fn&& fn) {
  if (!parallel) {
    fn(env.arena, size_t{0}, blocks_);
    return absl::OkStatus();
  }
  return env.runtime->ParallelFor(
      block_partition_, 1, [&fn](jobs::JobContext& ctx, size_t b, size_t e) {
        fn(&ctx.arena(), b, e);
      });
}

absl::Status ParticlesSimulation::Init(const ScenarioConfig& config,
                                       const FrameEnv& env) {
  const size_t n = config.size == 0 ? kDefaultSize : config.size;
  if (n > kMaxSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "particles: size must be in [1, ", kMaxSize, "], got ", n));
  }
  if (UsesRuntime(env.variant) != (env.runtime != nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "particles: variant ", std::string(VariantName(env.variant)),
        UsesRuntime(env.variant) ? " needs" : " takes no", " runtime"));
  }
  if ((env.variant == Variant::kArena) != (env.arena != nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "particles: variant ", std::string(VariantName(env.variant)),
        env.variant == Variant::kArena ? " needs" : " takes no",
        " frame arena"));
  }
  n_ = n;
  blocks_ = (n + kBlock - 1) / kBlock;
  params_ = ParticleParams::ForCount(n);
  variant_ = env.variant;
  // Uninitialized: the first write below is the first touch.
  storage_.reset(new float[8 * n]);
  float* s = storage_.get();
  cur_ = {s, s + n, s + 2 * n, s + 3 * n};
  next_ = {s + 4 * n, s + 5 * n, s + 6 * n, s + 7 * n};
  const uint64_t seed = config.seed;
  auto init = [this, seed](FrameArena*, size_t first, size_t end) {
    for (size_t i = first * kBlock; i < std::min(end * kBlock, n_); ++i) {
      cur_.x[i] = Unit(seed, 4 * i);
      cur_.y[i] = Unit(seed, 4 * i + 1);
      cur_.vx[i] = 0.4f * Unit(seed, 4 * i + 2) - 0.2f;
      cur_.vy[i] = 0.4f * Unit(seed, 4 * i + 3) - 0.2f;
      next_.x[i] = next_.y[i] = next_.vx[i] = next_.vy[i] = 0.0f;
    }
  };
  last_entries_ = 0;
  last_pass_ = {};
  if (UsesRuntime(env.variant)) {
    block_partition_ = env.runtime->Partition(blocks_);
    // The blocks' home nodes touch their state first (their pages land
    // there on a real NUMA machine).
    return ForBlocks(env, true, init);
  }
  init(nullptr, 0, blocks_);
  return absl::OkStatus();
}

absl::Status ParticlesSimulation::Step(const FrameEnv& env) {
  if (n_ == 0) {
    return absl::FailedPreconditionError("particles: Step before Init");
  }
  if (absl::Status s = CheckStepEnv(env, "particles"); !s.ok()) return s;
  if (env.variant != variant_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "particles: initialized for ", std::string(VariantName(variant_)),
        ", stepped as ", std::string(VariantName(env.variant))));
  }
  switch (env.variant) {
    case Variant::kHeap:
      return StepImpl<HeapTemps, false>(env);
    case Variant::kArena:
      return StepImpl<ArenaTemps, false>(env);
    case Variant::kRuntimeHeap:
      return StepImpl<HeapTemps, true>(env);
    case Variant::kRuntimeArena:
      return StepImpl<ArenaTemps, true>(env);
  }
  return absl::InvalidArgumentError("particles: unknown variant");
}

template <typename Temps, bool kParallel>
absl::Status ParticlesSimulation::StepImpl(const FrameEnv& env) {
  using Frame = FrameTemps<Temps>;
  const size_t n = n_;
  const int grid = params_.grid;
  const size_t cells = static_cast<size_t>(grid) * grid;

  // The frame-wide temporaries. Runtime-arena: from the frame arena of a
  // job on node 0 (valid for every job of the frame until EndFrame).
  std::optional<Frame> frame;
  if constexpr (kParallel && Temps::kArena) {
    absl::Status made =
        env.runtime
            ->Submit(
                [&](jobs::JobContext& ctx) {
                  frame.emplace(&ctx.arena(), n, cells, blocks_);
                },
                jobs::SubmitOptions().on_node(0).named("particles:temps"))
            .Wait();
    if (!made.ok()) return made;
  } else {
    frame.emplace(env.arena, n, cells, blocks_);
  }
  Frame& t = *frame;
  uint32_t* const cell = t.cell;
  uint32_t* const order = t.order;
  uint32_t* const sorted_cell = t.sorted_cell;
  uint32_t* const cell_start = t.cell_start;
  uint32_t* const cursor = t.cursor;
  auto block_end = [n](size_t b) { return std::min((b + 1) * kBlock, n); };

  // 1. Cell of every particle, and the count per cell.
  const Columns cur = cur_;
  absl::Status s =
      ForBlocks(env, kParallel, [&](FrameArena*, size_t bb, size_t be) {
        for (size_t i = bb * kBlock; i < block_end(be - 1); ++i) {
          const uint32_t c = CellOf(cur.x[i], cur.y[i], grid);
          cell[i] = c;
          if constexpr (kParallel) {
            std::atomic_ref<uint32_t>(cell_start[c])
                .fetch_add(1, std::memory_order_relaxed);
          } else {
            ++cell_start[c];
          }
        }
      });
  if (!s.ok()) return s;

  // 2. Offsets: exclusive prefix sum of the counts.
  uint32_t running = 0;
  for (size_t c = 0; c < cells; ++c) {
    const uint32_t count = cell_start[c];
    cell_start[c] = running;
    cursor[c] = running;
    running += count;
  }
  cell_start[cells] = running;

  // 3. Scatter the indices into cell order. In parallel the order inside a
  // cell depends on the schedule, so every cell is sorted afterwards: the
  // result is the stable order either way.
  s = ForBlocks(env, kParallel, [&](FrameArena*, size_t bb, size_t be) {
    for (size_t i = bb * kBlock; i < block_end(be - 1); ++i) {
      uint32_t pos;
      if constexpr (kParallel) {
        pos = std::atomic_ref<uint32_t>(cursor[cell[i]])
                  .fetch_add(1, std::memory_order_relaxed);
      } else {
        pos = cursor[cell[i]]++;
      }
      order[pos] = static_cast<uint32_t>(i);
    }
  });
  if (!s.ok()) return s;
  if constexpr (kParallel) {
    s = env.runtime->ParallelFor(
        cells, 4096, [&](jobs::JobContext&, size_t first, size_t end) {
          for (size_t c = first; c < end; ++c) {
            std::sort(order + cell_start[c], order + cell_start[c + 1]);
          }
        });
    if (!s.ok()) return s;
  }

  // 4. Gather the state into cell order (into the other buffer).
  const Columns nxt = next_;
  s = ForBlocks(env, kParallel, [&](FrameArena*, size_t bb, size_t be) {
    for (size_t j = bb * kBlock; j < block_end(be - 1); ++j) {
      const uint32_t o = order[j];
      nxt.x[j] = cur.x[o];
      nxt.y[j] = cur.y[o];
      nxt.vx[j] = cur.vx[o];
      nxt.vy[j] = cur.vy[o];
      sorted_cell[j] = cell[o];
    }
  });
  if (!s.ok()) return s;
  std::swap(cur_, next_);
  const Columns st = cur_;

  // 5. Neighbour lists and densities, a list per block from the block's
  // own temporaries (the worker's arena in runtime-arena).
  const float r = params_.radius;
  const float r2 = r * r;
  const float inv_r = 1.0f / r;
  const float inv_r2 = 1.0f / r2;
  s = ForBlocks(env, kParallel, [&](FrameArena* arena, size_t bb, size_t be) {
    for (size_t b = bb; b < be; ++b) {
      const size_t first = b * kBlock;
      const size_t end = block_end(b);
      typename Frame::template Vec<uint32_t> starts(
          Temps::template Make<uint32_t>(arena));
      typename Frame::template Vec<uint32_t> items(
          Temps::template Make<uint32_t>(arena));
      starts.reserve(end - first + 1);
      // About eight neighbours each: one growth at most, typically none.
      items.reserve((end - first) * 10);
      starts.push_back(0);
      const float* __restrict xs = st.x;
      const float* __restrict ys = st.y;
      const uint32_t* __restrict cs = cell_start;
      for (size_t j = first; j < end; ++j) {
        const float xj = xs[j];
        const float yj = ys[j];
        const int cx = static_cast<int>(sorted_cell[j] % grid);
        const int cy = static_cast<int>(sorted_cell[j] / grid);
        float rho = 1.0f;
        for (int y = std::max(cy - 1, 0); y <= std::min(cy + 1, grid - 1);
             ++y) {
          const size_t row = static_cast<size_t>(y) * grid;
          const uint32_t k_begin = cs[row + std::max(cx - 1, 0)];
          // The 3 adjacent cells of the row are contiguous in cell order.
          const uint32_t k_end = cs[row + std::min(cx + 1, grid - 1) + 1];
          for (uint32_t k = k_begin; k < k_end; ++k) {
            if (k == j) continue;
            const float dx = xs[k] - xj;
            const float dy = ys[k] - yj;
            const float d2 = dx * dx + dy * dy;
            if (d2 < r2) {
              items.push_back(k);
              const float w = 1.0f - d2 * inv_r2;
              rho += w * w;
            }
          }
        }
        t.rho[j] = rho;
        starts.push_back(static_cast<uint32_t>(items.size()));
      }
      t.entries[b] = items.size();
      t.lists[b] = NeighbourList{starts.data(), items.data()};
      if constexpr (!Temps::kArena) {
        // Keep the buffers for step 6 (moving keeps the data in place).
        t.owners[2 * b] = std::move(starts);
        t.owners[2 * b + 1] = std::move(items);
      }
    }
  });
  if (!s.ok()) return s;

  // 6. Pressure forces from the lists (densities of both ends).
  const float stiffness = params_.stiffness;
  const float rho0 = params_.rest_density;
  s = ForBlocks(env, kParallel, [&](FrameArena*, size_t bb, size_t be) {
    for (size_t b = bb; b < be; ++b) {
      const NeighbourList list = t.lists[b];
      const size_t first = b * kBlock;
      const float* __restrict xs = st.x;
      const float* __restrict ys = st.y;
      const float* __restrict rho = t.rho;
      float* __restrict fxs = t.fx;
      float* __restrict fys = t.fy;
      for (size_t j = first; j < block_end(b); ++j) {
        const float xj = xs[j];
        const float yj = ys[j];
        const float rj = rho[j];
        float fx = 0.0f, fy = 0.0f;
        for (uint32_t e = list.starts[j - first];
             e < list.starts[j - first + 1]; ++e) {
          const uint32_t k = list.items[e];
          const float dx = xs[k] - xj;
          const float dy = ys[k] - yj;
          const float w = 1.0f - (dx * dx + dy * dy) * inv_r2;
          const float p = stiffness * std::max(rj + rho[k] - 2.0f * rho0, 0.0f);
          const float push = p * w * inv_r;
          fx -= push * dx;
          fy -= push * dy;
        }
        fxs[j] = fx;
        fys[j] = fy;
      }
    }
  });
  if (!s.ok()) return s;

  // 7. The streaming pass, timed.
  const float* fx = t.fx;
  const float* fy = t.fy;
  const ParticleParams params = params_;
  const Clock::time_point start = Clock::now();
  s = ForBlocks(env, kParallel, [&](FrameArena*, size_t bb, size_t be) {
    const size_t first = bb * kBlock;
    const size_t count = block_end(be - 1) - first;
    IntegrateParticles(st.x + first, st.y + first, st.vx + first, st.vy + first,
                       fx + first, fy + first, count, params);
  });
  const std::chrono::duration<double> pass = Clock::now() - start;
  if (!s.ok()) return s;
  last_pass_.label = "particle update (IntegrateParticles)";
  last_pass_.bytes_read = n * 6 * sizeof(float);
  last_pass_.bytes_written = n * 4 * sizeof(float);
  last_pass_.footprint_bytes = n * 6 * sizeof(float);
  last_pass_.seconds = pass.count();

  uint64_t entries = 0;
  for (size_t b = 0; b < blocks_; ++b) entries += t.entries[b];
  last_entries_ = entries;
  return absl::OkStatus();
}

uint64_t ParticlesSimulation::StateHash() const {
  uint64_t h = HashBytes(&n_, sizeof(n_));
  if (n_ == 0) return h;
  h = HashBytes(cur_.x, n_ * sizeof(float), h);
  h = HashBytes(cur_.y, n_ * sizeof(float), h);
  h = HashBytes(cur_.vx, n_ * sizeof(float), h);
  return HashBytes(cur_.vy, n_ * sizeof(float), h);
}

size_t ParticlesSimulation::WorkingSetBytes() const {
  return n_ * 8 * sizeof(float);
}

StreamingPassStats ParticlesSimulation::LastPass() const { return last_pass_; }

ScenarioInfo ParticlesScenario() {
  ScenarioInfo info;
  info.name = "particles";
  info.description =
      "SoA particles; neighbour grid (counting sort), neighbour lists, "
      "density and pressure rebuilt every frame";
  info.allocation_heavy = false;
  info.default_size = ParticlesSimulation::kDefaultSize;
  info.create = [] { return std::make_unique<ParticlesSimulation>(); };
  return info;
}

}  // namespace framealloc::sim
