// Memory sources: where the allocators of framealloc get their large blocks.
//
// For: handing out and taking back large aligned blocks (arena chunks, pool
// pages, oversize allocations), a few per frame at most once a ChunkCache
// sits in front. Implementations here: the system heap, anonymous mmap, and
// a user-supplied AllocatorBackend chained in front of another source (the
// backend may answer "fall back"). numa/ adds a node-bound source. Not for:
// small objects; every call here may take a lock or make a system call.
//
// Every source counts its traffic (MemorySourceStats) in the base class, so a
// user-written source is counted the same way as the built-in ones.
#ifndef ALLOC_MEMORY_SOURCE_H_
#define ALLOC_MEMORY_SOURCE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/internal/mutex.h"

namespace framealloc {

// A block of memory from a MemorySource. `size` is the usable size (at least
// what was asked for); `alignment` is the alignment that was asked for and
// must be passed back unchanged on release (the Block carries it).
struct Block {
  void* data = nullptr;
  size_t size = 0;
  size_t alignment = 0;

  bool empty() const { return data == nullptr; }
  char* begin() const { return static_cast<char*>(data); }
  char* end() const { return static_cast<char*>(data) + size; }
};

// Counters of one source. Read without locks; each is exact once the threads
// using the source are quiescent.
struct MemorySourceStats {
  uint64_t allocations = 0;    // Blocks handed out.
  uint64_t deallocations = 0;  // Blocks taken back.
  uint64_t failures = 0;       // Allocate calls that returned an error.
  size_t bytes_outstanding = 0;
  size_t peak_bytes_outstanding = 0;
};

// Commits the whole pages inside [data, data + size) for writing now: Linux
// madvise(MADV_POPULATE_WRITE), one system call that faults them all in,
// instead of one page fault per page at first touch (docs/frame_arena.md,
// "Committing chunks", has this machine's figures). Contents are unchanged.
// Works on any private writable mapping (heap or mmap memory). Errors:
// Unimplemented where the kernel lacks MADV_POPULATE_WRITE (Linux before
// 5.14; asked once per process): the pages then fault in on first touch, as
// without the call; InvalidArgument for a mapping that cannot be committed
// this way (device or I/O memory); ResourceExhausted for ENOMEM (part of
// the range is not mapped, or cannot be committed; like touching every
// page, committing more than the machine has may instead wake the kernel's
// OOM killer); Internal for anything else. Parts of the
// range outside whole pages are left alone; a range with no whole page is
// OK.
absl::Status PopulatePages(void* data, size_t size);

// The interface every source implements. Thread-safe: Allocate and
// Deallocate may be called from any thread concurrently.
class MemorySource {
 public:
  // The largest size and alignment any source accepts (128 TiB): beyond this
  // no request can be real and rounding arithmetic could overflow.
  static constexpr size_t kMaxBlockSize = size_t{1} << 47;

  MemorySource() = default;
  virtual ~MemorySource() = default;
  MemorySource(const MemorySource&) = delete;
  MemorySource& operator=(const MemorySource&) = delete;

  // Returns a block of at least `size` bytes aligned to `alignment`.
  // Errors: InvalidArgument if size is 0 or above kMaxBlockSize, or if
  // alignment is not a power of two or above kMaxBlockSize;
  // ResourceExhausted when the source has no memory left; Internal naming
  // the source when its DoAllocate broke the contract below (a null, short
  // or misaligned block, or another alignment), after giving the block
  // back to it.
  absl::StatusOr<Block> Allocate(size_t size, size_t alignment);

  // Takes back a block. REQUIRES: `block` came from Allocate on this source
  // and was not released before. A block a source can tell is not its own
  // is reported (ErrorKind::kMisuse), left alone, and kept out of stats():
  // then false (an empty block: true, nothing to do).
  bool Deallocate(const Block& block);

  // A short name for reports ("system", "mmap", ...).
  virtual absl::string_view name() const = 0;

  MemorySourceStats stats() const;

 protected:
  // Implementations: called with validated arguments (size > 0, alignment a
  // power of two). Must return a non-null block of at least `size` bytes,
  // aligned to `alignment`, whose `alignment` equals the one asked
  // (Allocate checks, and refuses a block that is not).
  virtual absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) = 0;
  // Releases the block: true; or false for a block it refused as not its
  // own (having reported the misuse), which Deallocate then does not count.
  virtual bool DoDeallocate(const Block& block) = 0;

 private:
  // `block` (from DoAllocate) if it meets the contract above; otherwise
  // gives it back and returns Internal.
  absl::StatusOr<Block> CheckServed(const Block& block, size_t size,
                                    size_t alignment);

  // Relaxed: these are counters; no other memory is published through them.
  std::atomic<uint64_t> allocations_{0};
  std::atomic<uint64_t> deallocations_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<size_t> bytes_outstanding_{0};
  std::atomic<size_t> peak_bytes_outstanding_{0};
};

