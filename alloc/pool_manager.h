// PoolManager: size-class pools of small blocks, with per-thread caches.
//
// For: objects of up to 4 KiB that outlive a frame and are freed one by one
// (entities, components, graph nodes, messages); SmartAlloc's pool_alloc<T>
// and pool_free sit on it. Blocks come in ten power-of-two size classes,
// 8 B to 4 KiB, each block aligned to its class size, carved from pages
// (64 KiB by default) drawn from a ChunkCache. Every thread allocates and
// frees through its own ThreadCache: a hit is an inline pop or push of an
// intrusive list. A miss moves one batch of blocks between the cache and the
// class's global state under the class's mutex, tcmalloc's way: each class
// keeps a transfer cache, a bounded stack of whole batches (already-linked
// lists), so that a flush pushes a batch and a refill pops one in O(1)
// without touching a page. Only when the transfer cache is empty (refill) or
// full (flush) do blocks go to or come from their pages one by one. A thread
// cache's limit per class grows on demand (PoolOptions::max_cache_bytes,
// within PoolOptions::thread_cache_bytes per thread), so a thread whose
// working set outgrows the starting limit stops making trips. A block
// freed by another thread than the one that allocated it goes into the
// freeing thread's cache. Not for: frame temporaries (FrameArena is cheaper
// and drops them at once), blocks above 4 KiB or aligned beyond 4 KiB
// (ClassFor answers -1), or memory that must go back to the system promptly
// (empty pages stay until ReleaseEmptyPages()).
//
// Thread safety: PoolManager is thread-safe. A ThreadCache is not: one
// thread (its owner) uses it at a time.
// Out of memory: ThreadCache::Allocate returns nullptr when the ChunkCache
// cannot supply a page; nothing here reports or aborts (the caller decides).
// Misuse: a free of a pointer this pool never gave out, with the wrong size
// class, or of more blocks of a page than the page has out (a double free
// that outnumbers the page's blocks in use) is detected when the block
// leaves its ThreadCache: a batch enters the transfer cache only after each
// page it touches passes the checks a return to the page would make (one
// lookup per page, not per block); a batch that fails, and every block of
// ThreadCache::Flush(), goes back block by block to the pages, where the
// bad blocks are reported through ReportError (alloc/error.h) and dropped.
// A double free of a block whose page still has other blocks out passes
// that count: the block can then be handed out twice. SmartAlloc's
// allocation tracking (DebugOptions::track_allocations) reports every
// double free at the call and ignores it, and under ASan the free's write
// into the poisoned block is a report at once. A page's free list cut by a
// write after free is never followed out of the page; the blocks it hid
// are reported and given up. Under ASan a block is poisoned while it sits
// in any free list (thread cache, transfer cache or page), so a use after
// free is an ASan report at once.
//
// Example:
//   framealloc::ChunkCache cache(&framealloc::SystemMemorySource::Default());
//   framealloc::PoolManager pool(&cache);
//   framealloc::PoolManager::ThreadCache tc(&pool);  // one per thread
//   const int cls = framealloc::PoolManager::ClassFor(sizeof(Node),
//                                                     alignof(Node));
//   void* p = tc.Allocate(cls);  // nullptr only when no page can be had
//   ...
//   tc.Free(p, cls);             // any thread's cache, the same class
#ifndef ALLOC_POOL_MANAGER_H_
#define ALLOC_POOL_MANAGER_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/chunk_cache.h"
#include "alloc/internal/bits.h"
#include "alloc/internal/mutex.h"
#include "alloc/internal/sanitizer.h"

