#include "numa/node_memory_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "alloc/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "numa/binding.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {
namespace {

using ::testing::Each;
using ::testing::HasSubstr;

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

std::unique_ptr<Topology> Machine() {
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::Discover();
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::unique_ptr<Topology> TwoNodes() {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// The mapping (VMA) of this process holding `address`, from
// /proc/self/smaps: its bounds and its resident bytes. end == 0 if no
// mapping holds it.
struct Mapping {
  uintptr_t begin = 0;
  uintptr_t end = 0;
  size_t rss = 0;
};

Mapping MappingAt(const void* address) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  Mapping found;
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  EXPECT_NE(f, nullptr);
  if (f == nullptr) return found;
  bool in_it = false;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long begin = 0, end = 0;  // NOLINT(runtime/int): sscanf's %lx.
    unsigned long kib = 0;             // NOLINT(runtime/int)
    char dash = 0;
    if (std::sscanf(line, "%lx%c%lx ", &begin, &dash, &end) == 3 &&
        dash == '-') {
      if (in_it) break;
      in_it = begin <= a && a < end;
      if (in_it) found = {begin, end, 0};
    } else if (in_it && std::sscanf(line, "Rss: %lu kB", &kib) == 1) {
      found.rss = kib << 10;
    }
  }
  std::fclose(f);
  return found;
}

// Whether the page holding `address` is mapped (mincore answers ENOMEM for
// an address no mapping holds).
bool PageMapped(const void* address) {
  const uintptr_t page = reinterpret_cast<uintptr_t>(address) & ~(kPage - 1);
  unsigned char resident = 0;
  return mincore(reinterpret_cast<void*>(page), kPage, &resident) == 0;
}

TEST(NodeMemorySourceTest, BadNodeIsInvalidArgument) {
  auto topo = TwoNodes();
  absl::StatusOr<std::unique_ptr<NodeMemorySource>> s =
      NodeMemorySource::Create(topo.get(), 2, MemoryPolicy::kAdvisory);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("node 2"));
  EXPECT_EQ(
      NodeMemorySource::Create(nullptr, 0, MemoryPolicy::kNone).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(NodeMemorySourceTest, StrictOnSyntheticTopologyIsFailedPrecondition) {
  auto topo = TwoNodes();
  absl::StatusOr<std::unique_ptr<NodeMemorySource>> s =
      NodeMemorySource::Create(topo.get(), 1, MemoryPolicy::kStrict);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("not this system"));
}

TEST(NodeMemorySourceTest, AdvisoryOnSyntheticTopologyFallsBackAndSaysSo) {
  auto topo = TwoNodes();
  absl::StatusOr<std::unique_ptr<NodeMemorySource>> s =
      NodeMemorySource::Create(topo.get(), 1, MemoryPolicy::kAdvisory);
  ASSERT_TRUE(s.ok()) << s.status();
  NodeMemorySource& source = **s;
  EXPECT_EQ(source.name(), "node1/advisory");
  EXPECT_THAT(source.binding_unavailable_reason(),
              HasSubstr("not this system"));
  absl::StatusOr<Block> block = source.Allocate(100000, 64);
  ASSERT_TRUE(block.ok()) << block.status();
  std::memset(block->data, 1, block->size);  // Usable memory nonetheless.
  NodeMemorySourceStats stats = source.node_stats();
  EXPECT_EQ(stats.fallback_blocks, 1u);
  EXPECT_EQ(stats.bound_blocks, 0u);
  EXPECT_THAT(stats.last_fallback_reason, HasSubstr("not this system"));
  EXPECT_EQ(source.PageNodes(*block).status().code(),
            absl::StatusCode::kFailedPrecondition);
  source.Deallocate(*block);
  EXPECT_EQ(source.stats().bytes_outstanding, 0u);
}

TEST(NodeMemorySourceTest, SizesRoundToPagesAndHonourAlignment) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  for (MemoryPolicy policy :
       {MemoryPolicy::kNone, MemoryPolicy::kAdvisory, MemoryPolicy::kStrict}) {
    absl::StatusOr<std::unique_ptr<NodeMemorySource>> s =
        NodeMemorySource::Create(topo.get(), 0, policy);
    ASSERT_TRUE(s.ok()) << s.status();
    for (size_t alignment :
         {size_t{1}, size_t{64}, kPage, size_t{1} << 16, size_t{1} << 21}) {
      absl::StatusOr<Block> block = (*s)->Allocate(5000, alignment);
      ASSERT_TRUE(block.ok()) << block.status();
      EXPECT_EQ(block->size, 2 * kPage);
      EXPECT_EQ(block->alignment, alignment);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(block->data) % alignment, 0u);
      std::memset(block->data, 0xAB, block->size);
      (*s)->Deallocate(*block);
    }
    EXPECT_EQ((*s)->stats().allocations, 5u);
    EXPECT_EQ((*s)->stats().bytes_outstanding, 0u);
  }
}

