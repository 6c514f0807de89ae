// FrameArena's slow paths: chunk refills, oversize blocks, failures, resets
// and rewinds (see frame_arena.h). The fast path is inline in the header.
#include "alloc/frame_arena.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"

namespace framealloc {
namespace {

using alloc_internal::IsPowerOfTwo;

// Where a fresh arena's cursor points before it has a chunk: an empty range
// at an address aligned to 4 KiB, so that size-0 requests succeed on the
// fast path and everything else takes the slow path.
alignas(4096) char empty_arena_anchor[1];

uintptr_t EmptyAnchor() {
  return reinterpret_cast<uintptr_t>(&empty_arena_anchor[0]);
}

// A fresh id for every arena, never 0 (a default ArenaMark's). Relaxed: an
// arena's marks are only used with the arena itself, which its owner
// publishes.
uint64_t NextArenaId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

absl::Status FrameArenaOptions::Validate() const {
  constexpr size_t kMinChunk = size_t{1} << 10;
  constexpr size_t kMaxChunk = size_t{1} << 30;
  if (initial_chunk_size < kMinChunk || initial_chunk_size > kMaxChunk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FrameArenaOptions.initial_chunk_size = ", initial_chunk_size,
        " is outside [", kMinChunk, ", ", kMaxChunk, "]"));
  }
  if (max_chunk_size < initial_chunk_size || max_chunk_size > kMaxChunk) {
    return absl::InvalidArgumentError(
        absl::StrCat("FrameArenaOptions.max_chunk_size = ", max_chunk_size,
                     " is outside [initial_chunk_size = ", initial_chunk_size,
                     ", ", kMaxChunk, "]"));
  }
  if (retain_bytes > kMaxChunk) {
    return absl::InvalidArgumentError(
        absl::StrCat("FrameArenaOptions.retain_bytes = ", retain_bytes,
                     " is above ", kMaxChunk));
  }
  if (!IsPowerOfTwo(chunk_alignment) || chunk_alignment < 16 ||
      chunk_alignment > (size_t{1} << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("FrameArenaOptions.chunk_alignment = ", chunk_alignment,
                     " is not a power of two in [16, 1048576]"));
  }
  return absl::OkStatus();
}

FrameArena::FrameArena(ChunkCache* cache, FrameArenaOptions options)
    : cursor_(EmptyAnchor()),
      end_(EmptyAnchor()),
      chunk_begin_(EmptyAnchor()),
      cache_(cache),
      options_(options),
      id_(NextArenaId()) {
  if (absl::Status s = options_.Validate(); !s.ok()) {
    ReportFatalError({ErrorKind::kInvalidArgument, "FrameArena::FrameArena",
                      std::string(s.message()), 0, 0, s});
  }
}

