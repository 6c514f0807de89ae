// SmartAlloc: the library's public face.
//
// For: everything an engine, simulation or server allocates, through one
// object: per-thread frame arenas (reset per frame, with 1 to 3 frames in
// flight), size-class pools with per-thread caches, tracked heap memory,
// tags, budgets and statistics, over one memory source and one chunk cache.
// Each thread gets its own state per SmartAlloc instance, created on first
// use and handed back (chunks to the cache, cached pool blocks to the
// global lists, counters to the totals) when the thread exits or the
// instance is destroyed; two instances used on one thread never share an
// arena or a pool cache.
// Not for: the building blocks alone; FrameArena, ChunkCache, PoolManager
// and the memory sources are usable directly where one arena is enough.
//
// The allocation API keeps the reference guide's snake_case names
// (frame_alloc, pool_alloc, begin_frame, ...); the building blocks below it
// use Google style.
//
// Thread safety: every method may be called from any thread. Frame calls act
// on the calling thread's frame; frame memory belongs to the thread that
// allocated it (readable by others until that thread's frame ends).
// Out of memory and budgets: try_* calls return nullptr (or an empty span);
// the others never return null and go to ReportFatalError (alloc/error.h)
// naming the request, the tag and the budget that refused it.
//
// Example:
//   auto alloc = framealloc::SmartAlloc::Create(
//       framealloc::AllocConfig().set_frames_in_flight(2)
//                                .add_tag_budget("physics", {.warn_bytes = 8 <<
//                                20,
//                                                            .limit_bytes = 16
//                                                            << 20}));
//   (*alloc)->begin_frame();
//   (*alloc)->with_tag("physics", [&] {
//     auto contacts = (*alloc)->frame_array<Contact>(n);
//     ...
//   });
//   (*alloc)->end_frame();
#ifndef ALLOC_SMART_ALLOC_H_
#define ALLOC_SMART_ALLOC_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/budget.h"
#include "alloc/chunk_cache.h"
#include "alloc/debug.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/mutex.h"
#include "alloc/memory_source.h"
#include "alloc/pool_manager.h"

namespace framealloc {

// Configuration of a SmartAlloc: defaults for everything, fluent setters,
// and Validate() naming the bad field.
struct AllocConfig {
  // Where chunks and pages come from; not owned, must outlive the
  // SmartAlloc. nullptr: SystemMemorySource::Default().
  MemorySource* source = nullptr;
  // Optional user backend asked first for every block (BackendResult Ok,
  // Fallback to `source`, or Error). Shared ownership.
  std::shared_ptr<AllocatorBackend> backend;
  // Chunk sizes of the frame arenas. Each thread's arenas keep up to 4 MiB
  // of chunks between frames, so a steady frame touches no shared state.
  FrameArenaOptions arena = FrameArenaOptions().set_retain_bytes(4 << 20);
  ChunkCacheOptions cache;
  PoolOptions pool;
  // Live bytes (frame + pool + heap) across all threads; 0 = no limit.
  // Frame bytes count from their allocation until their frame's memory is
  // released (end_frame of the slot, or the thread's exit), whatever
  // rewinds happen in between: an ArenaScope or mark on frame_arena()
  // gives the memory back to the arena but not its charge. For a scratch
  // loop within a frame under a tight budget, use new_scoped_arena().
  size_t global_budget = 0;
  // Budgets by tag path; each covers the tag's subtree.
  std::vector<std::pair<std::string, TagBudget>> tag_budgets;
  // Frame bytes one thread may allocate in one frame (rewinds give none
  // back, as for global_budget); 0 = no limit.
  size_t frame_budget = 0;
  // 1, 2 or 3: memory allocated in frame N stays valid until frame
  // N + frames_in_flight - 1 ends (pipelined renderers read frame N - 1
  // while building frame N).
  int frames_in_flight = 1;
  // Frames of history kept per thread, [1, 4096].
  int frame_history = 120;
  // Budget warnings and refusals; may be called on any thread.
  AllocEventCallback on_event;
  // Fill patterns, canaries, allocation tracking, site profiling
  // (alloc/debug.h). On by default in a --config=debug build.
  DebugOptions debug;

  AllocConfig& set_source(MemorySource* s) {
    source = s;
    return *this;
  }
  AllocConfig& set_backend(std::shared_ptr<AllocatorBackend> b) {
    backend = std::move(b);
    return *this;
  }
  AllocConfig& set_chunk_sizes(size_t initial, size_t max) {
    arena.initial_chunk_size = initial;
    arena.max_chunk_size = max;
    return *this;
  }
  AllocConfig& set_arena(const FrameArenaOptions& o) {
    arena = o;
    return *this;
  }
  AllocConfig& set_cache(const ChunkCacheOptions& o) {
    cache = o;
    return *this;
  }
  AllocConfig& set_pool(const PoolOptions& o) {
    pool = o;
    return *this;
  }
  AllocConfig& set_global_budget(size_t bytes) {
    global_budget = bytes;
    return *this;
  }
  AllocConfig& add_tag_budget(std::string path, TagBudget budget) {
    tag_budgets.emplace_back(std::move(path), budget);
    return *this;
  }
  AllocConfig& set_frame_budget(size_t bytes) {
    frame_budget = bytes;
    return *this;
  }
  AllocConfig& set_frames_in_flight(int frames) {
    frames_in_flight = frames;
    return *this;
  }
  AllocConfig& set_frame_history(int frames) {
    frame_history = frames;
    return *this;
  }
  AllocConfig& set_debug(const DebugOptions& options) {
    debug = options;
    return *this;
  }
  AllocConfig& set_on_event(AllocEventCallback callback) {
    on_event = std::move(callback);
    return *this;
  }