TEST(NodeMemorySourceTest, InvalidSizeIsInvalidArgument) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  auto s = NodeMemorySource::Create(topo.get(), 0, MemoryPolicy::kStrict);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Allocate(0, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*s)->Allocate(8, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// An alignment above a page costs nothing beyond the block: the padding the
// alignment needed is unmapped, never bound nor committed. A bound block
// has its own memory policy, so it is a mapping of its own (the kernel
// does not merge it with unbound neighbours): that mapping is exactly the
// block, and a strict block's resident (committed) bytes are its size.
TEST(NodeMemorySourceTest, AlignmentAbovePageLeavesNoPaddingMapped) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  ASSERT_TRUE(topo->support().memory_binding);
  constexpr size_t kSize = size_t{64} << 10;
  constexpr size_t kAlignment = size_t{2} << 20;
  for (MemoryPolicy policy : {MemoryPolicy::kStrict, MemoryPolicy::kAdvisory}) {
    SCOPED_TRACE(MemoryPolicyName(policy));
    auto s = NodeMemorySource::Create(topo.get(), 0, policy);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::StatusOr<Block> block = (*s)->Allocate(kSize, kAlignment);
    ASSERT_TRUE(block.ok()) << block.status();
    EXPECT_EQ(block->size, kSize);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(block->data) % kAlignment, 0u);
    const Mapping before = MappingAt(block->data);
    std::memset(block->data, 0xC3, block->size);  // Writable.
    EXPECT_EQ(before.begin, reinterpret_cast<uintptr_t>(block->data));
    EXPECT_EQ(before.end, reinterpret_cast<uintptr_t>(block->end()));
    if (policy == MemoryPolicy::kStrict) {
      EXPECT_EQ(before.rss, kSize);  // Committed by Allocate: the block only.
    }
    EXPECT_EQ((*s)->node_stats().bound_blocks, 1u);
    EXPECT_EQ((*s)->node_stats().fallback_blocks, 0u);
    (*s)->Deallocate(*block);
    // Exactly the block went back: none of its pages is mapped any more.
    for (const char* page = block->begin(); page < block->end();
         page += kPage) {
      EXPECT_FALSE(PageMapped(page)) << static_cast<const void*>(page);
    }
  }
}

// Deallocate cannot know every foreign block, but one whose address is not
// aligned as it claims (or not even page-aligned) is not one of its own: it
// is reported as misuse and nothing is unmapped.
TEST(NodeMemorySourceTest, DeallocateReportsMisalignedBlock) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  auto s = NodeMemorySource::Create(topo.get(), 0, MemoryPolicy::kAdvisory);
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<Block> block = (*s)->Allocate(4 * kPage, size_t{1} << 16);
  ASSERT_TRUE(block.ok()) << block.status();
  std::vector<std::string> reports;
  {
    ScopedErrorHandler handler(
        [](const ErrorReport& report, void* context) {
          EXPECT_EQ(report.kind, ErrorKind::kMisuse);
          EXPECT_EQ(report.where, "NodeMemorySource::Deallocate");
          static_cast<std::vector<std::string>*>(context)->push_back(
              report.message);
        },
        &reports);
    // Page-aligned but not aligned as it claims; then not page-aligned.
    (*s)->Deallocate(Block{block->begin() + kPage, kPage, size_t{1} << 16});
    (*s)->Deallocate(Block{block->begin() + 64, kPage, 64});
  }
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_THAT(reports[0], HasSubstr("not allocated here"));
  EXPECT_THAT(reports[1], HasSubstr("not allocated here"));
  // Refused, so not counted: the block is still out, whole (regression:
  // counted as released, and the real release then wrapped the count).
  EXPECT_EQ((*s)->stats().deallocations, 0u);
  EXPECT_EQ((*s)->stats().bytes_outstanding, block->size);
  for (const char* page = block->begin(); page < block->end(); page += kPage) {
    EXPECT_TRUE(PageMapped(page)) << static_cast<const void*>(page);
  }
  std::memset(block->data, 1, block->size);  // Still ours and usable.
  (*s)->Deallocate(*block);
  EXPECT_FALSE(PageMapped(block->data));
  EXPECT_EQ((*s)->stats().deallocations, 1u);
  EXPECT_EQ((*s)->stats().bytes_outstanding, 0u);
}

