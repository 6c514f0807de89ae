// Implementations of the built-in memory sources (see memory_source.h).
#include "alloc/memory_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"
#include "alloc/internal/bits.h"

namespace framealloc {

using alloc_internal::AlignUp;
using alloc_internal::IsPowerOfTwo;

absl::StatusOr<Block> MemorySource::Allocate(size_t size, size_t alignment) {
  absl::StatusOr<Block> block;
  if (size == 0 || size > kMaxBlockSize) {
    block = absl::InvalidArgumentError(
        absl::StrCat(name(), " source: block size ", size, " is outside [1, ",
                     kMaxBlockSize, "]"));
  } else if (!IsPowerOfTwo(alignment) || alignment > kMaxBlockSize) {
    block = absl::InvalidArgumentError(
        absl::StrCat(name(), " source: alignment ", alignment,
                     " is not a power of two in [1, ", kMaxBlockSize, "]"));
  } else {
    block = DoAllocate(size, alignment);
    if (block.ok()) block = CheckServed(*std::move(block), size, alignment);
  }
  if (!block.ok()) {
    failures_.fetch_add(1, std::memory_order_relaxed);
    return block;
  }
  allocations_.fetch_add(1, std::memory_order_relaxed);
  const size_t now =
      bytes_outstanding_.fetch_add(block->size, std::memory_order_relaxed) +
      block->size;
  size_t peak = peak_bytes_outstanding_.load(std::memory_order_relaxed);
  while (now > peak && !peak_bytes_outstanding_.compare_exchange_weak(
                           peak, now, std::memory_order_relaxed)) {
  }
  return block;
}

absl::StatusOr<Block> MemorySource::CheckServed(const Block& block, size_t size,
                                                size_t alignment) {
  const char* broken = nullptr;
  if (block.data == nullptr) {
    broken = "a null block";
  } else if (block.size < size) {
    broken = "a block shorter than asked";
  } else if (reinterpret_cast<uintptr_t>(block.data) % alignment != 0) {
    broken = "a block not aligned as asked";
  } else if (block.alignment != alignment) {
    broken = "a block recording another alignment";
  }
  if (broken == nullptr) return block;
  // Given back as served (a null one has nothing to give back), uncounted:
  // it was never counted as allocated.
  if (block.data != nullptr) (void)DoDeallocate(block);
  return absl::InternalError(absl::StrCat(
      name(), " source broke its contract: asked for ", size,
      " bytes aligned to ", alignment, ", it returned ", broken, " (0x",
      absl::Hex(reinterpret_cast<uintptr_t>(block.data)), ", ", block.size,
      " bytes, alignment ", block.alignment, ")"));
}

bool MemorySource::Deallocate(const Block& block) {
  if (block.empty()) return true;
  if (!DoDeallocate(block)) return false;  // Refused and reported: still out.
  deallocations_.fetch_add(1, std::memory_order_relaxed);
  bytes_outstanding_.fetch_sub(block.size, std::memory_order_relaxed);
  return true;
}

MemorySourceStats MemorySource::stats() const {
  MemorySourceStats s;
  s.allocations = allocations_.load(std::memory_order_relaxed);
  s.deallocations = deallocations_.load(std::memory_order_relaxed);
  s.failures = failures_.load(std::memory_order_relaxed);
  s.bytes_outstanding = bytes_outstanding_.load(std::memory_order_relaxed);
  s.peak_bytes_outstanding =
      peak_bytes_outstanding_.load(std::memory_order_relaxed);
  return s;
}

// ---------------------------------------------------------------------------
// PopulatePages

namespace {

// Whether the kernel knows MADV_POPULATE_WRITE: asked once, on a page of
// its own (EINVAL on a caller's range may also mean an unusual mapping).
bool KernelCanPopulate(size_t page) {
#ifdef MADV_POPULATE_WRITE
  void* probe = mmap(nullptr, page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return true;  // Cannot tell: let calls say.
  const bool ok =
      madvise(probe, page, MADV_POPULATE_WRITE) == 0 || errno != EINVAL;
  munmap(probe, page);
  return ok;
#else
  (void)page;
  return false;
#endif
}

}  // namespace

absl::Status PopulatePages(void* data, size_t size) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  static const bool supported = KernelCanPopulate(page);
  if (!supported) {
    return absl::UnimplementedError(
        "PopulatePages: the kernel does not support MADV_POPULATE_WRITE "
        "(Linux 5.14 or later)");
  }
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  uintptr_t first = 0;
  if (size == 0 || !alloc_internal::AlignUp(begin, page, &first) ||
      first >= begin + size) {
    return absl::OkStatus();
  }
  const uintptr_t last = (begin + size) & ~(uintptr_t{page} - 1);
  if (last <= first) return absl::OkStatus();
#ifdef MADV_POPULATE_WRITE
  if (madvise(reinterpret_cast<void*>(first), last - first,
              MADV_POPULATE_WRITE) == 0) {
    return absl::OkStatus();
  }
  const int err = errno;
  const std::string what =
      absl::StrCat("PopulatePages: madvise(MADV_POPULATE_WRITE) of ",
                   last - first, " bytes: ", std::strerror(err));
  if (err == EINVAL) return absl::InvalidArgumentError(what);
  if (err == ENOMEM) return absl::ResourceExhaustedError(what);
  return absl::InternalError(what);
#else
  return absl::UnimplementedError(
      "PopulatePages: MADV_POPULATE_WRITE is not available in this build");
#endif
}

// ---------------------------------------------------------------------------
// SystemMemorySource

SystemMemorySource& SystemMemorySource::Default() {
  static SystemMemorySource* source = new SystemMemorySource;
  return *source;
}

absl::StatusOr<Block> SystemMemorySource::DoAllocate(size_t size,
                                                     size_t alignment) {
  void* data = ::operator new(size, std::align_val_t(alignment), std::nothrow);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("system source: the heap refused ", size,
                     " bytes at alignment ", alignment));
  }
  return Block{data, size, alignment};
}

