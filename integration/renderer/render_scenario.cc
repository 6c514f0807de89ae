// The render scenario (see render_scenario.h).
#include "integration/renderer/render_scenario.h"

#include <cmath>
#include <exception>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace framealloc::integration {
namespace render {
namespace {

constexpr float kDt = 1.0f / 60.0f;

FrameExecutor ExecutorFor(const sim::FrameEnv& env) {
  if (sim::UsesRuntime(env.variant)) {
    return FrameExecutor::OnRuntime(env.runtime);
  }
  return FrameExecutor::Sequential(
      env.variant == sim::Variant::kArena ? env.arena : nullptr);
}

}  // namespace

Camera RenderSimulation::CameraAt(uint64_t frame) {
  const float t = static_cast<float>(frame) * kDt * 0.2f;
  Camera c;
  c.position = {110 * std::cos(t), 30, 110 * std::sin(t)};
  c.target = {0, 0, 0};
  c.fov_y = 0.5f;
  c.far_plane = 150;
  return c;
}

absl::Status RenderSimulation::Init(const sim::ScenarioConfig& config,
                                    const sim::FrameEnv& env) {
  if (absl::Status s = sim::CheckEnv(env, "render"); !s.ok()) return s;
  const size_t n = config.size == 0 ? kDefaultObjects : config.size;
  if (n > kMaxObjects) {
    return absl::InvalidArgumentError(
        absl::StrCat("render: ScenarioConfig.size = ", n,
                     " objects is above the limit of ", kMaxObjects));
  }
  absl::StatusOr<SceneObjects> scene =
      MakeScene(n, config.seed, kExtent, kHeight);
  if (!scene.ok()) return scene.status();
  if (absl::Status s = scene->Validate(); !s.ok()) return s;
  // Built in a fresh object and moved in whole: a second Init starts over
  // (scene, renderer of the new variant only, frame counter, digests), and
  // a failed one changes nothing. The GPU affinity is a setting, kept.
  RenderSimulation fresh;
  fresh.gpu_affinity_ = gpu_affinity_;
  fresh.scene_ = *std::move(scene);
  const int lanes = ExecutorFor(env).lanes();
  if (sim::UsesArena(env.variant)) {
    auto r = FrameRenderer<ArenaMemory>::Create(lanes, n);
    if (!r.ok()) return r.status();
    fresh.arena_ = *std::move(r);
  } else {
    auto r = FrameRenderer<HeapMemory>::Create(lanes, n);
    if (!r.ok()) return r.status();
    fresh.heap_ = *std::move(r);
  }
  fresh.variant_ = env.variant;
  fresh.initialized_ = true;
  *this = std::move(fresh);
  return absl::OkStatus();
}

absl::Status RenderSimulation::Step(const sim::FrameEnv& env) {
  if (absl::Status s = sim::CheckStepEnv(env, "render"); !s.ok()) return s;
  if (!initialized_) {
    return absl::FailedPreconditionError("render: Step before Init");
  }
  if (env.variant != variant_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "render: Step with variant ",
        std::string(sim::VariantName(env.variant)), "; Init was given ",
        std::string(sim::VariantName(variant_))));
  }
  if (arena_ != nullptr) return RunFrame(env, *arena_);
  return RunFrame(env, *heap_);
}

