#include "alloc/memory_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

using ::testing::HasSubstr;

bool IsAligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

// Every source must pass these.
void ExpectWorkingSource(MemorySource& source) {
  for (size_t alignment : {size_t{1}, size_t{16}, size_t{4096}, size_t{1} << 16,
                           size_t{1} << 21}) {
    for (size_t size :
         {size_t{1}, size_t{100}, size_t{65536}, size_t{3} << 20}) {
      absl::StatusOr<Block> block = source.Allocate(size, alignment);
      ASSERT_TRUE(block.ok()) << block.status();
      EXPECT_GE(block->size, size);
      EXPECT_EQ(block->alignment, alignment);
      EXPECT_TRUE(IsAligned(block->data, alignment))
          << block->data << " at " << alignment;
      std::memset(block->data, 0xAB, block->size);  // Writable throughout.
      source.Deallocate(*block);
    }
  }
  EXPECT_EQ(source.stats().bytes_outstanding, 0u);
  EXPECT_EQ(source.stats().allocations, source.stats().deallocations);
}

TEST(SystemMemorySourceTest, AllocatesAlignedWritableBlocks) {
  SystemMemorySource source;
  ExpectWorkingSource(source);
  EXPECT_EQ(source.stats().allocations, 20u);
}

TEST(MmapMemorySourceTest, AllocatesAlignedWritableBlocks) {
  MmapMemorySource source;
  ExpectWorkingSource(source);
}

TEST(MmapMemorySourceTest, RoundsToPages) {
  MmapMemorySource source;
  absl::StatusOr<Block> block = source.Allocate(1, 1);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->size, 4096u);
  source.Deallocate(*block);
}

TEST(MmapMemorySourceTest, AdvisesHugePagesOnLargeBlocksOnly) {
  MmapMemorySource source(MmapOptions().set_transparent_huge_pages(true));
  absl::StatusOr<Block> small = source.Allocate(1 << 20, 4096);
  absl::StatusOr<Block> large = source.Allocate(4 << 20, 2 << 20);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(large.ok());
  // The kernel may refuse the advice (THP compiled out), but it was asked
  // exactly once, for the large block.
  EXPECT_EQ(
      source.huge_page_advised_blocks() + source.huge_page_advice_failures(),
      1u);
  source.Deallocate(*small);
  source.Deallocate(*large);
}

// A fresh anonymous mapping of `pages` pages (no page resident yet).
class Mapping {
 public:
  explicit Mapping(size_t pages)
      : bytes_(pages * static_cast<size_t>(sysconf(_SC_PAGESIZE))),
        data_(static_cast<char*>(mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {
    // One touched page must stay one resident page (no huge page).
    if (data_ != MAP_FAILED) madvise(data_, bytes_, MADV_NOHUGEPAGE);
  }
  ~Mapping() {
    if (data_ != MAP_FAILED) munmap(data_, bytes_);
  }
  bool ok() const { return data_ != MAP_FAILED; }
  char* data() const { return data_; }

 private:
  size_t bytes_;
  char* data_;
};

TEST(PopulatePagesTest, CommitsTheWholePagesInsideTheRange) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Mapping map(4);
  ASSERT_TRUE(map.ok());
  ASSERT_EQ(alloc_internal::ResidentPages(map.data(), 4), 0);
  map.data()[page + 7] = 42;  // Page 1, written before: kept.
  ASSERT_EQ(alloc_internal::ResidentPages(map.data(), 4), 1);
  // [page 0 + 100, page 3 + 100): whole pages 1 and 2 only.
  absl::Status s = PopulatePages(map.data() + 100, 3 * page);
  if (absl::IsUnimplemented(s)) GTEST_SKIP() << s;
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(alloc_internal::ResidentPages(map.data(), 1), 0);
  EXPECT_EQ(alloc_internal::ResidentPages(map.data() + page, 2), 2);
  EXPECT_EQ(alloc_internal::ResidentPages(map.data() + 3 * page, 1), 0);
  EXPECT_EQ(map.data()[page + 7], 42);
  EXPECT_EQ(map.data()[2 * page], 0);
}

TEST(PopulatePagesTest, RangesWithoutAWholePageAreLeftAlone) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Mapping map(2);
  ASSERT_TRUE(map.ok());
  EXPECT_TRUE(PopulatePages(map.data(), 0).ok());
  EXPECT_TRUE(PopulatePages(map.data() + 1, page - 1).ok());
  EXPECT_TRUE(PopulatePages(map.data() + page / 2, page).ok());
  EXPECT_EQ(alloc_internal::ResidentPages(map.data(), 2), 0);
}