  // InvalidArgument naming the field ("AllocConfig.frames_in_flight = 4 is
  // outside [1, 3]"), including the nested options.
  absl::Status Validate() const;
};

// Counters of one kind of memory.
struct KindStats {
  uint64_t allocations = 0;
  uint64_t bytes = 0;  // Requested bytes, cumulative.
  uint64_t frees = 0;  // Pool and heap frees (frame memory goes at once).
  uint64_t freed_bytes = 0;
  // Bytes allocated and not yet freed (pool and heap).
  int64_t live_bytes() const {
    return static_cast<int64_t>(bytes) - static_cast<int64_t>(freed_bytes);
  }
};

// One finished frame of one thread. `allocations` and `requested` count what
// KindStats counts for frame memory: the frame_* calls (frame_alloc,
// frame_array, frame_allocate, the frame adapters) and the bytes they asked
// for, whatever a rewind gave back since; not the arena's own destructor
// registrations, canary guards, or allocations made on frame_arena() directly.
// The other figures are the arena's, which hold all of those.
struct FrameRecord {
  uint64_t frame = 0;  // The thread's frame number.
  // Frame arena bytes used at the end: requests, padding, canary guards and
  // destructor registrations.
  size_t bytes = 0;
  size_t requested = 0;    // Bytes the frame's frame_* calls asked for.
  size_t allocations = 0;  // The frame's frame_* allocations.
  size_t peak_bytes = 0;   // Highest bytes used during the frame.
  size_t chunks = 0;       // Chunks the arena held at the end.
  size_t waste_bytes = 0;  // Padding and abandoned chunk tails.
  double duration_ms = 0;  // begin_frame to end_frame (0 without begin).
};

// Usage under one tag (its own allocations, not its subtree's). A pool or
// heap free counts under the tag its allocation was made under, with one
// exception: without allocation tracking and without budgets (the two
// that keep each block's tag), a pool free counts under the freeing
// thread's current tag. There, a pool block freed under another tag than
// its own moves live_bytes() from one tag to the other; their sum, and
// every total, stays right.
struct TagStats {
  std::string path;
  KindStats frame, pool, heap;
};

// One thread's view, read without stopping it.
struct ThreadStats {
  uint64_t thread = 0;  // A serial number, unique per thread per SmartAlloc.
  uint64_t frame = 0;   // Frames this thread has ended.
  KindStats frame_memory, pool, heap;
  std::vector<FrameRecord> history;  // Oldest first.
};

// A snapshot of a SmartAlloc.
struct AllocStats {
  uint64_t frame_number = 0;  // The global frame number.
  // Totals over live and exited threads.
  KindStats frame, pool, heap;
  size_t live_threads = 0;
  uint64_t exited_threads = 0;
  uint64_t budget_warnings = 0;
  uint64_t budget_refusals = 0;
  size_t global_budget_used = 0;
  size_t global_budget = 0;  // 0: none.
  size_t frame_budget = 0;   // Per thread per frame; 0: none.
  std::vector<BudgetManager::Use> tag_budgets;
  std::vector<TagStats> tags;        // Tags with any use.
  std::vector<ThreadStats> threads;  // Live threads.
  ChunkCacheStats cache;
  PoolStats pools;
  MemorySourceStats source;

  // The frame report: the whole snapshot as one JSON object (totals, tags,
  // threads with their frame history, budgets, pool fragmentation per size
  // class, cache, source)...
  std::string ToJson() const;
  // ...and as text for a console or a log: per tag and per thread bytes,
  // counts, the last frame's peak and waste, budgets, and the free against
  // used bytes of each pool size class.
  std::string ToText() const;
};

class SmartAlloc;

namespace alloc_internal {

// A counter written only by its owning thread and read by anyone: a relaxed
// load and store instead of a locked read-modify-write, so the owner pays
// for a plain add while readers see a torn-free value.
class OwnerCounter {
 public:
  void Add(uint64_t v) {
    value_.store(value_.load(std::memory_order_relaxed) + v,
                 std::memory_order_relaxed);
  }
  uint64_t Get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

struct KindCounters {
  OwnerCounter allocations, bytes, frees, freed_bytes;
  void Read(KindStats* out) const;
};

// Everything a thread owns in one SmartAlloc.
struct alignas(64) ThreadState {
  ThreadState(SmartAlloc* owner, uint64_t serial);
  ~ThreadState();

  FrameArena& arena() { return *current_arena; }