absl::StatusOr<std::unique_ptr<FrameArena>> FrameArena::Create(
    ChunkCache* cache, FrameArenaOptions options) {
  if (cache == nullptr) {
    return absl::InvalidArgumentError("FrameArena::Create: cache is null");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<FrameArena>(cache, options);
}

FrameArena::~FrameArena() {
  if (!marks_.empty()) {
    ReportErrorAndContinue({ErrorKind::kMisuse, "FrameArena::~FrameArena",
                            absl::StrCat("arena destroyed with ", marks_.size(),
                                         " open marks or scopes"),
                            0, 0, absl::OkStatus()});
  }
  RunDestructors(nullptr);
  ReleaseOversizeAfter(0);
  ReleaseChunksAfter(0);
  for (const Block& spare : spare_chunks_) cache_->Release(spare);
}

size_t FrameArena::ChunkSizeFor(size_t chunk_index) const {
  // initial <= 1 GiB = 2^30, so a shift of up to 33 cannot overflow.
  if (chunk_index >= 33) return options_.max_chunk_size;
  return std::min(options_.initial_chunk_size << chunk_index,
                  options_.max_chunk_size);
}

size_t FrameArena::CurrentBytesUsed() const {
  return closed_bytes_used_ + static_cast<size_t>(cursor_ - chunk_begin_) +
         oversize_bytes_;
}

void FrameArena::UpdatePeak() {
  const size_t used = CurrentBytesUsed();
  peak_bytes_used_ = std::max(peak_bytes_used_, used);
  frame_peak_bytes_used_ = std::max(frame_peak_bytes_used_, used);
}

void* FrameArena::Fail(ErrorKind kind, size_t size, size_t alignment,
                       bool fatal, absl::Status status) {
  if (!fatal) {
    ++failed_allocations_;
    return nullptr;
  }
  ReportFatalError(
      {kind, "FrameArena::Allocate",
       absl::StrCat("cannot allocate ", size, " bytes at alignment ", alignment,
                    "; the arena holds ", chunks_.size(), " chunks and ",
                    oversize_.size(), " oversize blocks, ", CurrentBytesUsed(),
                    " bytes used this frame (", cache_->source()->name(),
                    " source)"),
       size, alignment, std::move(status)});
}

void* FrameArena::OverflowFailed(size_t count, size_t size, size_t alignment,
                                 bool fatal) {
  return Fail(ErrorKind::kInvalidArgument, size, alignment, fatal,
              absl::InvalidArgumentError(
                  absl::StrCat("array of ", count, " elements of ", size,
                               " bytes overflows size_t")));
}

void* FrameArena::AllocateSlow(size_t size, size_t alignment, bool fatal) {
  if (!IsPowerOfTwo(alignment) || alignment > MemorySource::kMaxBlockSize) {
    return Fail(ErrorKind::kInvalidArgument, size, alignment, fatal,
                absl::InvalidArgumentError(absl::StrCat(
                    "alignment ", alignment, " is not a power of two")));
  }
  if (size > MemorySource::kMaxBlockSize) {
    return Fail(ErrorKind::kInvalidArgument, size, alignment, fatal,
                absl::InvalidArgumentError(
                    absl::StrCat("size ", size, " exceeds the largest block (",
                                 MemorySource::kMaxBlockSize, " bytes)")));
  }
  const size_t next_chunk = ChunkSizeFor(chunks_.size());
  if (size > next_chunk || alignment > options_.chunk_alignment) {
    // A block of its own; the current chunk stays current.
    absl::StatusOr<Block> block =
        cache_->Acquire(std::max<size_t>(size, 1),
                        std::max(alignment, options_.chunk_alignment));
    if (!block.ok()) {
      return Fail(ErrorKind::kOutOfMemory, size, alignment, fatal,
                  block.status());
    }
    FRAMEALLOC_POISON(block->begin() + size, block->size - size);
    oversize_.push_back(*block);
    oversize_bytes_ += size;
    ++allocations_;
    bytes_requested_ += size;
    needs_slow_reset_ = true;
    UpdatePeak();
    return block->data;
  }
  absl::StatusOr<Block> chunk;
  // The cache hands out whole size classes (a 100 KiB chunk is 104 KiB),
  // and a source may round them up again (to 64 KiB pages): the smallest
  // kept chunk (the back) serves if it holds the class (before, it had to
  // equal the nominal size, and for sizes that are not their own class the
  // kept chunks were never taken again).
  if (!spare_chunks_.empty() &&
      spare_chunks_.back().size >= ChunkCache::SizeClass(next_chunk)) {
    chunk = spare_chunks_.back();  // Kept from an earlier frame.
    spare_chunks_.pop_back();
  } else {
    chunk = cache_->Acquire(next_chunk, options_.chunk_alignment);
  }
  if (!chunk.ok()) {
    return Fail(ErrorKind::kOutOfMemory, size, alignment, fatal,
                chunk.status());
  }
  if (!chunks_.empty()) {
    // The tail of the chunk we leave is used (wasted) until the next reset.
    closed_bytes_used_ += static_cast<size_t>(end_ - chunk_begin_);
    needs_slow_reset_ = true;
  }
  FRAMEALLOC_POISON(chunk->data, chunk->size);
  chunks_.push_back(*chunk);
  chunk_begin_ = reinterpret_cast<uintptr_t>(chunk->data);
  cursor_ = chunk_begin_;
  end_ = chunk_begin_ + chunk->size;
  // Cannot fail: the chunk is aligned to chunk_alignment >= alignment and
  // holds at least `size` bytes.
  void* result = Bump</*kFatal=*/false>(size, alignment);
  UpdatePeak();
  return result;
}

void FrameArena::RunDestructors(Destructor* stop) {
  while (destructors_ != stop) {
    Destructor* record = destructors_;
    destructors_ = record->next;
    record->destroy(record->objects, record->count);
  }
}

void FrameArena::ReleaseChunksAfter(size_t keep_chunks) {
  while (chunks_.size() > keep_chunks) {
    cache_->Release(chunks_.back());
    chunks_.pop_back();
  }
}

void FrameArena::ReleaseOversizeAfter(size_t keep_blocks) {
  while (oversize_.size() > keep_blocks) {
    cache_->Release(oversize_.back());
    oversize_.pop_back();
  }
}

void FrameArena::ResetSlow() {
  if (!marks_.empty()) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "FrameArena::Reset",
         absl::StrCat("frame reset with ", marks_.size(),
                      " open marks or scopes; they are discarded"),
         0, 0, absl::OkStatus()});
    marks_.clear();
  }
  UpdatePeak();
  RunDestructors(nullptr);
  ReleaseOversizeAfter(0);
  // Keep the chunks after the first, up to retain_bytes, for the next frame
  // (in reverse order, so the next one needed is at the back).
  size_t retained = 0;
  for (const Block& spare : spare_chunks_) retained += spare.size;
  while (chunks_.size() > 1) {
    const Block chunk = chunks_.back();
    chunks_.pop_back();
    if (retained + chunk.size <= options_.retain_bytes &&
        (spare_chunks_.empty() || spare_chunks_.back().size >= chunk.size)) {
      FRAMEALLOC_POISON(chunk.data, chunk.size);
      spare_chunks_.push_back(chunk);
      retained += chunk.size;
    } else {
      cache_->Release(chunk);
    }
  }
  if (!chunks_.empty()) {
    const Block& first = chunks_.front();
    FRAMEALLOC_POISON(first.data, first.size);
    chunk_begin_ = reinterpret_cast<uintptr_t>(first.data);
    end_ = chunk_begin_ + first.size;
  }
  cursor_ = chunk_begin_;
  allocations_ = 0;
  bytes_requested_ = 0;
  destructor_records_ = 0;
  closed_bytes_used_ = 0;
  oversize_bytes_ = 0;
  frame_peak_bytes_used_ = 0;
  needs_slow_reset_ = false;
  ++resets_;
}

