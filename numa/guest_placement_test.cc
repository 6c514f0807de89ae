// Real NUMA outcomes: where memory lands, what binding to an absent or full
// node answers, where pinned threads run, and where NumaAlloc::local()
// routes a thread that moves between nodes.
//
// For: running inside qemu guests with 2, 4 and asymmetric NUMA nodes
// (numa_guest_test targets in numa/BUILD.bazel), where the kernel really
// places pages by node and move_pages(2) reports them; every page of every
// block checked is asked for. Not for: logic on injected topologies (the
// other numa tests do that) nor timing (the guest is emulated).
//
// It also runs on the host, an ordinary cc_test: the checks that mean
// something on one node (placement on node 0, the absent-node and
// larger-than-the-node errors, pinning) run there too; the ones that need
// two nodes or a small node (a thread moved between nodes, filling a node,
// advisory spill) GTEST_SKIP with the reason. Keeping it in the host run
// costs a second and keeps it built and checked under ASan/TSan, which the
// guests skip.
#include <sched.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "alloc/smart_alloc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "numa/binding.h"
#include "numa/node_memory_source.h"
#include "numa/numa_alloc.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = size_t{1} << 20;
const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

std::unique_ptr<Topology> Machine() {
  absl::StatusOr<std::unique_ptr<Topology>> topo = Topology::Discover();
  EXPECT_TRUE(topo.ok()) << topo.status();
  return topo.ok() ? *std::move(topo) : nullptr;
}

// Writes every byte of [data, data + size) and checks that every page of it
// is on node `node`. Returns the number of pages checked (0 on error);
// reports the first misplaced page and how many there are.
size_t ExpectEveryPageOn(const Topology& topo, void* data, size_t size,
                         int node, const std::string& what) {
  std::memset(data, 0x5A, size);  // First touch, if it is the first.
  absl::StatusOr<std::vector<int>> nodes =
      PageNodes(topo, Block{data, size, 1});
  EXPECT_TRUE(nodes.ok()) << what << ": " << nodes.status();
  if (!nodes.ok()) return 0;
  size_t wrong = 0;
  size_t first_wrong = 0;
  for (size_t i = 0; i < nodes->size(); ++i) {
    if ((*nodes)[i] != node && wrong++ == 0) first_wrong = i;
  }
  EXPECT_EQ(wrong, 0u) << what << ": " << wrong << " of " << nodes->size()
                       << " pages are not on node " << node << "; page "
                       << first_wrong << " is on node "
                       << (*nodes)[first_wrong];
  return nodes->size();
}

// The node with the least memory, and its size.
int SmallestNode(const Topology& topo) {
  int smallest = 0;
  for (int k = 1; k < topo.num_nodes(); ++k) {
    if (topo.node(k).local_memory < topo.node(smallest).local_memory) {
      smallest = k;
    }
  }
  return smallest;
}

// Filling a node is only sensible where the node is small (a guest node);
// on a host with gigabytes per node it would take seconds and push other
// processes out.
constexpr int64_t kMaxFill = int64_t{768} << 20;

// The guest's layout as the runner passes it (FRAMEALLOC_GUEST_LAYOUT,
// "CPUS:MIB,..."): the topology hwloc discovers must be that machine, or
// every other result here means nothing.
TEST(GuestPlacementTest, TopologyIsTheGuestLayout) {
  const char* layout = std::getenv("FRAMEALLOC_GUEST_LAYOUT");
  if (layout == nullptr) {
    GTEST_SKIP() << "not in a numa_guest_test guest (no "
                    "FRAMEALLOC_GUEST_LAYOUT)";
  }
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  ASSERT_TRUE(topo->is_this_system());
  std::vector<std::string> entries = absl::StrSplit(layout, ',');
  ASSERT_EQ(topo->num_nodes(), static_cast<int>(entries.size()))
      << topo->ToString();
  int first_cpu = 0;
  for (int k = 0; k < topo->num_nodes(); ++k) {
    std::vector<std::string> cpus_mib = absl::StrSplit(entries[k], ':');
    ASSERT_EQ(cpus_mib.size(), 2u) << entries[k];
    int cpus = 0;
    uint64_t mib = 0;
    ASSERT_TRUE(absl::SimpleAtoi(cpus_mib[0], &cpus));
    ASSERT_TRUE(absl::SimpleAtoi(cpus_mib[1], &mib));
    std::vector<int> expected_pus;
    for (int c = 0; c < cpus; ++c) expected_pus.push_back(first_cpu + c);
    first_cpu += cpus;
    EXPECT_EQ(topo->node(k).pus, expected_pus) << "node " << k;
    // The kernel keeps part of the memory for itself (and the initramfs).
    EXPECT_LE(topo->node(k).local_memory, mib * kMiB) << "node " << k;
    EXPECT_GE(topo->node(k).local_memory, mib * kMiB / 3) << "node " << k;
  }
  EXPECT_TRUE(topo->support().memory_binding);
  EXPECT_TRUE(topo->support().page_location);
  EXPECT_TRUE(topo->support().thread_binding);
}