  SmartAlloc* const owner;
  const uint64_t serial;
  // The thread it belongs to.
  const std::thread::id thread = std::this_thread::get_id();
  PoolManager::ThreadCache pool_cache;
  absl::InlinedVector<std::unique_ptr<FrameArena>, 3> arenas;
  int slot = 0;  // arenas[slot] takes this frame's memory.
  FrameArena* current_arena = nullptr;  // arenas[slot].get(), cached.
  uint64_t frame = 0;                   // Frames ended by this thread.
  bool in_frame = false;
  std::chrono::steady_clock::time_point frame_start;
  size_t frame_bytes = 0;  // Charged to the frame budget this frame.
  // The frame counters summed over tags at the last end_frame: the next
  // FrameRecord is the difference (read and written by the owner only).
  uint64_t frame_allocations_before = 0;
  uint64_t frame_requested_before = 0;
  TagId tag = TagRegistry::kRoot;
  absl::InlinedVector<TagId, 8> tag_stack;
  // Bytes charged to budgets per arena slot and tag, released when the
  // slot's arena resets. Used only when budgets are active.
  absl::flat_hash_map<TagId, size_t> slot_charges[3];
  // Debug: the guarded (or filled) frame allocations of each slot, checked
  // and filled when the slot's memory is released.
  struct FrameGuard {
    char* user;
    size_t size;
    TagId tag;
    uint64_t frame;
    uint64_t site;
    // The arena's generation() when allocated. A rewind of the frame arena
    // (a mark or an ArenaScope on frame_arena()) changes it and may have
    // released (and reused) the memory: such a guard is no longer checked.
    uint64_t generation;
  };
  std::vector<FrameGuard> guards[3];

  // Per tag and kind; a thread's totals are their sums (one pair of adds
  // per allocation instead of two).
  KindCounters tag_frame[TagRegistry::kMaxTags];
  KindCounters tag_pool[TagRegistry::kMaxTags];
  KindCounters tag_heap[TagRegistry::kMaxTags];

  // Guards the history; the owner takes it once per frame.
  mutable Mutex history_mu;
  std::vector<FrameRecord> history ABSL_GUARDED_BY(history_mu);
  size_t history_next ABSL_GUARDED_BY(history_mu) = 0;
};

// The last (instance id, state) the calling thread used: one compare on
// the hot path. Plain data, so the TLS access needs no guard.
struct LastThreadState {
  uint64_t instance = 0;
  ThreadState* state = nullptr;
};
inline thread_local LastThreadState last_thread_state;

}  // namespace alloc_internal

// An object in frame memory, owned: its destructor runs exactly once, when
// the box is reset or destroyed, or when the arena takes the memory back
// if the box is still holding it then: at the end of its frame, or at a
// rewind past the object (an ArenaScope or Rewind to a mark taken before
// it; a rewind to a later mark leaves it alone). After that the box is
// expired: get() returns nullptr and dropping it touches nothing. The
// object tells its box when the arena destroys it, so the box must stay on
// the thread that owns the frame arena while it holds the object, as any
// frame memory does.
template <typename T>
class FrameBox {
 public:
  FrameBox() = default;
  FrameBox(FrameBox&& other) noexcept { *this = std::move(other); }
  FrameBox& operator=(FrameBox&& other) noexcept {
    if (this != &other) {
      reset();
      slot_ = std::exchange(other.slot_, nullptr);
      expired_ = std::exchange(other.expired_, false);
      if (slot_ != nullptr) slot_->owner = this;
    }
    return *this;
  }
  ~FrameBox() { reset(); }

  // True while the box holds its object: not reset, and not yet destroyed
  // by the arena (frame end, or a rewind past it).
  bool alive() const { return slot_ != nullptr; }
  explicit operator bool() const { return alive(); }
  // nullptr once expired or reset.
  T* get() const { return alive() ? &slot_->value : nullptr; }
  // REQUIRES: alive(); a use after the frame is reported as a misuse.
  T& operator*() const { return *Checked(); }
  T* operator->() const { return Checked(); }

  // Destroys the object now (if the arena has not already).
  void reset() {
    if (slot_ != nullptr) {
      slot_->value.~T();
      slot_->constructed = false;
      slot_->owner = nullptr;
      slot_ = nullptr;
    }
    expired_ = false;
  }

  // The storage: the arena runs ~Slot when it takes the memory back, which
  // destroys the value only if the box did not, and expires the box that
  // still holds it.
  struct Slot {
    template <typename... Args>
    explicit Slot(Args&&... args) : value(std::forward<Args>(args)...) {}
    ~Slot() {
      if (constructed) value.~T();
      if (owner != nullptr) owner->Expire();
    }
    union {
      T value;
    };
    bool constructed = true;
    FrameBox* owner = nullptr;  // The box holding the value, if any.
  };

 private:
  friend class SmartAlloc;
  explicit FrameBox(Slot* slot) : slot_(slot) { slot->owner = this; }
  void Expire() {
    slot_ = nullptr;
    expired_ = true;
  }
  T* Checked() const {
    if (ABSL_PREDICT_FALSE(!alive())) {
      ReportFatalError({ErrorKind::kMisuse, "FrameBox::operator->",
                        expired_ ? "use after frame: the FrameBox's frame "
                                   "has ended (or its arena was rewound past "
                                   "it) and its object was destroyed"
                                 : "access through an empty or reset FrameBox",
                        sizeof(T), alignof(T), absl::OkStatus()});
    }
    return &slot_->value;
  }

  Slot* slot_ = nullptr;
  bool expired_ = false;  // The arena destroyed the object the box held.
};

// An object in pool memory, owned like std::unique_ptr; the destructor runs
// and the block returns to the pool when the box is reset or destroyed.
template <typename T>
class PoolBox {
 public:
  PoolBox() = default;
  PoolBox(PoolBox&& other) noexcept { *this = std::move(other); }
  PoolBox& operator=(PoolBox&& other) noexcept;
  ~PoolBox() { reset(); }