namespace framealloc {

// Page size and cache sizes of a PoolManager. Fluent setters; Validate()
// names the bad field.
struct PoolOptions {
  // Bytes of each page, and its alignment: a block's page header is found by
  // masking the block's address. The first block slot of each page (64 B, or
  // one block when the class is larger) holds the header.
  size_t page_size = size_t{64} << 10;
  // Blocks moved per trip between a ThreadCache and its pool: a refill when
  // the cache's list of a class is empty, a flush when the list grows past
  // the class's cache limit. Each batch in a transfer cache holds this many
  // (up to twice as many when the flush also cut a raised limit).
  int batch = 32;
  // Bytes of free blocks of each class a ThreadCache may hold before it
  // flushes a batch, at its start (see max_cache_bytes for how the limit
  // grows): class c holds cache_bytes / ClassSize(c) blocks,
  // clamped to [2 * batch, 65536] (PoolManager::CacheLimit). The default
  // gives 8192 blocks of 8 B, 1024 of 64 B, 128 of 512 B and 2 * batch = 64
  // of 1 KiB and up: small blocks, the common case, rarely leave their
  // thread, and the starting limits add up to 0.9 MiB over all classes
  // (growth beyond them is bounded by thread_cache_bytes). The lower clamp
  // keeps a batch's worth of blocks
  // in the cache after a flush, so that alternating frees and allocations
  // at the limit do not each make a trip. 0 gives every class that minimum.
  size_t cache_bytes = size_t{64} << 10;
  // How far a ThreadCache may raise a class's limit on demand, in bytes of
  // that class: up to max_cache_bytes / ClassSize(c) blocks (never below the
  // starting limit above, at most 65536). A thread whose list of a class
  // runs empty raises its limit by one batch per refill, so a working set
  // larger than the starting limit (a burst of allocations freed later on
  // the same thread) stays in the thread instead of making a trip per batch;
  // a list that overflows its raised limit three times loses a batch of it
  // (a thread that frees more than it allocates gains nothing from a larger
  // cache). tcmalloc sizes its thread caches much the same way. The default
  // (1 MiB) lets 2048 blocks of 512 B or 256 of 4 KiB stay (8 B blocks stop
  // at 65536, 512 KiB). A value at or below cache_bytes keeps every limit
  // fixed at its start.
  size_t max_cache_bytes = size_t{1} << 20;
  // The most a ThreadCache's limits may add up to, in bytes over all
  // classes: a class raises its limit only while the sum stays within this,
  // taking room from classes whose raised limits sit unused when it must.
  // This bounds what one thread parks. The starting limits always hold,
  // even when they add up to more, but then no class can grow (with the
  // default cache_bytes and this default, a batch of 256 or more does that).
  // A raise takes less than a batch when only that much room is left.
  size_t thread_cache_bytes = size_t{4} << 20;
  // The most all ThreadCaches of the pool together may have their limits
  // raised by, in bytes beyond their starting limits: a raise takes its
  // bytes from this pool-wide allowance (what the pool cannot grant, a class
  // can only take from its own cache's other unused raises) and a cut, a
  // Flush() or a cache's end gives them back. 0: no cache raises a limit. This
  // bounds what many threads park together (tcmalloc's overall thread cache
  // size plays the same part); the starting limits hold regardless. The
  // default lets ten threads raise theirs (0.9 MiB with the defaults) to
  // thread_cache_bytes.
  size_t total_thread_cache_bytes = size_t{32} << 20;
  // Whole batches each class's transfer cache holds (its slots are allocated
  // with the pool; nothing is allocated under the lock). A flush that finds
  // it full returns its blocks to their pages. 0 turns the transfer cache
  // off: every flush and refill goes to the pages.
  int transfer_batches = 64;

  PoolOptions& set_page_size(size_t bytes) {
    page_size = bytes;
    return *this;
  }
  PoolOptions& set_batch(int blocks) {
    batch = blocks;
    return *this;
  }
  PoolOptions& set_cache_bytes(size_t bytes) {
    cache_bytes = bytes;
    return *this;
  }
  PoolOptions& set_max_cache_bytes(size_t bytes) {
    max_cache_bytes = bytes;
    return *this;
  }
  PoolOptions& set_thread_cache_bytes(size_t bytes) {
    thread_cache_bytes = bytes;
    return *this;
  }
  PoolOptions& set_total_thread_cache_bytes(size_t bytes) {
    total_thread_cache_bytes = bytes;
    return *this;
  }
  PoolOptions& set_transfer_batches(int batches) {
    transfer_batches = batches;
    return *this;
  }

