// Tests of the renderer: sort keys, culling against brute force, recorded
// command buffers, two frames in flight, and the "render" scenario's
// determinism across variants, worker counts and a two-node topology.
#include "integration/renderer/renderer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "alloc/memory_source.h"
#include "benchmarks/scenario.h"
#include "gtest/gtest.h"
#include "integration/ecs/frame_memory.h"
#include "integration/renderer/frame_renderer.h"
#include "integration/renderer/render_scenario.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc::integration::render {
namespace {

using sim::Variant;

TEST(SortKeyTest, PassThenMaterialThenDepthThenObject) {
  // Opaque before transparent, whatever the rest.
  EXPECT_LT(MakeSortKey(Pass::kOpaque, 4095, 1.0f, 99),
            MakeSortKey(Pass::kTransparent, 0, 0.0f, 0));
  // Opaque: material first, then near before far, then the object id.
  EXPECT_LT(MakeSortKey(Pass::kOpaque, 3, 0.9f, 5),
            MakeSortKey(Pass::kOpaque, 4, 0.1f, 1));
  EXPECT_LT(MakeSortKey(Pass::kOpaque, 3, 0.2f, 9),
            MakeSortKey(Pass::kOpaque, 3, 0.3f, 1));
  EXPECT_LT(MakeSortKey(Pass::kOpaque, 3, 0.2f, 1),
            MakeSortKey(Pass::kOpaque, 3, 0.2f, 2));
  // Transparent: far before near, then material, then the object id.
  EXPECT_LT(MakeSortKey(Pass::kTransparent, 9, 0.8f, 1),
            MakeSortKey(Pass::kTransparent, 1, 0.2f, 1));
  EXPECT_LT(MakeSortKey(Pass::kTransparent, 1, 0.5f, 7),
            MakeSortKey(Pass::kTransparent, 2, 0.5f, 3));
  // Depth beyond [0, 1] clamps; the id keeps keys unique.
  EXPECT_EQ(MakeSortKey(Pass::kOpaque, 1, 2.0f, 3) >> 24,
            MakeSortKey(Pass::kOpaque, 1, 1.0f, 3) >> 24);
  EXPECT_NE(MakeSortKey(Pass::kOpaque, 1, 0.5f, 3),
            MakeSortKey(Pass::kOpaque, 1, 0.5f, 4));
}

// The frustum test done independently, in double precision, from the
// camera's definition: inside if within the view angles and the depth range
// (grown by the radius). Returns the signed margin (negative: outside).
double BruteForceMargin(const Camera& cam, double x, double y, double z,
                        double r) {
  double fx = cam.target.x - cam.position.x, fy = cam.target.y - cam.position.y,
         fz = cam.target.z - cam.position.z;
  const double fl = std::sqrt(fx * fx + fy * fy + fz * fz);
  fx /= fl, fy /= fl, fz /= fl;
  // right = f x up, u = right x f
  double rx = fy * cam.up.z - fz * cam.up.y, ry = fz * cam.up.x - fx * cam.up.z,
         rz = fx * cam.up.y - fy * cam.up.x;
  const double rl = std::sqrt(rx * rx + ry * ry + rz * rz);
  rx /= rl, ry /= rl, rz /= rl;
  const double ux = ry * fz - rz * fy, uy = rz * fx - rx * fz,
               uz = rx * fy - ry * fx;
  const double qx = x - cam.position.x, qy = y - cam.position.y,
               qz = z - cam.position.z;
  const double d = qx * fx + qy * fy + qz * fz;  // Depth.
  const double h = qx * rx + qy * ry + qz * rz;  // Horizontal.
  const double v = qx * ux + qy * uy + qz * uz;  // Vertical.
  const double ty = std::tan(cam.fov_y / 2.0), tx = ty * cam.aspect;
  // Distance to each side plane: (t*d -+ h) / sqrt(1 + t^2).
  const double margins[6] = {(tx * d + h) / std::sqrt(1 + tx * tx) + r,
                             (tx * d - h) / std::sqrt(1 + tx * tx) + r,
                             (ty * d + v) / std::sqrt(1 + ty * ty) + r,
                             (ty * d - v) / std::sqrt(1 + ty * ty) + r,
                             d - cam.near_plane + r,
                             cam.far_plane - d + r};
  return *std::min_element(margins, margins + 6);
}

TEST(CullingTest, MatchesBruteForce) {
  absl::StatusOr<SceneObjects> scene = MakeScene(20000, 3, 100, 20);
  ASSERT_TRUE(scene.ok());
  for (uint64_t frame : {0u, 40u, 200u}) {
    const Camera cam = RenderSimulation::CameraAt(frame);
    absl::StatusOr<Frustum> fr = Frustum::FromCamera(cam);
    ASSERT_TRUE(fr.ok());
    size_t inside = 0, checked = 0;
    for (size_t i = 0; i < scene->size(); ++i) {
      const double m = BruteForceMargin(cam, scene->x[i], scene->y[i],
                                        scene->z[i], scene->radius[i]);
      if (std::abs(m) < 1e-3) continue;  // On a plane: rounding decides.
      ++checked;
      const bool expected = m >= 0;
      EXPECT_EQ(fr->IntersectsSphere({scene->x[i], scene->y[i], scene->z[i]},
                                     scene->radius[i]),
                expected)
          << "object " << i << " margin " << m;
      inside += expected;
    }
    EXPECT_GT(checked, 19900u);
    // A real cull: some objects in view, many out.
    EXPECT_GT(inside, 1000u);
    EXPECT_LT(inside, checked * 3 / 4);
  }
}

// The batched cull answers as the per-sphere test does, sphere for sphere,
// in order: over whole scenes and over lengths that end inside its chunk of
// 256, with spheres on the planes, NaN centres and radii, and empty input.
TEST(CullingTest, CullSpheresMatchesIntersectsSphere) {
  absl::StatusOr<SceneObjects> scene = MakeScene(20000, 5, 100, 20);
  ASSERT_TRUE(scene.ok());
  // A few awkward spheres: on the eye, huge, zero-sized, NaN.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float odd[][4] = {
      {0, 0, 0, 0},     {0, 0, 0, 1e30f},   {5, 5, -50, 0},    {nan, 0, -10, 1},
      {0, 0, -10, nan}, {0, nan, nan, nan}, {1e30f, 0, -10, 1}};
  for (const auto& o : odd) {
    scene->x.push_back(o[0]);
    scene->y.push_back(o[1]);
    scene->z.push_back(o[2]);
    scene->radius.push_back(o[3]);
  }
  const size_t n_all = scene->x.size();
  for (uint64_t frame : {0u, 40u, 200u}) {
    const Camera cam = RenderSimulation::CameraAt(frame);
    absl::StatusOr<Frustum> fr = Frustum::FromCamera(cam);
    ASSERT_TRUE(fr.ok());
    for (size_t first : {size_t{0}, size_t{1}, size_t{300}, n_all - 7}) {
      for (size_t n : {size_t{0}, size_t{1}, size_t{255}, size_t{256},
                       size_t{257}, n_all - first}) {
        if (first + n > n_all) continue;
        std::vector<uint32_t> expected;
        for (size_t i = first; i < first + n; ++i) {
          if (fr->IntersectsSphere({scene->x[i], scene->y[i], scene->z[i]},
                                   scene->radius[i])) {
            expected.push_back(static_cast<uint32_t>(i));
          }
        }
        std::vector<uint32_t> got(n + 1, 0xdeadbeefu);
        const size_t count = fr->CullSpheres(
            scene->x.data() + first, scene->y.data() + first,
            scene->z.data() + first, scene->radius.data() + first, n,
            static_cast<uint32_t>(first), got.data());
        ASSERT_EQ(count, expected.size())
            << "frame " << frame << " first " << first << " n " << n;
        EXPECT_EQ(got[n], 0xdeadbeefu) << "wrote past n = " << n;
        got.resize(count);
        EXPECT_EQ(got, expected)
            << "frame " << frame << " first " << first << " n " << n;
      }
    }
  }
}