  T* get() const { return object_; }
  T& operator*() const { return *object_; }
  T* operator->() const { return object_; }
  explicit operator bool() const { return object_ != nullptr; }
  void reset();
  // Gives up ownership; free it with SmartAlloc::pool_free.
  T* release() { return std::exchange(object_, nullptr); }

 private:
  friend class SmartAlloc;
  PoolBox(SmartAlloc* owner, T* object) : owner_(owner), object_(object) {}
  SmartAlloc* owner_ = nullptr;
  T* object_ = nullptr;
};

template <typename T>
class FrameAllocator;

// The allocator: a frame arena per thread, pools, a tracked heap, budgets,
// tags, statistics and debug aids over one MemorySource (see the file
// comment). Created with Create(AllocConfig); every method may be called
// from any thread.
class SmartAlloc {
 public:
  // REQUIRES: config.Validate().ok() (a fatal error names the field
  // otherwise; Create() returns it as a Status).
  explicit SmartAlloc(AllocConfig config = {});
  static absl::StatusOr<std::unique_ptr<SmartAlloc>> Create(
      AllocConfig config = {});
  // Hands back every thread's state. REQUIRES: no thread is using the
  // instance any more.
  ~SmartAlloc();
  SmartAlloc(const SmartAlloc&) = delete;
  SmartAlloc& operator=(const SmartAlloc&) = delete;

  // ---- Frames (of the calling thread) -------------------------------------

  // Starts a frame: records its start time. A second begin_frame without an
  // end_frame is reported as a misuse (and otherwise ignored).
  void begin_frame();
  // Ends the calling thread's frame: records it in the history, advances
  // the global frame number, and releases the memory of frame
  // N - frames_in_flight + 1 (with one frame in flight: this frame's).
  void end_frame();
  // The global frame number: the highest frame number any thread reached.
  uint64_t frame_number() const {
    return frame_number_.load(std::memory_order_relaxed);
  }

  // ---- Frame memory ---------------------------------------------------------

  // A T constructed in the calling thread's frame memory; its destructor
  // (if any; it must not throw: FrameDestructible) runs when the frame's
  // memory is released. Never null.
  template <FrameDestructible T, typename... Args>
  T* frame_alloc(Args&&... args) {
    return ConstructInFrame<T, /*kFatal=*/true>(std::forward<Args>(args)...);
  }
  // As frame_alloc, or nullptr when a budget refuses or memory runs out.
  template <FrameDestructible T, typename... Args>
  T* try_frame_alloc(Args&&... args) {
    return ConstructInFrame<T, /*kFatal=*/false>(std::forward<Args>(args)...);
  }
  // `n` value-initialized Ts in frame memory (batch allocation), destroyed
  // together when the frame's memory is released.
  template <FrameDestructible T>
  std::span<T> frame_array(size_t n) {
    return ConstructArrayInFrame<T, /*kFatal=*/true>(n);
  }
  template <FrameDestructible T>
  std::span<T> try_frame_array(size_t n) {
    return ConstructArrayInFrame<T, /*kFatal=*/false>(n);
  }
  // Raw frame memory. Never null.
  void* frame_allocate(size_t size,
                       size_t alignment = alignof(std::max_align_t)) {
    return FrameAllocate(local(), size, alignment, /*fatal=*/true);
  }
  void* try_frame_allocate(size_t size,
                           size_t alignment = alignof(std::max_align_t)) {
    return FrameAllocate(local(), size, alignment, /*fatal=*/false);
  }
  // An owning handle to a T in frame memory (see FrameBox).
  template <FrameDestructible T, typename... Args>
  FrameBox<T> frame_box(Args&&... args) {
    using Slot = typename FrameBox<T>::Slot;
    return FrameBox<T>(frame_alloc<Slot>(std::forward<Args>(args)...));
  }
  // A growable vector in frame memory (FrameVec<T>, defined below) with
  // room for `capacity` elements.
  template <typename T>
  std::vector<T, FrameAllocator<T>> frame_vec(size_t capacity = 0);

  // The calling thread's current frame arena, for code that wants the
  // building block directly (allocations through it bypass budgets, tags
  // and SmartAlloc's counters; a rewind of it releases memory, not the
  // budget charges of frame_alloc calls, see AllocConfig::global_budget).
  FrameArena& frame_arena() { return local().arena(); }

  // A new arena not tied to frames (a request, a level load), drawing chunks
  // from this instance's cache; everything it holds is released when it is
  // destroyed, which must happen before this SmartAlloc is destroyed (its
  // cache goes with it). Not thread-safe itself: one owner at a time.
  std::unique_ptr<FrameArena> new_scoped_arena();

  // ---- Pools and heap -------------------------------------------------------