  // InvalidArgument unless page_size is a power of two in [16 KiB, 4 MiB],
  // batch is in [1, 1024], cache_bytes and max_cache_bytes are at most
  // 256 MiB (where every class reaches 65536 blocks), thread_cache_bytes is
  // at most 512 MiB (where all of them do) and transfer_batches is in
  // [0, 4096].
  absl::Status Validate() const;
};

// One size class. Exact when no thread is inside the pool.
struct PoolClassStats {
  size_t block_size = 0;
  size_t blocks_per_page = 0;
  size_t pages = 0;
  size_t empty_pages = 0;   // Pages with every block free in the page.
  size_t blocks_total = 0;  // pages * blocks_per_page.
  // Free blocks held by the pages themselves (not by any cache).
  size_t blocks_free_in_pages = 0;
  // Free blocks in the class's transfer cache: checked, linked in whole
  // batches, waiting for a refill. Their pages count them as out (so such
  // pages are never empty) until DrainTransferCaches() or
  // ReleaseEmptyPages() returns them.
  size_t blocks_in_transfer = 0;
  // Blocks in use or in some thread cache: blocks_total minus the two above.
  size_t blocks_out = 0;
};

struct PoolStats;

// Size-class pools (8 B to 4 KiB) with per-thread caches in front of global
// lists (see the file comment). Allocate and Free from any thread; a block
// may be freed by another thread than the one that allocated it.
class PoolManager {
 public:
  // Size classes 0..9 hold blocks of 8 << class bytes: 8 B to 4 KiB.
  static constexpr int kNumClasses = 10;
  static constexpr size_t kMinBlockSize = 8;
  static constexpr size_t kMaxBlockSize = 4096;

  // The class serving `size` bytes at `alignment`: max(size, alignment, 8)
  // rounded up to a power of two. -1 when that exceeds kMaxBlockSize or when
  // alignment is not a power of two. Size 0 gets class 0 (8 bytes).
  static constexpr int ClassFor(size_t size, size_t alignment) {
    if (!alloc_internal::IsPowerOfTwo(alignment)) return -1;
    size_t n = size > alignment ? size : alignment;
    if (n > kMaxBlockSize) return -1;
    if (n < kMinBlockSize) n = kMinBlockSize;
    // ceil(log2(n)) - log2(kMinBlockSize); n - 1 >= 7, so clz is defined.
    return (64 - __builtin_clzll(n - 1)) - 3;
  }

  // Bytes (and alignment) of a block of class `cls`.
  // REQUIRES: 0 <= cls < kNumClasses.
  static constexpr size_t ClassSize(int cls) { return kMinBlockSize << cls; }

  // A thread's cache of free blocks; see the definition below.
  class ThreadCache;

  // `cache` is not owned and must outlive the pool.
  // REQUIRES: options.Validate().ok() (a fatal error names the bad field
  // otherwise; Create() returns it as a Status instead).
  explicit PoolManager(ChunkCache* cache, PoolOptions options = {});
  static absl::StatusOr<std::unique_ptr<PoolManager>> Create(
      ChunkCache* cache, PoolOptions options = {});

  // Drains the transfer caches, then returns every page to the cache. Blocks
  // still out (in use, or in a ThreadCache not flushed) and ThreadCaches
  // still attached are each reported as a misuse; the pages go back all the
  // same, so such blocks dangle. REQUIRES: every ThreadCache of this pool is
  // destroyed first.
  ~PoolManager();
  PoolManager(const PoolManager&) = delete;
  PoolManager& operator=(const PoolManager&) = delete;

  // Drains each class's transfer cache (as DrainTransferCaches()), then
  // gives pages whose blocks are all free (back in the page, not in a thread
  // cache) to the ChunkCache, keeping `keep_per_class` such pages per class
  // for reuse. Never touches a page with a block out. Returns bytes released.
  size_t ReleaseEmptyPages(size_t keep_per_class = 0);

  // Moves every block of every transfer cache back to its page, rechecking
  // each (a misuse found here is reported like one found at a flush). Until
  // the next flush, blocks_in_transfer is then 0 and empty_pages counts every
  // page whose blocks are neither in use nor in a thread cache. The next
  // refills take blocks from the pages one by one again, so this is for
  // trimming and exact accounting, not for a hot path.
  void DrainTransferCaches();