// Each node's SmartAlloc, strict policy, used from a thread pinned to that
// node: every page of every frame chunk (each filled to its end), of an
// oversize block, of a scoped arena's chunk and of its pool objects is on
// that node; every block the node's source handed out was bound.
TEST(GuestPlacementTest, EveryNodesSmartAllocMemoryIsOnThatNode) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  // No guards (a --config=debug default): each chunk is filled exactly.
  auto numa = NumaAlloc::Create(
      topo.get(),
      NumaAllocOptions()
          .set_policy(MemoryPolicy::kStrict)
          .set_config(AllocConfig().set_debug(DebugOptions::None())));
  ASSERT_TRUE(numa.ok()) << numa.status();
  struct Item {
    char bytes[200];
  };
  for (int k = 0; k < topo->num_nodes(); ++k) {
    ASSERT_FALSE(topo->node(k).pus.empty()) << "node " << k << " has no CPU";
    size_t pages = 0;
    std::thread([&] {
      ASSERT_TRUE(BindThreadToNode(*topo, k).ok());
      SmartAlloc& a = (*numa)->local();
      ASSERT_EQ(&a, &(*numa)->node(k)) << "node " << k;
      for (int frame = 0; frame < 2; ++frame) {  // The second reuses chunks.
        a.begin_frame();
        // Five chunks (64 KiB doubling to 1 MiB), each filled to its end so
        // that every page of it is checked.
        for (int chunk = 0; chunk < 5; ++chunk) {
          void* head = a.frame_allocate(kPage, 1);  // Opens a new chunk.
          const size_t rest = a.frame_arena().remaining_in_chunk();
          void* tail = a.frame_allocate(rest, 1);
          ASSERT_EQ(static_cast<char*>(tail), static_cast<char*>(head) + kPage);
          pages += ExpectEveryPageOn(
              *topo, head, kPage + rest, k,
              absl::StrCat("node ", k, " frame ", frame, " chunk ", chunk));
        }
        std::span<char> oversize = a.frame_array<char>(3 * kMiB);
        pages += ExpectEveryPageOn(*topo, oversize.data(), oversize.size(), k,
                                   absl::StrCat("node ", k, " oversize"));
        a.end_frame();
      }
      std::unique_ptr<FrameArena> scoped = a.new_scoped_arena();
      void* s = scoped->Allocate(kPage, 1);
      const size_t rest = scoped->remaining_in_chunk();
      scoped->Allocate(rest, 1);
      pages += ExpectEveryPageOn(*topo, s, kPage + rest, k,
                                 absl::StrCat("node ", k, " scoped arena"));
      std::vector<Item*> items;
      for (int i = 0; i < 2000; ++i) {
        items.push_back((*numa)->allocate_on_node<Item>(k));
      }
      // Items are contiguous in pool pages: check each page they cover once.
      std::set<uintptr_t> item_pages;
      for (Item* item : items) {
        std::memset(item, 0x5A, sizeof(Item));
        const uintptr_t first = reinterpret_cast<uintptr_t>(item) / kPage;
        const uintptr_t last =
            (reinterpret_cast<uintptr_t>(item) + sizeof(Item) - 1) / kPage;
        for (uintptr_t p = first; p <= last; ++p) item_pages.insert(p);
      }
      size_t misplaced = 0;
      for (uintptr_t p : item_pages) {
        absl::StatusOr<std::vector<int>> on = PageNodes(
            *topo, Block{reinterpret_cast<void*>(p * kPage), kPage, 1});
        ASSERT_TRUE(on.ok()) << on.status();
        if ((*on)[0] != k) ++misplaced;
      }
      pages += item_pages.size();
      EXPECT_EQ(misplaced, 0u)
          << "node " << k << ": " << misplaced << " of " << item_pages.size()
          << " pool pages are on another node";
      for (Item* item : items) (*numa)->free_on_node(k, item);
    }).join();
    // Ten chunks of 64 KiB or more, two 3 MiB blocks, a scoped chunk.
    EXPECT_GE(pages, (11 * 64 * 1024 + 2 * 3 * kMiB) / kPage);
  }
  NumaAllocStats stats = (*numa)->stats();
  for (const NumaNodeStats& n : stats.nodes) {
    EXPECT_GT(n.source.allocations, 0u) << "node " << n.node;
    EXPECT_EQ(n.binding.bound_blocks, n.source.allocations)
        << "node " << n.node;
    EXPECT_EQ(n.binding.fallback_blocks, 0u) << n.binding.last_fallback_reason;
    EXPECT_EQ(n.remote_allocations, 0u) << "node " << n.node;
    EXPECT_EQ(n.local_routes, 1u) << "node " << n.node;
  }
  EXPECT_EQ(stats.fallback_routes, 0u);
}

