// FrameArena: a single-owner bump allocator, reset as a whole once a frame.
//
// For: the many short-lived allocations of one frame (or one request, one
// level load): neighbour lists, contact buffers, command lists. Allocation
// is a pointer bump inline in this header; nothing is freed one by one;
// Reset() drops everything at once, running the destructors of objects that
// need one, in reverse order of construction. Not for: memory that outlives
// the frame (use pools or the heap) or sharing one arena between threads
// (each thread owns its own; SmartAlloc arranges that).
//
// Memory comes in chunks from a ChunkCache: 64 KiB first, doubling up to
// 1 MiB, then 1 MiB each (configurable); a request larger than the next
// chunk gets a block of its own. Reset() keeps the first chunk and returns
// the others to the cache, so a steady frame makes no call into the source.
//
// Thread safety: none; one thread at a time (the owner).
// Out of memory: Try* calls return nullptr; the other calls never return
// nullptr and go to ReportFatalError (alloc/error.h) with the request and
// the arena's state.
//
// Example:
//   framealloc::ChunkCache cache(&framealloc::SystemMemorySource::Default());
//   framealloc::FrameArena arena(&cache);
//   for (;;) {                                   // one frame
//     auto contacts = arena.CreateArray<Contact>(n);
//     Mesh* mesh = arena.Create<Mesh>(args...);  // ~Mesh runs at Reset()
//     ...
//     arena.Reset();
//   }
#ifndef ALLOC_FRAME_ARENA_H_
#define ALLOC_FRAME_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/internal/bits.h"
#include "alloc/internal/sanitizer.h"
#include "alloc/memory_source.h"

namespace framealloc {

// Growth and alignment of a FrameArena's chunks. Fluent setters; Validate()
// names the bad field.
struct FrameArenaOptions {
  // Size of the first chunk (the one Reset() keeps).
  size_t initial_chunk_size = size_t{64} << 10;
  // Chunks double from initial_chunk_size up to this size, then stay there.
  size_t max_chunk_size = size_t{1} << 20;
  // Alignment of every chunk's start. Requests aligned more than this get
  // their own block when they do not fit the current chunk.
  size_t chunk_alignment = 4096;
  // Chunks beyond the first that Reset() keeps for the next frame, up to
  // this many bytes, instead of returning them to the cache. 0 (the
  // default): keep only the first chunk. A per-thread arena of a steady
  // frame then never touches the shared cache.
  size_t retain_bytes = 0;

  FrameArenaOptions& set_initial_chunk_size(size_t bytes) {
    initial_chunk_size = bytes;
    return *this;
  }
  FrameArenaOptions& set_max_chunk_size(size_t bytes) {
    max_chunk_size = bytes;
    return *this;
  }
  FrameArenaOptions& set_chunk_alignment(size_t bytes) {
    chunk_alignment = bytes;
    return *this;
  }
  FrameArenaOptions& set_retain_bytes(size_t bytes) {
    retain_bytes = bytes;
    return *this;
  }

  // InvalidArgument unless: 1 KiB <= initial_chunk_size <= max_chunk_size
  // <= 1 GiB, and chunk_alignment is a power of two in [16, 1 MiB] (16 is
  // the alignment of max_align_t).
  absl::Status Validate() const;
};

// Usage figures of one arena. "Current" figures cover the allocations since
// the last Reset(); `peak_bytes_used`, `resets` and `failed_allocations`
// cover the arena's lifetime.
struct FrameArenaStats {
  size_t allocations = 0;  // Successful allocations, current.
  // Of `allocations` (and of `bytes_requested`, a record's size each): the
  // records of destructors to run at Reset() that Create, CreateArray and
  // DestroyAtReset took for types with a destructor. allocations -
  // destructor_records is what the arena's users allocated. Current.
  size_t destructor_records = 0;
  size_t bytes_requested = 0;  // Sum of requested sizes, current.
  // Bytes the arena consumed for them: requests plus alignment padding plus
  // the unused tails of chunks it moved past. Current.
  size_t bytes_used = 0;
  size_t waste_bytes = 0;   // bytes_used - bytes_requested.
  size_t chunks = 0;        // Chunks in use this frame (>= 1 once any).
  size_t chunk_bytes = 0;   // Their capacity.
  size_t spare_chunks = 0;  // Kept by Reset() for later frames.
  size_t spare_bytes = 0;
  size_t oversize_blocks = 0;  // Requests that got a block of their own.
  size_t oversize_bytes = 0;   // Their requested bytes.
  size_t peak_bytes_used = 0;  // Highest bytes_used ever seen.
  // Highest bytes_used since the last Reset() (rewinds lower bytes_used).
  size_t frame_peak_bytes_used = 0;
  uint64_t resets = 0;
  uint64_t failed_allocations = 0;  // Try* nulls (fatal ones never return).
};

class FrameArena;

// A type whose objects frame memory may destroy when the frame ends
// (FrameArena::Create, CreateArray and DestroyAtReset; SmartAlloc::
// frame_alloc, frame_array, frame_box; and their Try/try_ forms): its
// destructor must not throw. A throw inside Reset could only leave the frame
// half ended (the older registrations not run, the memory not released) or end
// the program; so a type whose destructor may throw (`noexcept(false)`) does
// not compile there instead.
template <typename T>
concept FrameDestructible = std::is_nothrow_destructible_v<T>;

// A point in an arena to rewind to. Marks nest like a stack: only the most
// recent open mark may be rewound, and rewinding closes it.
class ArenaMark {
 public:
  ArenaMark() = default;

