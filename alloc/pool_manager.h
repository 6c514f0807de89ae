// PoolManager: size-class pools of small blocks, with per-thread caches.
//
// For: objects of up to 4 KiB that outlive a frame and are freed one by one
// (entities, components, graph nodes, messages); SmartAlloc's pool_alloc<T>
// and pool_free sit on it. Blocks come in ten power-of-two size classes,
// 8 B to 4 KiB, each block aligned to its class size, carved from pages
// (64 KiB by default) drawn from a ChunkCache. Every thread allocates and
// frees through its own ThreadCache: a hit is an inline pop or push of an
// intrusive list; a miss moves a batch of blocks between the cache and the
// pages under the class's mutex (tcmalloc's design without the transfer
// cache). A block freed by another thread than the one that allocated it
// goes into the freeing thread's cache. Not for: frame temporaries
// (FrameArena is cheaper and drops them at once), blocks above 4 KiB or
// aligned beyond 4 KiB (ClassFor answers -1), or memory that must go back to
// the system promptly (empty pages stay until ReleaseEmptyPages()).
//
// Thread safety: PoolManager is thread-safe. A ThreadCache is not: one
// thread (its owner) uses it at a time.
// Out of memory: ThreadCache::Allocate returns nullptr when the ChunkCache
// cannot supply a page; nothing here reports or aborts (the caller decides).
// Misuse: a free of a pointer this pool never gave out, with the wrong size
// class, or into a page whose blocks are all free already (a double free) is
// detected when the block reaches its page (at a flush), reported through
// ReportError (alloc/error.h), and the pointer is dropped. A page's free list
// cut by a write after free is never followed out of the page; the blocks it
// hid are reported and given up. Under ASan a block is poisoned while it sits
// in any free list, so a use after free is an ASan report at once.
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
  // Blocks a ThreadCache moves per trip to the pages: a refill when its list
  // of a class is empty, a flush when the list grows past cache_limit.
  int batch = 32;
  // Blocks of one class a ThreadCache holds before it flushes `batch` of them
  // back to their pages.
  int cache_limit = 128;

  PoolOptions& set_page_size(size_t bytes) {
    page_size = bytes;
    return *this;
  }
  PoolOptions& set_batch(int blocks) {
    batch = blocks;
    return *this;
  }
  PoolOptions& set_cache_limit(int blocks) {
    cache_limit = blocks;
    return *this;
  }

  // InvalidArgument unless page_size is a power of two in [16 KiB, 4 MiB],
  // batch is in [1, 1024] and cache_limit is in [batch, 65536].
  absl::Status Validate() const;
};

// One size class. Exact when no thread is inside the pool.
struct PoolClassStats {
  size_t block_size = 0;
  size_t blocks_per_page = 0;
  size_t pages = 0;
  size_t empty_pages = 0;   // Pages with every block free in the page.
  size_t blocks_total = 0;  // pages * blocks_per_page.
  // Free blocks held by the pages themselves (not by thread caches).
  size_t blocks_free_in_pages = 0;
  // Blocks in use or in some thread cache: blocks_total minus the above.
  size_t blocks_out = 0;
};