// Binding to a node the machine does not have is InvalidArgument naming it,
// for memory (a source, NumaAlloc::on_node) and for threads.
TEST(GuestPlacementTest, BindingToAnAbsentNodeIsInvalidArgument) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  const int absent = topo->num_nodes();
  auto source =
      NodeMemorySource::Create(topo.get(), absent, MemoryPolicy::kStrict);
  ASSERT_FALSE(source.ok());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(source.status().message()),
              HasSubstr(absl::StrCat(absent)));
  auto numa = NumaAlloc::Create(
      topo.get(), NumaAllocOptions().set_policy(MemoryPolicy::kStrict));
  ASSERT_TRUE(numa.ok()) << numa.status();
  EXPECT_EQ((*numa)->on_node(absent).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BindThreadToNode(*topo, absent).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScopedThreadBinding::ToNode(*topo, absent).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A strict block larger than the node's memory is refused with
// ResourceExhausted naming the node (not the OOM killer at first touch).
TEST(GuestPlacementTest, StrictBlockLargerThanTheNodeIsResourceExhausted) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  const int k = SmallestNode(*topo);
  auto source = NodeMemorySource::Create(topo.get(), k, MemoryPolicy::kStrict);
  ASSERT_TRUE(source.ok()) << source.status();
  const int64_t available = (*source)->AvailableBytes();
  ASSERT_GT(available, 0) << "the kernel does not report node " << k
                          << "'s free memory";
  EXPECT_LE(static_cast<uint64_t>(available), topo->node(k).local_memory);
  absl::StatusOr<Block> block =
      (*source)->Allocate(topo->node(k).local_memory + kMiB, kPage);
  ASSERT_FALSE(block.ok());
  EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(block.status().message()),
              HasSubstr(absl::StrCat("to node ", k, " refused")));
  EXPECT_EQ((*source)->stats().failures, 1u);
  // The node is still usable.
  absl::StatusOr<Block> small = (*source)->Allocate(kMiB, kPage);
  ASSERT_TRUE(small.ok()) << small.status();
  ExpectEveryPageOn(*topo, small->data, small->size, k, "after the refusal");
  (*source)->Deallocate(*small);
}