  // A T from the size-class pools (sizes up to 4 KiB; larger or more aligned
  // types come from tracked heap memory). Never null. If T's constructor
  // throws, the block (and its budget charge) is freed and the exception
  // propagates.
  template <typename T, typename... Args>
  T* pool_alloc(Args&&... args) {
    void* p = PoolAllocate(kClassOf<T>, sizeof(T), alignof(T), /*fatal=*/true);
    return ConstructInPool<T>(p, std::forward<Args>(args)...);
  }
  // As pool_alloc, or nullptr when a budget or the memory refuses.
  template <typename T, typename... Args>
  T* try_pool_alloc(Args&&... args) {
    void* p = PoolAllocate(kClassOf<T>, sizeof(T), alignof(T), /*fatal=*/false);
    return p == nullptr ? nullptr
                        : ConstructInPool<T>(p, std::forward<Args>(args)...);
  }
  // Destroys and frees a T from pool_alloc. nullptr is ignored.
  template <typename T>
  void pool_free(T* p) {
    if (p == nullptr) return;
    p->~T();
    PoolDeallocate(p, kClassOf<T>, sizeof(T), alignof(T));
  }
  template <typename T, typename... Args>
  PoolBox<T> pool_box(Args&&... args) {
    return PoolBox<T>(this, pool_alloc<T>(std::forward<Args>(args)...));
  }

  // Untyped pool memory; free with the same size and alignment.
  void* pool_allocate(size_t size,
                      size_t alignment = alignof(std::max_align_t)) {
    return PoolAllocate(PoolManager::ClassFor(size, alignment), size, alignment,
                        /*fatal=*/true);
  }
  void* try_pool_allocate(size_t size,
                          size_t alignment = alignof(std::max_align_t)) {
    return PoolAllocate(PoolManager::ClassFor(size, alignment), size, alignment,
                        /*fatal=*/false);
  }
  void pool_deallocate(void* p, size_t size,
                       size_t alignment = alignof(std::max_align_t)) {
    PoolDeallocate(p, PoolManager::ClassFor(size, alignment), size, alignment);
  }

  // Heap memory with tracking (counted per thread and tag, charged to
  // budgets). Free with heap_free. Never null / nullptr on refusal.
  void* heap_alloc(size_t size, size_t alignment = alignof(std::max_align_t)) {
    return HeapAllocate(size, alignment, /*fatal=*/true);
  }
  void* try_heap_alloc(size_t size,
                       size_t alignment = alignof(std::max_align_t)) {
    return HeapAllocate(size, alignment, /*fatal=*/false);
  }
  // Frees heap_alloc memory. A pointer heap_alloc never returned is
  // reported as a misuse (when its header is readable) and ignored. So is,
  // without track_allocations (whose record the free trusts instead), a
  // block whose header was written over (an underflow, a stray write): no
  // header field is used before it is checked, and such a block is leaked
  // (not freed, its budget charge kept, not counted as freed). A
  // double free is caught for sure only with DebugOptions::track_allocations
  // (or under ASan): without it the check reads the block's header in
  // memory already freed, and if the heap has handed that address out
  // again, the second free frees the new block.
  void heap_free(void* p);

  // Gives completely free pool pages back to the chunk cache. Returns bytes.
  // Blocks parked in a thread's pool cache keep their pages: a thread's
  // cache limits grow to fit its working set (PoolOptions::max_cache_bytes),
  // so after a burst call flush_thread_pool_cache() on that thread first.
  size_t release_empty_pool_pages();
  // Returns the calling thread's cached pool blocks to their pages and puts
  // its cache limits back at their start (a thread done with a burst of pool
  // allocations, or about to idle). Cheap when the cache is empty; on a
  // thread that never used this SmartAlloc it first sets up the thread's
  // state, as any call does.
  void flush_thread_pool_cache();

  // ---- Tags
  // ------------------------------------------------------------------

  // Runs `fn` with allocations attributed to the tag `name`, nested under
  // the calling thread's current tag ("render" then "shadows" gives
  // "render/shadows"). Returns what `fn` returns.
  template <typename F>
  decltype(auto) with_tag(absl::string_view name, F&& fn);
  // The calling thread's current tag path ("" when untagged).
  std::string current_tag();

  // ---- Debug aids (see AllocConfig::debug and alloc/debug.h) --------------

  // Live pool and heap allocations made at least `min_age_frames` frames
  // ago, grouped by call site, largest first. Empty unless
  // debug.track_allocations.
  std::vector<LeakGroup> leaks(uint64_t min_age_frames) const;
  // The same as text: one paragraph per site with its symbolized stack.
  std::string leak_report(uint64_t min_age_frames) const;
  // The `n` call sites with the most allocations (all kinds), with their
  // per-tag counts. Empty unless debug.profile_sites.
  std::vector<SiteStats> hottest_sites(size_t n) const;
  std::string site_report(size_t n) const;
  // Records every allocation and free of the global frames [first_frame,
  // first_frame + frame_count) to `path`, one JSON object per line (see
  // FrameTracer). Works in any build; the paths slow down while tracing.
  absl::Status start_trace(const std::string& path, uint64_t first_frame,
                           uint64_t frame_count);
  absl::Status stop_trace();
  uint64_t trace_events() const { return tracer_.events_written(); }

  // ---- Statistics
  // ------------------------------------------------------------

  AllocStats stats() const;
  const AllocConfig& config() const { return config_; }
  ChunkCache& chunk_cache() { return *cache_; }
  PoolManager& pools() { return *pools_; }
  BudgetManager& budgets() { return budgets_; }
  TagRegistry& tags() { return tags_; }

