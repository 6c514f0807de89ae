// Implementation of ChunkCache (see chunk_cache.h).
#include "alloc/chunk_cache.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"
#include "alloc/internal/bits.h"
#include "alloc/internal/sanitizer.h"

namespace framealloc {
namespace {
constexpr size_t kPage = 4096;
}  // namespace

absl::Status ChunkCacheOptions::Validate() const {
  if (trim_window_epochs < 0 || trim_window_epochs > 1 << 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ChunkCacheOptions.trim_window_epochs = ", trim_window_epochs,
        " is outside [0, 65536]"));
  }
  return absl::OkStatus();
}

ChunkCache::ChunkCache(MemorySource* source, ChunkCacheOptions options)
    : source_(source), options_(options) {
  if (absl::Status s = options_.Validate(); !s.ok()) {
    ReportFatalError({ErrorKind::kInvalidArgument, "ChunkCache::ChunkCache",
                      std::string(s.message()), 0, 0, s});
  }
  epoch_peaks_.assign(static_cast<size_t>(options_.trim_window_epochs), 0);
}

absl::StatusOr<std::unique_ptr<ChunkCache>> ChunkCache::Create(
    MemorySource* source, ChunkCacheOptions options) {
  if (source == nullptr) {
    return absl::InvalidArgumentError("ChunkCache::Create: source is null");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<ChunkCache>(source, options);
}

ChunkCache::~ChunkCache() {
  alloc_internal::MutexLock lock(&mu_);
  if (stats_.in_use_blocks != 0) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "ChunkCache::~ChunkCache",
         absl::StrCat("destroyed with ", stats_.in_use_blocks, " blocks (",
                      stats_.in_use_bytes,
                      " bytes) still acquired; destroy the arenas "
                      "that use a cache before the cache"),
         0, 0, absl::OkStatus()});
  }
  TrimLocked(0);
}

size_t ChunkCache::SizeClass(size_t size) {
  if (size <= kPage) return kPage;
  if (alloc_internal::IsPowerOfTwo(size)) return size;
  const size_t step =
      std::max(kPage, alloc_internal::NextPowerOfTwo(size) / 16);
  size_t rounded = size;
  alloc_internal::AlignUp(size, step, &rounded);
  return rounded;
}

absl::StatusOr<Block> ChunkCache::Acquire(size_t size, size_t alignment) {
  if (size == 0 || size > MemorySource::kMaxBlockSize ||
      !alloc_internal::IsPowerOfTwo(alignment) ||
      alignment > MemorySource::kMaxBlockSize) {
    // Let the source produce its InvalidArgument message (before the
    // cache's `address % alignment` could divide by zero).
    return source_->Allocate(size, alignment);
  }
  const size_t cls = SizeClass(size);
  {
    alloc_internal::MutexLock lock(&mu_);
    auto found = idle_.find(cls);
    std::vector<Block>* blocks =
        found == idle_.end() ? nullptr : &found->second;
    // The most recently released block that fits first (warm in cache).
    for (size_t i = blocks == nullptr ? 0 : blocks->size(); i-- > 0;) {
      const Block block = (*blocks)[i];
      if (reinterpret_cast<uintptr_t>(block.data) % alignment != 0) continue;
      (*blocks)[i] = blocks->back();
      blocks->pop_back();
      ++stats_.hits;
      --stats_.cached_blocks;
      stats_.cached_bytes -= block.size;
      NoteInUseLocked(block);
      FRAMEALLOC_UNPOISON(block.data, block.size);
      return block;
    }
  }
  // Miss: allocate (and commit) outside the lock, the source may be slow.
  absl::StatusOr<Block> block = source_->Allocate(cls, alignment);
  if (!block.ok()) return block;
  // A block the kernel would not commit still works: its pages fault in
  // when first touched, as without the option.
  const bool try_populate =
      options_.populate && block->size <= options_.populate_max_bytes;
  const bool populated =
      try_populate && PopulatePages(block->data, block->size).ok();
  alloc_internal::MutexLock lock(&mu_);
  if (try_populate) {
    ++(populated ? stats_.populated_blocks : stats_.populate_failures);
  }
  ++stats_.misses;
  // Rounded up by the source (to its page size): filed under its class
  // when released, or a later Acquire of the class would never find it
  // (before: a source with 64 KiB pages never had a block reused).
  if (block->size != cls) rounded_[block->data] = cls;
  NoteInUseLocked(*block);
  return block;
}

