// FrameRenderer: per-frame draw command buffers with two frames in flight.
//
// For: the reference guide's FrameRenderer pattern. Each frame culls the
// scene's bounding spheres against the camera's frustum, builds one
// DrawCommand per visible object with its own uniform payload and (for
// dynamic objects) vertex staging data, sorts the draws by key, and submits
// them. Two frame slots alternate: frame N's commands and payloads stay
// valid while frame N+1 is recorded, so a consumer (the "GPU") can read
// frame N one frame late; a slot is released only when its frame has been
// consumed and the slot comes round again (frame N+2).
// With ArenaMemory every command, payload and sorted list lives on frame
// memory: a FrameArena per slot and per lane (each lane is a worker: no
// sharing between threads), reset as a whole when the slot is released;
// temporaries that die within the frame (visible lists, sorted runs) come
// from the lane's own frame arena (the worker's, or the caller's). With
// HeapMemory the same structures are std::vectors and a std::unique_ptr per
// command: what a renderer looks like without a frame allocator.
// Not for: talking to a real GPU or reusing commands across frames.
//
// Recording runs on a FrameExecutor: blocks of kBlock objects are culled,
// built and sorted as jobs (split by node); the sorted runs are merged by
// key ranges, in parallel too. Sort keys are unique (they hold the object
// id), so the submitted order is the same for any executor and worker count.
//
// Thread safety: one thread drives BeginFrame/Record/Submit; Consume of the
// previous frame may run on another thread at the same time as Record (it
// touches only the other slot); nothing else may run concurrently.
// Errors: FailedPrecondition for calls out of order (recording into a slot
// whose frame the GPU has not consumed, consuming a frame not submitted,
// recording without BeginFrame), InvalidArgument for a scene whose size
// changed, a scene column shorter than the others, a visible object whose
// draw inputs are out of range (material, pass, uniform_floats,
// vertex_count: see SceneObjects::DrawInputsValid) or an executor with more
// lanes than the renderer was made for; job failures (a job's exception is
// Unknown with its text) are passed on, and a frame whose recording failed
// is abandoned (see Record).
//
// Example (one thread, arena memory):
//   auto r = FrameRenderer<ArenaMemory>::Create(/*lanes=*/1, scene.size());
//   for (uint64_t f = 0;; ++f) {
//     (void)(*r)->BeginFrame(f, exec);     // releases frame f-2
//     (void)(*r)->Record(exec, scene, frustum);
//     if (f > 0) auto gpu = (*r)->Consume(f - 1);  // frame f-1, still intact
//     (void)(*r)->Submit();
//     frame_arena.Reset();                  // the frame's temporaries only
//   }
#ifndef INTEGRATION_RENDERER_FRAME_RENDERER_H_
#define INTEGRATION_RENDERER_FRAME_RENDERER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "integration/ecs/frame_memory.h"
#include "integration/renderer/renderer.h"

namespace framealloc::integration::render {

// What recording one frame produced.
struct RecordStats {
  uint64_t frame = 0;
  size_t objects = 0;
  size_t draws = 0;  // Visible objects: one draw each.
  size_t uniform_bytes = 0;
  size_t vertex_bytes = 0;
};

// What the GPU read of one frame.
struct GpuResult {
  uint64_t frame = 0;
  size_t draws = 0;
  uint64_t digest = 0;  // Over every draw in submitted order.
};

// A frame slot's life: free, being recorded (BeginFrame..Submit), submitted
// (the GPU may read it), consumed (Consume done; freed at the slot's next
// BeginFrame).
enum class SlotState { kFree, kRecording, kSubmitted, kConsumed };

template <typename Mem>
class FrameRenderer {
 public:
  using Command = DrawCommand<Mem>;
  using Item = SortItem<Command>;
  static constexpr int kFramesInFlight = 2;
  static constexpr size_t kBlock = 1024;     // Objects per recording block.
  static constexpr size_t kPartitions = 32;  // Key ranges of the merge.
  static constexpr size_t kSampleStride = 32;