 private:
  friend class TagScope;
  friend struct alloc_internal::ThreadState;
  friend class ThreadExitHook;

  // The calling thread's state in this instance (created on first use).
  alloc_internal::ThreadState& local() {
    alloc_internal::LastThreadState& last = alloc_internal::last_thread_state;
    if (ABSL_PREDICT_TRUE(last.instance == id_)) return *last.state;
    return LocalSlow();
  }
  ABSL_ATTRIBUTE_NOINLINE alloc_internal::ThreadState& LocalSlow();

  // Frame memory for `size` bytes: the arena's bump plus two counter adds,
  // unless budgets, debug aids or tracing are on (then out of line).
  // nullptr only when !fatal.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* FrameAllocate(
      alloc_internal::ThreadState& ts, size_t size, size_t alignment,
      bool fatal) {
    if (!kMinimalBuild &&
        ABSL_PREDICT_FALSE(slow_.load(std::memory_order_relaxed))) {
      return FrameAllocateSlow(ts, size, alignment, fatal);
    }
    void* p = fatal ? ts.arena().Allocate(size, alignment)
                    : ts.arena().TryAllocate(size, alignment);
    if (ABSL_PREDICT_TRUE(p != nullptr)) CountFrame(ts, size);
    return p;
  }
  // The slow path validates the request (an invalid one is the arena's
  // invalid-argument refusal, never a budget's) before it charges budgets.
  ABSL_ATTRIBUTE_NOINLINE void* FrameAllocateSlow(
      alloc_internal::ThreadState& ts, size_t size, size_t alignment,
      bool fatal);
  // frame_array's `count * size` overflowed: a fatal invalid-argument
  // report naming it, or (try_) the arena's failed allocation counted.
  ABSL_ATTRIBUTE_NOINLINE void FrameArrayOverflow(size_t count, size_t size,
                                                  size_t alignment, bool fatal);

  // The destructor's registration is reserved before the object's memory,
  // so a try_ call that fails does so before constructing anything, and
  // nothing can fail after.
  template <typename T, bool kFatal, typename... Args>
  T* ConstructInFrame(Args&&... args) {
    alloc_internal::ThreadState& ts = local();
    FrameArena::Destructor* record = nullptr;
    if constexpr (!std::is_trivially_destructible_v<T>) {
      record = ts.arena().ReserveDestructor<kFatal>();
      if (!kFatal && record == nullptr) return nullptr;
    }
    void* p = FrameAllocate(ts, sizeof(T), alignof(T), kFatal);
    if (!kFatal && p == nullptr) return nullptr;
    T* object = ::new (p) T(std::forward<Args>(args)...);
    if constexpr (!std::is_trivially_destructible_v<T>) {
      ts.arena().DestroyAtReset(record, object, 1);
    }
    return object;
  }
  // As ConstructInFrame; if a constructor throws, the elements already
  // constructed are destroyed (last first) before the exception leaves.
  // An `n * sizeof(T)` that overflows is an invalid argument, reported as
  // such before anything is reserved or charged to a budget.
  template <typename T, bool kFatal>
  std::span<T> ConstructArrayInFrame(size_t n) {
    size_t bytes;
    if (ABSL_PREDICT_FALSE(__builtin_mul_overflow(n, sizeof(T), &bytes))) {
      FrameArrayOverflow(n, sizeof(T), alignof(T), kFatal);
      return {};
    }
    alloc_internal::ThreadState& ts = local();
    FrameArena::Destructor* record = nullptr;
    if constexpr (!std::is_trivially_destructible_v<T>) {
      record = ts.arena().ReserveDestructor<kFatal>();
      if (!kFatal && record == nullptr) return {};
    }
    T* objects = static_cast<T*>(FrameAllocate(ts, bytes, alignof(T), kFatal));
    if (!kFatal && objects == nullptr) return {};
    FrameArena::ConstructN(objects, n);
    if constexpr (!std::is_trivially_destructible_v<T>) {
      ts.arena().DestroyAtReset(record, objects, n);
    }
    return std::span<T>(objects, n);
  }
  static void CountFrame(alloc_internal::ThreadState& ts, size_t bytes) {
    if constexpr (kMinimalBuild) return;
    alloc_internal::KindCounters& counters = ts.tag_frame[ts.tag];
    counters.allocations.Add(1);
    counters.bytes.Add(bytes);
  }
  // Charges the frame, global and tag budgets; false (or a fatal error)
  // on refusal. RefundFrame undoes a charge whose allocation failed.
  bool ChargeFrameBudgets(alloc_internal::ThreadState& ts, size_t bytes,
                          bool fatal);
  void RefundFrame(alloc_internal::ThreadState& ts, size_t bytes);
  // The size class of T, folded at compile time (-1: tracked heap).
  template <typename T>
  static constexpr int kClassOf = PoolManager::ClassFor(sizeof(T), alignof(T));