// The real machine: every touched page of a block bound to node 0 is on
// node 0, and the binding was real (counted as bound, no fallback).
TEST(NodeMemorySourceTest, StrictBlocksOfNodeZeroAreOnNodeZero) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  ASSERT_TRUE(topo->support().memory_binding);
  ASSERT_TRUE(topo->support().page_location);
  for (MemoryPolicy policy : {MemoryPolicy::kStrict, MemoryPolicy::kAdvisory}) {
    auto s = NodeMemorySource::Create(topo.get(), 0, policy);
    ASSERT_TRUE(s.ok()) << s.status();
    std::vector<Block> blocks;
    for (size_t size : {size_t{64} << 10, size_t{1} << 20, size_t{4} << 20}) {
      absl::StatusOr<Block> block = (*s)->Allocate(size, 64);
      ASSERT_TRUE(block.ok()) << block.status();
      std::memset(block->data, 0x5A, block->size);  // First touch.
      absl::StatusOr<std::vector<int>> nodes = (*s)->PageNodes(*block);
      ASSERT_TRUE(nodes.ok()) << nodes.status();
      EXPECT_EQ(nodes->size(), block->size / kPage);
      EXPECT_THAT(*nodes, Each(0)) << MemoryPolicyName(policy);
      blocks.push_back(*block);
    }
    NodeMemorySourceStats stats = (*s)->node_stats();
    EXPECT_EQ(stats.bound_blocks, 3u);
    EXPECT_EQ(stats.fallback_blocks, 0u) << stats.last_fallback_reason;
    EXPECT_EQ(stats.last_fallback_reason, "");
    for (const Block& b : blocks) (*s)->Deallocate(b);
  }
}

// Every node of the real machine (one here; all of them on a multi-node
// machine or a qemu guest with -numa): strict blocks land on their node.
TEST(NodeMemorySourceTest, StrictBlocksOfEveryNodeAreOnThatNode) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  for (int k = 0; k < topo->num_nodes(); ++k) {
    if (topo->node(k).local_memory < (size_t{64} << 20)) continue;
    auto s = NodeMemorySource::Create(topo.get(), k, MemoryPolicy::kStrict);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::StatusOr<Block> block = (*s)->Allocate(size_t{2} << 20, 64);
    ASSERT_TRUE(block.ok()) << block.status();
    std::memset(block->data, 0x5A, block->size);
    absl::StatusOr<std::vector<int>> nodes = (*s)->PageNodes(*block);
    ASSERT_TRUE(nodes.ok()) << nodes.status();
    EXPECT_THAT(*nodes, Each(k)) << "node " << k;
    (*s)->Deallocate(*block);
  }
}

// kNone memory is placed by first touch: on the node of the touching thread
// (the last node here, bound for the test), and untouched pages nowhere.
TEST(NodeMemorySourceTest, UnboundPagesLandWhereFirstTouched) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  auto s = NodeMemorySource::Create(topo.get(), 0, MemoryPolicy::kNone);
  ASSERT_TRUE(s.ok()) << s.status();
  const int last = topo->num_nodes() - 1;
  std::thread([&] {
    ASSERT_TRUE(BindThreadToNode(*topo, last).ok());
    absl::StatusOr<Block> block = (*s)->Allocate(4 * kPage, kPage);
    ASSERT_TRUE(block.ok()) << block.status();
    static_cast<char*>(block->data)[kPage] = 1;  // Touch only page 1.
    absl::StatusOr<std::vector<int>> nodes = (*s)->PageNodes(*block);
    ASSERT_TRUE(nodes.ok()) << nodes.status();
    EXPECT_EQ(*nodes, (std::vector<int>{-1, last, -1, -1}));
    (*s)->Deallocate(*block);
  }).join();
  EXPECT_EQ((*s)->node_stats().unbound_blocks, 1u);
}