  // `lanes`: the most lanes an executor will use (FrameExecutor::lanes());
  // `objects`: the scene's size (fixed). InvalidArgument for lanes < 1 or
  // objects > kMaxObjects.
  static absl::StatusOr<std::unique_ptr<FrameRenderer>> Create(int lanes,
                                                               size_t objects) {
    if (lanes < 1 || lanes > 4096) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FrameRenderer: lanes = ", lanes, " must be in [1, 4096]"));
    }
    if (objects > kMaxObjects) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FrameRenderer: objects = ", objects, " is above ", kMaxObjects));
    }
    return std::unique_ptr<FrameRenderer>(new FrameRenderer(lanes, objects));
  }

  // Starts frame `frame` (0, 1, 2, ... in turn) in slot frame % 2, first
  // releasing what that slot held (frame - 2, which must have been
  // consumed): heap memory freed, the slot's arenas reset.
  absl::Status BeginFrame(uint64_t frame, const FrameExecutor& exec) {
    if (recording_) {
      return absl::FailedPreconditionError(
          absl::StrCat("FrameRenderer::BeginFrame(", frame, "): frame ",
                       current_, " is being recorded; Submit it first"));
    }
    if (frame != next_frame_) {
      return absl::InvalidArgumentError(
          absl::StrCat("FrameRenderer::BeginFrame: frame ", frame,
                       " out of sequence; expected ", next_frame_));
    }
    Slot& slot = slots_[frame % kFramesInFlight];
    if (slot.state == SlotState::kSubmitted) {
      return absl::FailedPreconditionError(absl::StrCat(
          "FrameRenderer::BeginFrame(", frame, "): frame ", slot.frame,
          " is still in flight (not consumed); its slot cannot be reused"));
    }
    if (absl::Status s = Release(slot, exec); !s.ok()) return s;
    slot.frame = frame;
    slot.state = SlotState::kRecording;
    current_ = frame;
    recording_ = true;
    ++next_frame_;
    return absl::OkStatus();
  }

  // Culls, builds and sorts the current frame's draws. If a recording job
  // fails (a block's work threw, e.g. an out-of-memory report whose error
  // handler throws or std::bad_alloc: Unknown with its text; the executor
  // refused a job; or the block met a visible object whose draw inputs are
  // out of range: InvalidArgument naming the field, the object and the
  // value, as SceneObjects::Validate does), Record returns that failure and
  // abandons the frame: its draws are dropped and its slot freed; Submit and
  // Consume refuse it, and the next call is BeginFrame(frame + 1). The
  // errors found before any job (FailedPrecondition; InvalidArgument for a
  // scene of another size, a column shorter than x or too many lanes) leave
  // the frame open to record.
  //
  // The scene is not validated in full (SceneObjects::Validate is O(n), a
  // few percent of a frame): its columns' lengths are checked here in O(1),
  // and each visible object's draw inputs (a few compares per draw) before
  // its draw is built. Objects out of view are not checked; a radius that is
  // negative or NaN only culls its object.
  absl::Status Record(const FrameExecutor& exec, const SceneObjects& scene,
                      const Frustum& frustum) {
    if (!recording_) {
      return absl::FailedPreconditionError(
          "FrameRenderer::Record: no frame begun (call BeginFrame)");
    }
    if (scene.size() != objects_) {
      return absl::InvalidArgumentError(
          absl::StrCat("FrameRenderer::Record: scene has ", scene.size(),
                       " objects; the renderer was made for ", objects_));
    }
    if (absl::Status s = scene.ValidateColumns(); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("FrameRenderer::Record: ", s.message()));
    }
    if (exec.lanes() > lanes_) {
      return absl::InvalidArgumentError(
          absl::StrCat("FrameRenderer::Record: the executor has ", exec.lanes(),
                       " lanes; the renderer was made for ", lanes_));
    }
    if constexpr (Mem::kUsesArena) {
      // The blocks' temporaries come from the lane's arena.
      if (!exec.has_arena()) {
        return absl::FailedPreconditionError(
            "FrameRenderer<ArenaMemory>::Record: the executor has no frame "
            "arena (FrameExecutor::Sequential(nullptr)); give it one");
      }
    }
    Slot& slot = slots_[current_ % kFramesInFlight];
    const uint64_t frame = current_;
    const size_t blocks = runs_.size();

    // 1. Per block: cull, build the draws (kept for the GPU), sort a run
    //    (a temporary).
    absl::Status s = exec.ForBlocks(blocks, [&](const Lane& lane, size_t b) {
      const Mem temp = Mem::From(lane);
      const Mem keep = Keep(slot, lane.lane);
      const size_t begin = b * kBlock, end = std::min(objects_, begin + kBlock);
      auto visible = temp.template MakeVec<uint32_t>();
      visible.resize(end - begin);
      visible.resize(frustum.CullSpheres(
          scene.x.data() + begin, scene.y.data() + begin,
          scene.z.data() + begin, scene.radius.data() + begin, end - begin,
          static_cast<uint32_t>(begin), visible.data()));
      // Built in locals and moved into the per-block tables at the end: the
      // tables' neighbouring entries share cache lines with blocks other
      // workers record at the same time, and a push_back through the table
      // would write that line for every draw.
      auto owners =
          keep.template MakeVec<typename Mem::template Owner<Command>>();
      owners.reserve(visible.size());
      auto run = temp.template MakeVec<Item>();
      run.reserve(visible.size());
      BlockCounts counts;
      for (uint32_t i : visible) {
        // Checked before use: a uniform_floats outside [16, 256] overruns
        // the payload or WriteUniforms' stack buffer, and the others index
        // past what the key and the payloads hold. The block stops; Record
        // abandons the frame.
        if (!scene.DrawInputsValid(i)) [[unlikely]] {
          failures_[b] = absl::InvalidArgumentError(
              absl::StrCat("FrameRenderer::Record: ",
                           scene.ValidateDrawInputs(i).message()));
          return;
        }
        char label[kMaxLabel];
        const size_t label_size =
            FormatDrawLabel(i, scene.material[i], scene.pass[i], label);
        typename Mem::template Owner<Command> cmd =
            keep.template New<Command>(keep, label, label_size);
        cmd->object = i;
        cmd->material = scene.material[i];
        cmd->pass = scene.pass[i];
        cmd->key = MakeSortKey(
            scene.pass[i], scene.material[i],
            frustum.Depth01({scene.x[i], scene.y[i], scene.z[i]}), i);
        const size_t floats = scene.uniform_floats[i];
        cmd->uniforms.resize(floats * sizeof(float));
        WriteUniforms(scene, i, frame, cmd->uniforms.data(), floats);
        if (scene.vertex_count[i] > 0) {
          cmd->vertices.resize(scene.vertex_count[i]);
          WriteVertices(scene, i, frame, cmd->vertices.data(),
                        cmd->vertices.size());
        }
        counts.uniform_bytes += cmd->uniforms.size();
        counts.vertex_bytes += cmd->vertices.size() * sizeof(Vertex);
        run.push_back(Item{cmd->key, cmd.get()});
        owners.push_back(std::move(cmd));
      }
      std::sort(run.begin(), run.end());
      counts.draws = run.size();
      counts_[b] = counts;
      slot.owners[b].emplace(std::move(owners));
      runs_[b].emplace(std::move(run));
    });
    // The first failed block's (the lowest bad visible object's): the same
    // error whatever the executor and worker count.
    absl::Status bad_object;
    for (absl::Status& failure : failures_) {
      if (!failure.ok()) [[unlikely]] {
        if (bad_object.ok()) bad_object = std::move(failure);
        failure = absl::OkStatus();
      }
    }
    if (!s.ok()) return Abandon(slot, s);
    if (!bad_object.ok()) return Abandon(slot, bad_object);

    // 2. Merge the runs by key ranges: splitters from a sample of every
    //    run, then each range's pieces copied and sorted in parallel.
    const Mem main = Keep(slot, lanes_);
    auto sample = main.template MakeVec<uint64_t>();
    for (size_t b = 0; b < blocks; ++b) {
      const auto& run = *runs_[b];
      for (size_t i = 0; i < run.size(); i += kSampleStride) {
        sample.push_back(run[i].key);
      }
    }
    std::sort(sample.begin(), sample.end());
    // bounds[p * blocks + b]: where key range p starts in run b.
    auto bounds = main.template MakeVec<size_t>();
    bounds.resize((kPartitions + 1) * blocks);
    auto offsets = main.template MakeVec<size_t>();
    offsets.resize(kPartitions + 1);
    for (size_t b = 0; b < blocks; ++b) {
      const auto& run = *runs_[b];
      bounds[b] = 0;
      bounds[kPartitions * blocks + b] = run.size();
      for (size_t p = 1; p < kPartitions; ++p) {
        if (sample.empty()) {
          bounds[p * blocks + b] = run.size();
          continue;
        }
        const uint64_t split = sample[p * sample.size() / kPartitions];
        bounds[p * blocks + b] = static_cast<size_t>(
            std::lower_bound(run.begin(), run.end(), Item{split, nullptr}) -
            run.begin());
      }
    }
    offsets[0] = 0;
    for (size_t p = 0; p < kPartitions; ++p) {
      size_t n = 0;
      for (size_t b = 0; b < blocks; ++b) {
        n += bounds[(p + 1) * blocks + b] - bounds[p * blocks + b];
      }
      offsets[p + 1] = offsets[p] + n;
    }
    auto& out = slot.submitted.emplace(main.template MakeBuffer<Item>());
    out.resize(offsets[kPartitions]);
    s = exec.ForBlocks(kPartitions, [&](const Lane&, size_t p) {
      Item* dst = out.data() + offsets[p];
      for (size_t b = 0; b < blocks; ++b) {
        const auto& run = *runs_[b];
        dst = std::copy(run.begin() + bounds[p * blocks + b],
                        run.begin() + bounds[(p + 1) * blocks + b], dst);
      }
      std::sort(out.data() + offsets[p], out.data() + offsets[p + 1]);
    });
    if (!s.ok()) return Abandon(slot, s);

    RecordStats stats;
    stats.frame = frame;
    stats.objects = objects_;
    for (size_t b = 0; b < blocks; ++b) {
      stats.draws += counts_[b].draws;
      stats.uniform_bytes += counts_[b].uniform_bytes;
      stats.vertex_bytes += counts_[b].vertex_bytes;
      runs_[b].reset();  // Temporaries: gone with the frame.
    }
    slot.stats = stats;
    return absl::OkStatus();
  }

  // Hands the recorded frame to the GPU: it stays intact until consumed and
  // its slot comes round again.
  absl::Status Submit() {
    if (!recording_) {
      return absl::FailedPreconditionError(
          "FrameRenderer::Submit: no frame being recorded");
    }
    Slot& slot = slots_[current_ % kFramesInFlight];
    if (!slot.submitted.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "FrameRenderer::Submit: frame ", current_, " was not recorded"));
    }
    slot.state = SlotState::kSubmitted;
    recording_ = false;
    return absl::OkStatus();
  }

  // The GPU: reads frame `frame`'s draws in submitted order and checksums
  // keys, uniforms and vertices. May run while the next frame is recorded.
  // FailedPrecondition unless `frame` is submitted and not yet consumed.
  absl::StatusOr<GpuResult> Consume(uint64_t frame) {
    Slot& slot = slots_[frame % kFramesInFlight];
    if (slot.frame != frame || slot.state != SlotState::kSubmitted) {
      return absl::FailedPreconditionError(absl::StrCat(
          "FrameRenderer::Consume(", frame, "): that frame is not in flight"));
    }
    GpuResult result;
    result.frame = frame;
    result.draws = slot.submitted->size();
    uint64_t h = 0xcbf29ce484222325ull ^ frame;
    // Sorted order visits the commands out of memory order, so the loop
    // waits on memory, not arithmetic: it asks for each command
    // kCommandAhead draws early and for its payloads kPayloadAhead draws
    // early (by then the command, which holds their addresses, is in cache),
    // as a device's command processor fetches ahead.
    constexpr size_t kCommandAhead = 16;
    constexpr size_t kPayloadAhead = 8;
    const Item* items = slot.submitted->data();
    const size_t n = slot.submitted->size();
    for (size_t i = 0; i < n; ++i) {
      if (i + kCommandAhead < n) {
        __builtin_prefetch(items[i + kCommandAhead].command);
      }
      if (i + kPayloadAhead < n) {
        const Command& ahead = *items[i + kPayloadAhead].command;
        __builtin_prefetch(ahead.uniforms.data());
        __builtin_prefetch(ahead.vertices.data());
      }
      const Command& c = *items[i].command;
      h = (h ^ ChecksumDraw(c.key, c.uniforms.data(), c.uniforms.size(),
                            c.vertices.data(), c.vertices.size())) *
          0x100000001b3ull;
    }
    result.digest = h;
    slot.state = SlotState::kConsumed;
    return result;
  }

  // ---- Introspection (tests, examples) --------------------------------------
  // The sorted draws of `frame` while its slot holds it (empty otherwise).
  std::span<const Item> submitted(uint64_t frame) const {
    const Slot& slot = slots_[frame % kFramesInFlight];
    if (slot.frame != frame || !slot.submitted.has_value() ||
        slot.state == SlotState::kFree) {
      return {};
    }
    return {slot.submitted->data(), slot.submitted->size()};
  }
  SlotState slot_state(int slot) const { return slots_[slot].state; }
  uint64_t slot_frame(int slot) const { return slots_[slot].frame; }
  const RecordStats& slot_stats(int slot) const { return slots_[slot].stats; }
  // Bytes the slot's arenas hold for its frame (0 with HeapMemory).
  size_t slot_arena_bytes(int slot) const {
    size_t bytes = 0;
    for (const auto& a : slots_[slot].lanes) bytes += a->stats().bytes_used;
    return bytes;
  }
  // Allocations made in the slot's arenas for its frame, and the bytes they
  // asked for (0 with HeapMemory).
  size_t slot_arena_allocations(int slot) const {
    size_t n = 0;
    for (const auto& a : slots_[slot].lanes) {
      const FrameArenaStats stats = a->stats();
      n += stats.allocations - stats.destructor_records;
    }
    return n;
  }
  size_t slot_arena_requested_bytes(int slot) const {
    size_t bytes = 0;
    for (const auto& a : slots_[slot].lanes) {
      bytes += a->stats().bytes_requested;
    }
    return bytes;
  }
  // Whether `p` is in one of the slot's arenas (always false on the heap).
  bool slot_owns(int slot, const void* p) const {
    for (const auto& a : slots_[slot].lanes) {
      if (a->Owns(p)) return true;
    }
    return false;
  }
  int lanes() const { return lanes_; }

 private:
  struct BlockCounts {
    size_t draws = 0, uniform_bytes = 0, vertex_bytes = 0;
  };
  struct Slot {
    // Declared first, destroyed last: the containers below live in them.
    std::vector<std::unique_ptr<FrameArena>> lanes;  // Arena memory only.
    uint64_t frame = 0;
    SlotState state = SlotState::kFree;
    std::vector<std::optional<
        typename Mem::template Vec<typename Mem::template Owner<Command>>>>
        owners;  // Per block: the draws themselves.
    // Written in full by the merge.
    std::optional<typename Mem::template Buffer<Item>> submitted;
    RecordStats stats;
  };

  FrameRenderer(int lanes, size_t objects)
      : lanes_(lanes),
        objects_(objects),
        cache_(&SystemMemorySource::Default()) {
    const size_t blocks = (objects + kBlock - 1) / kBlock;
    runs_.resize(blocks);
    counts_.resize(blocks);
    failures_.resize(blocks);
    for (Slot& slot : slots_) {
      slot.owners.resize(blocks);
      if constexpr (Mem::kUsesArena) {
        // One arena per lane plus one for the thread that drives frames.
        // A slot's frame holds about 104 bytes of draws per object (10 MB
        // at the scenario's 100,000), and one lane may record nearly all
        // of it: each keeps up to 128 bytes per object (at least 8 MiB)
        // across resets, so steady frames trade no chunks with the cache
        // (keeping 8 MiB at 100,000 objects, 2-3 MiB of chunks went back
        // to the cache and were taken again every frame).
        const size_t retain = std::max(size_t{8} << 20, objects * 128);
        for (int i = 0; i <= lanes; ++i) {
          slot.lanes.push_back(std::make_unique<FrameArena>(
              &cache_, FrameArenaOptions().set_retain_bytes(retain)));
        }
      }
    }
  }

  // Memory that lives as long as the slot's frame: the slot's arena of
  // `lane`, or the heap.
  Mem Keep(Slot& slot, int lane) const {
    if constexpr (Mem::kUsesArena) {
      return Mem::From(Lane{slot.lanes[lane].get(), lane});
    } else {
      return Mem::From(Lane{});
    }
  }

  absl::Status Release(Slot& slot, const FrameExecutor& exec) {
    // The draws go first (heap: one free per draw and payload, in
    // parallel), then the lists, then the slot's arenas as a whole.
    absl::Status s = exec.ForBlocks(
        slot.owners.size(),
        [&slot](const Lane&, size_t b) { slot.owners[b].reset(); });
    if (!s.ok()) return s;
    ClearSlot(slot);
    return absl::OkStatus();
  }

  // What remains of a slot once its draws are gone: the sorted list, then
  // the slot's arenas as a whole.
  void ClearSlot(Slot& slot) {
    slot.submitted.reset();
    for (auto& arena : slot.lanes) arena->Reset();
    slot.state = SlotState::kFree;
    slot.stats = RecordStats();
  }

  // A recording job failed (`failure`): the frame is dropped here, on this
  // thread, so that nothing of it is left half built and the next frame
  // can begin (otherwise BeginFrame would refuse every later frame, the
  // failed one being still "recorded", and Submit would refuse it).
  absl::Status Abandon(Slot& slot, absl::Status failure) {
    for (auto& run : runs_) run.reset();
    for (auto& owners : slot.owners) owners.reset();
    ClearSlot(slot);
    recording_ = false;
    return failure;
  }

  const int lanes_;
  const size_t objects_;
  ChunkCache cache_;  // Chunks of the slots' arenas.
  Slot slots_[kFramesInFlight];
  // Per block, within Record only: the sorted runs (frame temporaries).
  std::vector<std::optional<typename Mem::template Vec<Item>>> runs_;
  std::vector<BlockCounts> counts_;
  // Per block, within Record only: why the block stopped (a visible object
  // with bad draw inputs); OK otherwise.
  std::vector<absl::Status> failures_;
  uint64_t next_frame_ = 0;
  uint64_t current_ = 0;
  bool recording_ = false;
};

}  // namespace framealloc::integration::render

#endif  // INTEGRATION_RENDERER_FRAME_RENDERER_H_
