#include "numa/numa_alloc.h"

#include <unistd.h>

#include <cstring>
#include <memory>
#include <set>
#include <span>
#include <stdexcept>
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

// The node each test thread pretends to run on (-1: unknown).
thread_local int fake_node = -1;

absl::StatusOr<int> FakeCurrentNode() {
  if (fake_node < 0) return absl::FailedPreconditionError("unknown");
  return fake_node;
}

std::unique_ptr<Topology> Synthetic(const char* description) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromSynthetic(description);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::unique_ptr<NumaAlloc> MustCreate(const Topology* topology,
                                      NumaAllocOptions options) {
  absl::StatusOr<std::unique_ptr<NumaAlloc>> a =
      NumaAlloc::Create(topology, std::move(options));
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? std::move(*a) : nullptr;
}

struct Item {
  explicit Item(int v) : value(v) {}
  int value;
  char pad[60];
};

TEST(NumaAllocTest, OneDistinctAllocatorAndSourcePerNode) {
  auto topo = Synthetic("pack:4 [numa] core:2 pu:1");
  auto numa = MustCreate(topo.get(),
                         NumaAllocOptions().set_current_node(FakeCurrentNode));
  ASSERT_NE(numa, nullptr);
  ASSERT_EQ(numa->num_nodes(), 4);
  std::set<SmartAlloc*> allocs;
  for (int k = 0; k < 4; ++k) {
    absl::StatusOr<SmartAlloc*> a = numa->on_node(k);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(*a, &numa->node(k));
    allocs.insert(*a);
    EXPECT_EQ(numa->source(k).node(), k);
    EXPECT_EQ(numa->source(k).policy(), MemoryPolicy::kAdvisory);
  }
  EXPECT_EQ(allocs.size(), 4u);
}

TEST(NumaAllocTest, LocalRoutesToTheCallersNode) {
  auto topo = Synthetic("pack:2 [numa] core:4 pu:1");
  auto numa = MustCreate(topo.get(),
                         NumaAllocOptions().set_current_node(FakeCurrentNode));
  ASSERT_NE(numa, nullptr);
  std::thread([&] {
    fake_node = 1;
    EXPECT_EQ(&numa->local(), &numa->node(1));
    EXPECT_EQ(numa->local_node(), 1);
  }).join();
  std::thread([&] {
    fake_node = 0;
    EXPECT_EQ(&numa->local(), &numa->node(0));
    EXPECT_EQ(&numa->local(), &numa->node(0));
  }).join();
  NumaAllocStats stats = numa->stats();
  EXPECT_EQ(stats.nodes[0].local_routes, 2u);
  EXPECT_EQ(stats.nodes[1].local_routes, 1u);
  EXPECT_EQ(stats.fallback_routes, 0u);
}

TEST(NumaAllocTest, UnknownNodeFallsBackToNodeZeroAndCounts) {
  // No injected function: a synthetic topology has no current node.
  auto topo = Synthetic("pack:2 [numa] core:2 pu:1");
  auto numa = MustCreate(topo.get(), NumaAllocOptions());
  ASSERT_NE(numa, nullptr);
  EXPECT_EQ(&numa->local(), &numa->node(0));
  EXPECT_EQ(&numa->local(), &numa->node(0));
  Item* item = numa->allocate_on_node<Item>(1, 7);
  EXPECT_EQ(item->value, 7);
  numa->free_on_node(1, item);
  NumaAllocStats stats = numa->stats();
  EXPECT_EQ(stats.nodes[0].fallback_routes, 2u);
  EXPECT_EQ(stats.nodes[0].local_routes, 0u);
  EXPECT_EQ(stats.fallback_routes, 2u);
  EXPECT_EQ(stats.nodes[1].allocations, 1u);
  EXPECT_EQ(stats.nodes[1].unknown_caller_allocations, 1u);
  EXPECT_EQ(stats.nodes[1].remote_allocations, 0u);
}

