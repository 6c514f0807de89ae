#include "numa/topology.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "numa/internal/test_topologies.h"

namespace framealloc {
namespace numa {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Topology> MustSynthetic(const char* description) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromSynthetic(description);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(TopologyTest, SyntheticTwoNodes) {
  auto t = MustSynthetic("pack:2 [numa(memory=1GB)] core:4 pu:1");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->source(), TopologySource::kSynthetic);
  EXPECT_FALSE(t->is_this_system());
  ASSERT_EQ(t->num_nodes(), 2);
  EXPECT_EQ(t->pus().size(), 8u);
  EXPECT_EQ(t->node(0).index, 0);
  EXPECT_EQ(t->node(0).os_index, 0u);
  EXPECT_EQ(t->node(1).os_index, 1u);
  EXPECT_THAT(t->node(0).pus, ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(t->node(1).pus, ElementsAre(4, 5, 6, 7));
  EXPECT_EQ(t->node(0).local_memory, 1000000000u);
  EXPECT_EQ(t->node(1).local_memory, 1000000000u);
}

TEST(TopologyTest, SyntheticNumaLevelWithTwoPusPerCore) {
  auto t = MustSynthetic("pack:2 numa:1 core:4 pu:2");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->num_nodes(), 2);
  EXPECT_EQ(t->node(0).pus.size(), 8u);
  EXPECT_EQ(t->node(1).pus.size(), 8u);
  EXPECT_EQ(*t->NodeOfPu(0), 0);
  EXPECT_EQ(*t->NodeOfPu(15), 1);
}

TEST(TopologyTest, SyntheticFourNodes) {
  auto t = MustSynthetic("pack:4 [numa] core:2 pu:1");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->num_nodes(), 4);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(t->node(k).index, k);
    EXPECT_THAT(t->node(k).pus, ElementsAre(2 * k, 2 * k + 1));
    EXPECT_EQ(*t->NodeOfPu(2 * k + 1), k);
  }
}

TEST(TopologyTest, DescriptionWithoutNumaLevelHasOneNode) {
  auto t = MustSynthetic("pack:2 core:2 pu:1");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->num_nodes(), 1);
  EXPECT_THAT(t->node(0).pus, ElementsAre(0, 1, 2, 3));
}

TEST(TopologyTest, SyntheticDistancesFallBackToDefault) {
  auto t = MustSynthetic("pack:4 [numa] core:1 pu:1");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->distances_are_default());
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(t->distance(i, j), i == j ? 10u : 20u) << i << "->" << j;
    }
  }
}

