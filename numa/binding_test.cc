#include "numa/binding.h"

#include <sched.h>

#include <atomic>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "alloc/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "numa/internal/test_topologies.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// The calling thread's CPUs as the kernel says, without any topology.
std::vector<int> KernelAffinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

std::unique_ptr<Topology> Machine() {
  absl::StatusOr<std::unique_ptr<Topology>> t = Topology::Discover();
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(BindingTest, SyntheticTopologyRefusesEveryBinding) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromSynthetic("pack:2 [numa] core:2 pu:1");
  ASSERT_TRUE(t.ok());
  const Topology& topo = **t;
  absl::Status s = BindThreadToNode(topo, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not this system"));
  EXPECT_EQ(BindThreadToPu(topo, 0).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetThreadBinding(topo).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ScopedThreadBinding::ToNode(topo, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ScopedThreadBinding::ToPu(topo, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BindingTest, XmlTopologyRefusesBinding) {
  absl::StatusOr<std::unique_ptr<Topology>> t =
      Topology::FromXml(numa_internal::WriteAsymmetricXml());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(BindThreadToNode(**t, 0).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BindingTest, BadNodeOrPuIsInvalidArgument) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  absl::Status s = BindThreadToNode(*topo, topo->num_nodes());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("node"));
  s = BindThreadToPu(*topo, 1 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("pu 1048576"));
  EXPECT_EQ(SetThreadBinding(*topo, {}).code(),
            absl::StatusCode::kInvalidArgument);
}

// Each binding test runs on a thread of its own, so the test runner's
// binding is never changed.
TEST(BindingTest, BindToNodeZeroOnThisMachine) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  std::thread([&] {
    ASSERT_TRUE(BindThreadToNode(*topo, 0).ok());
    absl::StatusOr<std::vector<int>> now = GetThreadBinding(*topo);
    ASSERT_TRUE(now.ok()) << now.status();
    EXPECT_THAT(*now, ElementsAreArray(topo->node(0).pus));
    EXPECT_EQ(*topo->CurrentNode(), 0);
  }).join();
}

TEST(BindingTest, BindToOnePuRunsThere) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  const int pu = topo->pus().back();
  std::thread([&] {
    ASSERT_TRUE(BindThreadToPu(*topo, pu).ok());
    EXPECT_THAT(*GetThreadBinding(*topo), ElementsAre(pu));
    sched_yield();
    EXPECT_EQ(sched_getcpu(), pu);
    EXPECT_EQ(*topo->CurrentNode(), *topo->NodeOfPu(pu));
  }).join();
}

TEST(BindingTest, ScopedBindingRestoresThePreviousBinding) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  const int pu = topo->pus().front();
  std::thread([&] {
    const std::vector<int> before = *GetThreadBinding(*topo);
    {
      absl::StatusOr<ScopedThreadBinding> bound =
          ScopedThreadBinding::ToPu(*topo, pu);
      ASSERT_TRUE(bound.ok()) << bound.status();
      EXPECT_EQ(bound->previous(), before);
      EXPECT_THAT(*GetThreadBinding(*topo), ElementsAre(pu));
    }
    EXPECT_EQ(*GetThreadBinding(*topo), before);
    {
      absl::StatusOr<ScopedThreadBinding> bound =
          ScopedThreadBinding::ToNode(*topo, 0);
      ASSERT_TRUE(bound.ok()) << bound.status();
      EXPECT_THAT(*GetThreadBinding(*topo),
                  ElementsAreArray(topo->node(0).pus));
      EXPECT_TRUE(bound->Restore().ok());
      EXPECT_EQ(*GetThreadBinding(*topo), before);
      EXPECT_TRUE(bound->Restore().ok());  // A second restore does nothing.
    }
  }).join();
}

TEST(BindingTest, RestoreFromAnotherThreadIsRefused) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  absl::StatusOr<ScopedThreadBinding> bound =
      ScopedThreadBinding::ToNode(*topo, 0);
  ASSERT_TRUE(bound.ok()) << bound.status();
  absl::Status other;
  std::thread([&] { other = bound->Restore(); }).join();
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(bound->Restore().ok());
}