template <typename Mem>
absl::Status RenderSimulation::RunFrame(const sim::FrameEnv& env,
                                        FrameRenderer<Mem>& r) {
  const FrameExecutor exec = ExecutorFor(env);
  const uint64_t frame = frame_;
  absl::Status s = exec.ForRange(scene_.size(), 4096,
                                 [this](const Lane&, size_t b, size_t e) {
                                   scene_.Advance(b, e, kDt, kExtent, kHeight);
                                 });
  if (!s.ok()) return s;
  absl::StatusOr<Frustum> frustum = Frustum::FromCamera(CameraAt(frame));
  if (!frustum.ok()) return frustum.status();
  if (s = r.BeginFrame(frame, exec); !s.ok()) return s;
  // The frame number is spent from here: if the recording fails, the
  // renderer abandons the frame (FrameRenderer::Record) and the next Step
  // records frame + 1, with no frame for the GPU to read.
  ++frame_;
  const bool consume = previous_submitted_;
  previous_submitted_ = false;

  // The GPU reads frame - 1 while this frame is recorded: a job next to the
  // recording jobs on a runtime; afterwards on one thread.
  std::optional<absl::StatusOr<GpuResult>> gpu;
  jobs::JobHandle<absl::StatusOr<GpuResult>> gpu_job;
  // Why the GPU job did not read frame - 1 (refused, cancelled, threw).
  absl::Status gpu_failed;
  if (consume && exec.runtime() != nullptr) {
    // Submit throws only what storing the job throws (an error handler
    // that throws on out-of-memory): that too must not leave the frame
    // begun and never submitted.
    try {
      gpu_job = exec.runtime()->Submit(
          [&r, frame] { return r.Consume(frame - 1); },
          jobs::SubmitOptions().on(gpu_affinity_).named("gpu"));
    } catch (const std::exception& e) {
      gpu_failed = absl::UnknownError(
          absl::StrCat("render: submitting the GPU job threw: ", e.what()));
    } catch (...) {
      gpu_failed = absl::UnknownError(
          "render: submitting the GPU job threw a non-std exception");
    }
  }
  s = r.Record(exec, scene_, *frustum);
  if (gpu_job.valid()) {
    gpu_failed = gpu_job.Wait();
    if (gpu_failed.ok()) gpu.emplace(std::move(gpu_job.value()));
  }
  if (consume && !gpu.has_value()) {
    // The sequential variants; or the GPU job did not run. Returning
    // without reading frame - 1 would lose it and leave its slot in flight
    // for good (BeginFrame(frame + 1) needs that slot): read it here, after
    // the recording, as the sequential variants do.
    gpu.emplace(r.Consume(frame - 1));
  }
  // The GPU's reading counts whether or not this frame's recording worked.
  absl::Status gpu_status = gpu_failed;
  if (gpu.has_value()) {
    if (gpu->ok()) {
      const GpuResult& g = **gpu;
      const uint64_t fold[3] = {g.frame, g.draws, g.digest};
      digest_ = sim::HashBytes(fold, sizeof(fold), digest_);
      draws_ += g.draws;
    } else if (gpu_status.ok()) {
      gpu_status = gpu->status();
    }
  }
  // A failed recording abandoned its frame (FrameRenderer::Record).
  if (!s.ok()) return s;
  last_ = RenderFrameStats();
  if (gpu.has_value() && gpu->ok()) last_.gpu = **gpu;
  const int slot = static_cast<int>(frame % 2);
  last_.recorded = r.slot_stats(slot);
  last_.slot_bytes[0] = r.slot_arena_bytes(slot);
  last_.slot_bytes[1] = r.slot_arena_bytes(1 - slot);
  own_.allocations = static_cast<int64_t>(r.slot_arena_allocations(slot));
  own_.bytes = r.slot_arena_requested_bytes(slot);
  // Submitted even when the GPU failed: returning first left the frame
  // "being recorded", and every later BeginFrame refused.
  if (s = r.Submit(); !s.ok()) return s;
  previous_submitted_ = true;
  return gpu_status;
}

uint64_t RenderSimulation::StateHash() const {
  uint64_t h = sim::HashBytes(&frame_, sizeof(frame_));
  h = sim::HashBytes(&digest_, sizeof(digest_), h);
  h = sim::HashBytes(&draws_, sizeof(draws_), h);
  for (const std::vector<float>* column :
       {&scene_.x, &scene_.y, &scene_.z, &scene_.vx, &scene_.vy, &scene_.vz}) {
    h = sim::HashBytes(column->data(), column->size() * sizeof(float), h);
  }
  return h;
}

size_t RenderSimulation::WorkingSetBytes() const {
  // The scene's columns, and two frames of draws: a command, about 160
  // bytes of uniforms and (a quarter of them) 28 vertices, for the ~30% of
  // objects in view.
  const size_t n = scene_.size();
  const size_t scene = n * (7 * sizeof(float) + 3 * sizeof(uint16_t) + 1);
  const size_t per_draw =
      sizeof(DrawCommand<HeapMemory>) + 160 + 28 * sizeof(Vertex) / 4 + 16;
  return scene + 2 * (n * 3 / 10) * per_draw;
}

}  // namespace render

sim::ScenarioInfo RenderScenario() {
  sim::ScenarioInfo info;
  info.name = "render";
  info.description =
      "renderer: frustum culling, a draw command per visible object with "
      "uniform and vertex payloads, sort by key, two frames in flight with a "
      "GPU consumer one frame late";
  info.allocation_heavy = true;
  info.default_size = render::RenderSimulation::kDefaultObjects;
  info.create = [] { return std::make_unique<render::RenderSimulation>(); };
  return info;
}

}  // namespace framealloc::integration