// A node filled by strict blocks refuses the next one that does not fit
// (ResourceExhausted), still serves one that does, and every page of the
// filling blocks is on it. Every node small enough to fill, in turn (the
// node holding the kernel and the initramfs too).
TEST(GuestPlacementTest, StrictBlockOnAFullNodeIsResourceExhausted) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  int filled = 0;
  for (int k = 0; k < topo->num_nodes(); ++k) {
    auto source =
        NodeMemorySource::Create(topo.get(), k, MemoryPolicy::kStrict);
    ASSERT_TRUE(source.ok()) << source.status();
    const int64_t available = (*source)->AvailableBytes();
    if (available < int64_t{32} << 20 || available > kMaxFill) continue;
    ++filled;
    // Fill all but 12 MiB (strict blocks are committed on allocation). The
    // margin pays for the filler's page tables (about 0.5 MiB per 256 MiB)
    // and whatever the guest's kernel takes meanwhile: with 4 MiB, one CI
    // run found 400 KiB left for the 1 MiB block below.
    const size_t fill =
        (static_cast<size_t>(available) - 12 * kMiB) & ~(kPage - 1);
    absl::StatusOr<Block> filler = (*source)->Allocate(fill, kPage);
    ASSERT_TRUE(filler.ok()) << filler.status();
    const int64_t left = (*source)->AvailableBytes();
    EXPECT_LT(left, int64_t{24} << 20)
        << "node " << k << ": the filler was not committed";
    absl::StatusOr<Block> refused = (*source)->Allocate(32 * kMiB, kPage);
    ASSERT_FALSE(refused.ok()) << "node " << k;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(refused.status().message()),
                HasSubstr(absl::StrCat("node ", k)));
    absl::StatusOr<Block> fits = (*source)->Allocate(kMiB, kPage);
    ASSERT_TRUE(fits.ok()) << fits.status();
    ExpectEveryPageOn(*topo, filler->data, filler->size, k,
                      absl::StrCat("node ", k, " filler"));
    ExpectEveryPageOn(*topo, fits->data, fits->size, k,
                      absl::StrCat("node ", k, " fits"));
    (*source)->Deallocate(*fits);
    (*source)->Deallocate(*filler);
    EXPECT_EQ((*source)->node_stats().bound_blocks, 2u);
  }
  if (filled == 0) {
    GTEST_SKIP() << "no node has between 32 MiB and " << (kMaxFill >> 20)
                 << " MiB available; filling one takes a small node (a "
                    "guest's)";
  }
}

// Advisory binding of more than the node has: the block is handed out, its
// pages fill the node and spill to another one, and the source reports the
// fallback with its reason. A block that fits is bound with no fallback.
TEST(GuestPlacementTest, AdvisoryBindingReportsTheSpillOfAFullNode) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  if (topo->num_nodes() < 2) {
    GTEST_SKIP() << "one node: memory has nowhere to spill";
  }
  const int k = SmallestNode(*topo);
  auto source =
      NodeMemorySource::Create(topo.get(), k, MemoryPolicy::kAdvisory);
  ASSERT_TRUE(source.ok()) << source.status();
  const int64_t available = (*source)->AvailableBytes();
  if (available < 0 || available > kMaxFill) {
    GTEST_SKIP() << "node " << k << " has " << available
                 << " bytes available; overfilling it takes a small node";
  }
  absl::StatusOr<Block> fits = (*source)->Allocate(kMiB, kPage);
  ASSERT_TRUE(fits.ok()) << fits.status();
  ExpectEveryPageOn(*topo, fits->data, fits->size, k, "advisory, fits");
  EXPECT_EQ((*source)->node_stats().bound_blocks, 1u);
  EXPECT_EQ((*source)->node_stats().fallback_blocks, 0u);

  const size_t size = static_cast<size_t>(available) + 32 * kMiB;
  absl::StatusOr<Block> big = (*source)->Allocate(size, kPage);
  ASSERT_TRUE(big.ok()) << big.status();
  NodeMemorySourceStats stats = (*source)->node_stats();
  EXPECT_EQ(stats.fallback_blocks, 1u);
  EXPECT_EQ(stats.bound_blocks, 1u);
  EXPECT_THAT(stats.last_fallback_reason,
              HasSubstr(absl::StrCat("node ", k, " has")));
  EXPECT_THAT(stats.last_fallback_reason, HasSubstr("spill"));
  std::memset(big->data, 1, big->size);
  absl::StatusOr<std::vector<int>> nodes = (*source)->PageNodes(*big);
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  size_t on_node = 0, elsewhere = 0, nowhere = 0;
  for (int n : *nodes) {
    if (n == k) {
      ++on_node;
    } else if (n >= 0) {
      ++elsewhere;
    } else {
      ++nowhere;
    }
  }
  // Preferred: most of the node's room is used, the rest went elsewhere.
  EXPECT_GT(on_node * kPage, static_cast<size_t>(available) / 2);
  EXPECT_GE(elsewhere * kPage, 16 * kMiB);
  EXPECT_EQ(nowhere, 0u);
  (*source)->Deallocate(*big);
  (*source)->Deallocate(*fits);
}

