// Frame memory policies and a block executor shared by the integration
// libraries (integration/ecs, integration/renderer).
//
// For: writing a frame's systems once and running them four ways (the
// simulation suite's variants): temporaries from the heap (HeapMemory:
// std::vector, std::unique_ptr) or from a FrameArena (ArenaMemory: the same
// containers over ArenaAllocator, objects constructed in the arena), on the
// calling thread or as jobs on a jobs::Runtime (FrameExecutor). The code of a
// system is a template over the memory policy, so both variants run the same
// instructions apart from where memory comes from.
// Not for: persistent data (component storage, scene objects), which lives in
// ordinary containers owned by the world or scene.
//
// Thread safety: a policy object is a value naming one arena; it is used by
// one thread at a time (the arena's owner). FrameExecutor::ForBlocks and
// ForRange may be called from one thread at a time; they run the body on the
// runtime's workers, each call with the arena of the worker running it.
// Errors: ForBlocks/ForRange return the first job failure (an exception thrown
// by a body becomes Unknown with its text) or InvalidArgument for a bad grain.
//
// Example:
//   FrameExecutor exec = FrameExecutor::OnRuntime(runtime);
//   absl::Status s = exec.ForBlocks(blocks, [&](const Lane& lane, size_t b) {
//     ArenaMemory mem = ArenaMemory::From(lane);   // the worker's frame arena
//     ArenaMemory::Vec<uint32_t> visible = mem.MakeVec<uint32_t>();
//     ...
//   });
#ifndef INTEGRATION_ECS_FRAME_MEMORY_H_
#define INTEGRATION_ECS_FRAME_MEMORY_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "alloc/arena_allocator.h"
#include "alloc/frame_arena.h"
#include "jobs/runtime.h"

namespace framealloc::integration {

// Where a body runs: the frame arena it may use (null when the frame has
// none: heap variants on one thread) and a lane number unique among the
// bodies that can run at the same time (the global worker index on a
// runtime, 0 on one thread).
struct Lane {
  FrameArena* arena = nullptr;
  int lane = 0;
};

// Temporaries from the heap: what an engine writes without a frame allocator.
struct HeapMemory {
  static constexpr bool kUsesArena = false;
  template <typename T>
  using Vec = std::vector<T>;
  // A buffer the caller sizes with resize() and then fills completely (a
  // draw's uniform payload, a merged list): a std::vector, whose resize()
  // value-initializes (zero-fills) the elements first.
  template <typename T>
  using Buffer = std::vector<T>;
  template <typename T>
  using Owner = std::unique_ptr<T>;

  using String = std::string;

  static HeapMemory From(const Lane&) { return {}; }
  String MakeString(const char* chars, size_t n) const {
    return String(chars, n);
  }
  template <typename T>
  Vec<T> MakeVec() const {
    return Vec<T>();
  }
  template <typename T>
  Buffer<T> MakeBuffer() const {
    return Buffer<T>();
  }
  template <typename T, typename... Args>
  Owner<T> New(Args&&... args) const {
    return std::make_unique<T>(std::forward<Args>(args)...);
  }
};

// An ArenaAllocator whose construct() without arguments default-initializes
// instead of value-initializing: resize() of a vector using it leaves
// elements of trivial types (bytes, floats, plain structs without member
// initializers) unwritten, for buffers the caller overwrites in full.
// Elements with member initializers or constructors are still constructed.
template <typename T>
class OverwriteArenaAllocator : public ArenaAllocator<T> {
 public:
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = OverwriteArenaAllocator<U>;
  };

  explicit OverwriteArenaAllocator(FrameArena* arena) noexcept
      : ArenaAllocator<T>(arena) {}
  template <typename U>
  OverwriteArenaAllocator(  // NOLINT: rebind.
      const OverwriteArenaAllocator<U>& other) noexcept
      : ArenaAllocator<T>(other.arena()) {}

  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  template <typename U>
  bool operator==(const OverwriteArenaAllocator<U>& other) const noexcept {
    return this->arena() == other.arena();
  }
};