TEST(NumaAllocTest, AllocateOnNodeCountsRemoteCallers) {
  auto topo = Synthetic("pack:4 [numa] core:1 pu:1");
  auto numa = MustCreate(topo.get(),
                         NumaAllocOptions().set_current_node(FakeCurrentNode));
  ASSERT_NE(numa, nullptr);
  std::thread([&] {
    fake_node = 2;
    Item* local = numa->allocate_on_node<Item>(2, 1);
    Item* remote = numa->allocate_on_node<Item>(3, 2);
    Item* remote2 = numa->allocate_on_node<Item>(3, 3);
    EXPECT_EQ(local->value + remote->value + remote2->value, 6);
    numa->free_on_node(2, local);
    numa->free_on_node(3, remote);
    numa->free_on_node(3, remote2);
  }).join();
  NumaAllocStats stats = numa->stats();
  EXPECT_EQ(stats.nodes[2].allocations, 1u);
  EXPECT_EQ(stats.nodes[2].remote_allocations, 0u);
  EXPECT_EQ(stats.nodes[3].allocations, 2u);
  EXPECT_EQ(stats.nodes[3].remote_allocations, 2u);
  EXPECT_EQ(stats.remote_allocations, 2u);
  // Each object went to its node's SmartAlloc and came back.
  EXPECT_EQ(stats.nodes[2].alloc.pool.allocations, 1u);
  EXPECT_EQ(stats.nodes[3].alloc.pool.allocations, 2u);
  EXPECT_EQ(stats.nodes[3].alloc.pool.frees, 2u);
  EXPECT_EQ(stats.nodes[0].alloc.pool.allocations, 0u);
  // Advisory on a synthetic topology: blocks came, unbound, and said so.
  EXPECT_GT(stats.nodes[3].binding.fallback_blocks, 0u);
  EXPECT_EQ(stats.nodes[3].binding.bound_blocks, 0u);
  EXPECT_THAT(stats.nodes[3].binding.last_fallback_reason,
              HasSubstr("not this system"));
}

TEST(NumaAllocTest, RoutingFromManyThreads) {
  auto topo = Synthetic("pack:4 [numa] core:2 pu:1");
  for (int threads : {1, 2, 4, 8}) {
    auto numa = MustCreate(
        topo.get(), NumaAllocOptions().set_current_node(FakeCurrentNode));
    ASSERT_NE(numa, nullptr);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        fake_node = t % 4;
        for (int i = 0; i < 100; ++i) {
          SmartAlloc& a = numa->local();
          EXPECT_EQ(&a, &numa->node(t % 4));
          Item* item = a.pool_alloc<Item>(i);
          std::span<int> frame = a.frame_array<int>(16);
          frame[0] = item->value;
          a.pool_free(item);
          a.end_frame();
        }
      });
    }
    for (std::thread& w : workers) w.join();
    NumaAllocStats stats = numa->stats();
    uint64_t routes = 0;
    for (int k = 0; k < 4; ++k) {
      const uint64_t expected = 100u * ((threads + 3 - k) / 4);
      EXPECT_EQ(stats.nodes[k].local_routes, expected) << k;
      EXPECT_EQ(stats.nodes[k].alloc.pool.allocations, expected) << k;
      routes += stats.nodes[k].local_routes;
    }
    EXPECT_EQ(routes, 100u * threads);
  }
}