  // The pool fast paths: the thread's cache, two counter adds, and one
  // branch on "any budget configured". Everything else is out of line.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* PoolAllocate(int cls, size_t size,
                                                  size_t alignment,
                                                  bool fatal) {
    if (ABSL_PREDICT_TRUE(cls >= 0 && !slow_.load(std::memory_order_relaxed))) {
      alloc_internal::ThreadState& ts = local();
      void* p = ts.pool_cache.Allocate(cls);
      if (ABSL_PREDICT_TRUE(p != nullptr)) {
        if constexpr (!kMinimalBuild) {
          alloc_internal::KindCounters& counters = ts.tag_pool[ts.tag];
          counters.allocations.Add(1);
          counters.bytes.Add(size);
        }
        return p;
      }
    }
    return PoolAllocateSlow(cls, size, alignment, fatal);
  }
  // Builds a T in the pool block `p`; frees the block if the constructor
  // throws (a constructor that allocates through a refusing adapter).
  template <typename T, typename... Args>
  T* ConstructInPool(void* p, Args&&... args) {
#if defined(__cpp_exceptions)
    if constexpr (!std::is_nothrow_constructible_v<T, Args&&...>) {
      try {
        return ::new (p) T(std::forward<Args>(args)...);
      } catch (...) {
        PoolDeallocate(p, kClassOf<T>, sizeof(T), alignof(T));
        throw;
      }
    }
#endif
    return ::new (p) T(std::forward<Args>(args)...);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE void PoolDeallocate(void* p, int cls,
                                                   size_t size,
                                                   size_t alignment) {
    if (ABSL_PREDICT_TRUE(
            p != nullptr && cls >= 0 &&
            (kMinimalBuild || !slow_.load(std::memory_order_relaxed)))) {
      alloc_internal::ThreadState& ts = local();
      ts.pool_cache.Free(p, cls);
      if constexpr (!kMinimalBuild) {
        alloc_internal::KindCounters& counters = ts.tag_pool[ts.tag];
        counters.frees.Add(1);
        counters.freed_bytes.Add(size);
      }
      return;
    }
    PoolDeallocateSlow(p, cls, size, alignment);
  }
  ABSL_ATTRIBUTE_NOINLINE void* PoolAllocateSlow(int cls, size_t size,
                                                 size_t alignment, bool fatal);
  ABSL_ATTRIBUTE_NOINLINE void PoolDeallocateSlow(void* p, int cls, size_t size,
                                                  size_t alignment);
  // Debug-aid helpers (smart_alloc.cc).
  void* GuardedBlockToUser(void* block, size_t size, size_t alignment);
  void CheckCanaries(const char* where, AllocKind kind, const char* user,
                     size_t size, TagId tag, uint64_t frame, uint64_t site);
  static void WriteCanaries(char* user, size_t size);
  // Fill pattern, call site, tracking and tracing of a fresh allocation;
  // returns its site. Out of line, like CaptureSite, so the number of
  // frames between the user's call and the stack capture is fixed.
  ABSL_ATTRIBUTE_NOINLINE uint64_t OnDebugAlloc(alloc_internal::ThreadState& ts,
                                                AllocKind kind, char* user,
                                                size_t size, size_t alignment);
  ABSL_ATTRIBUTE_NOINLINE uint64_t CaptureSite(TagId tag, size_t size);
  void Trace(TraceEvent::Op op, AllocKind kind, TagId tag, size_t size,
             const void* p, uint64_t thread);
  void CheckFrameGuards(alloc_internal::ThreadState& ts, int slot);
  void UpdateSlow();
  void* HeapAllocate(size_t size, size_t alignment, bool fatal);
  // `untracked`: the caller already took the block out of the tracker.
  void HeapFree(void* p, bool untracked);
  void* Refused(const char* where, size_t size, size_t alignment, bool fatal,
                const absl::Status& why);
  void ReleaseSlot(alloc_internal::ThreadState& ts, int slot);
  void PushTag(absl::string_view name);
  void PopTag();
  // Hands a thread's state back: runs its frames' pending destructors and
  // checks their guards (no lock held: user code), then folds its counters
  // into the totals and deletes it. `own_thread`: called on the thread the
  // state belongs to. REQUIRES: no other thread retires `ts`.
  void RetireThread(alloc_internal::ThreadState* ts, bool own_thread)
      ABSL_LOCKS_EXCLUDED(threads_mu_);
  void FoldRetired(const alloc_internal::ThreadState& ts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(threads_mu_);
  // At thread exit: retires `ts` in instance `id` if it is still alive.
  static void RetireAtThreadExit(uint64_t id, alloc_internal::ThreadState* ts);

  const AllocConfig config_;
  const uint64_t id_;  // Unique per instance in the process; never reused.
  std::unique_ptr<BackendMemorySource> backend_source_;
  MemorySource* const source_;
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<PoolManager> pools_;
  TagRegistry tags_;
  BudgetManager budgets_;
  const bool budgets_active_;  // budgets_.active().
  const bool frame_budgets_;   // Budgets active or a frame budget set.
  const bool guard_layout_;    // Canaries around frame and pool allocations.
  // Any reason to leave the fast paths: budgets, a frame budget, a debug
  // aid, tracing. Relaxed: it only changes when tracing starts or stops,
  // and an allocation racing with that may be traced or not.
  std::atomic<bool> slow_;
  AllocationTracker tracker_;
  FrameTracer tracer_;
  std::atomic<bool> tracing_{false};
  std::atomic<uint64_t> frame_number_{0};

  // Threads handing their states back at exit (RetireAtThreadExit), which
  // the destructor waits for. Guarded by the process-wide list of live
  // instances' mutex (smart_alloc.cc), which outlives every instance.
  int exits_in_progress_ = 0;
  mutable alloc_internal::Mutex threads_mu_;
  std::vector<alloc_internal::ThreadState*> threads_
      ABSL_GUARDED_BY(threads_mu_);
  uint64_t next_thread_serial_ ABSL_GUARDED_BY(threads_mu_) = 1;
  uint64_t exited_threads_ ABSL_GUARDED_BY(threads_mu_) = 0;
  // Counters of exited threads.
  KindStats retired_frame_ ABSL_GUARDED_BY(threads_mu_);
  KindStats retired_pool_ ABSL_GUARDED_BY(threads_mu_);
  KindStats retired_heap_ ABSL_GUARDED_BY(threads_mu_);
  std::vector<TagStats> retired_tags_ ABSL_GUARDED_BY(threads_mu_);
  // Pool blocks' tags and sizes, kept only while budgets are active (a
  // free must release what it charged, to the tag it charged).
  struct PoolCharge {
    TagId tag;
    size_t size;
  };
  mutable alloc_internal::Mutex charged_mu_;
  absl::flat_hash_map<void*, PoolCharge> pool_block_tags_
      ABSL_GUARDED_BY(charged_mu_);
};

// Attributes the calling thread's allocations to a tag while it lives.
// Scopes nest; they must close in reverse order (checked: a misuse report).
class TagScope {
 public:
  TagScope(SmartAlloc& alloc, absl::string_view name);
  ~TagScope();
  TagScope(const TagScope&) = delete;
  TagScope& operator=(const TagScope&) = delete;

 private:
  SmartAlloc& alloc_;
  TagId tag_;
};

template <typename F>
decltype(auto) SmartAlloc::with_tag(absl::string_view name, F&& fn) {
  TagScope scope(*this, name);
  return std::forward<F>(fn)();
}

// STL allocator over the calling thread's frame memory in a SmartAlloc
// (budgets, tags and counters apply). Works with std::vector,
// std::unordered_map, absl::flat_hash_map, absl::InlinedVector, ...
// deallocate is a no-op: the memory goes at the end of the frame, so a
// container using it must not outlive the frame. Throws std::bad_alloc when
// a budget refuses or memory runs out (the adapter boundary is the one place
// this library throws). Where a refusal is expected, prefer the std::
// containers: Abseil's hash containers are left broken by a refusal during a
// rehash (abseil/abseil-cpp#1581; docs/smart_alloc.md, "STL and std::pmr").
template <typename T>
class FrameAllocator {
 public:
  using value_type = T;
  explicit FrameAllocator(SmartAlloc* alloc) noexcept : alloc_(alloc) {}
  template <typename U>
  FrameAllocator(const FrameAllocator<U>& other) noexcept  // NOLINT: rebind
      : alloc_(other.alloc()) {}

  T* allocate(size_t n) {
    size_t bytes;
    if (__builtin_mul_overflow(n, sizeof(T), &bytes)) throw std::bad_alloc();
    void* p = alloc_->try_frame_allocate(bytes, alignof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T*, size_t) noexcept {}

  SmartAlloc* alloc() const { return alloc_; }
  template <typename U>
  bool operator==(const FrameAllocator<U>& other) const noexcept {
    return alloc_ == other.alloc();
  }

 private:
  SmartAlloc* alloc_;
};

// STL allocator over a SmartAlloc's pools (n * sizeof(T) up to 4 KiB) and
// tracked heap (beyond). Memory is freed on deallocate, from any thread.
// Throws std::bad_alloc on refusal (and Abseil's hash containers do not
// survive one during a rehash: see FrameAllocator).
template <typename T>
class PoolAllocator {
 public:
  using value_type = T;
  explicit PoolAllocator(SmartAlloc* alloc) noexcept : alloc_(alloc) {}
  template <typename U>
  PoolAllocator(const PoolAllocator<U>& other) noexcept  // NOLINT: rebind
      : alloc_(other.alloc()) {}

  T* allocate(size_t n) {
    size_t bytes;
    if (__builtin_mul_overflow(n, sizeof(T), &bytes)) throw std::bad_alloc();
    void* p = alloc_->try_pool_allocate(bytes, alignof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    alloc_->pool_deallocate(p, n * sizeof(T), alignof(T));
  }

  SmartAlloc* alloc() const { return alloc_; }
  template <typename U>
  bool operator==(const PoolAllocator<U>& other) const noexcept {
    return alloc_ == other.alloc();
  }

 private:
  SmartAlloc* alloc_;
};

// A growable vector in frame memory.
template <typename T>
using FrameVec = std::vector<T, FrameAllocator<T>>;

template <typename T>
std::vector<T, FrameAllocator<T>> SmartAlloc::frame_vec(size_t capacity) {
  std::vector<T, FrameAllocator<T>> v{FrameAllocator<T>(this)};
  v.reserve(capacity);
  return v;
}

template <typename T>
PoolBox<T>& PoolBox<T>::operator=(PoolBox&& other) noexcept {
  if (this != &other) {
    reset();
    owner_ = other.owner_;
    object_ = std::exchange(other.object_, nullptr);
  }
  return *this;
}

template <typename T>
void PoolBox<T>::reset() {
  if (object_ != nullptr) owner_->pool_free(std::exchange(object_, nullptr));
}

}  // namespace framealloc

#endif  // ALLOC_SMART_ALLOC_H_