// Destroys an object in place and leaves its memory to the arena.
struct DestroyInPlace {
  template <typename T>
  void operator()(T* p) const noexcept {
    p->~T();
  }
};

// Temporaries from a FrameArena: the same containers, memory reclaimed as a
// whole when the arena resets. REQUIRES: the arena outlives every container
// and object made here (it is reset only after they are dropped, or they are
// never touched again).
struct ArenaMemory {
  static constexpr bool kUsesArena = true;
  template <typename T>
  using Vec = std::vector<T, ArenaAllocator<T>>;
  // A buffer filled completely after resize(): the arena's bytes are not
  // zero-filled first (frame memory is written once, then read).
  template <typename T>
  using Buffer = std::vector<T, OverwriteArenaAllocator<T>>;
  template <typename T>
  using Owner = std::unique_ptr<T, DestroyInPlace>;

  using String =
      std::basic_string<char, std::char_traits<char>, ArenaAllocator<char>>;

  FrameArena* arena = nullptr;

  // REQUIRES: lane.arena != nullptr (FrameExecutor::has_arena() for the
  // executor running the body).
  static ArenaMemory From(const Lane& lane) { return ArenaMemory{lane.arena}; }
  String MakeString(const char* chars, size_t n) const {
    return String(chars, n, ArenaAllocator<char>(arena));
  }
  template <typename T>
  Vec<T> MakeVec() const {
    return Vec<T>(ArenaAllocator<T>(arena));
  }
  template <typename T>
  Buffer<T> MakeBuffer() const {
    return Buffer<T>(OverwriteArenaAllocator<T>(arena));
  }
  template <typename T, typename... Args>
  Owner<T> New(Args&&... args) const {
    void* storage = arena->Allocate(sizeof(T), alignof(T));
    return Owner<T>(::new (storage) T(std::forward<Args>(args)...));
  }
};

// Runs a frame's blocks on the calling thread or on a runtime's workers.
class FrameExecutor {
 public:
  // Bodies run on the calling thread with `arena` as lane.arena. It may be
  // null for code on HeapMemory only: frame memory (ArenaMemory) needs an
  // arena, and FrameColumn<T, ArenaMemory>::Allocate (so
  // ComputeWorldTransforms<ArenaMemory>) refuses an executor without one
  // (has_arena()) with FailedPrecondition.
  static FrameExecutor Sequential(FrameArena* arena) {
    FrameExecutor e;
    e.arena_ = arena;
    return e;
  }
  // Bodies run as jobs of the open frame, each with its worker's frame
  // arena. REQUIRES: runtime != nullptr and a frame is open.
  static FrameExecutor OnRuntime(jobs::Runtime* runtime) {
    FrameExecutor e;
    e.runtime_ = runtime;
    e.lanes_ = 0;
    for (int k = 0; k < runtime->num_nodes(); ++k) {
      e.lane_base_.push_back(e.lanes_);
      e.lanes_ += runtime->slots(k);  // ctx.worker() < slots(k).
    }
    return e;
  }

  jobs::Runtime* runtime() const { return runtime_; }
  // Whether every body gets a frame arena (lane.arena non-null): on a
  // runtime always (each job's worker arena), on one thread when
  // Sequential was given one.
  bool has_arena() const { return runtime_ != nullptr || arena_ != nullptr; }
  // Lanes bodies may see: [0, lanes()).
  int lanes() const { return lanes_; }

