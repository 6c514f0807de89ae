// Scenario: one workload of the simulation suite (//benchmarks:simulation),
// run frame after frame in each of the suite's variants.
//
// For: the suite's driver, which creates a scenario per variant, steps it for
// N frames, times every frame and compares the variants; and for the
// integration libraries (integration/ecs, renderer, physics), each of which
// exposes its workload as a Scenario. Not for: application code (use the
// libraries directly).
//
// The variants differ in where a frame's temporaries come from and who runs
// the frame; the simulation itself is the same, so for one seed every variant
// must end in the same state (StateHash() equal; tested on small sizes):
//   kHeap          one thread; temporaries from new / std::vector each frame.
//   kArena         one thread; temporaries from env.arena (reset by the
//                  driver after each frame).
//   kRuntimeHeap   the job runtime on all its workers; temporaries from the
//                  heap.
//   kRuntimeArena  the job runtime on all its workers; temporaries from each
//                  job's JobContext::arena() (per-worker frame arenas), data
//                  partitioned by node (Runtime::Partition, NodeArray).
// The heap variants run once more in a binary linked with mimalloc, which
// replaces new/malloc for the whole process (driven by the same command).
//
// Determinism: the state after N frames may depend on the seed, the size and
// N only: never on the variant, the number of workers or the scheduling order
// (sum in a fixed order, e.g. per fixed-size block and then over blocks).
//
// Thread safety: the driver calls Init/Step/StateHash from one thread; Step
// may run jobs on the runtime it is given.
#ifndef BENCHMARKS_SCENARIO_H_
#define BENCHMARKS_SCENARIO_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "alloc/frame_arena.h"
#include "jobs/runtime.h"

namespace framealloc::sim {

enum class Variant { kHeap, kArena, kRuntimeHeap, kRuntimeArena };

// "heap", "arena", "runtime-heap", "runtime-arena".
inline std::string_view VariantName(Variant v) {
  switch (v) {
    case Variant::kHeap:
      return "heap";
    case Variant::kArena:
      return "arena";
    case Variant::kRuntimeHeap:
      return "runtime-heap";
    case Variant::kRuntimeArena:
      return "runtime-arena";
  }
  return "?";
}

inline bool UsesRuntime(Variant v) {
  return v == Variant::kRuntimeHeap || v == Variant::kRuntimeArena;
}
inline bool UsesArena(Variant v) {
  return v == Variant::kArena || v == Variant::kRuntimeArena;
}

// What one run of a scenario works with.
struct FrameEnv {
  Variant variant = Variant::kHeap;
  // Runtime variants: the runtime, with a frame open (the driver calls
  // BeginFrame before Step and EndFrame after it). Null otherwise.
  jobs::Runtime* runtime = nullptr;
  // kArena: the frame arena, reset by the driver after each Step. Null
  // otherwise.
  FrameArena* arena = nullptr;
};

// InvalidArgument, prefixed with `scenario`, when `env` lacks what its
// variant needs (a runtime for the runtime variants, an arena for kArena).
inline absl::Status CheckEnv(const FrameEnv& env, const char* scenario) {
  if (UsesRuntime(env.variant) && env.runtime == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(scenario, ": FrameEnv.runtime is null for variant ",
                     std::string(VariantName(env.variant))));
  }
  if (env.variant == Variant::kArena && env.arena == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(scenario, ": FrameEnv.arena is null for variant arena"));
  }
  return absl::OkStatus();
}

// CheckEnv, and for the runtime variants an open frame: their jobs keep
// per-frame data in the workers' frame arenas, which without a frame would
// be scratch arenas rewound as each job returns (data read later, on other
// threads, would be gone). FailedPrecondition, prefixed with `scenario`.
inline absl::Status CheckStepEnv(const FrameEnv& env, const char* scenario) {
  if (absl::Status s = CheckEnv(env, scenario); !s.ok()) return s;
  if (UsesRuntime(env.variant) && !env.runtime->frame_open()) {
    return absl::FailedPreconditionError(absl::StrCat(
        scenario, ": variant ", std::string(VariantName(env.variant)),
        " steps inside an open frame (Runtime::BeginFrame first)"));
  }
  return absl::OkStatus();
}

// Problem size and seed, from the driver's flags.
struct ScenarioConfig {
  uint64_t seed = 42;
  // Scenario-specific element count (particles, bodies, entities, draw
  // items); 0 means the scenario's default.
  size_t size = 0;
};

// Frame memory a scenario took from arenas of its own during one frame.
// Bytes are requested bytes, as the `arena` variant's; the runtime's own
// figure for its worker arenas (FrameTiming::arena_bytes) is the memory
// they used, padding included, so runtime-arena rows add the two.
struct OwnArenaUse {
  int64_t allocations = 0;
  uint64_t bytes = 0;  // Requested.
};

class Scenario {
 public:
  virtual ~Scenario() = default;

  // Builds the initial state from config.seed. Called again (any config or
  // variant), it starts over: Init and N steps reach the state of a fresh
  // object (scenarios_test checks every registered scenario). InvalidArgument
  // for a size the scenario cannot run (the message names the limit).
  virtual absl::Status Init(const ScenarioConfig& config,
                            const FrameEnv& env) = 0;

  // Advances one frame. Errors (a budget refused, a job failed) are returned,
  // never thrown.
  virtual absl::Status Step(const FrameEnv& env) = 0;

  // A digest of the whole simulation state (bitwise over the floats), equal
  // across variants for equal seed, size and frame count.
  virtual uint64_t StateHash() const = 0;

  // Bytes of persistent state a frame reads and writes (for the report).
  virtual size_t WorkingSetBytes() const = 0;

  // Frame memory the last Step took from arenas the scenario keeps itself,
  // beyond env.arena and the runtime's worker arenas (the renderer's
  // per-slot arenas, which hold a frame's draws while it is in flight). The
  // suite adds it to the frame's arena allocations and bytes, so the table
  // counts every allocation a variant makes. Default: none.
  virtual OwnArenaUse LastFrameOwnArenas() const { return {}; }
};

// A registered scenario: its name ("particles", "physics", "ecs", "render"),
// one line of description, whether it is allocation-heavy (the suite's
// targets distinguish these), its default size, and a factory.
struct ScenarioInfo {
  std::string name;
  std::string description;
  bool allocation_heavy = false;
  size_t default_size = 0;
  std::function<std::unique_ptr<Scenario>()> create;
};

// FNV-1a over raw bytes: the StateHash building block.
inline uint64_t HashBytes(const void* data, size_t bytes,
                          uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace framealloc::sim

#endif  // BENCHMARKS_SCENARIO_H_