// A copy of one submitted frame, to compare after the next was recorded.
struct Snapshot {
  std::vector<uint64_t> keys;
  std::vector<std::string> labels;
  std::vector<std::vector<std::byte>> uniforms;
  std::vector<std::vector<Vertex>> vertices;
  uint64_t Digest(uint64_t frame) const {
    uint64_t h = 0xcbf29ce484222325ull ^ frame;
    for (size_t i = 0; i < keys.size(); ++i) {
      h = (h ^ ChecksumDraw(keys[i], uniforms[i].data(), uniforms[i].size(),
                            vertices[i].data(), vertices[i].size())) *
          0x100000001b3ull;
    }
    return h;
  }
};

template <typename Mem>
Snapshot Take(std::span<const typename FrameRenderer<Mem>::Item> items) {
  Snapshot s;
  for (const auto& item : items) {
    const auto& c = *item.command;
    s.keys.push_back(c.key);
    s.labels.emplace_back(c.label.data(), c.label.size());
    s.uniforms.emplace_back(c.uniforms.begin(), c.uniforms.end());
    s.vertices.emplace_back(c.vertices.begin(), c.vertices.end());
  }
  return s;
}

template <typename Mem>
void ExpectEqual(const Snapshot& s,
                 std::span<const typename FrameRenderer<Mem>::Item> items) {
  ASSERT_EQ(items.size(), s.keys.size());
  size_t differ = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& c = *items[i].command;
    if (c.key != s.keys[i] ||
        std::string(c.label.data(), c.label.size()) != s.labels[i] ||
        c.uniforms.size() != s.uniforms[i].size() ||
        !std::equal(c.uniforms.begin(), c.uniforms.end(),
                    s.uniforms[i].begin()) ||
        c.vertices.size() != s.vertices[i].size() ||
        (!c.vertices.empty() &&
         std::memcmp(c.vertices.data(), s.vertices[i].data(),
                     c.vertices.size() * sizeof(Vertex)) != 0)) {
      ++differ;
    }
  }
  EXPECT_EQ(differ, 0u);
}

template <typename Mem>
class FrameRendererTest : public ::testing::Test {};
using Memories = ::testing::Types<HeapMemory, ArenaMemory>;
TYPED_TEST_SUITE(FrameRendererTest, Memories);