void ChunkCache::NoteInUseLocked(const Block& block) {
  ++stats_.in_use_blocks;
  stats_.in_use_bytes += block.size;
  stats_.peak_in_use_bytes =
      std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  epoch_peak_ = std::max(epoch_peak_, stats_.in_use_bytes);
}

void ChunkCache::Release(const Block& block) {
  if (block.empty()) return;
  bool keep;
  {
    alloc_internal::MutexLock lock(&mu_);
    ++stats_.releases;
    --stats_.in_use_blocks;
    stats_.in_use_bytes -= block.size;
    keep = stats_.cached_bytes + block.size <= options_.max_cached_bytes;
    auto rounded = rounded_.find(block.data);
    const size_t cls = rounded == rounded_.end() ? block.size : rounded->second;
    if (keep) {
      // Idle memory is poisoned: a use after release is an ASan report.
      FRAMEALLOC_POISON(block.data, block.size);
      idle_[cls].push_back(block);
      ++stats_.cached_blocks;
      stats_.cached_bytes += block.size;
    } else {
      ++stats_.returned_to_source;
      if (rounded != rounded_.end()) rounded_.erase(rounded);
    }
  }
  if (!keep) source_->Deallocate(block);
}

size_t ChunkCache::EndEpoch() {
  alloc_internal::MutexLock lock(&mu_);
  ++stats_.epochs;
  if (options_.trim_window_epochs == 0) {
    epoch_peak_ = stats_.in_use_bytes;
    return 0;
  }
  epoch_peaks_[epoch_next_] = epoch_peak_;
  epoch_next_ = (epoch_next_ + 1) % epoch_peaks_.size();
  if (epoch_count_ < epoch_peaks_.size()) ++epoch_count_;
  epoch_peak_ = stats_.in_use_bytes;
  // Only trim once the window is full, so warm-up never trims.
  if (epoch_count_ < epoch_peaks_.size()) return 0;
  const size_t demand =
      *std::max_element(epoch_peaks_.begin(), epoch_peaks_.end());
  const size_t needed_idle =
      demand > stats_.in_use_bytes ? demand - stats_.in_use_bytes : 0;
  return TrimLocked(needed_idle);
}

size_t ChunkCache::Trim(size_t keep_bytes) {
  alloc_internal::MutexLock lock(&mu_);
  return TrimLocked(keep_bytes);
}

size_t ChunkCache::TrimLocked(size_t keep_bytes) {
  if (stats_.cached_bytes <= keep_bytes) return 0;  // The common case.
  // The largest classes go first.
  std::vector<size_t> classes;
  classes.reserve(idle_.size());
  for (const auto& [cls, blocks] : idle_) {
    if (!blocks.empty()) classes.push_back(cls);
  }
  std::sort(classes.begin(), classes.end(), std::greater<size_t>());
  size_t trimmed = 0;
  for (const size_t cls : classes) {
    std::vector<Block>& blocks = idle_[cls];
    while (stats_.cached_bytes > keep_bytes && !blocks.empty()) {
      const Block block = blocks.back();
      blocks.pop_back();
      --stats_.cached_blocks;
      stats_.cached_bytes -= block.size;
      ++stats_.returned_to_source;
      trimmed += block.size;
      // Shadow memory outlives the mapping: unpoison before giving it back.
      FRAMEALLOC_UNPOISON(block.data, block.size);
      rounded_.erase(block.data);
      source_->Deallocate(block);
    }
    if (stats_.cached_bytes <= keep_bytes) break;
  }
  return trimmed;
}

ChunkCacheStats ChunkCache::stats() const {
  alloc_internal::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace framealloc