ArenaMark FrameArena::Mark() {
  ArenaMark mark;
  mark.arena_ = this;
  mark.arena_id_ = id_;
  mark.serial_ = next_mark_serial_++;
  mark.depth_ = marks_.size();
  mark.chunk_index_ = chunks_.size();
  mark.cursor_ = cursor_;
  mark.oversize_count_ = oversize_.size();
  mark.destructors_ = destructors_;
  mark.allocations_ = allocations_;
  mark.bytes_requested_ = bytes_requested_;
  mark.destructor_records_ = destructor_records_;
  mark.closed_bytes_used_ = closed_bytes_used_;
  mark.oversize_bytes_ = oversize_bytes_;
  marks_.push_back(mark.serial_);
  needs_slow_reset_ = true;
  return mark;
}

absl::Status FrameArena::Rewind(const ArenaMark& mark) {
  if (mark.arena_ != this || mark.arena_id_ != id_) {
    return absl::FailedPreconditionError(
        mark.arena_ == nullptr
            ? "FrameArena::Rewind: the mark was never set (default-constructed)"
            : "FrameArena::Rewind: the mark belongs to another arena (perhaps "
              "one destroyed since, at the same address)");
  }
  if (mark.depth_ >= marks_.size() || marks_[mark.depth_] != mark.serial_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "FrameArena::Rewind: mark #", mark.serial_,
        " is stale: it was already rewound, or discarded by Reset()"));
  }
  if (mark.depth_ + 1 != marks_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("FrameArena::Rewind: out-of-order rewind of mark #",
                     mark.serial_, " while ", marks_.size() - mark.depth_ - 1,
                     " newer marks are still open; rewind those first"));
  }
  UpdatePeak();
  RunDestructors(static_cast<Destructor*>(mark.destructors_));
  ReleaseOversizeAfter(mark.oversize_count_);
  if (mark.chunk_index_ == 0) {
    // Marked before the first chunk: keep the first chunk, start it over.
    ReleaseChunksAfter(std::min<size_t>(chunks_.size(), 1));
    if (!chunks_.empty()) {
      chunk_begin_ = reinterpret_cast<uintptr_t>(chunks_.front().data);
      end_ = chunk_begin_ + chunks_.front().size;
    }
    cursor_ = chunk_begin_;
  } else {
    ReleaseChunksAfter(mark.chunk_index_);
    const Block& current = chunks_.back();
    chunk_begin_ = reinterpret_cast<uintptr_t>(current.data);
    end_ = chunk_begin_ + current.size;
    cursor_ = mark.cursor_;
  }
  FRAMEALLOC_POISON(reinterpret_cast<void*>(cursor_), end_ - cursor_);
  allocations_ = mark.allocations_;
  bytes_requested_ = mark.bytes_requested_;
  destructor_records_ = mark.destructor_records_;
  closed_bytes_used_ = mark.closed_bytes_used_;
  oversize_bytes_ = mark.oversize_bytes_;
  marks_.pop_back();
  ++rewinds_;
  needs_slow_reset_ = destructors_ != nullptr || chunks_.size() > 1 ||
                      !oversize_.empty() || !marks_.empty();
  return absl::OkStatus();
}