  // Whether `p` lies in one of this pool's pages (page headers included).
  // Reads no memory at `p`; takes a mutex.
  bool Owns(const void* p) const;

  PoolStats stats() const;
  // Blocks of class `cls` each page holds. REQUIRES: 0 <= cls < kNumClasses.
  size_t BlocksPerPage(int cls) const { return blocks_per_page_[cls]; }
  // Bytes the pool's ThreadCaches have their limits raised by now, beyond
  // their starts (at most options().total_thread_cache_bytes). Relaxed:
  // exact when no cache is inside the pool.
  size_t raised_cache_bytes() const {
    return raised_cache_bytes_.load(std::memory_order_relaxed);
  }
  // Free blocks of class `cls` a ThreadCache holds before it flushes a
  // batch, at its start: options().cache_bytes / ClassSize(cls), clamped to
  // [2 * batch, 65536]. A cache raises it on demand up to CacheCeiling(cls)
  // and never lowers it below this. REQUIRES: 0 <= cls < kNumClasses.
  uint32_t CacheLimit(int cls) const { return cache_limits_[cls]; }
  // The highest limit a ThreadCache may raise class `cls` to:
  // options().max_cache_bytes / ClassSize(cls), clamped to
  // [CacheLimit(cls), 65536]. REQUIRES: 0 <= cls < kNumClasses.
  uint32_t CacheCeiling(int cls) const { return cache_ceilings_[cls]; }
  const PoolOptions& options() const { return options_; }
  ChunkCache* cache() const { return cache_; }

 private:
  // A free block: its first word links to the next free block.
  struct FreeBlock {
    FreeBlock* next;
  };
  // A null-terminated chain of `count` free blocks, linked and checked, as
  // one slot of a transfer cache holds it.
  struct Batch {
    FreeBlock* head;
    FreeBlock* tail;
    uint32_t count;
  };
  struct PageHeader;
  struct PageTally;
  enum class PageList : uint8_t;
  enum class Misuse : uint8_t;
  struct BadFree;
  using BadFrees = absl::InlinedVector<BadFree, 4>;

  // The global state of one class: its transfer cache and its pages. Pages
  // with some blocks free are on `partial`, pages with all blocks free on
  // `empty`, full pages on neither; `pages` holds every page (the membership
  // test of a flush). A block in the transfer cache counts as out for its
  // page. Aligned so two classes' mutexes never share a cache line.
  struct alignas(64) ClassState {
    mutable alloc_internal::Mutex mu;
    // The transfer cache, a stack of batches: transfer[0, transfer_size) of
    // this class's options_.transfer_batches slots in transfer_slots_. The
    // most recently flushed batch, the warmest, is the next refill.
    Batch* transfer ABSL_PT_GUARDED_BY(mu) = nullptr;
    uint32_t transfer_size ABSL_GUARDED_BY(mu) = 0;
    size_t transfer_blocks ABSL_GUARDED_BY(mu) = 0;
    PageHeader* partial ABSL_GUARDED_BY(mu) = nullptr;
    PageHeader* empty ABSL_GUARDED_BY(mu) = nullptr;
    absl::flat_hash_set<uintptr_t> pages ABSL_GUARDED_BY(mu);
    size_t empty_pages ABSL_GUARDED_BY(mu) = 0;
    size_t free_blocks ABSL_GUARDED_BY(mu) = 0;  // In the pages.
    uint64_t refills ABSL_GUARDED_BY(mu) = 0;
    uint64_t flushes ABSL_GUARDED_BY(mu) = 0;
    uint64_t transfer_refills ABSL_GUARDED_BY(mu) = 0;
    uint64_t transfer_flushes ABSL_GUARDED_BY(mu) = 0;
    uint64_t transfer_overflows ABSL_GUARDED_BY(mu) = 0;
    uint64_t pages_acquired ABSL_GUARDED_BY(mu) = 0;
    uint64_t pages_released ABSL_GUARDED_BY(mu) = 0;
    uint64_t failed_page_acquisitions ABSL_GUARDED_BY(mu) = 0;
    uint64_t dropped_frees ABSL_GUARDED_BY(mu) = 0;
  };