TEST(PopulatePagesTest, UnmappedMemoryIsAnError) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Mapping map(2);
  ASSERT_TRUE(map.ok());
  ASSERT_EQ(munmap(map.data() + page, page), 0);  // A hole at page 1.
  absl::Status s = PopulatePages(map.data(), 2 * page);
  if (absl::IsUnimplemented(s)) GTEST_SKIP() << s;
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("MADV_POPULATE_WRITE"));
}

TEST(MemorySourceTest, RejectsZeroSize) {
  SystemMemorySource source;
  absl::StatusOr<Block> block = source.Allocate(0, 16);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(block.status().message(), HasSubstr("block size 0"));
  EXPECT_EQ(source.stats().failures, 1u);
  EXPECT_EQ(source.stats().allocations, 0u);
}

TEST(MemorySourceTest, RejectsBadAlignments) {
  MmapMemorySource source;
  for (size_t alignment : {size_t{0}, size_t{3}, size_t{48}, size_t{1} << 50}) {
    absl::StatusOr<Block> block = source.Allocate(64, alignment);
    EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument)
        << alignment;
    EXPECT_THAT(block.status().message(), HasSubstr("power of two"));
  }
}

TEST(MemorySourceTest, RejectsImpossibleSizes) {
  SystemMemorySource source;
  absl::StatusOr<Block> block = source.Allocate(SIZE_MAX, 16);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemorySourceTest, MmapExhaustionIsResourceExhausted) {
  MmapMemorySource source;
  // 64 TiB: accepted as a size, refused by the kernel.
  absl::StatusOr<Block> block = source.Allocate(size_t{1} << 46, 4096);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(block.status().message(), HasSubstr("mmap"));
}

// A block the source refuses (munmap fails on an address that is not a
// page's) is reported, left alone and not counted as released (it was:
// bytes_outstanding then wrapped at the real release).
TEST(MemorySourceTest, ARefusedDeallocationIsReportedAndNotCounted) {
  MmapMemorySource source;
  absl::StatusOr<Block> block = source.Allocate(2 * 4096, 4096);
  ASSERT_TRUE(block.ok()) << block.status();
  std::vector<ErrorReport> reports;
  {
    ScopedErrorHandler handler(
        [](const ErrorReport& report, void* context) {
          static_cast<std::vector<ErrorReport>*>(context)->push_back(report);
        },
        &reports);
    source.Deallocate(Block{block->begin() + 64, 4096, 64});
  }
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].kind, ErrorKind::kMisuse);
  EXPECT_THAT(reports[0].message, HasSubstr("munmap"));
  EXPECT_EQ(source.stats().deallocations, 0u);
  EXPECT_EQ(source.stats().bytes_outstanding, block->size);
  std::memset(block->data, 1, block->size);  // Still mapped.
  source.Deallocate(*block);
  EXPECT_EQ(source.stats().deallocations, 1u);
  EXPECT_EQ(source.stats().bytes_outstanding, 0u);
}

TEST(MemorySourceTest, StatsTrackOutstandingAndPeak) {
  SystemMemorySource source;
  absl::StatusOr<Block> a = source.Allocate(1000, 16);
  absl::StatusOr<Block> b = source.Allocate(3000, 16);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(source.stats().bytes_outstanding, 4000u);
  source.Deallocate(*a);
  EXPECT_EQ(source.stats().bytes_outstanding, 3000u);
  EXPECT_EQ(source.stats().peak_bytes_outstanding, 4000u);
  source.Deallocate(*b);
  EXPECT_EQ(source.stats().deallocations, 2u);
}