 private:
  friend class FrameArena;
  const FrameArena* arena_ = nullptr;
  // The arena's id (FrameArena::id_): an arena built later at the same
  // address has another, so a mark of a destroyed arena is foreign to it.
  uint64_t arena_id_ = 0;
  uint64_t serial_ = 0;
  size_t depth_ = 0;
  size_t chunk_index_ = 0;
  uintptr_t cursor_ = 0;
  size_t oversize_count_ = 0;
  void* destructors_ = nullptr;
  size_t allocations_ = 0;
  size_t bytes_requested_ = 0;
  size_t destructor_records_ = 0;
  size_t closed_bytes_used_ = 0;
  size_t oversize_bytes_ = 0;
};

// A bump allocator over chained chunks, emptied at once by Reset() (see the
// file comment: growth, marks and rewinds, destructors, out of memory). One
// owner thread at a time.
class FrameArena {
 public:
  // Default alignment of untyped Allocate calls: that of max_align_t, like
  // malloc.
  static constexpr size_t kDefaultAlignment = alignof(std::max_align_t);

  // `cache` is not owned and must outlive the arena.
  // REQUIRES: options.Validate().ok() (a fatal error names the bad field
  // otherwise; Create() returns it as a Status instead).
  explicit FrameArena(ChunkCache* cache, FrameArenaOptions options = {});
  static absl::StatusOr<std::unique_ptr<FrameArena>> Create(
      ChunkCache* cache, FrameArenaOptions options = {});

  // Runs pending destructors and returns every chunk to the cache.
  ~FrameArena();
  FrameArena(const FrameArena&) = delete;
  FrameArena& operator=(const FrameArena&) = delete;

  // ---- Untyped allocation -------------------------------------------------

  // `size` bytes aligned to `alignment`, never null. Size 0 gives a valid,
  // suitably aligned pointer that must not be dereferenced.
  // REQUIRES: alignment is a power of two; otherwise, and when memory runs
  // out, a fatal error.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* Allocate(
      size_t size, size_t alignment = kDefaultAlignment) {
    return Bump</*kFatal=*/true>(size, alignment);
  }