  // The link word of a block in a free list is poisoned with the rest of the
  // block under ASan; these open it for one access (plain loads and stores
  // otherwise).
  static FreeBlock* LoadNext(FreeBlock* block) {
    FRAMEALLOC_UNPOISON(block, sizeof(FreeBlock));
    FreeBlock* next = block->next;
    FRAMEALLOC_POISON(block, sizeof(FreeBlock));
    return next;
  }
  static void StoreNext(FreeBlock* block, FreeBlock* next) {
    FRAMEALLOC_UNPOISON(block, sizeof(FreeBlock));
    block->next = next;
    FRAMEALLOC_POISON(block, sizeof(FreeBlock));
  }

  // Where the blocks of a class start in a page: after the header slot.
  static constexpr size_t FirstBlockOffset(int cls) {
    return ClassSize(cls) > 64 ? ClassSize(cls) : 64;
  }

  // Moves free blocks of class `cls` to the front of the list at `*head`:
  // the top batch of the transfer cache when there is one (O(1)), else up to
  // `want` blocks from the pages, adding a page when no page has a free
  // block. Returns how many; 0 only when no page could be added.
  uint32_t Refill(int cls, uint32_t want, FreeBlock** head);
  // Detaches the first `n` blocks of the list at `*list` (blocks freed as
  // class `cls`) and takes them: as one batch onto the transfer cache when
  // it has room and every page the batch touches passes the checks Return()
  // would make block by block, otherwise block by block into their pages
  // (Return's path, which reports the bad ones).
  // REQUIRES: the list holds at least n >= 1 blocks.
  void ReturnBatch(int cls, uint32_t n, FreeBlock** list);
  // Takes the null-terminated chain at `head` (blocks freed as class `cls`)
  // back into their pages; reports and drops the ones that fail the checks.
  void Return(int cls, FreeBlock* head);
  // Return's work under the class's mutex; misuses go to `*bad`, to be
  // reported once the mutex is dropped.
  void ReturnLocked(ClassState& c, int cls, FreeBlock* head, BadFrees* bad)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Moves every batch of the class's transfer cache back to its pages.
  void DrainLocked(ClassState& c, int cls, BadFrees* bad)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Whether the blocks a batch holds in each of `n` pages (tallied by
  // ReturnBatch) would all pass CheckLocked, in order, were they returned.
  bool TallyPassesLocked(const ClassState& c, int cls, const PageTally* tally,
                         int n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);

  // Moves up to `want` blocks from the class's pages to `*head`, partly
  // used pages first. Adds to `*lost` the blocks a page's count promised
  // but its free list no longer held (cut by a write after free).
  uint32_t TakeLocked(ClassState& c, int cls, uint32_t want, FreeBlock** head,
                      uint32_t* lost) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Checks one block freed as `cls`; kNone when it may go back to its page.
  Misuse CheckLocked(const ClassState& c, int cls, uintptr_t block) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Moves `page` to the list its free count calls for.
  void RelinkLocked(ClassState& c, PageHeader* page)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  void UnlinkLocked(ClassState& c, PageHeader* page)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // A fresh page of class `cls` from the cache, registered in page_set_ but
  // not yet in its class; nullptr when the cache refuses.
  PageHeader* NewPage(int cls);
  // Unpoisons a page and gives it back to the cache. REQUIRES: the page is
  // in no list or set any more.
  void ReleasePage(PageHeader* page);
  void ReportBadFree(const BadFree& bad) const;

  ChunkCache* const cache_;
  const PoolOptions options_;
  const uintptr_t page_mask_;  // ~(page_size - 1).
  std::array<size_t, kNumClasses> blocks_per_page_;
  std::array<uint32_t, kNumClasses> cache_limits_;
  std::array<uint32_t, kNumClasses> cache_ceilings_;
  // On the heap, so that each class's alignment holds wherever the pool
  // itself lives (ASan's fake stack does not honour alignas(64) locals).
  const std::unique_ptr<ClassState[]> classes_;
  // The transfer caches' slots, options_.transfer_batches per class,
  // allocated once here so that a flush never allocates under a mutex.
  const std::unique_ptr<Batch[]> transfer_slots_;

  // Every page of every class, for Owns() and for telling a wrong-class free
  // from a foreign pointer. A leaf lock: taken after a class's mutex, never
  // before one.
  mutable alloc_internal::Mutex pages_mu_;
  absl::flat_hash_set<uintptr_t> page_set_ ABSL_GUARDED_BY(pages_mu_);

  // Takes up to `bytes` of the pool-wide raise allowance; what it took.
  size_t TakeRaise(size_t bytes);
  void ReturnRaise(size_t bytes) {
    raised_cache_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  // Sum of every ThreadCache's limit bytes beyond its starts; at most
  // options_.total_thread_cache_bytes.
  std::atomic<size_t> raised_cache_bytes_{0};

  // ThreadCaches alive on this pool. Relaxed: the destructor alone reads it,
  // after the caches' owners are done with the pool (a REQUIRES the caller
  // orders, by joining those threads, for one).
  std::atomic<int> attached_caches_{0};
};

// Totals of one pool. Exact when no thread is inside the pool.
struct PoolStats {
  std::array<PoolClassStats, PoolManager::kNumClasses> classes;
  size_t pages = 0;       // Over all classes.
  size_t page_bytes = 0;  // Bytes of those pages.
  // Batches moved into thread caches, from a transfer cache or the pages.
  uint64_t refills = 0;
  // Trips from thread caches (a batch past the cache limit, or a whole
  // Flush()), into a transfer cache or the pages.
  uint64_t flushes = 0;
  // Refills served whole by a transfer cache: no page touched.
  uint64_t transfer_refills = 0;
  // Flushes taken whole by a transfer cache.
  uint64_t transfer_flushes = 0;
  // Flushes that found their transfer cache full and went to the pages; many
  // of them call for a larger PoolOptions::transfer_batches.
  uint64_t transfer_overflows = 0;
  uint64_t pages_acquired = 0;
  uint64_t pages_released = 0;
  // Refills that needed a page the cache could not supply.
  uint64_t failed_page_acquisitions = 0;
  // Frees reported as a misuse and dropped.
  uint64_t dropped_frees = 0;
  // Bytes the thread caches' limits are raised by, beyond their starts, all
  // caches together (PoolManager::raised_cache_bytes()).
  size_t raised_cache_bytes = 0;
};

// A thread's cache of free blocks, one intrusive list per size class, each
// holding at most its current limit: the pool's CacheLimit(cls) at first,
// raised by a batch at each refill up to CacheCeiling(cls) while the sum of
// the limits stays within PoolOptions::thread_cache_bytes and the pool's
// caches together within PoolOptions::total_thread_cache_bytes (by less
// when only less room is left, after taking what other classes were raised
// to and do not hold), lowered by a batch after three overflows or to make room
// for another class, never below CacheLimit(cls) or the blocks it holds.
// Allocate and Free are inline pops and pushes; the pool is visited once per
// `batch` blocks, out of line, and in steady state not at all once the limits
// fit the thread's working set.
//
// Thread safety: none; one thread at a time (the owner). Blocks may cross
// threads: a block allocated through one cache may be freed through another
// cache of the same pool.
// Out of memory: Allocate returns nullptr when no page can be had.
// REQUIRES: the cache is destroyed (or at least flushed and never used
// again) before its PoolManager.
//
// Not alignas(64) itself, so that it may live on a stack under ASan (whose
// fake stack does not honour over-aligned locals); per-thread state that
// embeds it should be cache-line aligned (SmartAlloc's is).
class PoolManager::ThreadCache {
 public:
  explicit ThreadCache(PoolManager* pool);
  // Flush()es.
  ~ThreadCache();
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;

  // A block of ClassSize(cls) bytes aligned to ClassSize(cls), or nullptr
  // when the list is empty and the pool cannot add a page. The most recently
  // freed block of the class comes first. The fast path is a load, a test,
  // a load of the link, a store and a decrement.
  // REQUIRES: 0 <= cls < kNumClasses.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void* Allocate(int cls) {
    List& list = lists_[cls];
    FreeBlock* block = list.head;
    if (ABSL_PREDICT_TRUE(block != nullptr)) {
      FRAMEALLOC_UNPOISON(block, ClassSize(cls));
      list.head = block->next;
      --list.count;
      return block;
    }
    return AllocateSlow(cls);
  }

  // Takes back a block of class `cls`, allocated through any cache of this
  // pool. When the class's list exceeds its limit, the `batch` most recently
  // freed blocks (a batch more, at most, when the flush also cuts a raised
  // limit) go to the pool (out of line): to the transfer cache, or to
  // their pages; a misuse among them is detected there.
  // REQUIRES: p came from Allocate(cls) on a cache of this pool and is not
  // freed yet; p != nullptr.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void Free(void* p, int cls) {
    List& list = lists_[cls];
    FreeBlock* block = static_cast<FreeBlock*>(p);
    block->next = list.head;
    list.head = block;
    FRAMEALLOC_POISON(p, ClassSize(cls));
    if (ABSL_PREDICT_FALSE(++list.count > list.limit)) FlushBatch(cls);
  }