// A backend that serves requests up to 4 KiB from a fixed buffer (one at a
// time) and falls back for everything else.
class SmallBufferBackend final : public AllocatorBackend {
 public:
  BackendResult Allocate(size_t size, size_t alignment) override {
    if (size > sizeof(buffer_) || alignment > 64 || busy_) {
      return BackendResult::Fallback();
    }
    busy_ = true;
    return BackendResult::Ok(buffer_);
  }
  void Deallocate(void* data, size_t, size_t) override {
    EXPECT_EQ(data, buffer_);
    busy_ = false;
    ++deallocations;
  }
  absl::string_view name() const override { return "small-buffer"; }

  int deallocations = 0;

 private:
  alignas(64) char buffer_[4096];
  bool busy_ = false;
};

TEST(BackendMemorySourceTest, ServesOrFallsBackAndRoutesReleases) {
  // On the heap: ASan's fake stack does not honour alignas(64) members.
  auto owned_backend = std::make_unique<SmallBufferBackend>();
  SmallBufferBackend& backend = *owned_backend;
  alloc_internal::CountingSource next;
  BackendMemorySource chain(&backend, &next);
  EXPECT_EQ(chain.name(), "small-buffer");

  absl::StatusOr<Block> served = chain.Allocate(100, 16);
  absl::StatusOr<Block> too_big = chain.Allocate(8192, 16);
  absl::StatusOr<Block> busy = chain.Allocate(100, 16);
  ASSERT_TRUE(served.ok() && too_big.ok() && busy.ok());
  EXPECT_EQ(chain.served_by_backend(), 1u);
  EXPECT_EQ(chain.fell_back(), 2u);
  EXPECT_EQ(next.allocate_calls(), 2);

  chain.Deallocate(*too_big);
  EXPECT_EQ(next.deallocate_calls(), 1);
  EXPECT_EQ(backend.deallocations, 0);
  chain.Deallocate(*served);
  EXPECT_EQ(backend.deallocations, 1);
  chain.Deallocate(*busy);
  EXPECT_EQ(next.deallocate_calls(), 2);
  EXPECT_EQ(chain.stats().bytes_outstanding, 0u);
  EXPECT_EQ(next.stats().bytes_outstanding, 0u);
}

class RefusingBackend final : public AllocatorBackend {
 public:
  BackendResult Allocate(size_t, size_t) override {
    return BackendResult::Error(absl::ResourceExhaustedError("quota"));
  }
  void Deallocate(void*, size_t, size_t) override { FAIL(); }
};

TEST(BackendMemorySourceTest, RefusalDoesNotFallBack) {
  RefusingBackend backend;
  alloc_internal::CountingSource next;
  BackendMemorySource chain(&backend, &next);
  absl::StatusOr<Block> block = chain.Allocate(100, 16);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(block.status().message(), "quota");
  EXPECT_EQ(next.allocate_calls(), 0);
  EXPECT_EQ(chain.stats().failures, 1u);
}

// Regression (review): Error(OkStatus()) read as a fallback, so the next
// source served a request the backend meant to refuse.
TEST(BackendMemorySourceTest, ARefusalWithAnOkStatusStillRefuses) {
  const BackendResult result = BackendResult::Error(absl::OkStatus());
  EXPECT_FALSE(result.is_ok());
  EXPECT_FALSE(result.is_fallback());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
}

class MisalignedBackend final : public AllocatorBackend {
 public:
  BackendResult Allocate(size_t, size_t) override {
    return BackendResult::Ok(buffer_ + 1);
  }
  void Deallocate(void* data, size_t, size_t) override {
    EXPECT_EQ(data, buffer_ + 1);
    ++deallocations;
  }
  int deallocations = 0;

 private:
  alignas(64) char buffer_[128];
};

TEST(BackendMemorySourceTest, MisalignedAnswerIsAnErrorAndReturned) {
  auto owned_backend = std::make_unique<MisalignedBackend>();
  MisalignedBackend& backend = *owned_backend;
  BackendMemorySource chain(&backend, &SystemMemorySource::Default());
  absl::StatusOr<Block> block = chain.Allocate(64, 16);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(block.status().message(), HasSubstr("not aligned to 16"));
  EXPECT_EQ(backend.deallocations, 1);
}

// A backend that never serves: every block comes from `next`.
class FallBackAlways final : public AllocatorBackend {
 public:
  BackendResult Allocate(size_t, size_t) override {
    return BackendResult::Fallback();
  }
  void Deallocate(void*, size_t, size_t) override { FAIL(); }
};