TYPED_TEST(FrameRendererTest, RecordsEveryVisibleObjectSorted) {
  using Mem = TypeParam;
  absl::StatusOr<SceneObjects> scene = MakeScene(5000, 9, 100, 20);
  ASSERT_TRUE(scene.ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor exec = FrameExecutor::Sequential(&arena);
  auto r = FrameRenderer<Mem>::Create(1, scene->size());
  ASSERT_TRUE(r.ok());
  const Frustum fr = *Frustum::FromCamera(RenderSimulation::CameraAt(0));
  ASSERT_TRUE((*r)->BeginFrame(0, exec).ok());
  ASSERT_TRUE((*r)->Record(exec, *scene, fr).ok());
  ASSERT_TRUE((*r)->Submit().ok());
  auto items = (*r)->submitted(0);
  std::set<uint32_t> expected;
  for (uint32_t i = 0; i < scene->size(); ++i) {
    if (fr.IntersectsSphere({scene->x[i], scene->y[i], scene->z[i]},
                            scene->radius[i])) {
      expected.insert(i);
    }
  }
  ASSERT_EQ(items.size(), expected.size());
  EXPECT_EQ((*r)->slot_stats(0).draws, expected.size());
  std::set<uint32_t> drawn;
  for (size_t k = 0; k < items.size(); ++k) {
    const auto& c = *items[k].command;
    if (k > 0) {
      EXPECT_LT(items[k - 1].key, items[k].key) << k;
    }
    EXPECT_EQ(items[k].key, c.key);
    drawn.insert(c.object);
    EXPECT_EQ(c.key,
              MakeSortKey(scene->pass[c.object], scene->material[c.object],
                          fr.Depth01({scene->x[c.object], scene->y[c.object],
                                      scene->z[c.object]}),
                          c.object));
    EXPECT_EQ(c.uniforms.size(), scene->uniform_floats[c.object] * 4u);
    EXPECT_EQ(c.vertices.size(), scene->vertex_count[c.object]);
    float model[16];
    std::memcpy(model, c.uniforms.data(), sizeof(model));
    EXPECT_EQ(model[12], scene->x[c.object]);
    EXPECT_EQ(model[14], scene->z[c.object]);
    char label[kMaxLabel];
    const size_t n = FormatDrawLabel(c.object, c.material, c.pass, label);
    EXPECT_EQ(std::string(c.label.data(), c.label.size()),
              std::string(label, n));
  }
  EXPECT_EQ(drawn, expected);
  const std::string first(items[0].command->label.data(),
                          items[0].command->label.size());
  EXPECT_EQ(first.rfind("draw ", 0), 0u) << first;
}

TYPED_TEST(FrameRendererTest, FrameStaysIntactWhileTheNextIsRecorded) {
  using Mem = TypeParam;
  absl::StatusOr<SceneObjects> scene = MakeScene(6000, 4, 100, 20);
  ASSERT_TRUE(scene.ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor exec = FrameExecutor::Sequential(&arena);
  auto made = FrameRenderer<Mem>::Create(1, scene->size());
  ASSERT_TRUE(made.ok());
  FrameRenderer<Mem>& r = **made;
  auto record = [&](uint64_t f) {
    scene->Advance(0, scene->size(), 1.0f / 60, 100, 20);
    ASSERT_TRUE(r.BeginFrame(f, exec).ok());
    ASSERT_TRUE(r.Record(exec, *scene,
                         *Frustum::FromCamera(RenderSimulation::CameraAt(f)))
                    .ok());
  };
  record(0);
  ASSERT_TRUE(r.Submit().ok());
  arena.Reset();  // The frame's temporaries go; the slot's memory stays.
  const Snapshot frame0 = Take<Mem>(r.submitted(0));
  ASSERT_GT(frame0.keys.size(), 100u);
  const void* first_command = r.submitted(0)[0].command;
  if constexpr (Mem::kUsesArena) {
    EXPECT_TRUE(r.slot_owns(0, first_command));
    EXPECT_GT(r.slot_arena_bytes(0), frame0.keys.size() * 64);
  } else {
    EXPECT_FALSE(r.slot_owns(0, first_command));
    EXPECT_EQ(r.slot_arena_bytes(0), 0u);
  }

  // Frame 1 is recorded in the other slot: frame 0 is untouched.
  record(1);
  ExpectEqual<Mem>(frame0, r.submitted(0));
  EXPECT_EQ(r.slot_state(0), SlotState::kSubmitted);
  absl::StatusOr<GpuResult> gpu = r.Consume(0);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->draws, frame0.keys.size());
  EXPECT_EQ(gpu->digest, frame0.Digest(0));
  EXPECT_EQ(r.Consume(0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(r.Submit().ok());
  arena.Reset();

  // Frame 2 reuses slot 0: frame 0 is released first.
  record(2);
  EXPECT_EQ(r.slot_frame(0), 2u);
  EXPECT_NE(static_cast<const void*>(r.submitted(2)[0].command), nullptr);
  EXPECT_TRUE(r.submitted(0).empty());
  ASSERT_TRUE(r.Submit().ok());
  arena.Reset();
  // Frame 1 was never consumed: its slot cannot be reused for frame 3.
  absl::Status busy = r.BeginFrame(3, exec);
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(busy.message().find("frame 1 is still in flight"),
            std::string::npos)
      << busy;
  EXPECT_EQ(r.slot_state(1), SlotState::kSubmitted);
  ASSERT_TRUE(r.Consume(1).ok());
  ASSERT_TRUE(r.BeginFrame(3, exec).ok());
  // Frame 1's memory is gone with it.
  EXPECT_TRUE(r.submitted(1).empty());
  if constexpr (Mem::kUsesArena) {
    EXPECT_EQ(r.slot_arena_bytes(1), 0u);
  }
}

TEST(FrameRendererMisuseTest, OutOfOrderCallsAreClearStatuses) {
  absl::StatusOr<SceneObjects> scene = MakeScene(100, 1, 100, 20);
  ASSERT_TRUE(scene.ok());
  const FrameExecutor exec = FrameExecutor::Sequential(nullptr);
  EXPECT_EQ(FrameRenderer<HeapMemory>::Create(0, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto r = *FrameRenderer<HeapMemory>::Create(1, scene->size());
  const Frustum fr = *Frustum::FromCamera(Camera());
  EXPECT_EQ(r->Record(exec, *scene, fr).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r->Submit().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r->BeginFrame(5, exec).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(r->BeginFrame(0, exec).ok());
  EXPECT_EQ(r->BeginFrame(1, exec).code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<SceneObjects> other = MakeScene(50, 1, 100, 20);
  absl::Status size = r->Record(exec, *other, fr);
  EXPECT_EQ(size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(size.message().find("50 objects"), std::string::npos) << size;
  EXPECT_EQ(r->Consume(0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Regression (review): with frame memory, Record on an executor without an
// arena took its blocks' temporaries from a null arena (SIGSEGV). It is
// refused before any job, and the frame stays open to record.
TEST(FrameRendererMisuseTest, ArenaMemoryWithoutAnArenaIsAFailedPrecondition) {
  absl::StatusOr<SceneObjects> scene = MakeScene(100, 1, 100, 20);
  ASSERT_TRUE(scene.ok());
  auto r = *FrameRenderer<ArenaMemory>::Create(1, scene->size());
  const Frustum fr = *Frustum::FromCamera(Camera());
  const FrameExecutor none = FrameExecutor::Sequential(nullptr);
  ASSERT_TRUE(r->BeginFrame(0, none).ok());
  const absl::Status s = r->Record(none, *scene, fr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("no frame arena"), std::string::npos) << s;
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor exec = FrameExecutor::Sequential(&arena);
  ASSERT_TRUE(r->Record(exec, *scene, fr).ok());
  ASSERT_TRUE(r->Submit().ok());
  EXPECT_EQ(r->Consume(0)->draws, r->submitted(0).size());
}

void ThrowingHandler(const ErrorReport& report, void*) {
  throw std::runtime_error(report.message);
}

// A frame arena whose source refuses every chunk, with an executor on it:
// under a throwing error handler, the first temporary a recording block
// takes throws out of the block.
struct DryArena {
  DryArena() { source.FailNext(-1); }
  alloc_internal::FailingSource source;
  ChunkCache cache{&source};
  FrameArena arena{&cache};
  FrameExecutor exec = FrameExecutor::Sequential(&arena);
};

// Regression (review): a Record whose job failed left the frame "being
// recorded" for good: Submit refused it (not recorded) and BeginFrame
// refused every later frame ("frame 1 is being recorded; Submit it
// first"), so one failure stopped the renderer.
TEST(FrameRendererFailureTest, AFailedRecordingAbandonsItsFrameOnly) {
  absl::StatusOr<SceneObjects> scene = MakeScene(3000, 7, 100, 20);
  ASSERT_TRUE(scene.ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor exec = FrameExecutor::Sequential(&arena);
  auto frustum = [](uint64_t f) {
    return *Frustum::FromCamera(RenderSimulation::CameraAt(f));
  };
  // What frame 2 looks like to the GPU when nothing failed.
  uint64_t digest2 = 0;
  {
    auto ref = *FrameRenderer<ArenaMemory>::Create(1, scene->size());
    for (uint64_t f = 0; f < 3; ++f) {
      ASSERT_TRUE(ref->BeginFrame(f, exec).ok());
      ASSERT_TRUE(ref->Record(exec, *scene, frustum(f)).ok());
      ASSERT_TRUE(ref->Submit().ok());
      if (f > 0) {
        ASSERT_TRUE(ref->Consume(f - 1).ok());
      }
      arena.Reset();
    }
    digest2 = ref->Consume(2)->digest;
  }

  auto r = *FrameRenderer<ArenaMemory>::Create(1, scene->size());
  ASSERT_TRUE(r->BeginFrame(0, exec).ok());
  ASSERT_TRUE(r->Record(exec, *scene, frustum(0)).ok());
  ASSERT_TRUE(r->Submit().ok());
  arena.Reset();

  ASSERT_TRUE(r->BeginFrame(1, exec).ok());
  {
    DryArena dry;
    ScopedErrorHandler throwing(&ThrowingHandler, nullptr);
    const absl::Status failed = r->Record(dry.exec, *scene, frustum(1));
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnknown) << failed;
    EXPECT_NE(failed.message().find("failing source"), std::string::npos)
        << failed;
  }
  // Frame 1 is gone: nothing to submit or consume, its slot is free.
  EXPECT_EQ(r->Submit().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r->Consume(1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r->slot_state(1), SlotState::kFree);
  EXPECT_EQ(r->slot_arena_bytes(1), 0u);
  EXPECT_TRUE(r->submitted(1).empty());
  // Frame 0, in flight in the other slot, is untouched.
  ASSERT_TRUE(r->Consume(0).ok());

  // Frames 2 and 3 record as if nothing had happened.
  const absl::Status begin2 = r->BeginFrame(2, exec);
  ASSERT_TRUE(begin2.ok()) << begin2;
  ASSERT_TRUE(r->Record(exec, *scene, frustum(2)).ok());
  ASSERT_TRUE(r->Submit().ok());
  arena.Reset();
  ASSERT_TRUE(r->BeginFrame(3, exec).ok());
  ASSERT_TRUE(r->Record(exec, *scene, frustum(3)).ok());
  absl::StatusOr<GpuResult> gpu = r->Consume(2);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->digest, digest2);
  ASSERT_TRUE(r->Submit().ok());
  arena.Reset();
}

// The scenario over the renderer: a Step whose recording fails skips its
// frame, and the following Steps run (the GPU reads only frames that were
// submitted).
TEST(FrameRendererFailureTest, TheScenarioStepsOnAfterAFailedFrame) {
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const sim::FrameEnv env{Variant::kArena, nullptr, &arena};
  RenderSimulation s;
  ASSERT_TRUE(s.Init({.seed = 3, .size = 3000}, env).ok());
  ASSERT_TRUE(s.Step(env).ok());
  arena.Reset();
  {
    DryArena dry;
    ScopedErrorHandler throwing(&ThrowingHandler, nullptr);
    const absl::Status failed = s.Step({Variant::kArena, nullptr, &dry.arena});
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnknown) << failed;
  }
  for (int f = 0; f < 3; ++f) {
    const absl::Status step = s.Step(env);
    EXPECT_TRUE(step.ok()) << "step " << f << " after the failure: " << step;
    arena.Reset();
  }
  EXPECT_EQ(s.last_frame().recorded.frame, 4u);
  ASSERT_TRUE(s.last_frame().gpu.has_value());
  EXPECT_EQ(s.last_frame().gpu->frame, 3u);
}

// One way to spoil an object's draw inputs, and the field it spoils.
struct BadInput {
  const char* field;
  void (*spoil)(SceneObjects&, uint32_t);
};
const BadInput kBadInputs[] = {
    {"uniform_floats",
     [](SceneObjects& s, uint32_t i) { s.uniform_floats[i] = 0; }},
    {"uniform_floats",
     [](SceneObjects& s, uint32_t i) { s.uniform_floats[i] = 8; }},
    {"uniform_floats",
     [](SceneObjects& s, uint32_t i) { s.uniform_floats[i] = 15; }},
    {"uniform_floats",
     [](SceneObjects& s, uint32_t i) {
       s.uniform_floats[i] = SceneObjects::kMaxUniformFloats + 1;
     }},
    {"uniform_floats",
     [](SceneObjects& s, uint32_t i) { s.uniform_floats[i] = 65535; }},
    {"vertex_count",
     [](SceneObjects& s, uint32_t i) {
       s.vertex_count[i] = SceneObjects::kMaxVertices + 1;
     }},
    {"material",
     [](SceneObjects& s, uint32_t i) {
       s.material[i] = static_cast<uint16_t>(kMaxMaterials);
     }},
    {"pass",
     [](SceneObjects& s, uint32_t i) { s.pass[i] = static_cast<Pass>(2); }},
};

// Regression (review): Record used every visible object's uniform_floats,
// vertex_count, material and pass unchecked; uniform_floats 0 was a SEGV
// (a 2^64-byte memcpy), 1-15 wrote past the payload into the neighbouring
// draw's frame memory with no report, above 256 overran WriteUniforms'
// stack buffer. Now the block stops at the object and Record abandons the
// frame with InvalidArgument naming the field and the object; the next
// frame records as usual. Sequentially and on a runtime of two workers.
TYPED_TEST(FrameRendererTest, ABadVisibleObjectFailsItsFrameNamingTheField) {
  using Mem = TypeParam;
  const SceneObjects good = *MakeScene(3000, 7, 100, 20);
  const Frustum fr = *Frustum::FromCamera(RenderSimulation::CameraAt(0));
  // Two visible objects in different blocks: the lower one is named.
  std::vector<uint32_t> visible;
  for (uint32_t i = 0; i < good.size(); ++i) {
    if (fr.IntersectsSphere({good.x[i], good.y[i], good.z[i]},
                            good.radius[i])) {
      visible.push_back(i);
    }
  }
  ASSERT_GT(visible.size(), 100u);
  const uint32_t bad = visible[visible.size() / 2];
  const uint32_t later = visible.back();
  ASSERT_GT(later / FrameRenderer<Mem>::kBlock,
            bad / FrameRenderer<Mem>::kBlock);

  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  auto rt =
      jobs::Runtime::Create(jobs::Config().set_workers_per_node(2).set_pinning(
          jobs::PinningPolicy::kNone));
  ASSERT_TRUE(rt.ok()) << rt.status();
  for (const FrameExecutor& exec : {FrameExecutor::Sequential(&arena),
                                    FrameExecutor::OnRuntime(rt->get())}) {
    const bool on_runtime = exec.runtime() != nullptr;
    auto r = *FrameRenderer<Mem>::Create(exec.lanes(), good.size());
    uint64_t frame = 0;
    for (const BadInput& input : kBadInputs) {
      SCOPED_TRACE(testing::Message()
                   << input.field << " runtime " << on_runtime);
      SceneObjects scene = good;
      input.spoil(scene, bad);
      input.spoil(scene, later);
      ASSERT_EQ(scene.Validate().code(), absl::StatusCode::kInvalidArgument);
      if (on_runtime) {
        ASSERT_TRUE((*rt)->BeginFrame().ok());
      }
      ASSERT_TRUE(r->BeginFrame(frame, exec).ok());
      const absl::Status failed = r->Record(exec, scene, fr);
      EXPECT_EQ(failed.code(), absl::StatusCode::kInvalidArgument) << failed;
      EXPECT_NE(failed.message().find(
                    absl::StrCat("SceneObjects.", input.field, "[", bad, "]")),
                std::string::npos)
          << failed;
      // The frame is abandoned, as for a failed job.
      EXPECT_EQ(r->Submit().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_EQ(r->slot_state(static_cast<int>(frame % 2)), SlotState::kFree);
      EXPECT_TRUE(r->submitted(frame).empty());
      // The next frame records the good scene: every visible object drawn.
      ASSERT_TRUE(r->BeginFrame(frame + 1, exec).ok());
      ASSERT_TRUE(r->Record(exec, good, fr).ok());
      ASSERT_TRUE(r->Submit().ok());
      absl::StatusOr<GpuResult> gpu = r->Consume(frame + 1);
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      EXPECT_EQ(gpu->draws, visible.size());
      if (on_runtime) {
        ASSERT_TRUE((*rt)->EndFrame().ok());
      }
      arena.Reset();
      frame += 2;
    }
  }
}

// A column shorter than x is refused before anything is read (O(1), every
// frame): InvalidArgument naming the column, and the frame stays open.
TYPED_TEST(FrameRendererTest, AShortColumnIsRefusedNamingIt) {
  using Mem = TypeParam;
  const SceneObjects good = *MakeScene(3000, 7, 100, 20);
  const Frustum fr = *Frustum::FromCamera(RenderSimulation::CameraAt(0));
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  const FrameExecutor exec = FrameExecutor::Sequential(&arena);
  auto r = *FrameRenderer<Mem>::Create(1, good.size());
  ASSERT_TRUE(r->BeginFrame(0, exec).ok());
  const std::pair<const char*, void (*)(SceneObjects&)> shorten[] = {
      {"y", [](SceneObjects& s) { s.y.pop_back(); }},
      {"z", [](SceneObjects& s) { s.z.pop_back(); }},
      {"radius", [](SceneObjects& s) { s.radius.pop_back(); }},
      {"vx", [](SceneObjects& s) { s.vx.pop_back(); }},
      {"vy", [](SceneObjects& s) { s.vy.pop_back(); }},
      {"vz", [](SceneObjects& s) { s.vz.pop_back(); }},
      {"material", [](SceneObjects& s) { s.material.clear(); }},
      {"pass", [](SceneObjects& s) { s.pass.pop_back(); }},
      {"uniform_floats", [](SceneObjects& s) { s.uniform_floats.clear(); }},
      {"vertex_count", [](SceneObjects& s) { s.vertex_count.pop_back(); }},
  };
  for (const auto& [column, cut] : shorten) {
    SceneObjects scene = good;
    cut(scene);
    scene.material.shrink_to_fit();
    scene.uniform_floats.shrink_to_fit();
    const absl::Status refused = r->Record(exec, scene, fr);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << column;
    EXPECT_NE(
        refused.message().find(absl::StrCat("SceneObjects.", column, " ")),
        std::string::npos)
        << refused;
    EXPECT_EQ(r->slot_state(0), SlotState::kRecording) << column;
  }
  ASSERT_TRUE(r->Record(exec, good, fr).ok());
  ASSERT_TRUE(r->Submit().ok());
  EXPECT_GT(r->slot_stats(0).draws, 100u);
}

TEST(InputTest, BadCamerasAndScenesNameTheField) {
  Camera c;
  c.fov_y = 0;
  EXPECT_NE(c.Validate().message().find("Camera.fov_y"), std::string::npos);
  c = Camera();
  c.near_plane = 10;
  c.far_plane = 5;
  EXPECT_NE(c.Validate().message().find("near_plane"), std::string::npos);
  c = Camera();
  c.target = c.position;
  EXPECT_EQ(Frustum::FromCamera(c).status().code(),
            absl::StatusCode::kInvalidArgument);
  c = Camera();
  c.up = {0, 0, -1};  // Parallel to the view direction.
  EXPECT_NE(c.Validate().message().find("Camera.up"), std::string::npos);
  c = Camera();
  c.aspect = std::nanf("");
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);

  SceneObjects s = *MakeScene(10, 1, 100, 20);
  ASSERT_TRUE(s.Validate().ok());
  s.material[3] = kMaxMaterials;
  EXPECT_NE(s.Validate().message().find("SceneObjects.material[3]"),
            std::string::npos);
  s = *MakeScene(10, 1, 100, 20);
  s.uniform_floats[2] = 8;
  EXPECT_NE(s.Validate().message().find("uniform_floats[2]"),
            std::string::npos);
  s = *MakeScene(10, 1, 100, 20);
  s.vz.pop_back();
  EXPECT_NE(s.Validate().message().find("SceneObjects.vz"), std::string::npos);
  EXPECT_EQ(MakeScene(size_t{kMaxObjects} + 1, 1, 1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- The scenario ----------------------------------------------------------

std::unique_ptr<jobs::Runtime> MakeRuntime(
    int workers, bool two_nodes, std::unique_ptr<numa::Topology>* topology) {
  jobs::Config config;
  if (two_nodes) {
    auto t = numa::Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
    EXPECT_TRUE(t.ok()) << t.status();
    *topology = *std::move(t);
    config.set_topology(topology->get()).set_workers_per_node(1);
  } else {
    config.set_workers_per_node(workers).set_pinning(
        jobs::PinningPolicy::kNone);
  }
  auto rt = jobs::Runtime::Create(config);
  EXPECT_TRUE(rt.ok()) << rt.status();
  return *std::move(rt);
}

struct DriveResult {
  uint64_t hash = 0;
  std::vector<uint64_t> gpu_digests;
  std::vector<RenderFrameStats> frames;
  std::vector<size_t> temp_bytes;  // Frame temporaries in frame arenas.
  bool commands_in_slot_arenas = false;
};

DriveResult Drive(Variant variant, jobs::Runtime* rt, size_t size, int frames) {
  DriveResult out;
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  sim::FrameEnv env;
  env.variant = variant;
  env.runtime = sim::UsesRuntime(variant) ? rt : nullptr;
  env.arena = variant == Variant::kArena ? &arena : nullptr;
  RenderSimulation scenario;
  absl::Status s = scenario.Init({.seed = 11, .size = size}, env);
  EXPECT_TRUE(s.ok()) << s;
  for (int f = 0; f < frames; ++f) {
    if (env.runtime != nullptr) {
      EXPECT_TRUE(rt->BeginFrame().ok());
    }
    s = scenario.Step(env);
    EXPECT_TRUE(s.ok()) << s;
    if (env.runtime != nullptr) {
      EXPECT_TRUE(rt->EndFrame().ok());
      out.temp_bytes.push_back(rt->frame_history().back().arena_bytes);
    } else {
      out.temp_bytes.push_back(arena.stats().bytes_requested);
      arena.Reset();
    }
    out.frames.push_back(scenario.last_frame());
    if (scenario.last_frame().gpu.has_value()) {
      out.gpu_digests.push_back(scenario.last_frame().gpu->digest);
    }
    if (FrameRenderer<ArenaMemory>* r = scenario.arena_renderer()) {
      auto items = r->submitted(f);
      out.commands_in_slot_arenas =
          !items.empty() && r->slot_owns(f % 2, items[0].command) &&
          r->slot_owns(f % 2, items.back().command->uniforms.data());
    }
  }
  out.hash = scenario.StateHash();
  return out;
}

TEST(RenderScenarioTest, IdenticalAcrossVariantsAndWorkerCounts) {
  constexpr size_t kSize = 8000;
  constexpr int kFrames = 5;
  const DriveResult reference = Drive(Variant::kHeap, nullptr, kSize, kFrames);
  ASSERT_EQ(reference.gpu_digests.size(), kFrames - 1u);
  const DriveResult arena = Drive(Variant::kArena, nullptr, kSize, kFrames);
  EXPECT_EQ(arena.hash, reference.hash);
  EXPECT_EQ(arena.gpu_digests, reference.gpu_digests);
  for (int workers : {1, 2}) {
    std::unique_ptr<numa::Topology> unused;
    auto rt = MakeRuntime(workers, false, &unused);
    for (Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
      const DriveResult run = Drive(v, rt.get(), kSize, kFrames);
      EXPECT_EQ(run.hash, reference.hash)
          << sim::VariantName(v) << " on " << workers << " workers";
      EXPECT_EQ(run.gpu_digests, reference.gpu_digests);
    }
  }
  std::unique_ptr<numa::Topology> topology;
  auto two = MakeRuntime(0, /*two_nodes=*/true, &topology);
  ASSERT_EQ(two->num_nodes(), 2);
  for (Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
    EXPECT_EQ(Drive(v, two.get(), kSize, kFrames).hash, reference.hash)
        << sim::VariantName(v) << " on two nodes";
  }
  // Another seed, another state: the hash sees what the GPU read.
  RenderSimulation other;
  ASSERT_TRUE(other.Init({.seed = 12, .size = kSize}, {}).ok());
  for (int f = 0; f < kFrames; ++f) ASSERT_TRUE(other.Step({}).ok());
  EXPECT_NE(other.StateHash(), reference.hash);
}

TEST(RenderScenarioTest, ArenaVariantsKeepDrawsOnFrameMemory) {
  constexpr size_t kSize = 6000;
  const DriveResult heap = Drive(Variant::kHeap, nullptr, kSize, 3);
  const DriveResult arena = Drive(Variant::kArena, nullptr, kSize, 3);
  std::unique_ptr<numa::Topology> unused;
  auto rt = MakeRuntime(2, false, &unused);
  const DriveResult rt_arena =
      Drive(Variant::kRuntimeArena, rt.get(), kSize, 3);
  const DriveResult rt_heap = Drive(Variant::kRuntimeHeap, rt.get(), kSize, 3);
  for (int f = 0; f < 3; ++f) {
    const RecordStats& rec = arena.frames[f].recorded;
    ASSERT_GT(rec.draws, 100u);
    // The slot holds every payload of the frame...
    EXPECT_GE(arena.frames[f].slot_bytes[0],
              rec.uniform_bytes + rec.vertex_bytes);
    EXPECT_GE(rt_arena.frames[f].slot_bytes[0],
              rec.uniform_bytes + rec.vertex_bytes);
    // ...while the previous frame's slot is still held for the GPU.
    if (f > 0) {
      EXPECT_GT(arena.frames[f].slot_bytes[1], 0u);
    }
    // Temporaries (visible lists, sorted runs) on the frame arenas.
    EXPECT_GE(arena.temp_bytes[f], rec.draws * 16);
    EXPECT_GE(rt_arena.temp_bytes[f], rec.draws * 16);
    // The heap variants hold nothing in frame memory.
    EXPECT_EQ(heap.frames[f].slot_bytes[0], 0u);
    EXPECT_EQ(heap.temp_bytes[f], 0u);
    EXPECT_EQ(rt_heap.frames[f].slot_bytes[0], 0u);
  }
  EXPECT_TRUE(arena.commands_in_slot_arenas);
  EXPECT_TRUE(rt_arena.commands_in_slot_arenas);
}

TEST(RenderScenarioTest, BadInputIsAClearStatus) {
  RenderSimulation s;
  absl::Status big = s.Init({.size = size_t{kMaxObjects} + 1}, {});
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("ScenarioConfig.size"), std::string::npos);
  EXPECT_EQ(s.Step({}).code(), absl::StatusCode::kFailedPrecondition);
  sim::FrameEnv no_arena;
  no_arena.variant = Variant::kArena;
  EXPECT_NE(s.Init({.size = 10}, no_arena).message().find("FrameEnv.arena"),
            std::string::npos);
  ASSERT_TRUE(s.Init({.size = 100}, {}).ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  sim::FrameEnv other;
  other.variant = Variant::kArena;
  other.arena = &arena;
  absl::Status mismatch = s.Step(other);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.message().find("Init was given heap"), std::string::npos)
      << mismatch;
  const sim::ScenarioInfo info = RenderScenario();
  EXPECT_EQ(info.name, "render");
  EXPECT_TRUE(info.allocation_heavy);
  EXPECT_NE(info.create(), nullptr);
}

// Regression (review): without an open frame the runtime-arena variant's
// jobs got scratch arenas, rewound as each returned, and the merge read
// their sorted runs afterwards (ASan: use-after-poison); Step returned OK.
TEST(RenderScenarioTest, RuntimeVariantsStepOnlyInsideAFrame) {
  auto rt = jobs::Runtime::Create(jobs::Config().set_workers_per_node(1));
  ASSERT_TRUE(rt.ok()) << rt.status();
  for (const Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
    RenderSimulation s;
    const sim::FrameEnv env{v, rt->get(), nullptr};
    ASSERT_TRUE(s.Init({.size = 500}, env).ok());
    absl::Status step = s.Step(env);
    EXPECT_EQ(step.code(), absl::StatusCode::kFailedPrecondition) << step;
    EXPECT_NE(step.message().find("open frame"), std::string::npos) << step;
    for (int f = 0; f < 3; ++f) {
      ASSERT_TRUE((*rt)->BeginFrame().ok());
      EXPECT_TRUE(s.Step(env).ok());
      ASSERT_TRUE((*rt)->EndFrame().ok());
    }
  }
}

// Regression (review): a GPU job the runtime refused made Step return
// before Submit: the frame stayed "being recorded" and the one before it in
// flight, unread, so every later Step failed ("Submit it first").
TEST(RenderScenarioTest, ARefusedGpuJobLosesNothingAndStepsOn) {
  constexpr size_t kSize = 3000;
  constexpr int kFrames = 6;
  const DriveResult reference = Drive(Variant::kHeap, nullptr, kSize, kFrames);
  ASSERT_EQ(reference.gpu_digests.size(), kFrames - 1u);
  std::unique_ptr<numa::Topology> unused;
  auto rt = MakeRuntime(2, false, &unused);
  for (const Variant v : {Variant::kRuntimeHeap, Variant::kRuntimeArena}) {
    RenderSimulation s;
    const sim::FrameEnv env{v, rt.get(), nullptr};
    ASSERT_TRUE(s.Init({.seed = 11, .size = kSize}, env).ok());
    for (int f = 0; f < kFrames; ++f) {
      // Frames 1-3: the runtime refuses every GPU job (it has no node 7);
      // the recording jobs run as usual.
      const bool refused = f >= 1 && f <= 3;
      s.set_gpu_affinity(refused ? jobs::Affinity::Node(7)
                                 : jobs::Affinity::Any());
      ASSERT_TRUE(rt->BeginFrame().ok());
      const absl::Status step = s.Step(env);
      ASSERT_TRUE(rt->EndFrame().ok());
      if (refused) {
        EXPECT_EQ(step.code(), absl::StatusCode::kInvalidArgument) << step;
        EXPECT_NE(step.message().find("node 7 does not exist"),
                  std::string::npos)
            << step;
      } else {
        EXPECT_TRUE(step.ok()) << "frame " << f << ": " << step;
      }
      // Nothing lost: frame f was recorded and submitted, and the GPU read
      // frame f - 1 (on the calling thread when its job was refused).
      EXPECT_EQ(s.last_frame().recorded.frame, static_cast<uint64_t>(f));
      if (f > 0) {
        ASSERT_TRUE(s.last_frame().gpu.has_value()) << "frame " << f;
        EXPECT_EQ(s.last_frame().gpu->frame, f - 1u);
        EXPECT_EQ(s.last_frame().gpu->digest, reference.gpu_digests[f - 1]);
      }
    }
    EXPECT_EQ(s.StateHash(), reference.hash) << sim::VariantName(v);
  }
}

// A shut-down runtime fails every Step, clearly, and changes nothing: on a
// new runtime the scenario goes on where it was.
TEST(RenderScenarioTest, AShutDownRuntimeFailsEveryStepAndChangesNothing) {
  constexpr size_t kSize = 3000;
  const DriveResult reference = Drive(Variant::kHeap, nullptr, kSize, 3);
  std::unique_ptr<numa::Topology> unused;
  auto rt = MakeRuntime(1, false, &unused);
  RenderSimulation s;
  const sim::FrameEnv env{Variant::kRuntimeArena, rt.get(), nullptr};
  ASSERT_TRUE(s.Init({.seed = 11, .size = kSize}, env).ok());
  ASSERT_TRUE(rt->BeginFrame().ok());
  ASSERT_TRUE(s.Step(env).ok());
  ASSERT_TRUE(rt->EndFrame().ok());
  ASSERT_TRUE(rt->Shutdown(jobs::ShutdownMode::kFinish).ok());
  // No frame can open on it, and a Step outside a frame is refused.
  EXPECT_EQ(rt->BeginFrame().code(), absl::StatusCode::kFailedPrecondition);
  for (int i = 0; i < 3; ++i) {
    const absl::Status step = s.Step(env);
    EXPECT_EQ(step.code(), absl::StatusCode::kFailedPrecondition) << step;
  }
  auto again = MakeRuntime(1, false, &unused);
  const sim::FrameEnv env2{Variant::kRuntimeArena, again.get(), nullptr};
  for (uint64_t f = 1; f < 3; ++f) {
    ASSERT_TRUE(again->BeginFrame().ok());
    const absl::Status step = s.Step(env2);
    EXPECT_TRUE(step.ok()) << "frame " << f << ": " << step;
    ASSERT_TRUE(again->EndFrame().ok());
    EXPECT_EQ(s.last_frame().recorded.frame, f);
  }
  EXPECT_EQ(s.StateHash(), reference.hash);
}

}  // namespace
}  // namespace framealloc::integration::render