  // Returns every cached block to its page, block by block with every check
  // (not to the transfer cache: a thread that leaves should leave its pages
  // releasable), and puts every limit back at its start. Call when the
  // owning thread is done with the pool (thread exit), or to give back what
  // a burst left; the destructor calls it.
  void Flush();

  // Blocks of class `cls` in this cache now.
  size_t cached_blocks(int cls) const { return lists_[cls].count; }
  // The current limit of class `cls`: blocks it holds before it flushes.
  uint32_t cache_limit(int cls) const { return lists_[cls].limit; }
  // The sum over classes of cache_limit(cls) * ClassSize(cls): the most this
  // cache may hold now.
  size_t limit_bytes() const { return limit_bytes_; }
  // Times a limit was raised (at a refill) and lowered (after overflows, or
  // to make room for another class), since construction.
  uint64_t limit_raises() const { return limit_raises_; }
  uint64_t limit_cuts() const { return limit_cuts_; }
  PoolManager* pool() const { return pool_; }

 private:
  struct List {
    FreeBlock* head = nullptr;
    uint32_t count = 0;
    uint32_t limit = 0;  // The current limit, next to the count.
  };

  // Refills the empty list of `cls` with a batch, raises its limit when it
  // may, and pops a block.
  ABSL_ATTRIBUTE_NOINLINE void* AllocateSlow(int cls);
  // Hands the newest blocks of the over-limit list of `cls` to the pool
  // (one batch, plus what a cut of the limit takes), leaving it batch - 1
  // below its limit.
  ABSL_ATTRIBUTE_NOINLINE void FlushBatch(int cls);
  // Raises the limit of `cls` by up to a batch, within its ceiling and the
  // thread's budget (taking room from other classes' unused raises).
  void Raise(int cls);
  // Blocks of limit class `cls` holds beyond both its start and its count.
  uint32_t UnusedRaise(int cls) const;
  // Bytes of limit the classes other than `except` hold beyond both their
  // start and their count: what Reclaim could free.
  size_t Reclaimable(int except) const;
  // Lowers those limits, largest blocks first, until at least `bytes` are
  // freed or none is left; the bytes it freed (a whole number of blocks of
  // each class it cut, so possibly more than asked).
  size_t Reclaim(int except, size_t bytes);
  // Sets the limit of `cls`, keeping limit_bytes_ the sum.
  void SetLimit(int cls, uint32_t limit);

  // Hot fields first: the fast paths touch one List (16 bytes) only.
  List lists_[kNumClasses];
  PoolManager* const pool_;
  size_t limit_bytes_ = 0;
  size_t start_bytes_ = 0;  // limit_bytes_ with every limit at its start.
  uint64_t limit_raises_ = 0;
  uint64_t limit_cuts_ = 0;
  const uint32_t batch_;
  // Flushes of each class past a raised limit since that limit last moved
  // (a flush at the starting limit does not count).
  uint8_t overflows_[kNumClasses] = {};
};

static_assert(sizeof(PoolManager::ThreadCache) <= 256,
              "ThreadCache should stay within four cache lines");

}  // namespace framealloc

#endif  // ALLOC_POOL_MANAGER_H_