// A block that is neither the backend's nor `next`'s: `next` reports and
// refuses it, and the chain keeps it out of its stats too (before, it
// counted it as released: bytes_outstanding 0 with a block still out, and
// a wrap at the real release).
TEST(BackendMemorySourceTest, ABlockNextRefusesStaysOutOfTheChainsStats) {
  FallBackAlways backend;
  MmapMemorySource next;
  BackendMemorySource chain(&backend, &next);
  absl::StatusOr<Block> block = chain.Allocate(4096, 16);
  ASSERT_TRUE(block.ok()) << block.status();
  alloc_internal::ErrorRecorder errors;
  alignas(64) char local[64];
  EXPECT_FALSE(chain.Deallocate(Block{local + 1, 4096, 16}));
  EXPECT_EQ(errors.count(), 1u);
  EXPECT_EQ(chain.stats().deallocations, 0u);
  EXPECT_EQ(chain.stats().bytes_outstanding, 4096u);
  EXPECT_TRUE(chain.Deallocate(*block));
  EXPECT_EQ(chain.stats().deallocations, 1u);
  EXPECT_EQ(chain.stats().bytes_outstanding, 0u);
  EXPECT_EQ(next.stats().bytes_outstanding, 0u);
}

// A user source that breaks DoAllocate's contract in one chosen way; it
// gives back what it served.
class BrokenSource final : public MemorySource {
 public:
  enum class Fault { kNull, kMisaligned, kShort, kOtherAlignment };
  explicit BrokenSource(Fault fault) : fault_(fault) {}
  absl::string_view name() const override { return "broken"; }
  int given_back = 0;

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override {
    if (fault_ == Fault::kNull) return Block{nullptr, size, alignment};
    absl::StatusOr<Block> real =
        SystemMemorySource::Default().Allocate(size + 64, alignment);
    if (!real.ok()) return real.status();
    real_ = *real;
    switch (fault_) {
      case Fault::kMisaligned:
        return Block{real->begin() + 8, size, alignment};
      case Fault::kShort:
        return Block{real->data, size - 1, alignment};
      default:
        return Block{real->data, size, alignment * 2};
    }
  }
  bool DoDeallocate(const Block&) override {
    ++given_back;
    SystemMemorySource::Default().Deallocate(real_);
    return true;
  }

 private:
  const Fault fault_;
  Block real_;
};

TEST(MemorySourceTest, ABlockBreakingTheContractIsAnErrorAndGivenBack) {
  using Fault = BrokenSource::Fault;
  for (auto [fault, what] :
       {std::pair{Fault::kNull, "a null block"},
        std::pair{Fault::kMisaligned, "not aligned as asked"},
        std::pair{Fault::kShort, "shorter than asked"},
        std::pair{Fault::kOtherAlignment, "another alignment"}}) {
    BrokenSource source(fault);
    absl::StatusOr<Block> block = source.Allocate(256, 64);
    EXPECT_EQ(block.status().code(), absl::StatusCode::kInternal) << what;
    EXPECT_THAT(block.status().message(), HasSubstr(what));
    EXPECT_THAT(block.status().message(), HasSubstr("broken source"));
    EXPECT_EQ(source.given_back, fault == Fault::kNull ? 0 : 1) << what;
    EXPECT_EQ(source.stats().failures, 1u);
    EXPECT_EQ(source.stats().allocations, 0u);
    EXPECT_EQ(source.stats().bytes_outstanding, 0u);
  }
}

// What a misaligned user source meant for frame memory: a pointer 8 bytes
// off an 8 KiB alignment and no report. Now a clean refusal.
TEST(MemorySourceTest, AFrameArenaOnAMisalignedSourceRefusesCleanly) {
  BrokenSource source(BrokenSource::Fault::kMisaligned);
  ChunkCache cache(&source);
  FrameArena arena(&cache);
  EXPECT_EQ(arena.TryAllocate(64, 8192), nullptr);
  EXPECT_EQ(arena.stats().failed_allocations, 1u);
  EXPECT_EQ(source.stats().bytes_outstanding, 0u);
}

}  // namespace
}  // namespace framealloc