bool FrameArena::Owns(const void* p) const {
  const auto inside = [p](const Block& b) {
    return p >= b.data && p < static_cast<const void*>(b.end());
  };
  return std::any_of(chunks_.begin(), chunks_.end(), inside) ||
         std::any_of(oversize_.begin(), oversize_.end(), inside);
}

FrameArenaStats FrameArena::stats() const {
  FrameArenaStats s;
  s.allocations = allocations_;
  s.destructor_records = destructor_records_;
  s.bytes_requested = bytes_requested_;
  s.bytes_used = CurrentBytesUsed();
  s.waste_bytes = s.bytes_used - s.bytes_requested;
  s.chunks = chunks_.size();
  for (const Block& b : chunks_) s.chunk_bytes += b.size;
  s.spare_chunks = spare_chunks_.size();
  for (const Block& b : spare_chunks_) s.spare_bytes += b.size;
  s.oversize_blocks = oversize_.size();
  s.oversize_bytes = oversize_bytes_;
  s.peak_bytes_used = std::max(peak_bytes_used_, s.bytes_used);
  s.frame_peak_bytes_used = std::max(frame_peak_bytes_used_, s.bytes_used);
  s.resets = resets_;
  s.failed_allocations = failed_allocations_;
  return s;
}

ArenaScope::~ArenaScope() {
  absl::Status status = arena_->Rewind(mark_);
  if (!status.ok()) {
    ReportErrorAndContinue({ErrorKind::kMisuse, "ArenaScope::~ArenaScope",
                            std::string(status.message()), 0, 0, status});
  }
}

absl::Status ArenaScope::Rewind() {
  absl::Status status = arena_->Rewind(mark_);
  if (!status.ok()) return status;
  mark_ = arena_->Mark();
  return absl::OkStatus();
}

}  // namespace framealloc