TEST(TopologyTest, BadSyntheticDescriptionIsInvalidArgument) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromSynthetic("pack:two core:banana");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("pack:two core:banana"));
  EXPECT_EQ(Topology::FromSynthetic("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TopologyTest, MissingXmlIsInvalidArgumentNamingThePath) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromXml("/nonexistent/topology.xml");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("/nonexistent/topology.xml"));
}

TEST(TopologyTest, AsymmetricXmlWithDistances) {
  const std::string path = numa_internal::WriteAsymmetricXml();
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::FromXml(path);
  ASSERT_TRUE(t.ok()) << t.status();
  const Topology& topo = **t;
  EXPECT_EQ(topo.source(), TopologySource::kXml);
  EXPECT_EQ(topo.origin(), path);
  EXPECT_FALSE(topo.is_this_system());
  ASSERT_EQ(topo.num_nodes(), 2);
  EXPECT_THAT(topo.node(0).pus, ElementsAre(0));
  EXPECT_THAT(topo.node(1).pus, ElementsAre(1, 2, 3));
  EXPECT_EQ(topo.node(0).local_memory, 1000000000u);
  EXPECT_EQ(topo.node(1).local_memory, 3000000000u);
  EXPECT_FALSE(topo.distances_are_default());
  EXPECT_EQ(topo.distance(0, 0), 10u);
  EXPECT_EQ(topo.distance(0, 1), 21u);
  EXPECT_EQ(topo.distance(1, 0), 21u);
  EXPECT_EQ(topo.distance(1, 1), 10u);
}

TEST(TopologyTest, CheckNodeNamesTheBadIndex) {
  auto t = MustSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->CheckNode(1).ok());
  absl::Status s = t->CheckNode(2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("node 2"));
  EXPECT_EQ(t->CheckNode(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->NodeOfPu(2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TopologyTest, SyntheticReportsNoSupportAndNoCurrentNode) {
  auto t = MustSynthetic("pack:2 [numa] core:2 pu:1");
  ASSERT_NE(t, nullptr);
  EXPECT_FALSE(t->support().thread_binding);
  EXPECT_FALSE(t->support().memory_binding);
  EXPECT_FALSE(t->support().page_location);
  EXPECT_FALSE(t->support().current_location);
  absl::StatusOr<int> node = t->CurrentNode();
  EXPECT_EQ(node.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(node.status().message(), HasSubstr("not this system"));
}

// Regression (review): HWLOC_THISSYSTEM=1 (set for TBB's own binding) made
// hwloc call a synthetic topology this system's, and binding to its nodes
// then acted on the real machine with another machine's numbers.
TEST(TopologyTest, InjectedTopologiesStayForeignWhateverHwlocIsTold) {
  setenv("HWLOC_THISSYSTEM", "1", 1);
  auto synthetic = Topology::FromSynthetic("pack:2 [numa] core:4 pu:1");
  auto xml = Topology::FromXml(numa_internal::WriteAsymmetricXml());
  unsetenv("HWLOC_THISSYSTEM");
  for (auto* t : {&synthetic, &xml}) {
    ASSERT_TRUE(t->ok()) << t->status();
    const Topology& topo = ***t;
    EXPECT_FALSE(topo.is_this_system()) << topo.ToString();
    EXPECT_FALSE(topo.support().thread_binding);
    EXPECT_FALSE(topo.support().memory_binding);
    EXPECT_EQ(topo.CurrentNode().status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

// PU numbers hwloc loads but no machine has were not refused: 2e9 sized
// an 8 GB table (bad_alloc out of FromSynthetic under a memory limit),
// 2^31 came back negative from hwloc (length_error), and 2^32-2 looped for
// ever (hwloc_bitmap_next restarts after -2).
TEST(TopologyTest, PuNumbersBeyondTheLimitAreInvalidArgument) {
  for (const char* description : {"pack:1 [numa] pu:2(indexes=0,2000000000)",
                                  "pack:1 [numa] pu:2(indexes=0,2147483648)",
                                  "pack:1 [numa] pu:2(indexes=0,4294967294)",
                                  "pack:1 [numa] pu:2(indexes=0,1048576)"}) {
    auto t = Topology::FromSynthetic(description);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument)
        << description << ": " << t.status();
    EXPECT_THAT(t.status().message(), HasSubstr("PU numbered above 1048575"))
        << description;
  }
  // At the limit, and sparse: accepted, with a table of 2^20 entries.
  auto edge = Topology::FromSynthetic("pack:1 [numa] pu:2(indexes=0,1048575)");
  ASSERT_TRUE(edge.ok()) << edge.status();
  EXPECT_THAT((*edge)->pus(), ElementsAre(0, 1048575));
  EXPECT_EQ(*(*edge)->NodeOfPu(1048575), 0);
  EXPECT_FALSE((*edge)->NodeOfPu(1048574).ok());
}

TEST(TopologyTest, AnEmptyXmlPathSaysSo) {
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::FromXml("");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("the path is empty"));
}

TEST(TopologyTest, ToStringListsNodesDistancesAndSupport) {
  auto t = MustSynthetic("pack:2 [numa(memory=1GB)] core:2 pu:1");
  ASSERT_NE(t, nullptr);
  const std::string text = t->ToString();
  EXPECT_THAT(text, HasSubstr("2 NUMA node(s), 4 PU(s)"));
  EXPECT_THAT(text, HasSubstr("node 1 (os 1): 2 PU(s) [2,3], 953 MiB"));
  EXPECT_THAT(text, HasSubstr("10 20"));
  EXPECT_THAT(text, HasSubstr("thread binding:      no"));
  EXPECT_THAT(text, HasSubstr("not this system"));
}

// The real machine: one node here, but nothing below assumes one.
TEST(TopologyTest, DiscoverFindsThisMachine) {
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::Discover();
  ASSERT_TRUE(t.ok()) << t.status();
  const Topology& topo = **t;
  EXPECT_EQ(topo.source(), TopologySource::kDiscovered);
  EXPECT_TRUE(topo.is_this_system());
  ASSERT_GE(topo.num_nodes(), 1);
  size_t pus = 0;
  for (const NumaNode& node : topo.nodes()) pus += node.pus.size();
  EXPECT_EQ(pus, topo.pus().size());
  EXPECT_GT(topo.node(0).local_memory, 0u);
  for (int i = 0; i < topo.num_nodes(); ++i) {
    EXPECT_EQ(topo.distance(i, i), 10u);
  }
  EXPECT_TRUE(topo.support().thread_binding);
  EXPECT_TRUE(topo.support().current_location);
}

TEST(TopologyTest, CurrentNodeOnThisMachineIsTheNodeOfThePu) {
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::Discover();
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<int> node = (*t)->CurrentNode();
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_GE(*node, 0);
  EXPECT_LT(*node, (*t)->num_nodes());
  if ((*t)->num_nodes() == 1) {
    EXPECT_EQ(*node, 0);
  }
}

}  // namespace
}  // namespace numa
}  // namespace framealloc