struct PoolStats;

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

  // Returns every page to the cache. Blocks still out (in use, or in a
  // ThreadCache not flushed) and ThreadCaches still attached are each
  // reported as a misuse; the pages go back all the same, so such blocks
  // dangle. REQUIRES: every ThreadCache of this pool is destroyed first.
  ~PoolManager();
  PoolManager(const PoolManager&) = delete;
  PoolManager& operator=(const PoolManager&) = delete;

  // Gives pages whose blocks are all free (back in the page, not in a thread
  // cache) to the ChunkCache, keeping `keep_per_class` such pages per class
  // for reuse. Never touches a page with a block out. Returns bytes released.
  size_t ReleaseEmptyPages(size_t keep_per_class = 0);

  // Whether `p` lies in one of this pool's pages (page headers included).
  // Reads no memory at `p`; takes a mutex.
  bool Owns(const void* p) const;

  PoolStats stats() const;
  // Blocks of class `cls` each page holds. REQUIRES: 0 <= cls < kNumClasses.
  size_t BlocksPerPage(int cls) const { return blocks_per_page_[cls]; }
  const PoolOptions& options() const { return options_; }
  ChunkCache* cache() const { return cache_; }

 private:
  // A free block: its first word links to the next free block.
  struct FreeBlock {
    FreeBlock* next;
  };
  struct PageHeader;
  enum class PageList : uint8_t;
  enum class Misuse : uint8_t;
  struct BadFree;

  // The pages of one class. Pages with some blocks free are on `partial`,
  // pages with all blocks free on `empty`, full pages on neither; `pages`
  // holds every page (the membership test of a flush). Aligned so two
  // classes' mutexes never share a cache line.
  struct alignas(64) ClassState {
    mutable alloc_internal::Mutex mu;
    PageHeader* partial ABSL_GUARDED_BY(mu) = nullptr;
    PageHeader* empty ABSL_GUARDED_BY(mu) = nullptr;
    absl::flat_hash_set<uintptr_t> pages ABSL_GUARDED_BY(mu);
    size_t empty_pages ABSL_GUARDED_BY(mu) = 0;
    size_t free_blocks ABSL_GUARDED_BY(mu) = 0;  // In the pages.
    uint64_t refills ABSL_GUARDED_BY(mu) = 0;
    uint64_t flushes ABSL_GUARDED_BY(mu) = 0;
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

  // Moves up to `want` free blocks of class `cls` from the pages to the
  // front of the list at `*head`, adding a page when no page has a free
  // block. Returns how many; 0 only when no page could be added.
  uint32_t Refill(int cls, uint32_t want, FreeBlock** head);
  // Takes the null-terminated chain at `head` (blocks freed as class `cls`)
  // back into their pages; reports and drops the ones that fail the checks.
  void Return(int cls, FreeBlock* head);

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
  // On the heap, so that each class's alignment holds wherever the pool
  // itself lives (ASan's fake stack does not honour alignas(64) locals).
  const std::unique_ptr<ClassState[]> classes_;

  // Every page of every class, for Owns() and for telling a wrong-class free
  // from a foreign pointer. A leaf lock: taken after a class's mutex, never
  // before one.
  mutable alloc_internal::Mutex pages_mu_;
  absl::flat_hash_set<uintptr_t> page_set_ ABSL_GUARDED_BY(pages_mu_);

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
  uint64_t refills = 0;   // Batches moved from pages to thread caches.
  uint64_t flushes = 0;   // Batches moved from thread caches to pages.
  uint64_t pages_acquired = 0;
  uint64_t pages_released = 0;
  // Refills that needed a page the cache could not supply.
  uint64_t failed_page_acquisitions = 0;
  // Frees reported as a misuse and dropped.
  uint64_t dropped_frees = 0;
};

// A thread's cache of free blocks, one intrusive list per size class.
// Allocate and Free are inline pushes and pops; the pool is visited once per
// `batch` blocks, out of line.
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
  // pool. When the class's list exceeds cache_limit, `batch` blocks go back
  // to their pages (out of line); a misuse is detected there.
  // REQUIRES: p came from Allocate(cls) on a cache of this pool and is not
  // freed yet; p != nullptr.
  ABSL_ATTRIBUTE_ALWAYS_INLINE void Free(void* p, int cls) {
    List& list = lists_[cls];
    FreeBlock* block = static_cast<FreeBlock*>(p);
    block->next = list.head;
    list.head = block;
    FRAMEALLOC_POISON(p, ClassSize(cls));
    if (ABSL_PREDICT_FALSE(++list.count > limit_)) FlushBatch(cls);
  }

  // Returns every cached block to its page. Call when the owning thread is
  // done with the pool (thread exit); the destructor calls it.
  void Flush();

  // Blocks of class `cls` in this cache now.
  size_t cached_blocks(int cls) const { return lists_[cls].count; }
  PoolManager* pool() const { return pool_; }

 private:
  struct List {
    FreeBlock* head = nullptr;
    uint32_t count = 0;
  };

  // Refills the empty list of `cls` with a batch and pops a block.
  ABSL_ATTRIBUTE_NOINLINE void* AllocateSlow(int cls);
  // Returns `batch` blocks of the list of `cls` to their pages.
  ABSL_ATTRIBUTE_NOINLINE void FlushBatch(int cls);

  // Hot fields first: the fast paths touch one List and limit_.
  List lists_[kNumClasses];
  const uint32_t limit_;
  const uint32_t batch_;
  PoolManager* const pool_;
};

static_assert(sizeof(PoolManager::ThreadCache) <= 192,
              "ThreadCache should stay within three cache lines");

}  // namespace framealloc

#endif  // ALLOC_POOL_MANAGER_H_