// Blocks from the C++ heap (aligned operator new). Always available;
// ResourceExhausted when the heap is exhausted.
class SystemMemorySource final : public MemorySource {
 public:
  absl::string_view name() const override { return "system"; }

  // A process-wide instance, never destroyed.
  static SystemMemorySource& Default();

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override;
  bool DoDeallocate(const Block& block) override;
};

// Options for MmapMemorySource.
struct MmapOptions {
  // Advise transparent huge pages (madvise MADV_HUGEPAGE) on blocks of at
  // least 2 MiB. Advice only: the kernel may ignore it, and
  // MmapMemorySource::huge_page_advice_failures() counts refusals.
  bool transparent_huge_pages = false;

  MmapOptions& set_transparent_huge_pages(bool on) {
    transparent_huge_pages = on;
    return *this;
  }
};

// Blocks mapped straight from the kernel with anonymous mmap; sizes are
// rounded up to whole pages and alignments above a page are honoured by
// trimming an over-sized mapping. Pages are placed on first touch.
class MmapMemorySource final : public MemorySource {
 public:
  explicit MmapMemorySource(MmapOptions options = {});

  absl::string_view name() const override { return "mmap"; }
  const MmapOptions& options() const { return options_; }

  // Blocks that received MADV_HUGEPAGE advice, and advice the kernel refused.
  uint64_t huge_page_advised_blocks() const {
    return huge_page_advised_.load(std::memory_order_relaxed);
  }
  uint64_t huge_page_advice_failures() const {
    return huge_page_failures_.load(std::memory_order_relaxed);
  }

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override;
  bool DoDeallocate(const Block& block) override;

 private:
  const MmapOptions options_;
  const size_t page_size_;
  std::atomic<uint64_t> huge_page_advised_{0};
  std::atomic<uint64_t> huge_page_failures_{0};
};

// The answer of an AllocatorBackend to one request.
class BackendResult {
 public:
  // The backend served the request with `data` (non-null, aligned as asked).
  static BackendResult Ok(void* data) { return BackendResult(data, {}); }
  // The backend declines; the next source in the chain answers.
  static BackendResult Fallback() { return BackendResult(nullptr, {}); }
  // The backend refuses and nothing else may answer (for example, a quota).
  // An OK `status` (a backend's mistake) still refuses, as Internal: it
  // must not turn into a fallback.
  static BackendResult Error(absl::Status status) {
    if (status.ok()) {
      status = absl::InternalError(
          "AllocatorBackend refused with an OK status (a backend bug)");
    }
    return BackendResult(nullptr, std::move(status));
  }

  bool is_ok() const { return data_ != nullptr; }
  bool is_fallback() const { return data_ == nullptr && status_.ok(); }
  void* data() const { return data_; }
  const absl::Status& status() const { return status_; }

 private:
  BackendResult(void* data, absl::Status status)
      : data_(data), status_(std::move(status)) {}
  void* data_;
  absl::Status status_;
};

// A user-supplied allocation strategy (the reference guide's
// AllocatorBackend): serves what it wants and falls back for the rest.
// Implementations must be thread-safe.
class AllocatorBackend {
 public:
  virtual ~AllocatorBackend() = default;
  // Serve `size` bytes at `alignment`, fall back, or refuse.
  virtual BackendResult Allocate(size_t size, size_t alignment) = 0;
  // Take back memory this backend returned Ok for, with the same arguments.
  virtual void Deallocate(void* data, size_t size, size_t alignment) = 0;
  virtual absl::string_view name() const { return "backend"; }
};

// Chains a backend in front of another source: each request goes to the
// backend first and to `next` when the backend answers Fallback. Remembers
// which blocks the backend served so each returns to where it came from.
// Neither `backend` nor `next` is owned; both must outlive this source.
class BackendMemorySource final : public MemorySource {
 public:
  BackendMemorySource(AllocatorBackend* backend, MemorySource* next);
  ~BackendMemorySource() override;

  absl::string_view name() const override { return backend_->name(); }

  // Requests the backend served and requests it passed on to `next`.
  uint64_t served_by_backend() const {
    return served_.load(std::memory_order_relaxed);
  }
  uint64_t fell_back() const {
    return fell_back_.load(std::memory_order_relaxed);
  }

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override;
  bool DoDeallocate(const Block& block) override;

 private:
  AllocatorBackend* const backend_;
  MemorySource* const next_;
  alloc_internal::Mutex mu_;
  // Blocks the backend served, by address.
  absl::flat_hash_map<void*, size_t> from_backend_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> served_{0};
  std::atomic<uint64_t> fell_back_{0};
};

}  // namespace framealloc

#endif  // ALLOC_MEMORY_SOURCE_H_