  // As Allocate, but returns nullptr (and counts a failed allocation) for a
  // bad alignment, an impossible size or an exhausted source.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* TryAllocate(
      size_t size, size_t alignment = kDefaultAlignment) {
    return Bump</*kFatal=*/false>(size, alignment);
  }

  // ---- Typed allocation ----------------------------------------------------

  // Constructs a T in the arena. If T is not trivially destructible its
  // destructor runs at Reset() (or a rewind past it), in reverse order of
  // construction; it must not throw (FrameDestructible). Never null.
  template <FrameDestructible T, typename... Args>
  T* Create(Args&&... args) {
    return Construct<T, true>(std::forward<Args>(args)...);
  }
  // As Create, or nullptr when the arena cannot allocate.
  template <FrameDestructible T, typename... Args>
  T* TryCreate(Args&&... args) {
    return Construct<T, false>(std::forward<Args>(args)...);
  }

  // Batch allocation: `n` value-initialized Ts in one call, destroyed
  // together (in reverse order) at Reset(). `n * sizeof(T)` overflow is a
  // fatal error here and an empty span from TryCreateArray.
  template <FrameDestructible T>
  std::span<T> CreateArray(size_t n) {
    return ConstructArray<T, true>(n);
  }
  template <FrameDestructible T>
  std::span<T> TryCreateArray(size_t n) {
    return ConstructArray<T, false>(n);
  }

  // Uninitialized storage for `n` Ts (no constructor, no destructor).
  // Overflow of `n * sizeof(T)`: fatal here, nullptr from TryAllocateArray.
  template <typename T>
  T* AllocateArray(size_t n) {
    return static_cast<T*>(AllocateN<true>(n, sizeof(T), alignof(T)));
  }
  template <typename T>
  T* TryAllocateArray(size_t n) {
    return static_cast<T*>(AllocateN<false>(n, sizeof(T), alignof(T)));
  }

  // Uninitialized storage for `count` elements of `size` bytes each, aligned
  // to `alignment`, with the same overflow rules. The untyped batch call.
  void* AllocateN(size_t count, size_t size, size_t alignment) {
    return AllocateN<true>(count, size, alignment);
  }
  void* TryAllocateN(size_t count, size_t size, size_t alignment) {
    return AllocateN<false>(count, size, alignment);
  }

  // Runs `~T()` on `count` objects at `objects` (last first) when the arena
  // resets or rewinds past this call, in reverse order with every other
  // registered destructor. For objects the caller constructed in memory
  // from this arena. Never fails (the record's memory comes from the
  // arena: a fatal error if it cannot). T's destructor must not throw
  // (FrameDestructible).
  template <FrameDestructible T>
  void DestroyAtReset(T* objects, size_t count = 1) {
    static_assert(!std::is_trivially_destructible_v<T>,
                  "nothing to run for a trivially destructible type");
    DestroyAtReset(ReserveDestructor</*kFatal=*/true>(), objects, count);
  }

  // DestroyAtReset in two steps, for a caller that must not fail once its
  // objects are constructed (SmartAlloc's try_frame_alloc): reserve the
  // registration first, construct, then register it, which cannot fail.
  // A reservation never registered is released with the frame like any
  // allocation. Opaque to callers.
  struct Destructor {
    void (*destroy)(void* objects, size_t count);
    void* objects;
    size_t count;
    Destructor* next;  // Older registration.
  };
  // The registration's memory: with kFatal a fatal error if the arena
  // cannot allocate it, else nullptr.
  template <bool kFatal = true>
  Destructor* ReserveDestructor() {
    auto* record = static_cast<Destructor*>(
        Bump<kFatal>(sizeof(Destructor), alignof(Destructor)));
    if constexpr (!kMinimalBuild) {
      if (record != nullptr) ++destructor_records_;
    }
    return record;
  }
  // Value-initializes `n` Ts at `objects`. If a constructor throws, the
  // ones already built are destroyed (last first) and the exception goes
  // on: nothing is left half-built for a destructor registration.
  template <typename T>
  static void ConstructN(T* objects, size_t n) {
    size_t constructed = 0;
#if defined(__cpp_exceptions)
    try {
#endif
      for (; constructed < n; ++constructed) ::new (objects + constructed) T();
#if defined(__cpp_exceptions)
    } catch (...) {
      DestroyN<T>(objects, constructed);
      throw;
    }
#endif
  }
  // REQUIRES: `reserved` came from this arena's ReserveDestructor since
  // its last Reset, no mark taken since the reservation is still open, and
  // each reservation is registered at most once.
  template <FrameDestructible T>
  void DestroyAtReset(Destructor* reserved, T* objects, size_t count) {
    static_assert(!std::is_trivially_destructible_v<T>,
                  "nothing to run for a trivially destructible type");
    RegisterDestructor(reserved, &DestroyN<T>, objects, count);
  }

  // ---- Frames and rewinds --------------------------------------------------

  // Ends the frame: runs registered destructors (newest first), returns all
  // chunks but the first to the cache, drops oversize blocks, and starts
  // over at the beginning of the first chunk. With nothing but small
  // allocations in the first chunk it is a handful of stores.
  // Open marks at this point are a misuse (reported; then discarded).
  ABSL_ATTRIBUTE_ALWAYS_INLINE void Reset() {
    if (ABSL_PREDICT_TRUE(!needs_slow_reset_)) {
      const size_t used = static_cast<size_t>(cursor_ - chunk_begin_);
      if (used > peak_bytes_used_) peak_bytes_used_ = used;
      frame_peak_bytes_used_ = 0;
      FRAMEALLOC_POISON(reinterpret_cast<void*>(chunk_begin_), used);
      cursor_ = chunk_begin_;
      allocations_ = 0;
      bytes_requested_ = 0;
      destructor_records_ = 0;  // A reserved record whose object failed.
      ++resets_;
      return;
    }
    ResetSlow();
  }

  // Records the current point. Marks are a stack: see Rewind.
  ArenaMark Mark();

  // Frees everything allocated since `mark` (running destructors, returning
  // chunks and oversize blocks) and closes the mark.
  // FailedPrecondition, changing nothing, when `mark` belongs to another
  // arena, was already rewound or discarded by Reset(), or is not the most
  // recent open mark (an out-of-order rewind: a newer mark is still open).
  absl::Status Rewind(const ArenaMark& mark);

  // Marks that are open.
  size_t open_marks() const { return marks_.size(); }

  // Changes whenever memory handed out earlier may have been released (every
  // Reset() and every successful Rewind()), also memory a rewind did not
  // reach: a handle that remembers it knows its memory may be gone, not
  // that it is (FrameBox learns that from its object's destructor).
  uint64_t generation() const { return resets_ + rewinds_; }

  // ---- Introspection -------------------------------------------------------

  FrameArenaStats stats() const;
  // Bytes left in the current chunk (what the fast path can still serve).
  size_t remaining_in_chunk() const {
    return static_cast<size_t>(end_ - cursor_);
  }
  // Whether `p` points into memory this arena currently holds.
  bool Owns(const void* p) const;
  const FrameArenaOptions& options() const { return options_; }
  ChunkCache* cache() const { return cache_; }

 private:
  // The fast path: a power-of-two test (folded away for a constant
  // alignment), the padding to the alignment, two compares, the cursor
  // store and two counter adds. With gcc -O2 and a constant alignment that
  // is 16 instructions and the return (docs/frame_arena.md shows them);
  // the two counters are 2 of them.
  template <bool kFatal>
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* Bump(size_t size, size_t alignment) {
    const uintptr_t cursor = cursor_;
    const size_t padding = alloc_internal::AlignmentPadding(cursor, alignment);
    // `padding + size` cannot overflow silently: a huge size takes the slow
    // path, which refuses it. With a constant size and alignment the
    // overflow test folds away.
    size_t needed;
    if (ABSL_PREDICT_TRUE(alloc_internal::IsPowerOfTwo(alignment) &&
                          !__builtin_add_overflow(padding, size, &needed) &&
                          needed <= static_cast<size_t>(end_ - cursor))) {
      const uintptr_t result = cursor + padding;
      cursor_ = cursor + needed;
      if constexpr (!kMinimalBuild) {
        ++allocations_;
        bytes_requested_ += size;
      }
      FRAMEALLOC_UNPOISON(reinterpret_cast<void*>(result), size);
      return reinterpret_cast<void*>(result);
    }
    return AllocateSlow(size, alignment, kFatal);
  }

  template <bool kFatal>
  void* AllocateN(size_t count, size_t size, size_t alignment) {
    size_t bytes;
    if (ABSL_PREDICT_FALSE(!alloc_internal::CheckedMul(count, size, &bytes))) {
      return OverflowFailed(count, size, alignment, kFatal);
    }
    return Bump<kFatal>(bytes, alignment);
  }

  template <typename T, bool kFatal, typename... Args>
  T* Construct(Args&&... args) {
    static_assert(!std::is_reference_v<T> && !std::is_void_v<T>,
                  "FrameArena::Create needs an object type");
    Destructor* record = nullptr;
    if constexpr (!std::is_trivially_destructible_v<T>) {
      record = ReserveDestructor<kFatal>();
      if (record == nullptr) return nullptr;
    }
    void* storage = Bump<kFatal>(sizeof(T), alignof(T));
    if (storage == nullptr) return nullptr;
    T* object = ::new (storage) T(std::forward<Args>(args)...);
    if constexpr (!std::is_trivially_destructible_v<T>) {
      RegisterDestructor(record, &DestroyN<T>, object, 1);
    }
    return object;
  }

  template <typename T, bool kFatal>
  std::span<T> ConstructArray(size_t n) {
    Destructor* record = nullptr;
    if constexpr (!std::is_trivially_destructible_v<T>) {
      record = ReserveDestructor<kFatal>();
      if (record == nullptr) return {};
    }
    T* objects = static_cast<T*>(AllocateN<kFatal>(n, sizeof(T), alignof(T)));
    if (objects == nullptr) return {};
    ConstructN(objects, n);
    if constexpr (!std::is_trivially_destructible_v<T>) {
      RegisterDestructor(record, &DestroyN<T>, objects, n);
    }
    return std::span<T>(objects, n);
  }

  // Destroys `count` Ts at `objects`, last first.
  template <typename T>
  static void DestroyN(void* objects, size_t count) {
    T* typed = static_cast<T*>(objects);
    for (size_t i = count; i > 0; --i) typed[i - 1].~T();
  }

  void RegisterDestructor(Destructor* record, void (*destroy)(void*, size_t),
                          void* objects, size_t count) {
    *record = Destructor{destroy, objects, count, destructors_};
    destructors_ = record;
    needs_slow_reset_ = true;
  }

  // Everything that is not a bump within the current chunk: validation,
  // new chunks, oversize blocks, failures.
  ABSL_ATTRIBUTE_NOINLINE void* AllocateSlow(size_t size, size_t alignment,
                                             bool fatal);
  ABSL_ATTRIBUTE_NOINLINE void* OverflowFailed(size_t count, size_t size,
                                               size_t alignment, bool fatal);
  void* Fail(ErrorKind kind, size_t size, size_t alignment, bool fatal,
             absl::Status status);
  ABSL_ATTRIBUTE_NOINLINE void ResetSlow();
  // Runs destructors newer than `stop`, newest first.
  void RunDestructors(Destructor* stop);
  // Releases chunks after `keep` chunks and oversize blocks after `keep`.
  void ReleaseChunksAfter(size_t keep_chunks);
  void ReleaseOversizeAfter(size_t keep_blocks);
  size_t ChunkSizeFor(size_t chunk_index) const;
  size_t CurrentBytesUsed() const;
  void UpdatePeak();

  // Hot fields first: the fast path touches cursor_, end_ and the two
  // counters, all in the first cache line. The counters are kept apart on
  // purpose: adjacent, gcc merges their two `add`s into six SSE
  // instructions.
  uintptr_t cursor_;
  uintptr_t end_;
  size_t bytes_requested_ = 0;
  // Start of the current chunk.
  uintptr_t chunk_begin_;
  size_t allocations_ = 0;
  // True once anything but bumps in the first chunk happened this frame.
  bool needs_slow_reset_ = false;

  ChunkCache* const cache_;
  const FrameArenaOptions options_;
  Destructor* destructors_ = nullptr;
  absl::InlinedVector<Block, 8> chunks_;  // Normal chunks; back() current.
  // Chunks kept by Reset() for the next frame (retain_bytes), in reverse
  // growth order: back() is the next one the growth schedule asks for.
  absl::InlinedVector<Block, 8> spare_chunks_;
  absl::InlinedVector<Block, 4> oversize_;  // Blocks of their own.
  absl::InlinedVector<uint64_t, 8> marks_;  // Serials of open marks.
  uint64_t next_mark_serial_ = 1;
  // Unique in the process (a global counter): see ArenaMark::arena_id_.
  const uint64_t id_;
  size_t closed_bytes_used_ = 0;   // Used bytes of chunks before the current.
  size_t destructor_records_ = 0;  // FrameArenaStats::destructor_records.
  size_t oversize_bytes_ = 0;
  size_t peak_bytes_used_ = 0;
  size_t frame_peak_bytes_used_ = 0;  // Since the last Reset().
  uint64_t resets_ = 0;
  uint64_t rewinds_ = 0;
  uint64_t failed_allocations_ = 0;
};

// Rewinds an arena when it goes out of scope: memory allocated during the
// scope (a request, a loop iteration, a level load) is released as a whole.
// Scopes must close in reverse order of opening; a scope closing while a
// newer mark is open is a misuse, reported through ReportError (and nothing
// is rewound).
class ArenaScope {
 public:
  explicit ArenaScope(FrameArena* arena)
      : arena_(arena), mark_(arena->Mark()) {}
  ~ArenaScope();
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

  // Releases what the scope allocated so far and keeps the scope open (for
  // loops that reuse one scope per iteration). Status as FrameArena::Rewind.
  absl::Status Rewind();

 private:
  FrameArena* const arena_;
  ArenaMark mark_;
};

}  // namespace framealloc

#endif  // ALLOC_FRAME_ARENA_H_
