// The particles scenario of the simulation suite: a structure-of-arrays
// particle system whose neighbour grid is rebuilt every frame.
//
// For: the suite's first scenario (//benchmarks:simulation, name
// "particles"; 1M particles by default) and its tests. Each frame:
//   1. bins the particles into a uniform grid (cell size = interaction
//      radius): a cell id per particle and a count per cell;
//   2. turns the counts into cell offsets (an exclusive prefix sum) and
//      scatters the particle indices into cell order (a counting sort);
//   3. gathers the state into cell order (so neighbours sit together in
//      memory; the state stays sorted from frame to frame);
//   4. builds every particle's neighbour list (indices within the radius,
//      from the 3x3 cells around it) and its density, sum of
//      (1 - d^2/r^2)^2 (no square root anywhere);
//   5. computes a pressure force per particle from its neighbour list:
//      stiffness * max(rho_j + rho_k - 2 rho0, 0) * (1 - d^2/r^2) * d / r
//      away from each neighbour;
//   6. integrates: the streaming pass over x, y, vx, vy, fx, fy (timed, for
//      the bandwidth report; see LastPass()).
// Every per-frame temporary (cell ids, counts/offsets, the sorted indices,
// densities, forces, the neighbour lists) comes from the heap (new[] for
// the arrays, std::vector for the growing lists) in the heap variants and from
// frame arenas in the arena variants: env.arena on one thread, and in
// kRuntimeArena each job's JobContext::arena() (the frame-wide arrays from the
// arena of one job on node 0, valid for every job until EndFrame). Runtime
// variants split the particles, in fixed blocks of kBlock, over the nodes
// (Runtime::Partition of the blocks) and run every pass with
// Runtime::ParallelFor; the state is first touched by its home node's jobs.
// Not for: physical accuracy.
//
// Determinism: the state after N frames depends on the seed, the size and N
// only. Initial values come from a counter-based hash of (seed, index); the
// counting sort is stable (order within a cell by index: the parallel
// scatter sorts every cell after it); densities and forces are summed per
// particle over its neighbours in a fixed order. So every variant and every
// worker count reaches bit-identical states (tested).
//
// Thread safety: a ParticlesSimulation is driven from one thread (Step may
// run jobs on the runtime it is given). Errors: Init returns InvalidArgument
// for a size outside [1, kMaxSize] or an environment that does not match
// the variant; Step returns the runtime's errors.
//
// Example:
//   sim::ScenarioInfo info = sim::ParticlesScenario();
//   std::unique_ptr<sim::Scenario> s = info.create();
//   sim::FrameEnv env;  // kHeap
//   absl::Status st = s->Init({.seed = 1, .size = 100000}, env);
//   for (int f = 0; st.ok() && f < 10; ++f) st = s->Step(env);
//   uint64_t hash = s->StateHash();
#ifndef BENCHMARKS_PARTICLES_H_
#define BENCHMARKS_PARTICLES_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "benchmarks/scenario.h"
#include "benchmarks/streaming_pass.h"
#include "jobs/runtime.h"

namespace framealloc::sim {

// Parameters derived from the particle count so that a particle has about
// eight neighbours at any size.
struct ParticleParams {
  float radius = 0;  // Interaction radius; also the grid's cell size.
  int grid = 1;      // Cells per side of the unit box.
  float stiffness = 2.0f;
  float dt = 1.0f / 240.0f;
  float gravity = -0.5f;
  // Density of a particle with the average neighbourhood: itself (1) plus
  // eight neighbours of mean weight (1 - d^2/r^2)^2 = 1/3 each (d^2/r^2 is
  // uniform on [0, 1] for neighbours spread evenly over the disk).
  float rest_density = 1.0f + 8.0f / 3.0f;
  static ParticleParams ForCount(size_t particles);
};

// The streaming pass: velocities from the forces fx, fy (and gravity),
// positions from the velocities, reflected at the walls of the unit box and
// clamped into it. Per particle it reads x, y, vx, vy, fx, fy (24 bytes)
// and writes x, y, vx, vy (16 bytes). Branch-free, so it vectorizes.
// REQUIRES: every array holds n floats; x, y, vx, vy, fx, fy do not
// overlap.
void IntegrateParticles(float* x, float* y, float* vx, float* vy,
                        const float* fx, const float* fy, size_t n,
                        const ParticleParams& params);

class ParticlesSimulation final : public Scenario, public StreamingPass {
 public:
  static constexpr size_t kDefaultSize = size_t{1} << 20;
  static constexpr size_t kMaxSize = size_t{1} << 26;
  // Particles per block: the unit of work of every pass (and of the
  // neighbour lists), the same in every variant.
  static constexpr size_t kBlock = 4096;

  ParticlesSimulation();
  ~ParticlesSimulation() override;

  absl::Status Init(const ScenarioConfig& config, const FrameEnv& env) override;
  absl::Status Step(const FrameEnv& env) override;
  uint64_t StateHash() const override;
  // The state: x, y, vx, vy in two buffers (current and the gather target).
  size_t WorkingSetBytes() const override;
  StreamingPassStats LastPass() const override;

  size_t size() const { return n_; }
  const ParticleParams& params() const { return params_; }
  // The current state, in cell order (after at least one frame).
  absl::Span<const float> x() const { return {cur_.x, n_}; }
  absl::Span<const float> y() const { return {cur_.y, n_}; }
  absl::Span<const float> vx() const { return {cur_.vx, n_}; }
  absl::Span<const float> vy() const { return {cur_.vy, n_}; }
  // Neighbour-list entries built in the last frame (each pair twice).
  uint64_t last_neighbour_entries() const { return last_entries_; }

 private:
  struct Columns {
    float* x = nullptr;
    float* y = nullptr;
    float* vx = nullptr;
    float* vy = nullptr;
  };
  template <typename Temps, bool kParallel>
  absl::Status StepImpl(const FrameEnv& env);
  // Calls fn(arena, first_block, end_block) over all blocks: once on this
  // thread with env.arena, or in chunks on the runtime with each job's
  // arena.
  template <typename Fn>
  absl::Status ForBlocks(const FrameEnv& env, bool parallel, Fn&& fn);

  size_t n_ = 0;
  size_t blocks_ = 0;
  ParticleParams params_;
  Variant variant_ = Variant::kHeap;
  jobs::NodePartition block_partition_;  // Runtime variants.
  std::unique_ptr<float[]> storage_;     // 8 columns of n_ floats.
  Columns cur_, next_;
  uint64_t last_entries_ = 0;
  StreamingPassStats last_pass_;
};

// The registry entry: "particles", not allocation-heavy, 1M by default.
ScenarioInfo ParticlesScenario();

}  // namespace framealloc::sim

#endif  // BENCHMARKS_PARTICLES_H_