TEST(NumaAllocTest, BadNodeIsInvalidArgument) {
  auto topo = Synthetic("pack:2 [numa] core:1 pu:1");
  auto numa = MustCreate(topo.get(), NumaAllocOptions());
  ASSERT_NE(numa, nullptr);
  absl::StatusOr<SmartAlloc*> a = numa->on_node(2);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("node 2"));
  EXPECT_EQ(numa->on_node(-1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NumaAllocTest, AllocateOnBadNodeIsAFatalInvalidArgument) {
  auto topo = Synthetic("pack:2 [numa] core:1 pu:1");
  auto numa = MustCreate(topo.get(), NumaAllocOptions());
  ASSERT_NE(numa, nullptr);
  EXPECT_DEATH(numa->allocate_on_node<Item>(5, 1),
               "invalid argument in NumaAlloc::allocate_on_node: node 5 is "
               "outside \\[0, 2\\)");
  EXPECT_DEATH(numa->node(-1), "invalid argument in NumaAlloc::node: node -1");
  EXPECT_EQ(numa->stats().nodes[0].allocations, 0u);
}

// A bad node in a free is a reported misuse that leaves the object alone
// (before: a fatal error, so the default handler's abort, and a throwing
// handler's exception out of the free).
TEST(NumaAllocTest, FreeOnBadNodeIsAReportedMisuseThatLeavesTheObject) {
  auto topo = Synthetic("pack:2 [numa] core:1 pu:1");
  auto numa = MustCreate(topo.get(), NumaAllocOptions());
  ASSERT_NE(numa, nullptr);
  Item* item = numa->allocate_on_node<Item>(1, 5);
  std::vector<ErrorReport> reports;
  {
    ScopedErrorHandler handler(
        [](const ErrorReport& report, void* context) {
          static_cast<std::vector<ErrorReport>*>(context)->push_back(report);
          throw std::runtime_error("a handler that throws");
        },
        &reports);
    numa->free_on_node(2, item);  // Returns: the throw is dropped.
    numa->free_on_node(-1, item);
  }
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].kind, ErrorKind::kMisuse);
  EXPECT_THAT(reports[0].message, HasSubstr("node 2 is outside [0, 2)"));
  EXPECT_EQ(item->value, 5);  // Left alone.
  EXPECT_EQ(numa->stats().nodes[1].alloc.pool.frees, 0u);
  numa->free_on_node(1, item);
  EXPECT_EQ(numa->stats().nodes[1].alloc.pool.frees, 1u);
  EXPECT_EQ(numa->stats().nodes[1].alloc.pool.live_bytes(), 0);
}