bool SystemMemorySource::DoDeallocate(const Block& block) {
  ::operator delete(block.data, std::align_val_t(block.alignment));
  return true;
}

// ---------------------------------------------------------------------------
// MmapMemorySource

namespace {
constexpr size_t kHugePageSize = size_t{2} << 20;
}  // namespace

MmapMemorySource::MmapMemorySource(MmapOptions options)
    : options_(options),
      page_size_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {}

absl::StatusOr<Block> MmapMemorySource::DoAllocate(size_t size,
                                                   size_t alignment) {
  size_t length = size;
  AlignUp(size, page_size_, &length);  // size <= kMaxBlockSize: no overflow.
  // Alignments above a page: map `alignment - page` extra bytes, keep the
  // aligned middle, unmap both ends.
  const size_t slack = alignment > page_size_ ? alignment - page_size_ : 0;
  void* raw = mmap(nullptr, length + slack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    const int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap source: mmap of ", length + slack,
                     " bytes failed: ", std::strerror(err)));
  }
  char* data = static_cast<char*>(raw);
  if (slack != 0) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(raw);
    const size_t head = alloc_internal::AlignmentPadding(address, alignment);
    if (head != 0) munmap(data, head);
    const size_t tail = slack - head;
    if (tail != 0) munmap(data + head + length, tail);
    data += head;
  }
  if (options_.transparent_huge_pages && length >= kHugePageSize) {
    if (madvise(data, length, MADV_HUGEPAGE) == 0) {
      huge_page_advised_.fetch_add(1, std::memory_order_relaxed);
    } else {
      huge_page_failures_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return Block{data, length, alignment};
}

bool MmapMemorySource::DoDeallocate(const Block& block) {
  if (munmap(block.data, block.size) != 0) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "MmapMemorySource::Deallocate",
         absl::StrCat("munmap of ", block.size, " bytes at 0x",
                      absl::Hex(reinterpret_cast<uintptr_t>(block.data)),
                      " failed: ", std::strerror(errno),
                      " (was the block from this source?)"),
         block.size, block.alignment, absl::OkStatus()});
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// BackendMemorySource

BackendMemorySource::BackendMemorySource(AllocatorBackend* backend,
                                         MemorySource* next)
    : backend_(backend), next_(next) {}

BackendMemorySource::~BackendMemorySource() {
  alloc_internal::MutexLock lock(&mu_);
  if (!from_backend_.empty()) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "BackendMemorySource::~BackendMemorySource",
         absl::StrCat(from_backend_.size(), " blocks served by backend '",
                      backend_->name(), "' were never returned"),
         0, 0, absl::OkStatus()});
  }
}

absl::StatusOr<Block> BackendMemorySource::DoAllocate(size_t size,
                                                      size_t alignment) {
  BackendResult result = backend_->Allocate(size, alignment);
  if (result.is_fallback()) {
    fell_back_.fetch_add(1, std::memory_order_relaxed);
    return next_->Allocate(size, alignment);
  }
  if (!result.is_ok()) return result.status();
  if (reinterpret_cast<uintptr_t>(result.data()) % alignment != 0) {
    backend_->Deallocate(result.data(), size, alignment);
    return absl::InternalError(
        absl::StrCat("backend '", backend_->name(), "' returned 0x",
                     absl::Hex(reinterpret_cast<uintptr_t>(result.data())),
                     ", which is not aligned to ", alignment));
  }
  served_.fetch_add(1, std::memory_order_relaxed);
  {
    alloc_internal::MutexLock lock(&mu_);
    from_backend_[result.data()] = size;
  }
  return Block{result.data(), size, alignment};
}

bool BackendMemorySource::DoDeallocate(const Block& block) {
  bool from_backend;
  {
    alloc_internal::MutexLock lock(&mu_);
    from_backend = from_backend_.erase(block.data) > 0;
  }
  if (from_backend) {
    backend_->Deallocate(block.data, block.size, block.alignment);
    return true;
  }
  // It came from `next` on a fallback; or it is no block of ours, which
  // `next` reports if it can tell, and then it stays out here too.
  return next_->Deallocate(block);
}

}  // namespace framealloc
