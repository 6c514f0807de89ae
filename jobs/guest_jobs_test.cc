// The job runtime on the machine's real topology: where jobs run and where
// their data lives, checked with the kernel (sched_getcpu, move_pages).
//
// For: real NUMA. On this one-node host the checks run on node 0 and the
// ones that need two nodes skip with the reason; inside the qemu guests
// (//jobs:guest_jobs_test_2nodes, _4nodes, _asymmetric) every node is
// checked. Not for: logic on synthetic topologies (runtime_test.cc).
#include <sched.h>

#include <atomic>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "jobs/parallel.h"
#include "jobs/runtime.h"
#include "numa/node_memory_source.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

class GuestJobsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = numa::Topology::Discover();
    ASSERT_TRUE(t.ok()) << t.status();
    topology_ = *std::move(t);
    if (!topology_->support().thread_binding ||
        !topology_->support().page_location) {
      GTEST_SKIP() << "this machine cannot bind threads or locate pages";
    }
  }
  std::unique_ptr<Runtime> Make(StealPolicy stealing,
                                numa::MemoryPolicy memory) {
    auto rt = Runtime::Create(Config()
                                  .set_topology(topology_.get())
                                  .set_pinning(PinningPolicy::kNode)
                                  .set_stealing(stealing)
                                  .set_memory_policy(memory));
    EXPECT_TRUE(rt.ok()) << rt.status();
    return rt.ok() ? *std::move(rt) : nullptr;
  }
  std::set<int> Cpus(int node) const {
    return {topology_->node(node).pus.begin(), topology_->node(node).pus.end()};
  }
  std::unique_ptr<numa::Topology> topology_;
};

// Every page of every node's segment of a NodeArray is on that node, and
// every ParallelFor chunk and every batch ran on a CPU of the node that
// holds its items: the data is touched only where it lives.
TEST_F(GuestJobsTest, NodeHomedDataIsProcessedWhereItLives) {
  auto rt = Make(StealPolicy::kStrict, numa::MemoryPolicy::kStrict);
  ASSERT_NE(rt, nullptr);
  const size_t n = size_t{1} << 20;  // 8 MiB of doubles over the nodes.
  auto data = NodeArray<double>::Create(*rt, rt->Partition(n));
  ASSERT_TRUE(data.ok()) << data.status();
  std::atomic<int> chunks{0};
  std::atomic<int> off_node{0};
  ASSERT_TRUE(rt->ParallelFor(data->partition(), 4096,
                              [&](JobContext& ctx, size_t b, size_t e) {
                                chunks++;
                                if (Cpus(ctx.node()).count(sched_getcpu()) ==
                                        0 ||
                                    data->partition().HomeOf(b) != ctx.node()) {
                                  off_node++;
                                }
                                for (double& x : data->span(b, e)) x += 1.0;
                              })
                  .ok());
  auto batches = BatchProcessor<double>::Create(*data, 8192);
  ASSERT_TRUE(batches.ok());
  ASSERT_TRUE(batches
                  ->ProcessAll(*rt,
                               [&](JobContext& ctx, absl::Span<double> batch) {
                                 if (Cpus(ctx.node()).count(sched_getcpu()) ==
                                     0) {
                                   off_node++;
                                 }
                                 for (double& x : batch) x *= 2.0;
                               })
                  .ok());
  EXPECT_GT(chunks.load(), rt->num_nodes() - 1);
  EXPECT_EQ(off_node.load(), 0);
  for (int k = 0; k < rt->num_nodes(); ++k) {
    Block block = data->block(k);
    if (block.empty()) continue;
    auto pages = numa::PageNodes(*topology_, block);
    ASSERT_TRUE(pages.ok()) << pages.status();
    int elsewhere = 0;
    for (int node : *pages) elsewhere += node != k ? 1 : 0;
    EXPECT_EQ(elsewhere, 0) << "node " << k << ": " << elsewhere << " of "
                            << pages->size() << " pages are elsewhere";
  }
  for (size_t i = 0; i < n; i += 4099) ASSERT_EQ((*data)[i], 2.0) << i;
}

// A job's frame arena is its worker's, on the job's node.
TEST_F(GuestJobsTest, WorkerArenasAreOnTheirNodes) {
  auto rt = Make(StealPolicy::kStrict, numa::MemoryPolicy::kStrict);
  ASSERT_NE(rt, nullptr);
  ASSERT_TRUE(rt->BeginFrame().ok());
  std::vector<JobHandle<std::pair<int, int>>> checks;
  for (int i = 0; i < 8 * rt->num_nodes(); ++i) {
    const int node = i % rt->num_nodes();
    checks.push_back(rt->Submit(
        [this](JobContext& ctx) {
          const size_t bytes = 256 << 10;
          char* p = ctx.arena().AllocateArray<char>(bytes);
          for (size_t j = 0; j < bytes; j += 4096) p[j] = 1;
          auto pages = numa::PageNodes(*topology_, Block{p, bytes, 4096});
          int elsewhere = pages.ok() ? 0 : -1;
          if (pages.ok()) {
            for (int n : *pages) elsewhere += n != ctx.node() ? 1 : 0;
          }
          return std::make_pair(ctx.node(), elsewhere);
        },
        SubmitOptions().on_node(node)));
  }
  for (int i = 0; i < static_cast<int>(checks.size()); ++i) {
    ASSERT_TRUE(checks[i].Wait().ok());
    EXPECT_EQ(checks[i].value().first, i % rt->num_nodes());
    EXPECT_EQ(checks[i].value().second, 0) << "job " << i;
  }
  ASSERT_TRUE(rt->EndFrame().ok());
}

// With strict affinity no job leaves its node; with idle stealing an idle
// node takes an overloaded node's jobs, runs them on its own CPUs, and
// counts them.
TEST_F(GuestJobsTest, StealingCrossesNodesOnlyWhenAllowedAndCountsIt) {
  if (topology_->num_nodes() < 2) GTEST_SKIP() << "needs two NUMA nodes";
  for (StealPolicy policy : {StealPolicy::kStrict, StealPolicy::kWhenIdle}) {
    SCOPED_TRACE(std::string(StealPolicyName(policy)));
    auto rt = Make(policy, numa::MemoryPolicy::kAdvisory);
    ASSERT_NE(rt, nullptr);
    JobCounter counter;
    std::atomic<int> crossed{0};
    std::atomic<int> wrong_cpu{0};
    for (int i = 0; i < 400; ++i) {
      ASSERT_TRUE(rt->Spawn(
                        [&](JobContext& ctx) {
                          if (ctx.node() != 0) crossed++;
                          if (Cpus(ctx.node()).count(sched_getcpu()) == 0) {
                            wrong_cpu++;
                          }
                          volatile double x = 0;
                          for (int j = 0; j < 20000; ++j) x = x + j;
                        },
                        SubmitOptions().on_node(0).with_counter(&counter))
                      .ok());
    }
    ASSERT_TRUE(counter.Wait().ok());
    RuntimeStats stats = rt->stats();
    uint64_t stolen = 0;
    for (const NodeStats& n : stats.nodes) stolen += n.jobs_stolen;
    EXPECT_EQ(wrong_cpu.load(), 0);
    EXPECT_EQ(stolen, static_cast<uint64_t>(crossed.load()));
    if (policy == StealPolicy::kStrict) {
      EXPECT_EQ(crossed.load(), 0);
    } else {
      EXPECT_GT(crossed.load(), 0);
    }
  }
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