// Regression: ~ScopedThreadBinding reported a failed restore through
// ReportError from a noexcept destructor, so a handler that throws (which
// alloc/error.h allows) ended in std::terminate. A binding destroyed on
// another thread than the one it bound is such a failed restore. The report
// now goes through ReportErrorAndContinue: the handler sees it once, its
// exception is dropped, and the program goes on.
TEST(BindingTest, AFailedRestoreInTheDestructorDropsAThrowingHandlersThrow) {
  auto topo = Machine();
  ASSERT_NE(topo, nullptr);
  if (!topo->support().thread_binding) GTEST_SKIP() << "no thread binding";
  struct Seen {
    int reports = 0;
    ErrorKind kind = ErrorKind::kOutOfMemory;
    std::string message;
  } seen;
  ScopedErrorHandler handler(
      [](const ErrorReport& report, void* context) {
        auto* s = static_cast<Seen*>(context);
        ++s->reports;
        s->kind = report.kind;
        s->message = report.message;
        throw std::runtime_error("a handler that throws");
      },
      &seen);
  std::optional<ScopedThreadBinding> binding;
  // Atomics, not absl::Notification: the system Abseil is not built for
  // ThreadSanitizer, which would not see its ordering.
  std::atomic<bool> bound{false}, destroyed{false};
  // The binding's thread stays alive while the binding is destroyed here,
  // so the two thread ids differ (a finished thread's id may be reused).
  std::thread owner([&] {
    absl::StatusOr<ScopedThreadBinding> b =
        ScopedThreadBinding::ToPu(*topo, topo->pus().front());
    if (b.ok()) binding.emplace(*std::move(b));
    bound.store(true, std::memory_order_release);
    while (!destroyed.load(std::memory_order_acquire)) {
      std::this_thread::yield();
    }
  });
  while (!bound.load(std::memory_order_acquire)) std::this_thread::yield();
  const bool has_binding = binding.has_value();
  if (has_binding) binding.reset();  // Before: std::terminate. Now: on.
  destroyed.store(true, std::memory_order_release);
  owner.join();
  ASSERT_TRUE(has_binding);
  EXPECT_EQ(seen.reports, 1);
  EXPECT_EQ(seen.kind, ErrorKind::kMisuse);
  EXPECT_THAT(seen.message, HasSubstr("was not restored"));
  EXPECT_THAT(seen.message, HasSubstr("another thread"));
}

// A binding may outlive its topology: its restore needs none (before, it
// read the freed topology: an ASan heap-use-after-free).
TEST(BindingTest, AScopedBindingMayOutliveItsTopology) {
  auto probe = Machine();
  ASSERT_NE(probe, nullptr);
  if (!probe->support().thread_binding) GTEST_SKIP() << "no thread binding";
  probe.reset();
  std::thread([] {
    const std::vector<int> before = KernelAffinity();
    std::optional<ScopedThreadBinding> binding;
    {
      auto topo = Machine();
      ASSERT_NE(topo, nullptr);
      absl::StatusOr<ScopedThreadBinding> b =
          ScopedThreadBinding::ToPu(*topo, topo->pus().front());
      ASSERT_TRUE(b.ok()) << b.status();
      binding.emplace(*std::move(b));
    }
    EXPECT_EQ(KernelAffinity().size(), 1u);
    EXPECT_TRUE(binding->Restore().ok());
    EXPECT_EQ(KernelAffinity(), before);
  }).join();
}

// The earlier binding is given back as the kernel reported it, CPUs the
// topology does not list included (before, the restore checked them against
// the topology and refused: InvalidArgument from Restore, and a misuse
// report, so an abort, from the destructor). Such a topology is this
// system's when hwloc is told so (HWLOC_SYNTHETIC with HWLOC_THISSYSTEM=1,
// which binding.h allows).
TEST(BindingTest, TheRestoreGivesBackCpusTheTopologyDoesNotList) {
  const std::vector<int> allowed = KernelAffinity();
  if (allowed.size() < 2 || allowed[0] != 0 || allowed[1] != 1) {
    GTEST_SKIP() << "needs CPUs 0 and 1";
  }
  setenv("HWLOC_SYNTHETIC", "pack:1 [numa] pu:2(indexes=0,2)", 1);
  setenv("HWLOC_THISSYSTEM", "1", 1);
  absl::StatusOr<std::unique_ptr<Topology>> topo = Topology::Discover();
  unsetenv("HWLOC_SYNTHETIC");
  unsetenv("HWLOC_THISSYSTEM");
  ASSERT_TRUE(topo.ok()) << topo.status();
  if (!(*topo)->is_this_system() || !(*topo)->support().thread_binding) {
    GTEST_SKIP() << "hwloc did not take the synthetic topology as this system";
  }
  ASSERT_FALSE((*topo)->NodeOfPu(1).ok());  // CPU 1 is not in it.
  std::vector<ErrorReport> reports;
  ScopedErrorHandler handler(
      [](const ErrorReport& report, void* context) {
        static_cast<std::vector<ErrorReport>*>(context)->push_back(report);
      },
      &reports);
  std::thread([&] {
    const std::vector<int> before = KernelAffinity();
    {
      absl::StatusOr<ScopedThreadBinding> b =
          ScopedThreadBinding::ToPu(**topo, 0);
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(KernelAffinity(), std::vector<int>{0});
    }
    EXPECT_EQ(KernelAffinity(), before);
    absl::StatusOr<ScopedThreadBinding> again =
        ScopedThreadBinding::ToPu(**topo, 0);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->Restore().ok());
    EXPECT_EQ(KernelAffinity(), before);
  }).join();
  EXPECT_TRUE(reports.empty());
}

}  // namespace
}  // namespace numa
}  // namespace framealloc