// Regression: PageNodes reserved one entry per page before any check, so a
// block of 2^46 bytes threw std::bad_alloc out of a Status-returning call
// (a 64 GiB reserve) and a size whose end wraps made the page count wrap
// too. Both are InvalidArgument now, before anything is reserved or asked.
// Regression: a block in the last page of the address space stepped its
// page address past UINTPTR_MAX, back to 0, and the walk never ended (the
// result grew until std::bad_alloc, which PageNodes must never throw); a
// block whose page count wrapped to 0 did the same. Each call runs in a
// child process with an alarm, so the old behaviour fails instead of
// hanging the test.
TEST(PageNodesDeathTest, ABlockAtTheEndOfTheAddressSpaceReturns) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  if (!topo->support().page_location) GTEST_SKIP() << "no page location";
  const uintptr_t last_page = UINTPTR_MAX & ~uintptr_t{4095};
  const struct {
    uintptr_t data;
    size_t size;
  } cases[] = {
      {last_page, 4095},       // Up to UINTPTR_MAX: one page.
      {last_page + 4000, 95},  // Inside the last page.
      {1, static_cast<size_t>(UINTPTR_MAX - 1)},  // The count used to wrap.
  };
  for (const auto& c : cases) {
    EXPECT_EXIT(
        {
          alarm(20);  // The old walk: killed by SIGALRM.
          try {
            absl::StatusOr<std::vector<int>> r = PageNodes(
                *topo, Block{reinterpret_cast<void*>(c.data), c.size, 1});
            // One page, not mapped (-1); or a Status (too many pages, or
            // hwloc cannot look the page up).
            if (r.ok()) std::_Exit(r->size() == 1 && (*r)[0] == -1 ? 0 : 2);
            const absl::StatusCode code = r.status().code();
            std::_Exit(code == absl::StatusCode::kInvalidArgument ||
                               code == absl::StatusCode::kFailedPrecondition
                           ? 0
                           : 3);
          } catch (...) {
            std::_Exit(4);
          }
        },
        ::testing::ExitedWithCode(0), "")
        << "block of " << c.size << " bytes at 0x" << std::hex << c.data;
  }
}

TEST(PageNodesTest, AHugeOrWrappingRangeIsInvalidArgument) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  if (!topo->support().page_location) GTEST_SKIP() << "no page location";
  std::vector<char> v(4096, 1);
  absl::StatusOr<std::vector<int>> huge =
      PageNodes(*topo, Block{v.data(), size_t{1} << 46, 1});
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(huge.status().message(), HasSubstr("kPageNodesMaxPages"));
  absl::StatusOr<std::vector<int>> wraps =
      PageNodes(*topo, Block{v.data(), SIZE_MAX, 1});
  EXPECT_EQ(wraps.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wraps.status().message(), HasSubstr("wraps"));
  // A range within the bound is answered page by page; -1 stands both for
  // a page not touched yet and for one not mapped at all.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, 4 * page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 1, 2 * page);  // Pages 0 and 1 touched, 2 and 3 not.
  absl::StatusOr<std::vector<int>> four =
      PageNodes(*topo, Block{p, 4 * page, 1});
  ASSERT_TRUE(four.ok()) << four.status();
  ASSERT_EQ(four->size(), 4u);
  EXPECT_GE((*four)[0], 0);
  EXPECT_GE((*four)[1], 0);
  EXPECT_EQ((*four)[2], -1);  // Mapped, not touched yet.
  ASSERT_EQ(munmap(static_cast<char*>(p) + 3 * page, page), 0);
  four = PageNodes(*topo, Block{p, 4 * page, 1});
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ((*four)[3], -1);  // Not mapped at all: also -1 (documented).
  munmap(p, 3 * page);
}

TEST(NodeMemorySourceTest, ConcurrentAllocationsAreCounted) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  auto s = NodeMemorySource::Create(topo.get(), 0, MemoryPolicy::kAdvisory);
  ASSERT_TRUE(s.ok()) << s.status();
  for (int threads : {1, 2, 4}) {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        for (int i = 0; i < 50; ++i) {
          absl::StatusOr<Block> b =
              (*s)->Allocate(kPage * (1 + i % 3), i % 2 ? kPage : 1 << 16);
          ASSERT_TRUE(b.ok());
          static_cast<char*>(b->data)[0] = 1;
          (*s)->Deallocate(*b);
        }
      });
    }
    for (std::thread& w : workers) w.join();
  }
  EXPECT_EQ((*s)->stats().allocations, 350u);
  EXPECT_EQ((*s)->stats().bytes_outstanding, 0u);
  EXPECT_EQ((*s)->node_stats().bound_blocks, 350u);
}

}  // namespace
}  // namespace numa
}  // namespace framealloc
