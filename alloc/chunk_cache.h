// ChunkCache: keeps released blocks so that steady frames cost no system call.
//
// For: sitting between a MemorySource and the arenas (and later pools and
// scoped arenas) that draw large blocks from it. A block released to the
// cache is kept, and handed out again to the next request of the same size
// class and a compatible alignment; after warm-up a steady frame makes zero
// calls into the source. Idle memory is bounded (max_cached_bytes) and
// trimmed to what recent epochs (frames) actually needed. Not for: small
// objects (every call takes a mutex; expect a few calls per frame).
//
// Thread-safe. Out of memory: Acquire returns the source's error.
#ifndef ALLOC_CHUNK_CACHE_H_
#define ALLOC_CHUNK_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/internal/mutex.h"
#include "alloc/memory_source.h"

namespace framealloc {

// Tuning of a ChunkCache. All fields have working defaults.
struct ChunkCacheOptions {
  // Idle bytes the cache may hold; a release beyond this goes straight back
  // to the source.
  size_t max_cached_bytes = size_t{256} << 20;
  // How many recent epochs' peak demand the cache keeps memory for. At each
  // EndEpoch(), idle blocks beyond (max peak over the window) minus (bytes
  // in use) go back to the source. 0 turns automatic trimming off.
  int trim_window_epochs = 64;
  // Commit the pages of every block of at most populate_max_bytes that
  // comes from the source before handing it out (PopulatePages: one system
  // call per block instead of a page fault per page when the arena or pool
  // first writes it), so a frame that grows into new memory does not stall
  // on page faults. Costs: a block's pages are resident from the moment it
  // is acquired, used or not; with first-touch NUMA placement they go to
  // the acquiring thread's node (for arenas and pools, the thread that
  // allocates from them). Larger blocks (an oversize arena request, a big
  // reservation that may be used sparsely) are left to fault in as they
  // are touched. Blocks from the cache itself were committed when they
  // first came from the source. Where the kernel cannot (Linux before 5.14)
  // the block is handed out as is and ChunkCacheStats::populate_failures
  // counts it.
  bool populate = true;
  size_t populate_max_bytes = size_t{4} << 20;

  ChunkCacheOptions& set_max_cached_bytes(size_t bytes) {
    max_cached_bytes = bytes;
    return *this;
  }
  ChunkCacheOptions& set_trim_window_epochs(int epochs) {
    trim_window_epochs = epochs;
    return *this;
  }
  ChunkCacheOptions& set_populate(bool on) {
    populate = on;
    return *this;
  }
  ChunkCacheOptions& set_populate_max_bytes(size_t bytes) {
    populate_max_bytes = bytes;
    return *this;
  }

  // InvalidArgument naming the bad field.
  absl::Status Validate() const;
};

// What a cache holds and how it has been used.
struct ChunkCacheStats {
  uint64_t hits = 0;    // Acquires served from the cache.
  uint64_t misses = 0;  // Acquires that went to the source.
  uint64_t releases = 0;
  uint64_t returned_to_source = 0;  // Blocks given back (trim, cap, destroy).
  size_t cached_blocks = 0;         // Idle blocks held now.
  size_t cached_bytes = 0;
  size_t in_use_blocks = 0;  // Blocks acquired and not yet released.
  size_t in_use_bytes = 0;
  size_t peak_in_use_bytes = 0;
  uint64_t epochs = 0;
  // Blocks from the source committed on acquisition (options.populate), and
  // those the kernel would not commit (handed out all the same).
  uint64_t populated_blocks = 0;
  uint64_t populate_failures = 0;
};

// A cache of arena chunks between FrameArenas and a MemorySource, shared by
// the arenas of one SmartAlloc (see the file comment: size classes, the
// retained-bytes limit, committing). Thread-safe.
class ChunkCache {
 public:
  // `source` is not owned and must outlive the cache.
  // REQUIRES: options.Validate().ok() (checked: a fatal error names the
  // field). Use Create() to get a Status instead.
  explicit ChunkCache(MemorySource* source, ChunkCacheOptions options = {});
  static absl::StatusOr<std::unique_ptr<ChunkCache>> Create(
      MemorySource* source, ChunkCacheOptions options = {});

  // Returns every idle block to the source. Blocks still acquired at this
  // point are reported as a misuse (they would be released into a dead
  // cache).
  ~ChunkCache();

  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  // Rounds a request to the size class the cache keeps blocks by: whole
  // pages, with at most 8 classes per power of two, so blocks of similar
  // sizes are interchangeable. Power-of-two sizes of a page or more are
  // their own class.
  static size_t SizeClass(size_t size);

  // A block of at least `size` bytes aligned to `alignment`, from the
  // cache when it holds one of SizeClass(size), else from the source: of
  // exactly SizeClass(size) bytes, unless the source rounds it up further
  // (to its page size: 64 KiB pages on some kernels), and then it is
  // filed under its class all the same when released.
  // Errors: as MemorySource::Allocate.
  absl::StatusOr<Block> Acquire(size_t size, size_t alignment);

  // Takes back a block from Acquire. REQUIRES: not released before.
  void Release(const Block& block);

  // Marks the end of an epoch (a frame) and trims idle memory that the last
  // `trim_window_epochs` epochs did not need. Returns the bytes trimmed.
  size_t EndEpoch();

  // Returns idle blocks to the source until at most `keep_bytes` stay idle.
  // Returns the bytes given back.
  size_t Trim(size_t keep_bytes);

  ChunkCacheStats stats() const;
  MemorySource* source() const { return source_; }
  const ChunkCacheOptions& options() const { return options_; }

 private:
  size_t TrimLocked(size_t keep_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts `block` as acquired (in use) and raises the peaks.
  void NoteInUseLocked(const Block& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  MemorySource* const source_;
  const ChunkCacheOptions options_;

  mutable alloc_internal::Mutex mu_;
  // Idle blocks by size class (largest classes are trimmed first). A
  // class's vector keeps its capacity when it empties, so once the classes
  // a workload uses have been seen, a steady Acquire/Release cycle (an
  // arena's frames) makes no heap allocation here.
  absl::flat_hash_map<size_t, std::vector<Block>> idle_ ABSL_GUARDED_BY(mu_);
  // The class of each block (idle or in use) that the source made larger
  // than its class, by address: Release files it under that class.
  absl::flat_hash_map<const void*, size_t> rounded_ ABSL_GUARDED_BY(mu_);
  // Peak in-use bytes of each of the last trim_window_epochs epochs: a
  // ring, sized once at construction.
  std::vector<size_t> epoch_peaks_ ABSL_GUARDED_BY(mu_);
  size_t epoch_count_ ABSL_GUARDED_BY(mu_) = 0;  // Epochs in the ring.
  size_t epoch_next_ ABSL_GUARDED_BY(mu_) = 0;   // Next slot to write.
  size_t epoch_peak_ ABSL_GUARDED_BY(mu_) = 0;
  ChunkCacheStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace framealloc

#endif  // ALLOC_CHUNK_CACHE_H_