  // Calls f(const Lane&, size_t block) for every block in [0, n). On a
  // runtime the blocks are split by node (Runtime::Partition) and dealt to
  // the node's workers as ForRange deals chunks of one block. Blocks must
  // not depend on each other.
  template <typename F>
  absl::Status ForBlocks(size_t n, F&& f) const {
    return ForRange(n, 1, [&f](const Lane& lane, size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) f(lane, i);
    });
  }

  // How items 0..n-1 are homed: split by node in proportion to the workers
  // on a runtime, one range on node 0 otherwise.
  jobs::NodePartition Partition(size_t n) const {
    if (runtime_ == nullptr) return jobs::NodePartition({{0, 0, n}});
    return runtime_->Partition(n);
  }

  // Calls f(const Lane&, size_t begin, size_t end) over [begin, end): in one
  // call on one thread; on a runtime, each node's share of [begin, end) (its
  // range of `homes` intersected with [begin, end)) cut into chunks of
  // `grain` items (the last may be shorter; a grain of SIZE_MAX makes one
  // chunk of each node's share). Returns when all are done: OK or the first
  // failure; InvalidArgument for grain 0 or end > homes.size().
  //
  // On a runtime the chunks of a node's share are dealt in contiguous parts,
  // one per worker of the node, and one job per part runs on the node: it
  // takes the part of the worker it runs on when that part is free (any
  // free part otherwise), runs its chunks from the front, then takes chunks
  // from the back of the node's other parts until none is left. A worker
  // therefore meets the same items in every call with the same range (one
  // system after another, frame after frame) and keeps them in its caches,
  // which a job per chunk, placed wherever it was stolen, did not; and one
  // part job alone still runs every chunk, so the call completes whichever
  // of them get to run. The chunking depends on the range and the grain
  // only, never on timing; which worker runs a chunk does.
  template <typename F>
  absl::Status ForRange(const jobs::NodePartition& homes, size_t begin,
                        size_t end, size_t grain, F&& f) const {
    if (grain == 0) {
      return absl::InvalidArgumentError("FrameExecutor: grain must be >= 1");
    }
    if (end > homes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("FrameExecutor: range end ", end,
                       " is past the partition's ", homes.size(), " items"));
    }
    if (begin >= end) return absl::OkStatus();
    if (runtime_ == nullptr) {
      // As on a runtime, where the jobs layer catches it: a body's
      // exception becomes the call's Unknown status.
      try {
        f(Lane{arena_, 0}, begin, end);
      } catch (const std::exception& e) {
        return absl::UnknownError(
            absl::StrCat("FrameExecutor: a body threw: ", e.what()));
      } catch (...) {
        return absl::UnknownError(
            "FrameExecutor: a body threw a non-std exception");
      }
      return absl::OkStatus();
    }
    // The parts of every node, in node order; on the stack for up to
    // kInlineParts workers (no allocation per call on small machines).
    size_t total_parts = 0;
    for (const jobs::NodeRange& r : homes.ranges()) {
      const Share share = ShareOf(r, begin, end, grain);
      if (share.chunks > 0xffffffffu) {
        return absl::InvalidArgumentError(
            absl::StrCat("FrameExecutor: ", share.chunks, " chunks of ", grain,
                         " items; at most 2^32 - 1 per node"));
      }
      total_parts += share.parts;
    }
    std::array<Part, kInlineParts> inline_parts;
    std::unique_ptr<Part[]> heap_parts;
    Part* parts = inline_parts.data();
    if (total_parts > kInlineParts) {
      heap_parts = std::make_unique<Part[]>(total_parts);
      parts = heap_parts.get();
    }
    jobs::JobCounter counter;
    absl::Status submitted;
    size_t next_part = 0;
    for (const jobs::NodeRange& r : homes.ranges()) {
      if (!submitted.ok()) break;
      const Share share = ShareOf(r, begin, end, grain);
      if (share.chunks == 0) continue;
      const size_t b0 = share.begin, e0 = share.end, chunks = share.chunks;
      const size_t count = share.parts;
      Part* node_parts = parts + next_part;
      for (size_t p = 0; p < count; ++p) {
        node_parts[p].Set(chunks * p / count, chunks * (p + 1) / count);
      }
      next_part += count;
      for (size_t p = 0; p < count && submitted.ok(); ++p) {
        submitted = runtime_->Spawn(
            [this, &f, node_parts, count, b0, e0,
             grain](jobs::JobContext& ctx) {
              RunParts(ctx, node_parts, count, b0, e0, grain, f);
            },
            jobs::SubmitOptions().on_node(r.node).with_counter(&counter).named(
                "frame_block"));
      }
    }
    if (!submitted.ok()) {
      counter.Cancel();
      (void)counter.Wait();
      return submitted;
    }
    return counter.Wait();
  }
  // Items [0, n) homed by Partition(n).
  template <typename F>
  absl::Status ForRange(size_t n, size_t grain, F&& f) const {
    return ForRange(Partition(n), 0, n, grain, std::forward<F>(f));
  }

 private:
  static constexpr size_t kInlineParts = 16;

  // A node's share of the items [begin, end): its items, their chunks of
  // `grain` and its parts (one per worker, at most one per chunk). All zero
  // when the node holds none of them.
  struct Share {
    size_t begin = 0, end = 0, chunks = 0, parts = 0;
  };
  Share ShareOf(const jobs::NodeRange& r, size_t begin, size_t end,
                size_t grain) const {
    Share share;
    share.begin = std::max(r.begin, begin);
    share.end = std::min(r.end, end);
    if (share.begin >= share.end) return Share{};
    // Not (len + grain - 1) / grain: that wraps for a grain near SIZE_MAX
    // (0 chunks: nothing would run, and the call would return OK).
    const size_t len = share.end - share.begin;
    share.chunks = len / grain + (len % grain != 0 ? 1 : 0);
    share.parts = std::min<size_t>(share.chunks, runtime_->workers(r.node));
    return share;
  }

  // A contiguous run of chunk indexes [front, back), taken from the front
  // by the part's owner and from the back by the node's other part jobs.
  // Padded, not over-aligned (parts live on the caller's stack, where
  // sanitizers' fake stacks do not honour alignas(64)): 128 bytes apart,
  // two parts' words never share a cache line.
  struct Part {
    std::atomic<uint64_t> range{0};  // front << 32 | back.
    std::atomic<bool> taken{false};  // Owned by a part job.
    char padding[128 - sizeof(std::atomic<uint64_t>) - sizeof(bool)];
    void Set(size_t front, size_t back) {
      range.store((uint64_t{front} << 32) | back, std::memory_order_relaxed);
      taken.store(false, std::memory_order_relaxed);
    }
    // The next chunk from the front (owner) or the back (others); false
    // when the part is empty.
    bool Take(bool from_front, size_t* chunk) {
      uint64_t r = range.load(std::memory_order_relaxed);
      for (;;) {
        const uint64_t front = r >> 32, back = r & 0xffffffffu;
        if (front >= back) return false;
        const uint64_t next = from_front ? (((front + 1) << 32) | back)
                                         : ((front << 32) | (back - 1));
        if (range.compare_exchange_weak(r, next, std::memory_order_relaxed)) {
          *chunk = from_front ? front : back - 1;
          return true;
        }
      }
    }
  };

  // One part job: its own part (its worker's when free), then the others'.
  template <typename F>
  void RunParts(jobs::JobContext& ctx, Part* parts, size_t count, size_t base,
                size_t limit, size_t grain, F& f) const {
    const Lane lane{&ctx.arena(), lane_base_[ctx.node()] + ctx.worker()};
    size_t own = count;
    const size_t preferred = static_cast<size_t>(ctx.worker());
    if (preferred < count &&
        !parts[preferred].taken.exchange(true, std::memory_order_relaxed)) {
      own = preferred;
    }
    for (size_t p = 0; own == count && p < count; ++p) {
      if (!parts[p].taken.exchange(true, std::memory_order_relaxed)) own = p;
    }
    auto run = [&](size_t chunk) {
      // chunk * grain < limit - base (chunk < the share's chunks), so b <
      // limit; b + grain may wrap for a huge grain, limit - b cannot.
      const size_t b = base + chunk * grain;
      f(lane, b, b + std::min(grain, limit - b));
    };
    size_t chunk = 0;
    if (own < count) {
      while (parts[own].Take(/*from_front=*/true, &chunk)) run(chunk);
    }
    for (size_t k = 1; k <= count; ++k) {
      Part& other = parts[(own + k) % count];
      while (other.Take(/*from_front=*/false, &chunk)) run(chunk);
    }
  }

  FrameExecutor() = default;
  jobs::Runtime* runtime_ = nullptr;
  FrameArena* arena_ = nullptr;
  std::vector<int> lane_base_;
  int lanes_ = 1;
};

}  // namespace framealloc::integration

#endif  // INTEGRATION_ECS_FRAME_MEMORY_H_