// One thread moved from node to node (ScopedThreadBinding), three rounds:
// after each move local() answers the new node's SmartAlloc, and the frame
// memory it hands out is on that node.
TEST(GuestPlacementTest, LocalFollowsAThreadMovedBetweenNodes) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  if (topo->num_nodes() < 2) {
    GTEST_SKIP() << "one node: a thread cannot move between nodes";
  }
  auto numa = NumaAlloc::Create(
      topo.get(), NumaAllocOptions().set_policy(MemoryPolicy::kAdvisory));
  ASSERT_TRUE(numa.ok()) << numa.status();
  constexpr int kRounds = 3;
  std::thread([&] {
    for (int round = 0; round < kRounds; ++round) {
      // Forward, then backward: every move changes node.
      for (int i = 0; i < topo->num_nodes(); ++i) {
        const int k = round % 2 == 0 ? i : topo->num_nodes() - 1 - i;
        absl::StatusOr<ScopedThreadBinding> bound =
            ScopedThreadBinding::ToNode(*topo, k);
        ASSERT_TRUE(bound.ok()) << bound.status();
        EXPECT_EQ((*numa)->local_node(), k);
        SmartAlloc& a = (*numa)->local();
        ASSERT_EQ(&a, &(*numa)->node(k))
            << "round " << round << ": routed to another node than " << k;
        a.begin_frame();
        std::span<char> bytes = a.frame_array<char>(256 << 10);
        ExpectEveryPageOn(*topo, bytes.data(), bytes.size(), k,
                          absl::StrCat("round ", round, " node ", k));
        a.end_frame();
      }
    }
  }).join();
  NumaAllocStats stats = (*numa)->stats();
  for (const NumaNodeStats& n : stats.nodes) {
    EXPECT_EQ(n.local_routes, static_cast<uint64_t>(kRounds))
        << "node " << n.node;
  }
  EXPECT_EQ(stats.fallback_routes, 0u);
}

// A thread pinned to node k (BindThreadToNode) runs only on node k's CPUs:
// sched_getcpu() sampled 2000 times, yielding between samples so the
// scheduler has every chance to move it. With as many pinned threads as
// the node has CPUs, at once.
TEST(GuestPlacementTest, PinnedThreadsRunOnlyOnTheirNodesCpus) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  for (int k = 0; k < topo->num_nodes(); ++k) {
    const std::vector<int>& pus = topo->node(k).pus;
    ASSERT_FALSE(pus.empty()) << "node " << k;
    const std::set<int> allowed(pus.begin(), pus.end());
    const int threads = static_cast<int>(pus.size());
    std::vector<std::vector<int>> seen(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        ASSERT_TRUE(BindThreadToNode(*topo, k).ok());
        for (int i = 0; i < 2000; ++i) {
          seen[t].push_back(sched_getcpu());
          sched_yield();
        }
      });
    }
    for (std::thread& w : workers) w.join();
    for (int t = 0; t < threads; ++t) {
      ASSERT_EQ(seen[t].size(), 2000u);
      int outside = 0;
      int example = -1;
      for (int cpu : seen[t]) {
        if (!allowed.contains(cpu)) {
          ++outside;
          example = cpu;
        }
      }
      EXPECT_EQ(outside, 0)
          << "thread " << t << " pinned to node " << k << " ran on CPU "
          << example << ", " << outside << " of 2000 samples outside the node";
    }
  }
}

}  // namespace
}  // namespace numa
}  // namespace framealloc