TEST(NumaAllocTest, StrictOnSyntheticTopologyIsRefused) {
  auto topo = Synthetic("pack:2 [numa] core:1 pu:1");
  absl::StatusOr<std::unique_ptr<NumaAlloc>> numa = NumaAlloc::Create(
      topo.get(), NumaAllocOptions().set_policy(MemoryPolicy::kStrict));
  EXPECT_EQ(numa.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(numa.status().message(), HasSubstr("not this system"));
}

TEST(NumaAllocTest, ConfigWithASourceIsInvalidArgument) {
  auto topo = Synthetic("pack:2 [numa] core:1 pu:1");
  absl::StatusOr<std::unique_ptr<NumaAlloc>> numa = NumaAlloc::Create(
      topo.get(), NumaAllocOptions().set_config(AllocConfig().set_source(
                      &SystemMemorySource::Default())));
  EXPECT_EQ(numa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(numa.status().message(), HasSubstr("config.source"));
  EXPECT_EQ(NumaAlloc::Create(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The real machine: strict binding, a thread bound to node 0 is routed to
// node 0, and every page of node 0's allocator's memory is on node 0.
TEST(NumaAllocTest, NodeZeroMemoryIsOnNodeZeroOnThisMachine) {
  absl::StatusOr<std::unique_ptr<Topology>> topo = Topology::Discover();
  ASSERT_TRUE(topo.ok()) << topo.status();
  auto numa = MustCreate(topo->get(),
                         NumaAllocOptions().set_policy(MemoryPolicy::kStrict));
  ASSERT_NE(numa, nullptr);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::thread([&] {
    absl::StatusOr<ScopedThreadBinding> bound =
        ScopedThreadBinding::ToNode(**topo, 0);
    ASSERT_TRUE(bound.ok()) << bound.status();
    SmartAlloc& a = numa->local();
    ASSERT_EQ(&a, &numa->node(0));
    // Frame memory: several chunks (64 KiB doubling), then an oversize one.
    for (size_t n : {size_t{16} << 10, size_t{256} << 10, size_t{2} << 20}) {
      std::span<char> bytes = a.frame_array<char>(n);
      std::memset(bytes.data(), 1, bytes.size());
      absl::StatusOr<std::vector<int>> nodes =
          numa->source(0).PageNodes(Block{bytes.data(), bytes.size(), 1});
      ASSERT_TRUE(nodes.ok()) << nodes.status();
      EXPECT_GE(nodes->size(), bytes.size() / page);
      EXPECT_THAT(*nodes, Each(0));
    }
    // Pool memory.
    std::vector<Item*> items;
    for (int i = 0; i < 1000; ++i)
      items.push_back(numa->allocate_on_node<Item>(0, i));
    for (Item* item : items) {
      absl::StatusOr<std::vector<int>> nodes =
          numa->source(0).PageNodes(Block{item, sizeof(Item), 1});
      ASSERT_TRUE(nodes.ok());
      EXPECT_THAT(*nodes, Each(0));
    }
    for (Item* item : items) numa->free_on_node(0, item);
    a.end_frame();
  }).join();
  NumaAllocStats stats = numa->stats();
  EXPECT_EQ(stats.nodes[0].local_routes, 1u);
  EXPECT_EQ(stats.nodes[0].allocations, 1000u);
  EXPECT_EQ(stats.nodes[0].remote_allocations, 0u);
  EXPECT_EQ(stats.nodes[0].unknown_caller_allocations, 0u);
  // Every block of node 0's source was bound by the kernel; none fell back.
  EXPECT_GT(stats.nodes[0].binding.bound_blocks, 0u);
  EXPECT_EQ(stats.nodes[0].binding.bound_blocks,
            stats.nodes[0].source.allocations);
  EXPECT_EQ(stats.nodes[0].binding.fallback_blocks, 0u);
}

// Every node of the real machine: a thread bound to node k is routed to
// node k's allocator, and that allocator's frame memory is on node k.
TEST(NumaAllocTest, BoundThreadsAreRoutedToTheirNodeOnThisMachine) {
  absl::StatusOr<std::unique_ptr<Topology>> topo = Topology::Discover();
  ASSERT_TRUE(topo.ok()) << topo.status();
  auto numa = MustCreate(
      topo->get(), NumaAllocOptions().set_policy(MemoryPolicy::kAdvisory));
  ASSERT_NE(numa, nullptr);
  int nodes_with_pus = 0;
  for (int k = 0; k < numa->num_nodes(); ++k) {
    if ((*topo)->node(k).pus.empty()) continue;
    ++nodes_with_pus;
    std::thread([&] {
      ASSERT_TRUE(BindThreadToNode(**topo, k).ok());
      SmartAlloc& a = numa->local();
      EXPECT_EQ(&a, &numa->node(k));
      std::span<char> bytes = a.frame_array<char>(size_t{1} << 20);
      std::memset(bytes.data(), 1, bytes.size());
      absl::StatusOr<std::vector<int>> where =
          PageNodes(**topo, Block{bytes.data(), bytes.size(), 1});
      ASSERT_TRUE(where.ok()) << where.status();
      EXPECT_THAT(*where, Each(k)) << "node " << k;
      a.end_frame();
    }).join();
  }
  NumaAllocStats stats = numa->stats();
  uint64_t routes = 0;
  for (const NumaNodeStats& n : stats.nodes) routes += n.local_routes;
  EXPECT_EQ(routes, static_cast<uint64_t>(nodes_with_pus));
  EXPECT_EQ(stats.fallback_routes, 0u);
}

}  // namespace
}  // namespace numa
}  // namespace framealloc
