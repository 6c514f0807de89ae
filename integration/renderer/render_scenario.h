// The render scenario of the simulation suite: a moving scene culled,
// recorded into sorted draw command buffers and consumed by a simulated GPU
// one frame late, every frame.
//
// For: //benchmarks:simulation's "render" workload (allocation-heavy), the
// renderer example and its benchmark. Each frame: the scene's objects move
// (SoA, split by node); the camera orbits; FrameRenderer (frame_renderer.h)
// culls every bounding sphere, builds a DrawCommand per visible object with
// its uniform payload (64 to 256 bytes) and, for a quarter of the objects,
// streamed vertices (8 to 48), sorts by key and submits; the GPU consumer
// checksums the previous frame's draws, as a job running next to the
// recording on the runtime variants, after it on the others. Heap variants
// allocate every command and payload with new/std::vector; arena variants
// put them in the frame slot's arenas (two frames in flight).
// Not for: rendering pixels.
//
// Determinism: sort keys are unique (they hold the object id) and the GPU
// reads in submitted order, so StateHash() (scene state plus the GPU's
// digests of frames 0..N-2) is identical across variants and worker counts.
// Init starts over: called again (any seed, size or variant), it replaces
// the scene, the renderer (only the new variant's is kept), the frame
// counter and the digests, so Init and N steps reach a fresh object's
// state; a failed Init changes nothing.
// Thread safety: as sim::Scenario.
// Errors: Init: InvalidArgument for a size above kMaxObjects or an
// environment that does not match the variant; Step: the same, a variant
// other than Init's, renderer misuse, job failures. A Step whose recording
// failed (a job threw: Unknown) skips its frame; the next Step records the
// frame after it. A Step whose GPU job did not run (the runtime refused it,
// e.g. a GPU node it does not have, or cancelled it at shutdown) returns
// that job's status, but loses nothing: the GPU reads the previous frame on
// the calling thread instead, the frame just recorded is submitted, and the
// next Step goes on as if the job had run. Once the runtime is shut down,
// every Step fails with FailedPrecondition (no frame opens on it, and its
// first job is refused) and changes nothing.
//
// Example:
//   auto scenario = framealloc::integration::RenderScenario().create();
//   sim::FrameEnv env{.variant = sim::Variant::kHeap};
//   (void)scenario->Init({.seed = 1, .size = 20000}, env);
//   for (int f = 0; f < 60; ++f) (void)scenario->Step(env);
#ifndef INTEGRATION_RENDERER_RENDER_SCENARIO_H_
#define INTEGRATION_RENDERER_RENDER_SCENARIO_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "benchmarks/scenario.h"
#include "integration/ecs/frame_memory.h"
#include "integration/renderer/frame_renderer.h"
#include "integration/renderer/renderer.h"
#include "jobs/runtime.h"

namespace framealloc::integration {

// The suite's registration: name "render", allocation_heavy = true.
sim::ScenarioInfo RenderScenario();

namespace render {

// The last frame, for examples and tests.
struct RenderFrameStats {
  RecordStats recorded;          // The frame just recorded.
  std::optional<GpuResult> gpu;  // The previous frame, as the GPU read it.
  // Frame memory the in-flight slots hold (arena variants; 0 on the heap):
  // [0] the frame just recorded, [1] the previous one, read by the GPU.
  size_t slot_bytes[2] = {0, 0};
};

class RenderSimulation final : public sim::Scenario {
 public:
  static constexpr size_t kDefaultObjects = 100000;
  static constexpr float kExtent = 100;
  static constexpr float kHeight = 20;

  absl::Status Init(const sim::ScenarioConfig& config,
                    const sim::FrameEnv& env) override;
  absl::Status Step(const sim::FrameEnv& env) override;
  uint64_t StateHash() const override;
  size_t WorkingSetBytes() const override;

  const RenderFrameStats& last_frame() const { return last_; }
  // The draws of the frame just recorded, in the slot's arenas (arena
  // variants; none on the heap).
  sim::OwnArenaUse LastFrameOwnArenas() const override { return own_; }
  const SceneObjects& scene() const { return scene_; }
  // The camera of frame `frame` (an orbit around the scene).
  static Camera CameraAt(uint64_t frame);
  // The renderer of the arena variants (null otherwise), for tests.
  FrameRenderer<ArenaMemory>* arena_renderer() { return arena_.get(); }
  FrameRenderer<HeapMemory>* heap_renderer() { return heap_.get(); }
  // Where the runtime variants' GPU job runs (any node by default). A node
  // the runtime does not have gets every GPU job refused (see Errors).
  void set_gpu_affinity(jobs::Affinity affinity) { gpu_affinity_ = affinity; }

 private:
  template <typename Mem>
  absl::Status RunFrame(const sim::FrameEnv& env, FrameRenderer<Mem>& r);

  sim::Variant variant_ = sim::Variant::kHeap;
  bool initialized_ = false;
  SceneObjects scene_;
  std::unique_ptr<FrameRenderer<HeapMemory>> heap_;
  std::unique_ptr<FrameRenderer<ArenaMemory>> arena_;
  jobs::Affinity gpu_affinity_;
  uint64_t frame_ = 0;
  // Frame frame_ - 1 was submitted (not abandoned): the GPU reads it next.
  bool previous_submitted_ = false;
  uint64_t digest_ = 0;
  uint64_t draws_ = 0;
  RenderFrameStats last_;
  sim::OwnArenaUse own_;
};

}  // namespace render
}  // namespace framealloc::integration

#endif  // INTEGRATION_RENDERER_RENDER_SCENARIO_H_
