// Tests of jobs::Runtime: configuration errors, affinity (logical nodes on
// synthetic topologies, CPUs on the real one), stealing policies, frames,
// dependencies, results and exceptions, cancellation, shutdown, external
// submitters, several runtimes, statistics and the trace. Concurrency tests
// sweep worker counts.
#include "jobs/runtime.h"

#include <sched.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "alloc/error.h"
#include "alloc/internal/test_util.h"
#include "gtest/gtest.h"
#include "jobs/parallel.h"
#include "numa/internal/test_topologies.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

using ::testing::TestWithParam;
using ::testing::Values;

// True inside the qemu guests of //jobs:runtime_test_2nodes and _4nodes
// (tools/numa_guest_runner.sh sets the variable), which emulate their CPUs
// many times slower: the stress loops that hunt scheduler races run a tenth
// of their rounds there, and in full on the host.
[[maybe_unused]] bool InNumaGuest() {
  static const bool in_guest =
      std::getenv("FRAMEALLOC_GUEST_LAYOUT") != nullptr;
  return in_guest;
}

std::unique_ptr<numa::Topology> Synthetic(const char* description) {
  auto t = numa::Topology::FromSynthetic(description);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

// Two nodes of two PUs each: logical nodes only (nothing is bound).
std::unique_ptr<numa::Topology> TwoNodes() {
  return Synthetic("pack:2 [numa] core:2 pu:1");
}

std::unique_ptr<Runtime> MakeRuntime(Config config) {
  auto rt = Runtime::Create(std::move(config));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? *std::move(rt) : nullptr;
}

// Raw oneTBB code in a test (the application's own TBB work next to the
// runtime) hands its lambdas to threads through libtbb, which is not
// instrumented: TSan cannot follow those hand-offs (the runtime annotates
// its own, see jobs_internal::TsanAcquire). Such tests run in the plain and
// ASan builds.
#if defined(__SANITIZE_THREAD__)
#define SKIP_RAW_TBB_UNDER_TSAN() \
  GTEST_SKIP() << "raw oneTBB code: libtbb is not instrumented for TSan"
#else
#define SKIP_RAW_TBB_UNDER_TSAN() (void)0
#endif

// A short busy wait the compiler keeps.
inline void SpinPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  asm volatile("" ::: "memory");
#endif
}

// Holds jobs until opened: keeps workers busy so that others stay queued.
class Gate {
 public:
  void Pass() {
    while (!open_.load(std::memory_order_acquire)) std::this_thread::yield();
  }
  void Open() { open_.store(true, std::memory_order_release); }

 private:
  std::atomic<bool> open_{false};
};

// Waits until `pred` holds, for at most 20 s (a hang fails the test).
template <typename Pred>
bool Eventually(Pred pred) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// True once `pred` holds, false if it still does not after `limit`.
template <typename Pred>
bool Within(std::chrono::steady_clock::duration limit, Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// ---- Configuration --------------------------------------------------------

TEST(RuntimeConfigTest, RejectsNegativeWorkers) {
  auto rt = Runtime::Create(Config().set_workers_per_node(-1));
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(rt.status().message(), "workers_per_node"));
}

TEST(RuntimeConfigTest, RejectsNodeWorkersOfWrongLength) {
  auto topology = TwoNodes();
  auto rt = Runtime::Create(
      Config().set_topology(topology.get()).set_node_workers({1, 1, 1}));
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(rt.status().message(), "3 entries"));
}

TEST(RuntimeConfigTest, RejectsZeroWorkersOnANode) {
  auto topology = TwoNodes();
  auto rt = Runtime::Create(
      Config().set_topology(topology.get()).set_node_workers({2, 0}));
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(rt.status().message(), "node_workers[1]"));
}

TEST(RuntimeConfigTest, StrictPinningNeedsARealTopology) {
  auto topology = TwoNodes();
  auto rt = Runtime::Create(
      Config().set_topology(topology.get()).set_pinning(PinningPolicy::kNode));
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RuntimeConfigTest, AutoPinningOnSyntheticTopologyPinsNothing) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  ASSERT_NE(rt, nullptr);
  EXPECT_FALSE(rt->pinned());
  EXPECT_EQ(rt->num_nodes(), 2);
  EXPECT_EQ(rt->workers(0), 2);
  EXPECT_EQ(rt->total_workers(), 4);
}

// Regression (review): a history or trace ring too large for the address
// space threw std::length_error out of Create (or, with tracing off, out of
// the first StartTrace) instead of being refused.
TEST(RuntimeConfigTest, RejectsHistoriesAndTraceRingsBeyondTheirBounds) {
  auto topology = TwoNodes();
  for (bool trace : {true, false}) {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = absl::UnknownError("");
    EXPECT_NO_THROW(
        rt = Runtime::Create(Config()
                                 .set_topology(topology.get())
                                 .set_trace(trace)
                                 .set_trace_events_per_worker(SIZE_MAX)));
    EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(
        absl::StrContains(rt.status().message(), "trace_events_per_worker"))
        << rt.status();
  }
  for (size_t history : {SIZE_MAX, kMaxFrameHistory + 1}) {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = absl::UnknownError("");
    EXPECT_NO_THROW(
        rt = Runtime::Create(
            Config().set_topology(topology.get()).set_frame_history(history)));
    EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(rt.status().message(), "frame_history"))
        << rt.status();
  }
  // The bounds themselves are accepted; a long history costs only the
  // frames it holds.
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_frame_history(kMaxFrameHistory)
                            .set_trace_events_per_worker(4));
  ASSERT_NE(rt, nullptr);
  rt->StartTrace();
  for (int f = 0; f < 3; ++f) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    ASSERT_TRUE(rt->Spawn([] {}).ok());
    ASSERT_TRUE(rt->EndFrame().ok());
  }
  const std::vector<FrameTiming> history = rt->frame_history();
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[0].frame, 0u);
  EXPECT_EQ(history[2].frame, 2u);
}

// Regression (review): a policy outside its enum was accepted and ran as a
// default (stealing and outside waits compare against one enumerator) while
// StealPolicyName and OutsideWaitPolicyName printed the other policy.
TEST(RuntimeConfigTest, RejectsPoliciesOutsideTheirEnums) {
  auto topology = TwoNodes();
  struct Case {
    const char* field;
    std::function<void(Config&)> spoil;
  };
  const Case cases[] = {
      {"pinning", [](Config& c) { c.pinning = static_cast<PinningPolicy>(3); }},
      {"stealing", [](Config& c) { c.stealing = static_cast<StealPolicy>(2); }},
      {"shutdown",
       [](Config& c) { c.shutdown = static_cast<ShutdownMode>(-1); }},
      {"outside_wait",
       [](Config& c) { c.outside_wait = static_cast<OutsideWaitPolicy>(2); }},
      {"memory_policy",
       [](Config& c) { c.memory_policy = static_cast<numa::MemoryPolicy>(7); }},
  };
  for (const Case& test : cases) {
    Config config = Config().set_topology(topology.get());
    test.spoil(config);
    const absl::Status validated = config.Validate();
    EXPECT_EQ(validated.code(), absl::StatusCode::kInvalidArgument)
        << test.field;
    EXPECT_TRUE(absl::StrContains(validated.message(),
                                  absl::StrCat("Config::", test.field)))
        << validated;
    EXPECT_EQ(Runtime::Create(config).status().code(),
              absl::StatusCode::kInvalidArgument)
        << test.field;
  }
  EXPECT_EQ(StealPolicyName(static_cast<StealPolicy>(2)), "?");
  EXPECT_EQ(OutsideWaitPolicyName(static_cast<OutsideWaitPolicy>(2)), "?");
  EXPECT_EQ(StealPolicyName(StealPolicy::kWhenIdle), "when-idle");
  EXPECT_EQ(OutsideWaitPolicyName(OutsideWaitPolicy::kHelp), "help");
}

// The topology `xml` describes, discovered as this machine's
// (HWLOC_THISSYSTEM), so that a runtime on it pins: binding to PU 0 acts
// on the real machine, which always has one.
absl::StatusOr<std::unique_ptr<numa::Topology>> DiscoverFromXml(
    const std::string& xml) {
  static std::atomic<int> files{0};
  const std::string path = absl::StrCat(::testing::TempDir(), "/topology_",
                                        getpid(), "_", files++, ".xml");
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return absl::InternalError("cannot write " + path);
  std::fputs(xml.c_str(), f);
  std::fclose(f);
  setenv("HWLOC_XMLFILE", path.c_str(), 1);
  setenv("HWLOC_THISSYSTEM", "1", 1);
  auto topology = numa::Topology::Discover();
  unsetenv("HWLOC_XMLFILE");
  unsetenv("HWLOC_THISSYSTEM");
  std::remove(path.c_str());
  return topology;
}

// Runs `check` in a child process of its own (the binary run again for
// this test alone) and expects it to pass there. The XML topologies below
// describe another machine as this one: the workers' bindings, read and
// restored through them, cannot be given back exactly, and TBB keeps its
// worker threads for later tests (in a 4-node guest, a later test found
// them narrowed to one PU).
void ExpectPassesInAChildProcess(void (*check)()) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        check();
        std::exit(::testing::Test::HasFailure() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

// Regression (review): the runtime pinned every node's workers, a node
// without PUs included; its first worker's binding failed, and the report
// ("it runs unpinned") aborted the process under the default handler.
// kNode promised FailedPrecondition and gave OK. The topology: node 1's PU
// outside the process's CPU set (allowed_cpuset 0x1), what hwloc reports
// inside a container limited to one socket (`docker run --cpuset-cpus`)
// with every node's memory allowed: it keeps node 1, with no PU.
void CheckANodeWithoutPusRunsItsWorkersUnpinned() {
  auto topology = DiscoverFromXml(numa_internal::TwoPackagesXml(
      "1", "0x00000002", "0x00000003", "0x00000001"));
  ASSERT_TRUE(topology.ok()) << topology.status();
  ASSERT_EQ((*topology)->num_nodes(), 2);
  ASSERT_TRUE((*topology)->node(1).pus.empty());
  if (!(*topology)->is_this_system() ||
      !(*topology)->support().thread_binding) {
    GTEST_SKIP() << "hwloc cannot bind threads here";
  }

  auto strict = Runtime::Create(
      Config().set_topology(topology->get()).set_pinning(PinningPolicy::kNode));
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(strict.status().message(), "node 1"))
      << strict.status();

  alloc_internal::ErrorRecorder recorder;
  auto rt = MakeRuntime(Config().set_topology(topology->get()));
  ASSERT_NE(rt, nullptr);
  EXPECT_TRUE(rt->node_pinned(0));
  EXPECT_FALSE(rt->node_pinned(1));
  EXPECT_FALSE(rt->pinned());
  EXPECT_EQ(rt->workers(1), 1);
  JobCounter counter;
  std::atomic<int> on_node[2] = {0, 0};
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(rt->Spawn([&](JobContext& ctx) { on_node[ctx.node()]++; },
                          SubmitOptions().on_node(i % 2).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  EXPECT_EQ(on_node[0].load(), 10);
  EXPECT_EQ(on_node[1].load(), 10);
  EXPECT_EQ(recorder.count(), 0u);
  const RuntimeStats stats = rt->stats();
  EXPECT_FALSE(stats.pinned);
  EXPECT_TRUE(stats.nodes[0].pinned);
  EXPECT_FALSE(stats.nodes[1].pinned);
  EXPECT_TRUE(absl::StrContains(stats.ToJson(),
                                "\"node\":1,\"workers\":1,\"pinned\":false"))
      << stats.ToJson();
}

TEST(RuntimeConfigTest, ANodeWithoutPusRunsItsWorkersUnpinned) {
  ExpectPassesInAChildProcess(&CheckANodeWithoutPusRunsItsWorkersUnpinned);
}

// A worker whose binding fails (here: node 1's PU 62 is allowed by the
// topology but absent from this machine) runs unpinned and is counted,
// with no report to the error handler (whose default aborts).
void CheckAWorkerThatCannotBePinnedRunsAndIsCounted() {
  if (sysconf(_SC_NPROCESSORS_CONF) > 62) GTEST_SKIP() << "PU 62 exists";
  auto topology = DiscoverFromXml(numa_internal::TwoPackagesXml(
      "62", "0x40000000,0x00000000", "0x40000000,0x00000001",
      "0x40000000,0x00000001"));
  ASSERT_TRUE(topology.ok()) << topology.status();
  ASSERT_EQ((*topology)->num_nodes(), 2);
  ASSERT_EQ((*topology)->node(1).pus, std::vector<int>{62});
  if (!(*topology)->is_this_system() ||
      !(*topology)->support().thread_binding) {
    GTEST_SKIP() << "hwloc cannot bind threads here";
  }
  alloc_internal::ErrorRecorder recorder;
  auto rt = MakeRuntime(Config().set_topology(topology->get()));
  ASSERT_NE(rt, nullptr);
  for (int node = 0; node < 2; ++node) {
    auto h = rt->Submit([](JobContext& ctx) { return ctx.node(); },
                        SubmitOptions().on_node(node));
    ASSERT_TRUE(h.Wait().ok());
    EXPECT_EQ(h.value(), node);
  }
  EXPECT_EQ(recorder.count(), 0u);
  const RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.nodes[0].pin_failures, 0u);
  EXPECT_GE(stats.nodes[1].pin_failures, 1u);  // Once per entry.
  EXPECT_FALSE(stats.nodes[1].pin_error.empty());
  EXPECT_TRUE(absl::StrContains(stats.ToText(), "could not be pinned"))
      << stats.ToText();
  EXPECT_TRUE(absl::StrContains(stats.ToJson(), "\"pin_failures\":0,"));
}

TEST(RuntimeConfigTest, AWorkerThatCannotBePinnedRunsAndIsCounted) {
  ExpectPassesInAChildProcess(&CheckAWorkerThatCannotBePinnedRunsAndIsCounted);
}

TEST(RuntimeConfigTest, RejectsAnAllocatorSource) {
  SystemMemorySource source;
  auto rt =
      Runtime::Create(Config().set_alloc(AllocConfig().set_source(&source)));
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Submission, results, affinity -----------------------------------------

class WorkerSweep : public TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Workers, WorkerSweep, Values(1, 2, 3));

TEST_P(WorkerSweep, ResultsReachTheWaiter) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  std::vector<JobHandle<int>> handles;
  for (int i = 0; i < 200; ++i) {
    handles.push_back(rt->Submit([i] { return i * i; }));
  }
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(handles[i].Wait().ok());
    EXPECT_EQ(handles[i].value(), i * i);
  }
}

TEST_P(WorkerSweep, JobsRunOnTheirLogicalNode) {
  auto topology = Synthetic("pack:4 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  JobCounter counter;
  std::atomic<int> wrong{0};
  std::vector<std::atomic<int>> ran(4);
  for (int i = 0; i < 400; ++i) {
    const int node = i % 4;
    ASSERT_TRUE(rt->Spawn(
                      [&, node](JobContext& ctx) {
                        if (ctx.node() != node) wrong++;
                        if (ctx.worker() < 0 || ctx.worker() >= GetParam()) {
                          wrong++;
                        }
                        ran[node]++;
                      },
                      SubmitOptions().on_node(node).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  EXPECT_EQ(wrong.load(), 0);
  for (int k = 0; k < 4; ++k) EXPECT_EQ(ran[k].load(), 100);
  RuntimeStats stats = rt->stats();
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(stats.nodes[k].jobs_submitted, 100u);
    EXPECT_EQ(stats.nodes[k].jobs_run, 100u);
    EXPECT_EQ(stats.nodes[k].jobs_stolen, 0u);
  }
}

TEST(RuntimeTest, PinnedJobsRunOnTheirNodesCpus) {
  auto topology = numa::Topology::Discover();
  ASSERT_TRUE(topology.ok());
  auto rt = MakeRuntime(Config().set_topology(topology->get()));
  if (!rt->pinned()) GTEST_SKIP() << "this machine cannot bind threads";
  JobCounter counter;
  std::atomic<int> outside{0};
  for (int i = 0; i < 500; ++i) {
    const int node = i % rt->num_nodes();
    std::set<int> cpus((*topology)->node(node).pus.begin(),
                       (*topology)->node(node).pus.end());
    ASSERT_TRUE(rt->Spawn(
                      [&outside, cpus] {
                        if (cpus.count(sched_getcpu()) == 0) outside++;
                      },
                      SubmitOptions().on_node(node).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  EXPECT_EQ(outside.load(), 0);
}

TEST(RuntimeTest, WorkersAreUnpinnedWhenTheyLeave) {
  // A TBB worker that served the runtime and then runs the application's
  // own TBB work must not stay bound to a node.
  SKIP_RAW_TBB_UNDER_TSAN();
  auto topology = numa::Topology::Discover();
  ASSERT_TRUE(topology.ok());
  auto rt = MakeRuntime(Config().set_topology(topology->get()));
  if (!rt->pinned()) GTEST_SKIP() << "this machine cannot bind threads";
  ASSERT_TRUE(rt->Submit([] {}).Wait().ok());
  rt.reset();
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int allowed = CPU_COUNT(&set);
  std::atomic<int> narrowed{0};
  tbb::task_arena arena(2, 0);
  arena.execute([&] {
    tbb::parallel_for(0, 64, [&](int) {
      cpu_set_t mine;
      CPU_ZERO(&mine);
      sched_getaffinity(0, sizeof(mine), &mine);
      if (CPU_COUNT(&mine) < allowed) narrowed++;
    });
  });
  EXPECT_EQ(narrowed.load(), 0);
}

TEST(RuntimeTest, BadNodeIsRefusedWithAClearStatus) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto h = rt->Submit([] { return 1; }, SubmitOptions().on_node(7));
  absl::Status s = h.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "node 7 does not exist"));
  JobCounter counter;
  EXPECT_EQ(rt->Spawn([] {}, SubmitOptions().on_node(-3).with_counter(&counter))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(counter.pending(), 0);
  EXPECT_EQ(rt->stats().jobs_refused, 2u);
}

TEST(RuntimeTest, ContextGivesTheWorkersArenaOnItsNode) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  ASSERT_TRUE(rt->BeginFrame().ok());
  auto h = rt->Submit(
      [](JobContext& ctx) {
        int* p = ctx.arena().AllocateArray<int>(256);
        for (int i = 0; i < 256; ++i) p[i] = i;
        return std::make_pair(&ctx.alloc(), p[255]);
      },
      SubmitOptions().on_node(1));
  ASSERT_TRUE(h.Wait().ok());
  EXPECT_EQ(h.value().first, &rt->memory().node(1));
  EXPECT_EQ(h.value().second, 255);
  ASSERT_TRUE(rt->EndFrame().ok());
}

// ---- Frames -----------------------------------------------------------------

TEST(RuntimeFrameTest, FrameMemoryIsReadableByLaterJobsOfTheFrame) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  ASSERT_TRUE(rt->BeginFrame().ok());
  auto producer = rt->Submit(
      [](JobContext& ctx) {
        int* data = ctx.arena().AllocateArray<int>(1000);
        for (int i = 0; i < 1000; ++i) data[i] = 3 * i;
        return data;
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(producer.Wait().ok());
  int* data = producer.value();
  auto consumer = rt->Submit(
      [data] {
        long sum = 0;
        for (int i = 0; i < 1000; ++i) sum += data[i];
        return sum;
      },
      SubmitOptions().on_node(1).after(producer));
  ASSERT_TRUE(consumer.Wait().ok());
  EXPECT_EQ(consumer.value(), 3L * 999 * 1000 / 2);
  ASSERT_TRUE(rt->EndFrame().ok());
}

TEST(RuntimeFrameTest, EndFrameWaitsForTheFramesJobsThenResetsArenas) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> finished{0};
  ASSERT_TRUE(rt->BeginFrame().ok());
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(rt->Spawn([&finished](JobContext& ctx) {
                    ctx.arena().AllocateArray<char>(1000);
                    std::this_thread::sleep_for(std::chrono::microseconds(100));
                    finished++;
                  }).ok());
  }
  ASSERT_TRUE(rt->EndFrame().ok());
  EXPECT_EQ(finished.load(), 64);  // EndFrame waited.
  std::vector<FrameTiming> history = rt->frame_history();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].jobs, 64u);
  EXPECT_GE(history[0].arena_bytes, 64u * 1000u);
  EXPECT_EQ(history[0].arena_allocations, 64u);
  // The arenas were reset: the next frame starts empty.
  ASSERT_TRUE(rt->BeginFrame().ok());
  auto used = rt->Submit(
      [](JobContext& ctx) { return ctx.arena().stats().bytes_used; });
  ASSERT_TRUE(used.Wait().ok());
  EXPECT_EQ(used.value(), 0u);
  ASSERT_TRUE(rt->EndFrame().ok());
  EXPECT_EQ(rt->frames(), 2u);
}

// A frame's record counts the objects the jobs created, not the arenas'
// records of their destructors (before: ten strings read as twenty
// allocations, as defect 58 was for SmartAlloc's record).
TEST(RuntimeFrameTest, TheFrameRecordCountsObjectsNotTheirDestructorRecords) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  ASSERT_TRUE(rt->BeginFrame().ok());
  ASSERT_TRUE(rt->Spawn([](JobContext& ctx) {
                  for (int i = 0; i < 10; ++i) {
                    ctx.arena().Create<std::string>("hello");
                  }
                  (void)ctx.arena().AllocateArray<char>(100);
                }).ok());
  ASSERT_TRUE(rt->EndFrame().ok());
  const std::vector<FrameTiming> history = rt->frame_history();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].arena_allocations, 11u);
  // The bytes are what the arena held: the records' included.
  EXPECT_GE(history[0].arena_bytes, 10 * sizeof(std::string) + 100);
}

TEST(RuntimeFrameTest, JobsOutsideFramesGetAScratchArenaRewoundAfterThem) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  for (int i = 0; i < 3; ++i) {
    auto h = rt->Submit([](JobContext& ctx) {
      EXPECT_FALSE(ctx.in_frame());
      const size_t before = ctx.arena().stats().bytes_used;
      ctx.arena().AllocateArray<char>(4096);
      return before;
    });
    ASSERT_TRUE(h.Wait().ok());
    EXPECT_EQ(h.value(), 0u) << "round " << i;
  }
}

// Jobs that run nested in another on its worker (children it helps with
// while it waits, Fork children) give the scratch arena back as they found
// it: what they allocated is rewound, what the outer job holds is intact.
TEST(RuntimeFrameTest, NestedJobsRewindTheScratchArenaToWhereTheyStarted) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto h = rt->Submit([](JobContext& ctx) {
    char* mine = ctx.arena().AllocateArray<char>(1000);
    std::memset(mine, 'p', 1000);
    const size_t used = ctx.arena().stats().bytes_used;
    JobCounter children;
    for (int i = 0; i < 50; ++i) {
      EXPECT_TRUE(ctx.runtime()
                      .Spawn(
                          [i](JobContext& c) {
                            if (i % 2 == 0) return;  // Allocates nothing.
                            char* p = c.arena().AllocateArray<char>(4096);
                            std::memset(p, 'c', 4096);
                          },
                          SubmitOptions().with_counter(&children))
                      .ok());
    }
    EXPECT_TRUE(children.Wait().ok());
    EXPECT_EQ(ctx.arena().stats().bytes_used, used);
    ctx.Fork([](JobContext& c) { c.arena().AllocateArray<char>(8192); },
             [](JobContext&) {});
    EXPECT_EQ(ctx.arena().stats().bytes_used, used);
    EXPECT_EQ(ctx.arena().open_marks(), 0u);
    for (int i = 0; i < 1000; ++i) {
      if (mine[i] != 'p') return false;
    }
    return true;
  });
  ASSERT_TRUE(h.Wait().ok());
  EXPECT_TRUE(h.value());
}

TEST(RuntimeFrameTest, FrameMisuseIsRefused) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  EXPECT_EQ(rt->EndFrame().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(rt->BeginFrame().ok());
  EXPECT_EQ(rt->BeginFrame().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<std::string> reports;
  ScopedErrorHandler handler(
      [](const ErrorReport& r, void* ctx) {
        static_cast<std::vector<std::string>*>(ctx)->push_back(r.message);
      },
      &reports);
  auto inner = rt->Submit([&rt] { return rt->EndFrame(); });
  ASSERT_TRUE(inner.Wait().ok());
  EXPECT_EQ(inner.value().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(absl::StrContains(reports[0], "from inside a job"));
  EXPECT_TRUE(rt->EndFrame().ok());
}

// A frame still open at Shutdown is ended there (not a misuse: an
// exception may have left the frame loop): its jobs finish or are
// cancelled as the mode says, and Shutdown returns EndFrame's status.
TEST(RuntimeFrameTest, ShutdownEndsAFrameLeftOpen) {
  std::vector<std::string> reports;
  ScopedErrorHandler handler(
      [](const ErrorReport& r, void* ctx) {
        static_cast<std::vector<std::string>*>(ctx)->push_back(r.message);
      },
      &reports);
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  {
    auto rt = MakeRuntime(Config().set_topology(topology.get()));
    ASSERT_TRUE(rt->BeginFrame().ok());
    std::atomic<int> ran{0};
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(rt->Spawn([&ran] { ran++; }).ok());
    }
    EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
    EXPECT_FALSE(rt->frame_open());
    EXPECT_EQ(ran.load(), 10);
    EXPECT_EQ(rt->frames(), 1u);
  }
  {
    auto rt = MakeRuntime(Config().set_topology(topology.get()));
    ASSERT_TRUE(rt->BeginFrame().ok());
    Gate gate;
    std::atomic<bool> running{false};
    auto first = rt->Submit([&] {
      running = true;
      gate.Pass();
    });
    ASSERT_TRUE(Eventually([&] { return running.load(); }));
    std::atomic<int> ran{0};
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(rt->Spawn([&ran] { ran++; }).ok());
    }
    // Opened once Shutdown has stopped accepting, so cancel_all_ is set
    // (it is stored first) before the worker can reach the queued jobs.
    std::thread opener([&gate, &rt] {
      EXPECT_TRUE(Eventually([&rt] { return !rt->accepting(); }));
      gate.Open();
    });
    const absl::Status s = rt->Shutdown(ShutdownMode::kCancel);
    opener.join();
    EXPECT_FALSE(s.ok());  // The five queued jobs were cancelled.
    EXPECT_NE(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "5 of 6")) << s;
    EXPECT_EQ(ran.load(), 0);
    EXPECT_TRUE(first.Wait().ok());
    EXPECT_FALSE(rt->frame_open());
  }
  EXPECT_TRUE(reports.empty());
}

// BeginFrame and EndFrame claim the frame: of two threads ending the same
// frame, one ends it and the other is refused; never both reset the arenas.
TEST(RuntimeFrameTest, TwoThreadsEndingOneFrameEndItOnce) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  for (int round = 0; round < 200; ++round) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    ASSERT_TRUE(rt->Spawn([](JobContext& ctx) {
                    ctx.arena().AllocateArray<int>(16)[0] = 1;
                  }).ok());
    std::atomic<int> ok{0};
    std::atomic<int> refused{0};
    auto end = [&] {
      const absl::Status s = rt->EndFrame();
      if (s.ok()) {
        ok++;
      } else if (absl::IsFailedPrecondition(s)) {
        refused++;
      }
    };
    std::thread other(end);
    end();
    other.join();
    ASSERT_EQ(ok.load(), 1) << "round " << round;
    ASSERT_EQ(refused.load(), 1) << "round " << round;
  }
  EXPECT_EQ(rt->frames(), 200u);
}

TEST_P(WorkerSweep, ManyFramesStress) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  long expected = 0;
  std::atomic<long> total{0};
  for (int frame = 0; frame < 200; ++frame) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    std::vector<JobHandle<long*>> parts;
    for (int j = 0; j < 8; ++j) {
      parts.push_back(rt->Submit(
          [frame, j](JobContext& ctx) {
            long* v = ctx.arena().Create<long>(frame * 8 + j);
            return v;
          },
          SubmitOptions().on_node(j % 2)));
      expected += frame * 8 + j;
    }
    SubmitOptions after;
    for (auto& p : parts) after.after(p);
    ASSERT_TRUE(rt->Spawn(
                      [&total, parts] {
                        for (const auto& p : parts) total += *p.value();
                      },
                      std::move(after))
                    .ok());
    ASSERT_TRUE(rt->EndFrame().ok());
  }
  EXPECT_EQ(total.load(), expected);
  EXPECT_EQ(rt->frames(), 200u);
}

// Two jobs wait on one counter that counts children each of them spawned:
// neither wait may strand the other's children (each waiter runs the
// tasks of its own region only, so each must help with its own). On one
// node of two workers, both busy waiting.
TEST(RuntimeWaitTest, TwoJobsWaitingOnOneCounterBothFinish) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  for (int round = 0; round < 20; ++round) {
    JobCounter shared;
    std::atomic<int> children{0};
    std::atomic<int> waiting{0};
    auto parent = [&](JobContext& ctx) {
      for (int i = 0; i < 8; ++i) {
        EXPECT_TRUE(ctx.runtime()
                        .Spawn(
                            [&children] {
                              std::this_thread::sleep_for(
                                  std::chrono::microseconds(50));
                              children++;
                            },
                            SubmitOptions().with_counter(&shared))
                        .ok());
      }
      // Both parents are in Wait together (most rounds).
      waiting++;
      const auto until =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
      while (waiting.load() < 2 && std::chrono::steady_clock::now() < until) {
      }
      return shared.Wait();
    };
    JobHandle<absl::Status> a = rt->Submit(parent);
    JobHandle<absl::Status> b = rt->Submit(parent);
    ASSERT_TRUE(Eventually([&] { return a.done() && b.done(); }))
        << "round " << round << ": " << children.load() << " of 16 children";
    ASSERT_TRUE(a.Wait().ok());
    ASSERT_TRUE(b.Wait().ok());
    EXPECT_TRUE(a.value().ok());
    EXPECT_TRUE(b.value().ok());
    EXPECT_EQ(children.load(), 16);
  }
}

// ---- Dependencies, exceptions, cancellation
// -----------------------------------

TEST(RuntimeDependencyTest, AJobRunsAfterAllItsPredecessors) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> done{0};
  std::vector<JobRef> preds;
  for (int i = 0; i < 10; ++i) {
    preds.push_back(rt->Submit([&done] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      done++;
    }));
  }
  SubmitOptions options;
  options.predecessors.assign(preds.begin(), preds.end());
  auto last = rt->Submit([&done] { return done.load(); }, options);
  ASSERT_TRUE(last.Wait().ok());
  EXPECT_EQ(last.value(), 10);
}

TEST(RuntimeDependencyTest, AChainRunsInOrder) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::vector<int> order;
  JobRef previous;
  for (int i = 0; i < 100; ++i) {
    SubmitOptions options = SubmitOptions().on_node(i % 2);
    if (previous.valid()) options.after(previous);
    previous = rt->Submit([&order, i] { order.push_back(i); }, options);
  }
  ASSERT_TRUE(previous.Wait().ok());
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

// Every block after the one above and the one to its left, on alternating
// nodes, declared from the main thread while earlier blocks already run:
// successors of running, finished and unstarted jobs; two edges per job
// (kept in the record) and, for the last block, more (allocated).
TEST(RuntimeDependencyTest,
     AWavefrontOfDeclaredDependenciesMatchesTheSerialResult) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  constexpr int kSide = 24;
  auto serial = [] {
    std::vector<uint64_t> g(kSide * kSide);
    for (int i = 0; i < kSide; ++i) {
      for (int j = 0; j < kSide; ++j) {
        const uint64_t up = i > 0 ? g[(i - 1) * kSide + j] : 1;
        const uint64_t left = j > 0 ? g[i * kSide + j - 1] : 1;
        g[i * kSide + j] = up * 3 + left * 5 + static_cast<uint64_t>(i ^ j);
      }
    }
    return g;
  }();
  for (int round = 0; round < 20; ++round) {
    std::vector<uint64_t> g(kSide * kSide, 0);
    std::vector<JobHandle<void>> blocks(kSide * kSide);
    for (int i = 0; i < kSide; ++i) {
      for (int j = 0; j < kSide; ++j) {
        SubmitOptions options = SubmitOptions().on_node((i + j) % 2);
        if (i > 0) options.after(blocks[(i - 1) * kSide + j]);
        if (j > 0) options.after(blocks[i * kSide + j - 1]);
        blocks[i * kSide + j] = rt->Submit(
            [&g, i, j] {
              const uint64_t up = i > 0 ? g[(i - 1) * kSide + j] : 1;
              const uint64_t left = j > 0 ? g[i * kSide + j - 1] : 1;
              g[i * kSide + j] =
                  up * 3 + left * 5 + static_cast<uint64_t>(i ^ j);
            },
            std::move(options));
      }
    }
    // Five predecessors, most finished by now: edges linked and not.
    SubmitOptions options;
    for (int k = 0; k < 5; ++k) options.after(blocks[k * kSide + kSide - 1]);
    options.after(blocks.back());
    auto sum = rt->Submit(
        [&g] {
          uint64_t s = 0;
          for (uint64_t v : g) s += v;
          return s;
        },
        std::move(options));
    ASSERT_TRUE(sum.Wait().ok());
    ASSERT_EQ(g, serial) << "round " << round;
    uint64_t want = 0;
    for (uint64_t v : serial) want += v;
    EXPECT_EQ(sum.value(), want);
  }
}

// A function whose copy throws (a capture that allocates, say).
struct ThrowsWhenCopied {
  std::atomic<int>* ran;
  explicit ThrowsWhenCopied(std::atomic<int>* r) : ran(r) {}
  ThrowsWhenCopied(const ThrowsWhenCopied&) {
    throw std::runtime_error("copy refused");
  }
  void operator()() const { ++*ran; }
};

// Regression (review): Spawn's direct path counted the job (its counter,
// its frame, the submitted count) before storing the function, so a copy
// that threw left the counter's Wait, EndFrame and Shutdown waiting for a
// job that did not exist; Submit leaked the record. Now the exception goes
// on, the memory is freed, and a job already accepted counts as failed.
TEST(RuntimeExceptionTest, AFunctionWhoseCopyThrowsLeavesNoWaitHanging) {
  auto rt = MakeRuntime(Config().set_workers_per_node(1));
  std::atomic<int> ran{0};
  const ThrowsWhenCopied f(&ran);
  JobCounter counter;
  EXPECT_THROW((void)rt->Spawn(f, SubmitOptions().with_counter(&counter)),
               std::runtime_error);
  absl::Status waited = counter.Wait();
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnknown) << waited;
  EXPECT_TRUE(absl::StrContains(waited.message(), "storing its function"))
      << waited;
  EXPECT_THROW((void)rt->Submit(f), std::runtime_error);

  ASSERT_TRUE(rt->BeginFrame().ok());
  EXPECT_THROW((void)rt->Spawn(f), std::runtime_error);
  auto inside = rt->Submit([&rt, &f] {
    JobCounter mine;
    try {
      (void)rt->Spawn(f, SubmitOptions().with_counter(&mine));
    } catch (const std::runtime_error&) {
      return mine.Wait().code();  // Ends: the job counts as failed.
    }
    return absl::StatusCode::kOk;
  });
  ASSERT_TRUE(inside.Wait().ok()) << inside.status();
  EXPECT_EQ(inside.value(), absl::StatusCode::kUnknown);
  EXPECT_FALSE(rt->EndFrame().ok());  // Ends, naming the failed jobs.
  EXPECT_EQ(rt->stats().jobs_failed, 3u);
  EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  EXPECT_EQ(ran.load(), 0);
}

// Waits up to 20 s for `job`; past that the runtime is stuck, and
// destroying it would hang too: the test reports and leaves.
void ExpectFinishesOrExit(const JobRef& job, const char* what) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!job.done()) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "FAILED: %s never finished (20 s)\n", what);
      std::fflush(stderr);
      std::_Exit(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Runs `call` on another thread and waits up to 20 s for it to return;
// past that it is stuck (and destroying the runtime would hang too): the
// test reports and leaves.
void ExpectReturnsOrExit(const std::function<void()>& call, const char* what) {
  std::atomic<bool> returned{false};
  std::thread t([&call, &returned] {
    call();
    returned.store(true, std::memory_order_release);
  });
  if (!Eventually(
          [&returned] { return returned.load(std::memory_order_acquire); })) {
    std::fprintf(stderr, "FAILED: %s never returned (20 s)\n", what);
    std::fflush(stderr);
    std::_Exit(1);
  }
  t.join();
}

void ThrowingHandler(const ErrorReport& report, void*) {
  throw std::runtime_error(report.message);
}

// Regression (review): Enqueue counted a job (its counter, its frame, the
// submitted count) and linked its first two edges into its predecessors
// before it allocated the edges past the record's inline ones. When that
// allocation's fatal report threw (a throwing error handler), the exception
// left with every count taken and the record leaked: the counter's Wait,
// EndFrame and Shutdown waited for a job that would never run. The edges
// are now allocated before anything is counted or linked, and a failure
// there frees the record: the exception goes on, and nothing is left.
TEST(RuntimeExceptionTest, AThrowingEdgeAllocationLeavesNoCountTaken) {
  for (const bool spawn : {false, true}) {
    SCOPED_TRACE(spawn ? "Spawn" : "Submit");
    alloc_internal::FailingSource source;
    auto rt = MakeRuntime(Config()
                              .set_workers_per_node(2)
                              .set_pinning(PinningPolicy::kNone)
                              .set_record_source(&source));
    ASSERT_NE(rt, nullptr);
    ScopedErrorHandler throwing(&ThrowingHandler, nullptr);
    // The records' pool page is taken here; no edge has been allocated.
    ASSERT_TRUE(rt->Submit([] {}).Wait().ok());
    ASSERT_TRUE(rt->BeginFrame().ok());
    Gate gate;
    JobHandle<void> a = rt->Submit([&gate] { gate.Pass(); });
    JobHandle<void> b = rt->Submit([&gate] { gate.Pass(); });
    JobHandle<void> c = rt->Submit([&gate] { gate.Pass(); });
    std::atomic<int> ran{0};
    JobCounter counter;
    // A third predecessor needs an edge from the pool, whose first page
    // the source now refuses: a fatal out-of-memory report, which throws.
    source.FailNext(-1);
    const SubmitOptions options =
        SubmitOptions().with_counter(&counter).after(a, b, c);
    if (spawn) {
      EXPECT_THROW((void)rt->Spawn([&ran] { ++ran; }, options),
                   std::runtime_error);
    } else {
      EXPECT_THROW((void)rt->Submit([&ran] { ++ran; }, options),
                   std::runtime_error);
    }
    EXPECT_GT(source.injected_faults(), 0);
    source.StopFailing();
    EXPECT_EQ(counter.pending(), 0);
    gate.Open();
    ExpectFinishesOrExit(c, "the predecessors");
    ExpectReturnsOrExit([&counter] { EXPECT_TRUE(counter.Wait().ok()); },
                        "JobCounter::Wait");
    ExpectReturnsOrExit([&rt] { EXPECT_TRUE(rt->EndFrame().ok()); },
                        "EndFrame");
    ExpectReturnsOrExit(
        [&rt] { EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok()); },
        "Shutdown");
    const RuntimeStats stats = rt->stats();
    EXPECT_EQ(stats.jobs_submitted, 4u);  // The warm-up job and a, b, c.
    EXPECT_EQ(stats.jobs_completed, 4u);
    EXPECT_EQ(ran.load(), 0);
  }
}

// Regression (review): the node's token group took, on first use, the
// context of the task that posted the first token: here a Fork child's,
// which the sibling's exception cancels. Every later Submit-ed job of the
// node was skipped by TBB: its handle, EndFrame and Shutdown hung.
TEST(RuntimeExceptionTest, AThrowingForkLeavesTheNodeRunningLaterJobs) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  for (bool parallel_for : {false, true}) {
    auto rt = MakeRuntime(
        Config().set_topology(topology.get()).set_workers_per_node(2));
    JobCounter counter;
    std::atomic<bool> submitted{false};
    auto submit_then_throw = [&](JobContext& c, bool first) {
      if (first) {
        (void)c.runtime().Submit([] { return 1; });  // The node's first.
        submitted = true;
        return;
      }
      while (!submitted) std::this_thread::yield();
      throw std::runtime_error("a sibling throws");
    };
    ASSERT_TRUE(
        rt->Spawn(
              [&](JobContext& ctx) {
                if (parallel_for) {
                  ctx.ParallelFor(0, 2, 1,
                                  [&](JobContext& c, size_t b, size_t) {
                                    submit_then_throw(c, b == 0);
                                  });
                } else {
                  ctx.Fork([&](JobContext& c) { submit_then_throw(c, true); },
                           [&](JobContext& c) { submit_then_throw(c, false); });
                }
              },
              SubmitOptions().with_counter(&counter))
            .ok());
    EXPECT_EQ(counter.Wait().code(), absl::StatusCode::kUnknown);
    auto later = rt->Submit([] { return 7; });
    ExpectFinishesOrExit(
        later, parallel_for ? "a job submitted after a ParallelFor threw"
                            : "a job submitted after a Fork threw");
    ASSERT_TRUE(later.Wait().ok());
    EXPECT_EQ(later.value(), 7);
    EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  }
}

TEST(RuntimeExceptionTest, ExceptionsReachTheWaiterWithTheirType) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto h =
      rt->Submit([]() -> int { throw std::out_of_range("index 12 of 10"); },
                 SubmitOptions().named("lookup"));
  absl::Status s = h.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "'lookup' threw: index 12 of 10"))
      << s;
  ASSERT_NE(h.exception(), nullptr);
  EXPECT_THROW(std::rethrow_exception(h.exception()), std::out_of_range);
  EXPECT_EQ(rt->stats().jobs_failed, 1u);
}

TEST(RuntimeExceptionTest, AFailedPredecessorCancelsItsDependants) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<bool> ran{false};
  auto bad = rt->Submit([] { throw std::runtime_error("boom"); });
  auto next = rt->Submit([&ran] { ran = true; }, SubmitOptions().after(bad));
  auto after_next =
      rt->Submit([&ran] { ran = true; }, SubmitOptions().after(next));
  EXPECT_EQ(after_next.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(next.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(ran.load());
}

// Regression (review): Schedule made a successor kQueued before it looked
// at predecessor_failed, so a Wait() on its handle in between claimed it
// and ran it although its predecessor had thrown (9 runs in 40,000 tries on
// two workers). Each round races that Wait against the scheduling.
TEST(RuntimeExceptionTest, ASuccessorOfAFailedJobNeverRunsEvenWhenWaitedOn) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
#if defined(__SANITIZE_THREAD__)
  const int kRounds = 2000;
#else
  const int kRounds = InNumaGuest() ? 2000 : 20000;
#endif
  std::atomic<int> successor_ran{0};
  uint64_t rng = 88172645463325252ull;
  for (int i = 0; i < kRounds; ++i) {
    std::atomic<bool> go{false};
    auto failing = rt->Submit([&go] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      throw std::runtime_error("predecessor");
    });
    auto successor = rt->Submit([&successor_ran] { successor_ran++; },
                                SubmitOptions().after(failing));
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    const int delay = static_cast<int>(rng % 4000);
    auto waiter = rt->Submit([&go, successor, delay] {
      go.store(true, std::memory_order_release);
      for (int k = 0; k < delay; ++k) SpinPause();
      return successor.Wait().code();
    });
    ASSERT_TRUE(waiter.Wait().ok());
    ASSERT_EQ(waiter.value(), absl::StatusCode::kCancelled) << "round " << i;
  }
  EXPECT_EQ(successor_ran.load(), 0);
}

TEST(RuntimeExceptionTest, CountersAndFramesReportTheFirstFailure) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  ASSERT_TRUE(rt->BeginFrame().ok());
  JobCounter counter;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [i] {
                        if (i == 7) throw std::logic_error("seven");
                      },
                      SubmitOptions().with_counter(&counter))
                    .ok());
  }
  absl::Status s = counter.Wait();
  EXPECT_TRUE(absl::StrContains(s.message(), "seven")) << s;
  EXPECT_THROW(std::rethrow_exception(counter.exception()), std::logic_error);
  absl::Status frame = rt->EndFrame();
  EXPECT_TRUE(absl::StrContains(frame.message(), "1 of 20 jobs failed"))
      << frame;
}

TEST(RuntimeExceptionTest, ForkRethrowsAChildsException) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto h = rt->Submit([](JobContext& ctx) {
    ctx.Fork([](JobContext&) {},
             [](JobContext&) { throw std::runtime_error("child failed"); });
  });
  absl::Status s = h.Wait();
  EXPECT_TRUE(absl::StrContains(s.message(), "child failed")) << s;
}

// A function's exception cancels the Fork's children that have not
// started: on one worker, the last function runs (and throws) before any
// child can, so none of them ever runs. (Regression (review): the header
// promised that every child finished first.)
TEST(RuntimeExceptionTest, AThrowingForkSkipsTheChildrenNotYetStarted) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  auto h = rt->Submit([&](JobContext& ctx) {
    ctx.Fork([&](JobContext&) { ran++; }, [&](JobContext&) { ran++; },
             [](JobContext&) { throw std::runtime_error("last failed"); });
  });
  const absl::Status s = h.Wait();
  EXPECT_TRUE(absl::StrContains(s.message(), "last failed")) << s;
  EXPECT_EQ(ran.load(), 0);
  // The node runs later jobs as before.
  EXPECT_TRUE(rt->Submit([] {}).Wait().ok());
}

// Regression (review): when a child and the last function both threw, the
// Fork's unwinding waited on the group from a destructor, the child's
// exception left it, and the process terminated.
TEST(RuntimeExceptionTest,
     ForkWithAChildAndTheLastFunctionThrowingRethrowsOne) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> child_threw{false};
  auto h = rt->Submit([&](JobContext& ctx) {
    ctx.Fork(
        [&](JobContext&) {
          child_threw = true;
          throw std::runtime_error("child");
        },
        [&](JobContext&) {
          // Until the other worker took the child and it threw.
          EXPECT_TRUE(Eventually([&] { return child_threw.load(); }));
          throw std::runtime_error("last");
        });
  });
  const absl::Status s = h.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "threw: last") ||
              absl::StrContains(s.message(), "threw: child"))
      << s;
  EXPECT_TRUE(child_threw.load());
}

// Regression (review): a Fork, ctx.ParallelFor or Runtime::ParallelFor
// nested in a chunk or child of an enclosing call is cancelled by TBB with
// it when another part of the enclosing call throws. They returned
// normally then (Runtime::ParallelFor even OK) with functions and items
// never run, and the code after them went on as if they had. Each case
// below waits until the enclosing call is cancelled before it lets the
// nested call's work be taken, so on this machine the work is skipped every
// time. (Where TBB does not carry the cancellation into the nested call,
// seen once in the 4-node guest, the nested call runs everything and may
// return normally: the contract is only that it never returns normally
// with work skipped.)
// Until the group of the task this thread runs is cancelled.
void AwaitCancellation() {
  EXPECT_TRUE(
      Eventually([] { return tbb::is_current_task_group_canceling(); }));
}

// Runs `nested` in chunk 1 of a two-chunk ctx.ParallelFor of a job whose
// chunk 0 throws "sibling chunk" once `started` is set; the job's status.
absl::Status RunBesideAThrowingChunk(
    Runtime& rt, std::atomic<bool>& started,
    const std::function<void(JobContext&)>& nested) {
  auto h = rt.Submit([&](JobContext& ctx) {
    ctx.ParallelFor(0, 2, 1, [&](JobContext& c, size_t b, size_t) {
      if (b == 0) {
        EXPECT_TRUE(Eventually([&] { return started.load(); }));
        throw std::runtime_error("sibling chunk");
      }
      nested(c);
    });
  });
  return h.Wait();
}

TEST(RuntimeExceptionTest, AForkCancelledByAnEnclosingFailureThrows) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> fork_started{false}, child_ran{false}, after_fork{false},
      nested_cancelled{false};
  const absl::Status s =
      RunBesideAThrowingChunk(*rt, fork_started, [&](JobContext& c) {
        try {
          c.Fork([&](JobContext&) { child_ran = true; },
                 [&](JobContext&) {
                   fork_started = true;
                   AwaitCancellation();  // By the sibling's exception.
                 });
          after_fork = true;
        } catch (const NestedWorkCancelled&) {
          nested_cancelled = true;
          throw;
        }
      });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "threw: sibling chunk")) << s;
  EXPECT_TRUE(fork_started.load());
  // Returned normally only with every child run; otherwise it threw ours.
  EXPECT_TRUE(!after_fork.load() || child_ran.load());
  EXPECT_NE(after_fork.load(), nested_cancelled.load());
}

TEST(RuntimeExceptionTest, AParallelForCancelledByAnEnclosingFailureThrows) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> inner_started{false}, after_inner{false},
      nested_cancelled{false};
  std::atomic<int> items{0};
  const absl::Status s =
      RunBesideAThrowingChunk(*rt, inner_started, [&](JobContext& c) {
        try {
          c.ParallelFor(0, 64, 1, [&](JobContext&, size_t b, size_t e) {
            if (!inner_started.exchange(true)) AwaitCancellation();
            items += static_cast<int>(e - b);
          });
          after_inner = true;
        } catch (const NestedWorkCancelled&) {
          nested_cancelled = true;
          throw;
        }
      });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "threw: sibling chunk")) << s;
  EXPECT_TRUE(!after_inner.load() || items.load() == 64) << items.load();
  EXPECT_NE(after_inner.load(), nested_cancelled.load());
}

TEST(RuntimeExceptionTest,
     ARuntimeParallelForCancelledByAnEnclosingFailureIsNotOk) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> ranges_started{false};
  std::atomic<int> items{0};
  absl::Status inner = absl::UnknownError("not run");
  auto h = rt->Submit([&](JobContext& ctx) {
    ctx.Fork(
        [&](JobContext& c) {
          inner = c.runtime().ParallelFor(64, 1,
                                          [&](JobContext&, size_t b, size_t e) {
                                            if (!ranges_started.exchange(true))
                                              AwaitCancellation();
                                            items += static_cast<int>(e - b);
                                          });
        },
        [&](JobContext&) {
          EXPECT_TRUE(Eventually([&] { return ranges_started.load(); }));
          throw std::runtime_error("last");
        });
  });
  const absl::Status s = h.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "threw: last")) << s;
  if (inner.ok()) {
    EXPECT_EQ(items.load(), 64);  // OK only with every item visited.
  } else {
    EXPECT_EQ(inner.code(), absl::StatusCode::kCancelled) << inner;
    EXPECT_TRUE(
        absl::StrContains(inner.message(), "nested Fork or ParallelFor"))
        << inner;
  }
}

// Regression (review of the fix above): the nested groups were bound to
// whatever task the thread was running. A job that a wait ran inline inside
// another job's fork child had its Fork bound to that child's group, and
// the other job's failure cancelled it: the inline job failed as
// Cancelled, blamed for a job it had nothing to do with (before that fix,
// it returned OK with its children skipped). A job's own groups are now
// isolated.
TEST(RuntimeExceptionTest, AJobRunInlineInACancelledChildIsNotCancelled) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> inner_fork_started{false}, inner_child_ran{false},
      after_inner_fork{false};
  absl::Status inner_status = absl::UnknownError("not waited");
  auto outer = rt->Submit([&](JobContext& ctx) {
    ctx.Fork(
        [&](JobContext& child) {
          // A job of this node that only this wait will run (the other
          // worker is in the last function below): run inline here.
          auto inner = child.runtime().Submit([&](JobContext& job) {
            job.Fork([&](JobContext&) { inner_child_ran = true; },
                     [&](JobContext&) {
                       inner_fork_started = true;
                       // By the outer job's failure: the group of the
                       // child this job runs inside.
                       AwaitCancellation();
                     });
            after_inner_fork = true;
          });
          inner_status = inner.Wait();
        },
        [&](JobContext&) {
          EXPECT_TRUE(Eventually([&] { return inner_fork_started.load(); }));
          throw std::runtime_error("outer");
        });
  });
  const absl::Status s = outer.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(s.message(), "threw: outer")) << s;
  EXPECT_TRUE(inner_status.ok()) << inner_status;
  EXPECT_TRUE(inner_child_ran.load());
  EXPECT_TRUE(after_inner_fork.load());
}

TEST(RuntimeCancelTest, ACancelledQueuedJobNeverRuns) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  Gate gate;
  std::atomic<bool> ran{false};
  std::atomic<bool> blocking{false};
  auto blocker = rt->Submit([&] {
    blocking = true;
    gate.Pass();
  });
  // TBB's arena queue is not strictly FIFO: hold the only worker first.
  ASSERT_TRUE(Eventually([&] { return blocking.load(); }));
  auto victim = rt->Submit([&ran] { ran = true; });
  auto dependant =
      rt->Submit([&ran] { ran = true; }, SubmitOptions().after(victim));
  EXPECT_TRUE(victim.Cancel());
  gate.Open();
  EXPECT_TRUE(blocker.Wait().ok());
  EXPECT_EQ(victim.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(dependant.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(ran.load());
  EXPECT_FALSE(blocker.Cancel());  // Already ran.
}

TEST(RuntimeCancelTest, CounterCancellationStopsPendingAndSignalsRunning) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  JobCounter counter;
  std::atomic<int> started{0};
  std::atomic<int> saw_cancel{0};
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [&](JobContext& ctx) {
                        started++;
                        while (!ctx.cancel_requested())
                          std::this_thread::yield();
                        saw_cancel++;
                      },
                      SubmitOptions().with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(Eventually([&] { return started.load() >= 2; }));
  counter.Cancel();
  absl::Status s = counter.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(started.load(), saw_cancel.load());
  EXPECT_LT(started.load(), 100);
  EXPECT_EQ(rt->stats().jobs_cancelled, 100u - started.load());
}

// Regression (review): JobRef::Cancel on a running job set a flag nothing
// read; the job (and its fork children) now see it.
TEST(RuntimeCancelTest, CancellingARunningJobSignalsItAndItsChildren) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(2));
  std::atomic<bool> started{false};
  std::atomic<int> children_saw{0};
  auto job = rt->Submit([&](JobContext& ctx) {
    started = true;
    auto poll = [&](JobContext& c) {
      while (!c.cancel_requested()) std::this_thread::yield();
      children_saw++;
    };
    ctx.Fork(poll, poll);
    return ctx.cancel_requested();
  });
  ASSERT_TRUE(Eventually([&] { return started.load(); }));
  EXPECT_FALSE(job.Cancel());    // Running: it will not be stopped...
  ASSERT_TRUE(job.Wait().ok());  // ...but it was told, and returned.
  EXPECT_TRUE(job.value());
  EXPECT_EQ(children_saw.load(), 2);
}

// Regression (found by runtime_model_test): a job that its worker claimed
// and then cancelled (its counter was cancelled, or a kCancel Shutdown
// began) was kRunning for a moment, and a JobRef::Cancel() in that moment
// returned false, "it already runs or ran", for a job that never ran (its
// value() is then a fatal error). Here the worker cancels a counter's jobs
// one after another while this thread cancels their handles from the other
// end: where the two meet, Cancel() found jobs in that moment. Now such a
// job runs (and sees cancel_requested()): false means it runs.
TEST(RuntimeCancelTest, CancelReturnsFalseOnlyForAJobThatRuns) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  constexpr int kJobs = 2000;
  std::atomic<int> ran{0};
  int returned_false = 0;
  int false_but_cancelled = 0;
  for (int round = 0; round < 20; ++round) {
    Gate gate;
    std::atomic<bool> blocking{false};
    auto blocker = rt->Submit([&] {
      blocking = true;
      gate.Pass();
    });
    ASSERT_TRUE(Eventually([&] { return blocking.load(); }));
    JobCounter counter;
    std::vector<JobHandle<bool>> handles;
    for (int i = 0; i < kJobs; ++i) {
      handles.push_back(rt->Submit(
          [&ran](JobContext& ctx) {
            ran++;
            return ctx.cancel_requested();
          },
          SubmitOptions().with_counter(&counter)));
    }
    counter.Cancel();
    gate.Open();
    for (int i = kJobs - 1; i >= 0; --i) {
      if (!handles[i].Cancel()) {
        ++returned_false;
        if (absl::IsCancelled(handles[i].Wait())) {
          ++false_but_cancelled;
        } else {
          EXPECT_TRUE(handles[i].Wait().ok());
          EXPECT_TRUE(handles[i].value());  // It saw the cancellation.
        }
      }
    }
    EXPECT_TRUE(absl::IsCancelled(counter.Wait()));
    EXPECT_TRUE(blocker.Wait().ok());
  }
  EXPECT_EQ(false_but_cancelled, 0)
      << "Cancel() returned false for jobs that never ran";
  EXPECT_EQ(ran.load(), returned_false);  // Only those, and all of them.
}

// Pauses the first claimer of a job record after it is armed, between its
// claim and its look at the cancellations (jobs_internal::claimed_test_hook),
// until released.
std::atomic<bool> claim_hook_armed{false};
std::atomic<bool> claim_hook_paused{false};
std::atomic<bool> claim_hook_resume{false};

void PauseTheClaimer() {
  if (!claim_hook_armed.exchange(false)) return;
  claim_hook_paused = true;
  while (!claim_hook_resume.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

class ClaimHookScope {
 public:
  ClaimHookScope() {
    claim_hook_paused = false;
    claim_hook_resume = false;
    claim_hook_armed = true;
    jobs_internal::claimed_test_hook = &PauseTheClaimer;
  }
  ClaimHookScope(const ClaimHookScope&) = delete;
  ClaimHookScope& operator=(const ClaimHookScope&) = delete;
  ~ClaimHookScope() {
    Resume();
    jobs_internal::claimed_test_hook = nullptr;
  }
  static bool Paused() {
    return Eventually([] { return claim_hook_paused.load(); });
  }
  static void Resume() {
    claim_hook_armed = false;
    claim_hook_resume = true;
  }
};

// The race CancelReturnsFalseOnlyForAJobThatRuns samples, made certain: a
// worker has claimed the job and not yet seen that its counter was
// cancelled when JobRef::Cancel() comes. Cancel() returns false, "it runs
// or ran", so the job must run (seeing the cancellation), not be cancelled
// by its claimer afterwards.
TEST(RuntimeCancelTest,
     AJobWhoseCancelReturnedFalseRunsThoughItsCounterWasCancelled) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  JobCounter counter;
  std::atomic<int> ran{0};
  JobHandle<bool> handle;
  {
    ClaimHookScope hook;
    handle = rt->Submit(
        [&ran](JobContext& ctx) {
          ran++;
          return ctx.cancel_requested();
        },
        SubmitOptions().with_counter(&counter));
    ASSERT_TRUE(ClaimHookScope::Paused());
    counter.Cancel();
    EXPECT_FALSE(handle.Cancel()) << "the job was claimed: it runs";
    ClaimHookScope::Resume();
    EXPECT_TRUE(handle.Wait().ok()) << handle.Wait();
  }
  EXPECT_EQ(ran.load(), 1);
  EXPECT_TRUE(handle.value()) << "it saw its cancellation";
  // Its one job ran to completion: no failure to report.
  EXPECT_TRUE(counter.Wait().ok());
}

// The same pause with no JobRef::Cancel(): the claimer sees the cancelled
// counter and cancels the job, which never runs.
TEST(RuntimeCancelTest, AClaimedJobOfACancelledCounterIsCancelledBeforeItRuns) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  JobCounter counter;
  std::atomic<int> ran{0};
  JobHandle<void> handle;
  {
    ClaimHookScope hook;
    handle =
        rt->Submit([&ran] { ran++; }, SubmitOptions().with_counter(&counter));
    ASSERT_TRUE(ClaimHookScope::Paused());
    counter.Cancel();
    ClaimHookScope::Resume();
    EXPECT_TRUE(absl::IsCancelled(handle.Wait())) << handle.Wait();
  }
  EXPECT_EQ(ran.load(), 0);
  EXPECT_TRUE(absl::IsCancelled(counter.Wait()));
  EXPECT_TRUE(handle.Cancel()) << "cancelled: true, as for its canceller";
}

TEST(RuntimeCancelTest, CancellationStorm) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  for (int round = 0; round < 20; ++round) {
    std::vector<JobHandle<void>> handles;
    for (int i = 0; i < 200; ++i) {
      handles.push_back(rt->Submit([&ran] { ran++; }));
    }
    int cancelled = 0;
    for (size_t i = 0; i < handles.size(); i += 2) {
      cancelled += handles[i].Cancel() ? 1 : 0;
    }
    int waited_cancelled = 0;
    for (auto& h : handles) {
      absl::Status s = h.Wait();
      if (s.code() == absl::StatusCode::kCancelled)
        waited_cancelled++;
      else
        EXPECT_TRUE(s.ok()) << s;
    }
    EXPECT_EQ(cancelled, waited_cancelled);
  }
  RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.jobs_completed + stats.jobs_cancelled, 4000u);
  EXPECT_EQ(stats.jobs_completed, static_cast<uint64_t>(ran.load()));
}

// ---- Shutdown, lifecycle, external submitters
// -----------------------------------

TEST(RuntimeShutdownTest, FinishRunsEverythingPending) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(rt->Spawn([&ran] { ran++; }).ok());
  }
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  EXPECT_EQ(ran.load(), 500);
  auto late = rt->Submit([] {});
  EXPECT_EQ(late.Wait().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());  // Idempotent.
}

// Regression (found by runtime_model_test): a job counts itself finished
// (for stats()) before it releases its successors, its counter and its
// frame, and Shutdown waited for the finished count alone. Tokens are
// drained before it returns, but a job run elsewhere (inline by a waiting
// thread, or a Spawn's direct task) could still be doing so: "no job is
// left", with a counter's pending() still 1. Here this thread, helping in
// its wait (kHelp), runs J inline; J's 50,000 cancelled successors, each
// finished already, make its release of them long, and Shutdown, on another
// thread, meanwhile finds as many jobs finished as submitted.
TEST(RuntimeShutdownTest, NoJobIsStillFinishingWhenShutdownReturns) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_outside_wait(OutsideWaitPolicy::kHelp));
  std::atomic<bool> blocking{false}, j_ran{false};
  // Holds the only worker until J has run, so that J runs here.
  ASSERT_TRUE(rt->Spawn([&] {
                  blocking = true;
                  while (!j_ran.load()) std::this_thread::yield();
                }).ok());
  ASSERT_TRUE(Eventually([&] { return blocking.load(); }));
  JobCounter counter;
  auto j =
      rt->Submit([&] { j_ran = true; }, SubmitOptions().with_counter(&counter));
  for (int i = 0; i < 50000; ++i) {
    // Its record stays on J's list of successors until J lets it go.
    ASSERT_TRUE(rt->Submit([] {}, SubmitOptions().after(j)).Cancel());
  }
  int64_t pending_after_shutdown = -1;
  std::thread shutdown([&] {
    while (!j_ran.load()) std::this_thread::yield();
    EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
    pending_after_shutdown = counter.pending();
  });
  EXPECT_TRUE(j.Wait().ok());  // Runs J here.
  shutdown.join();
  EXPECT_EQ(pending_after_shutdown, 0)
      << "Shutdown returned while a job was still finishing";
  EXPECT_TRUE(counter.Wait().ok());
}

// Found in review: a Spawn's direct task counted itself settled in
// RunDirect, before TBB's task destroyed the function (and what it
// captured), and Shutdown, which waits for the settled count, returned
// while the destructor still ran on a worker: job code after "no job
// runs after Shutdown returns". (A job run by a token is destroyed with its
// record, before Shutdown's drain of the tokens ends.)
// A job's capture that is slow to destroy; only the copy that the job
// holds sets `destroyed` (moved-from ones do nothing).
struct SlowToDestroy {
  std::atomic<bool>* destroyed;
  explicit SlowToDestroy(std::atomic<bool>* d) : destroyed(d) {}
  SlowToDestroy(SlowToDestroy&& other) noexcept
      : destroyed(std::exchange(other.destroyed, nullptr)) {}
  SlowToDestroy(const SlowToDestroy&) = delete;
  ~SlowToDestroy() {
    if (destroyed == nullptr) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    destroyed->store(true);
  }
};

TEST(RuntimeShutdownTest, ASpawnedFunctionIsDestroyedBeforeShutdownReturns) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<bool> ran{false}, destroyed{false};
  // From this thread, no predecessors, kStrict: the direct path (one TBB
  // task in the node's arena).
  ASSERT_TRUE(rt->Spawn([guard = SlowToDestroy(&destroyed), &ran] {
                  ran = true;
                }).ok());
  ASSERT_TRUE(Eventually([&] { return ran.load(); }));
  EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  EXPECT_TRUE(destroyed.load())
      << "Shutdown returned while a job's function was still being destroyed";
}

// Handles may outlive their runtime (say, members declared before the
// runtime's): every job is final by then, and a handle still gives its
// status and value and may be copied, waited on and dropped. The runtime
// reports the misuse once and keeps the records' pool, since the handles
// still point into it (before, dropping such a handle freed its record
// into the destroyed runtime's pool: a use after free).
TEST(RuntimeShutdownTest, HandlesMayOutliveTheRuntime) {
  if (kMinimalBuild) {
    GTEST_SKIP() << "--config=minimal compiles out the statistics the check "
                    "reads (docs/jobs.md)";
  }
  std::vector<std::string> reports;
  ScopedErrorHandler handler(
      [](const ErrorReport& r, void* ctx) {
        static_cast<std::vector<std::string>*>(ctx)->push_back(r.message);
      },
      &reports);
  auto topology = TwoNodes();
  JobHandle<int> done, blocker, declared;
  // Past the pools' largest class: from the pool's tracked heap.
  JobHandle<std::array<char, 8192>> big;
  {
    auto rt = MakeRuntime(
        Config().set_topology(topology.get()).set_workers_per_node(1));
    done = rt->Submit([] { return 7; }, SubmitOptions().on_node(1));
    ASSERT_TRUE(done.Wait().ok());
    big = rt->Submit([] {
      std::array<char, 8192> a{};
      a[8191] = 5;
      return a;
    });
    ASSERT_TRUE(big.Wait().ok());
    // A job declared after a running one is still waiting: its Cancel()
    // wins for certain.
    std::atomic<bool> started{false}, release{false};
    blocker = rt->Submit(
        [&started, &release] {
          started.store(true);
          while (!release.load()) std::this_thread::yield();
          return 1;
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(Eventually([&started] { return started.load(); }));
    declared =
        rt->Submit([] { return 2; }, SubmitOptions().on_node(0).after(blocker));
    EXPECT_TRUE(declared.Cancel());
    release.store(true);
  }  // The runtime goes; four handles stay.
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(absl::StrContains(reports[0], "4 job record(s)")) << reports[0];
  EXPECT_TRUE(absl::StrContains(reports[0], "held past the runtime"))
      << reports[0];
  ASSERT_TRUE(done.done());
  EXPECT_TRUE(done.Wait().ok());
  EXPECT_EQ(done.value(), 7);
  EXPECT_FALSE(done.Cancel());  // It ran.
  EXPECT_TRUE(blocker.Wait().ok());
  EXPECT_EQ(blocker.value(), 1);
  JobHandle<int> copy = declared;
  EXPECT_TRUE(copy.done());
  EXPECT_TRUE(copy.Cancel());  // It never runs.
  EXPECT_EQ(declared.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(big.value()[8191], 5);
  big = JobHandle<std::array<char, 8192>>();
  done = JobHandle<int>();
  blocker = JobHandle<int>();
  copy = JobHandle<int>();
  declared = JobHandle<int>();  // The last records go back to the kept pool.

  // Handles dropped first: nothing to report.
  {
    auto rt = MakeRuntime(Config().set_topology(topology.get()));
    auto h = rt->Submit([] { return 1; });
    ASSERT_TRUE(h.Wait().ok());
  }
  EXPECT_EQ(reports.size(), 1u);
}

// A wait on a spawned job's counter, and EndFrame, return only once its
// function and what it captured are destroyed, as for a submitted job and
// for TBB's own tasks (the captures may refer to what the waiter then
// frees). Spawn from outside and from inside a job: both direct paths.
TEST(RuntimeWaitTest, WaitsReturnAfterASpawnedFunctionIsDestroyed) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  for (const bool inside : {false, true}) {
    SCOPED_TRACE(inside ? "spawned by a job" : "spawned from outside");
    std::atomic<bool> destroyed{false};
    JobCounter counter;
    auto spawn = [&] {
      return rt->Spawn([guard = SlowToDestroy(&destroyed)] {},
                       SubmitOptions().with_counter(&counter));
    };
    if (inside) {
      JobCounter outer;
      ASSERT_TRUE(rt->Spawn([&] { ASSERT_TRUE(spawn().ok()); },
                            SubmitOptions().with_counter(&outer))
                      .ok());
      ASSERT_TRUE(outer.Wait().ok());
    } else {
      ASSERT_TRUE(spawn().ok());
    }
    ASSERT_TRUE(counter.Wait().ok());
    EXPECT_TRUE(destroyed.load())
        << "the counter's wait returned before the function was destroyed";
  }
  std::atomic<bool> destroyed{false};
  ASSERT_TRUE(rt->BeginFrame().ok());
  ASSERT_TRUE(rt->Spawn([guard = SlowToDestroy(&destroyed)] {}).ok());
  ASSERT_TRUE(rt->EndFrame().ok());
  EXPECT_TRUE(destroyed.load())
      << "EndFrame returned before the frame job's function was destroyed";
}

TEST(RuntimeShutdownTest, CancelDropsPendingJobsAndNeverHangs) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  Gate gate;
  std::atomic<int> ran{0};
  std::atomic<bool> started{false};
  auto blocker = rt->Submit([&] {
    started = true;
    gate.Pass();
  });
  ASSERT_TRUE(Eventually([&] { return started.load(); }));
  std::vector<JobHandle<void>> pending;
  for (int i = 0; i < 100; ++i) {
    pending.push_back(rt->Submit([&ran] { ran++; }));
  }
  std::thread opener([&gate] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gate.Open();
  });
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kCancel).ok());
  opener.join();
  EXPECT_TRUE(blocker.Wait().ok());
  EXPECT_EQ(ran.load(), 0);
  for (auto& h : pending) {
    EXPECT_EQ(h.Wait().code(), absl::StatusCode::kCancelled);
  }
}

TEST(RuntimeShutdownTest, DestroyingWithWorkPendingLosesNothing) {
  auto topology = TwoNodes();
  std::atomic<int> ran{0};
  for (int round = 0; round < 10; ++round) {
    auto rt = MakeRuntime(Config().set_topology(topology.get()));
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(rt->Spawn([&ran](JobContext& ctx) {
                      ctx.arena().AllocateArray<char>(100);
                      ran++;
                    }).ok());
    }
  }  // Each destructor finishes its jobs (ShutdownMode::kFinish).
  EXPECT_EQ(ran.load(), 3000);
}

TEST(RuntimeShutdownTest, JobsMaySubmitContinuationsWhileDraining) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> depth{0};
  std::function<void(JobContext&)> step = [&](JobContext& ctx) {
    if (depth.fetch_add(1) < 50) {
      EXPECT_TRUE(ctx.runtime().Spawn(step).ok());
    }
  };
  ASSERT_TRUE(rt->Spawn(step).ok());
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  EXPECT_EQ(depth.load(), 51);
}

// Outside threads submitting while Shutdown(kFinish) runs: every Spawn that
// returned OK ran before Shutdown returned, every later one is refused with
// FailedPrecondition, and no job runs after Shutdown.
TEST(RuntimeShutdownTest, ShutdownRacingOutsideSubmittersLeavesNoJobBehind) {
  auto topology = TwoNodes();
  for (int round = 0; round < 40; ++round) {
    auto rt = MakeRuntime(Config().set_topology(topology.get()));
    std::atomic<long> ran{0};
    std::atomic<long> accepted{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> submitters;
    for (int t = 0; t < 3; ++t) {
      submitters.emplace_back([&, t] {
        while (!go.load()) std::this_thread::yield();
        for (;;) {
          // Both paths: the direct one (Spawn) and the record one (Submit).
          absl::Status s;
          if (t == 2) {
            JobHandle<void> h = rt->Submit([&ran] { ran++; });
            s = h.Wait();
          } else {
            s = rt->Spawn([&ran] { ran++; },
                          SubmitOptions().on(t == 0 ? Affinity::Any()
                                                    : Affinity::Node(1)));
          }
          if (!s.ok()) {
            EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
            return;
          }
          accepted++;
        }
      });
    }
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(200 + 50 * round));
    ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
    const long ran_at_shutdown = ran.load();
    for (auto& t : submitters) t.join();
    EXPECT_EQ(ran_at_shutdown, accepted.load()) << "round " << round;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(ran.load(), ran_at_shutdown) << "round " << round;
    const RuntimeStats stats = rt->stats();
    EXPECT_EQ(stats.jobs_submitted, static_cast<uint64_t>(accepted.load()));
    EXPECT_EQ(stats.jobs_completed, static_cast<uint64_t>(accepted.load()));
  }
}

TEST_P(WorkerSweep, ExternalSubmittersFromManyThreads) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  std::atomic<long> sum{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      JobCounter counter;
      for (int i = 0; i < 500; ++i) {
        EXPECT_TRUE(
            rt->Spawn([&sum, i] { sum += i; },
                      SubmitOptions()
                          .on(t % 2 ? Affinity::Any() : Affinity::Node(1))
                          .with_counter(&counter))
                .ok());
      }
      EXPECT_TRUE(counter.Wait().ok());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(sum.load(), 4L * 499 * 500 / 2);
}

TEST(RuntimeLifecycleTest, ManyRuntimesOneAfterAnotherAndSideBySide) {
  auto topology = TwoNodes();
  for (int round = 0; round < 20; ++round) {
    auto a = MakeRuntime(Config().set_topology(topology.get()));
    auto b = MakeRuntime(
        Config().set_topology(topology.get()).set_workers_per_node(1));
    auto x = a->Submit([] { return 1; }, SubmitOptions().on_node(1));
    auto y = b->Submit([] { return 2; }, SubmitOptions().on_node(0));
    ASSERT_TRUE(x.Wait().ok());
    ASSERT_TRUE(y.Wait().ok());
    EXPECT_EQ(x.value() + y.value(), 3);
  }
}

TEST(RuntimeLifecycleTest, RunsNextToTheApplicationsOwnTbbWork) {
  SKIP_RAW_TBB_UNDER_TSAN();
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<long> ours{0};
  JobCounter counter;
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(
        rt->Spawn([&ours] { ours++; }, SubmitOptions().with_counter(&counter))
            .ok());
  }
  std::atomic<long> theirs{0};
  tbb::parallel_for(0, 10000, [&theirs](int) { theirs++; });
  ASSERT_TRUE(counter.Wait().ok());
  EXPECT_EQ(ours.load(), 200);
  EXPECT_EQ(theirs.load(), 10000);
}

// ---- Waiting inside jobs, fork-join, parallel for
// --------------------------------

TEST(RuntimeWaitTest, WaitingOnAnUnstartedJobOfTheSameNodeRunsItInline) {
  // One worker: without inline execution this would deadlock.
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto outer = rt->Submit([](JobContext& ctx) {
    auto inner = ctx.runtime().Submit([] { return 20; });
    EXPECT_TRUE(inner.Wait().ok());
    return inner.value() + 1;
  });
  ASSERT_TRUE(outer.Wait().ok());
  EXPECT_EQ(outer.value(), 21);
  EXPECT_EQ(rt->stats().nodes[0].worker_stats[0].jobs_inline, 1u);
}

// A job that waits on a counter of its own children helps run them: on a
// node with one worker a blocking wait would never return.
TEST(RuntimeWaitTest, ACounterWaitInsideAJobRunsItsChildren) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  auto parent = rt->Submit([&ran](JobContext& ctx) {
    JobCounter children;
    for (int i = 0; i < 1000; ++i) {
      EXPECT_TRUE(ctx.runtime()
                      .Spawn([&ran] { ran.fetch_add(1); },
                             SubmitOptions().with_counter(&children))
                      .ok());
    }
    EXPECT_TRUE(children.Wait().ok());
    EXPECT_EQ(children.pending(), 0);
    return ran.load();
  });
  ASSERT_TRUE(parent.Wait().ok());
  EXPECT_EQ(parent.value(), 1000);
  const RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.jobs_submitted, 1001u);
  EXPECT_EQ(stats.jobs_completed, 1001u);
}

// A thread sleeping in JobCounter::Wait is woken by the job that brings
// the count to zero, whose last touch of the counter comes before the
// waiter can return: the counter (on the heap here, so that ASan sees any
// later touch) may be destroyed as soon as Wait returns. Each round also
// reuses the counter once, and its jobs spawn continuations counted on it,
// so the count rises and falls while the waiter sleeps.
std::atomic<uint64_t> spin_sink{0};  // Keeps the links' spin loops.

TEST(RuntimeWaitTest, ACounterMayBeDestroyedAsSoonAsItsWaitReturns) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  int expected = 0;
  for (int round = 0; round < 300; ++round) {
    auto counter = std::make_unique<JobCounter>();
    for (int batch = 0; batch < 2; ++batch) {
      const int chains = 1 + round % 4;
      const int length = 1 + (round * 7 + batch) % 40;
      for (int c = 0; c < chains; ++c) {
        // Each link spins a little and spawns the next on the counter.
        struct Link {
          JobCounter* counter;
          std::atomic<int>* ran;
          int left;
          void operator()(JobContext& ctx) const {
            uint64_t spin = 1;
            for (int k = 0; k < 200; ++k) spin = spin * 31 + k;
            spin_sink.fetch_add(spin & 1, std::memory_order_relaxed);
            ran->fetch_add(1, std::memory_order_relaxed);
            if (left > 1) {
              EXPECT_TRUE(ctx.runtime()
                              .Spawn(Link{counter, ran, left - 1},
                                     SubmitOptions().with_counter(counter))
                              .ok());
            }
          }
        };
        ASSERT_TRUE(rt->Spawn(Link{counter.get(), &ran, length},
                              SubmitOptions().on_node(c % 2).with_counter(
                                  counter.get()))
                        .ok());
        expected += length;
      }
      ASSERT_TRUE(counter->Wait().ok());
      ASSERT_EQ(counter->pending(), 0);
      ASSERT_EQ(ran.load(), expected) << "round " << round;
    }
    counter.reset();
  }
}

// EndFrame sleeps while the frame's jobs spawn continuations into the same
// frame, and returns only once the last has finished.
TEST(RuntimeFrameTest, EndFrameWaitsForContinuationsSpawnedDuringTheFrame) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  std::atomic<int> ran{0};
  for (int frame = 0; frame < 100; ++frame) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    const int before = ran.load();
    struct Link {
      std::atomic<int>* ran;
      int left;
      void operator()(JobContext& ctx) const {
        EXPECT_TRUE(ctx.in_frame());
        ran->fetch_add(1, std::memory_order_relaxed);
        if (left > 1) {
          EXPECT_TRUE(ctx.runtime().Spawn(Link{ran, left - 1}).ok());
        }
      }
    };
    for (int c = 0; c < 3; ++c) {
      ASSERT_TRUE(
          rt->Spawn(Link{&ran, 50}, SubmitOptions().on_node(c % 2)).ok());
    }
    ASSERT_TRUE(rt->EndFrame().ok());
    EXPECT_EQ(ran.load() - before, 150) << "frame " << frame;
  }
  EXPECT_EQ(rt->frames(), 100u);
}

// The helping wait reports its children's failures like any counter.
TEST(RuntimeWaitTest, ACounterWaitInsideAJobReportsItsChildrensFailure) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto parent = rt->Submit([](JobContext& ctx) {
    JobCounter children;
    for (int i = 0; i < 100; ++i) {
      EXPECT_TRUE(ctx.runtime()
                      .Spawn(
                          [i] {
                            if (i == 7) throw std::runtime_error("child 7");
                          },
                          SubmitOptions().with_counter(&children).named("c"))
                      .ok());
    }
    return children.Wait();
  });
  ASSERT_TRUE(parent.Wait().ok());
  EXPECT_EQ(parent.value().code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(absl::StrContains(parent.value().message(), "'c' threw: child 7"))
      << parent.value();
}

long Fib(JobContext& ctx, int n) {
  if (n < 12) {
    long a = 0, b = 1;
    for (int i = 0; i < n; ++i) std::tie(a, b) = std::make_pair(b, a + b);
    return a;
  }
  long x = 0, y = 0;
  ctx.Fork([&](JobContext& c) { x = Fib(c, n - 1); },
           [&](JobContext& c) { y = Fib(c, n - 2); });
  return x + y;
}

TEST_P(WorkerSweep, ForkComputesFibonacci) {
  auto topology = Synthetic("pack:1 [numa] core:4 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  auto h = rt->Submit([](JobContext& ctx) { return Fib(ctx, 22); });
  ASSERT_TRUE(h.Wait().ok());
  EXPECT_EQ(h.value(), 17711);
}

// Depth of fork waits the current thread is inside (for the isolation test).
thread_local int tls_fork_waits = 0;

// Busy-waits for 50 us: a leaf of the trees below.
void SpinLeaf() {
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  while (std::chrono::steady_clock::now() < until) {
  }
}

// A fork tree whose leaves take a while, so that workers wait in Fork often.
void SlowTree(JobContext& ctx, int depth) {
  if (depth == 0) {
    SpinLeaf();
    return;
  }
  ++tls_fork_waits;
  ctx.Fork([depth](JobContext& c) { SlowTree(c, depth - 1); },
           [depth](JobContext& c) { SlowTree(c, depth - 1); });
  --tls_fork_waits;
}

// As SlowTree, with Spawn and a JobCounter wait instead of Fork.
void SlowCounterTree(Runtime& rt, int depth) {
  if (depth == 0) {
    SpinLeaf();
    return;
  }
  JobCounter children;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(rt.Spawn([&rt, depth] { SlowCounterTree(rt, depth - 1); },
                         SubmitOptions().with_counter(&children))
                    .ok());
  }
  ++tls_fork_waits;
  EXPECT_TRUE(children.Wait().ok());
  --tls_fork_waits;
}

// Runs `rounds` of `tree` in one job on a 3-worker node while another job
// keeps spawning unrelated jobs into its worker's deque, and checks that
// no unrelated job ran inside a wait of the tree (tls_fork_waits > 0). The
// two workers that share the tree often find their own deques empty while
// they wait, and an unisolated wait would then steal the unrelated jobs.
void ExpectTreeWaitsRunOnlyTheirOwnChildren(
    int rounds, const std::function<void(JobContext&)>& tree_round) {
  auto topology = Synthetic("pack:1 [numa] core:3 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(3));
  std::atomic<int> unrelated_inside_wait{0};
  std::atomic<int> unrelated_run{0};
  std::atomic<bool> tree_done{false};
  JobCounter unrelated;
  auto spawner = rt->Submit([&](JobContext& ctx) {
    while (!tree_done.load(std::memory_order_acquire)) {
      for (int i = 0; i < 64; ++i) {
        ASSERT_TRUE(ctx.runtime()
                        .Spawn(
                            [&](JobContext&) {
                              if (tls_fork_waits > 0) ++unrelated_inside_wait;
                              ++unrelated_run;
                            },
                            SubmitOptions().with_counter(&unrelated))
                        .ok());
      }
      std::this_thread::yield();
    }
  });
  auto tree = rt->Submit([&](JobContext& ctx) {
    for (int round = 0; round < rounds; ++round) tree_round(ctx);
    tree_done.store(true, std::memory_order_release);
  });
  ASSERT_TRUE(tree.Wait().ok());
  ASSERT_TRUE(spawner.Wait().ok());
  ASSERT_TRUE(unrelated.Wait().ok());
  EXPECT_GT(unrelated_run.load(), 0);
  EXPECT_EQ(unrelated_inside_wait.load(), 0);
}

// A worker waiting in Fork (at any depth, stolen children included) runs
// only that job's own children: never an unrelated job, which could rewind
// the arenas under the waiting one.
TEST(RuntimeTest, ForkWaitsRunOnlyTheirOwnChildren) {
  ExpectTreeWaitsRunOnlyTheirOwnChildren(
      20, [](JobContext& ctx) { SlowTree(ctx, 6); });
}

// The same for a job waiting on a JobCounter of its children: it helps
// with its own children only (every job runs in an isolated region of its
// own, and what it spawns carries the region's tag). Fails in 5 runs of 6
// with the per-job region taken out.
TEST(RuntimeTest, CounterWaitsRunOnlyTheirOwnChildren) {
  ExpectTreeWaitsRunOnlyTheirOwnChildren(
      40, [](JobContext& ctx) { SlowCounterTree(ctx.runtime(), 6); });
}

TEST_P(WorkerSweep, ParallelForCoversEveryItemOnItsHomeNode) {
  auto topology = Synthetic("pack:3 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  const size_t n = 10007;
  NodePartition partition = rt->Partition(n);
  std::vector<std::atomic<int>> hits(n);
  std::atomic<int> misplaced{0};
  ASSERT_TRUE(
      rt->ParallelFor(partition, 64, [&](JobContext& ctx, size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) {
            hits[i]++;
            if (partition.HomeOf(i) != ctx.node()) {
              misplaced++;
            }
          }
        }).ok());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << i;
  EXPECT_EQ(misplaced.load(), 0);
}

TEST(RuntimeParallelTest, PartitionIsProportionalToWorkers) {
  NodePartition p = NodePartition::Proportional(100, {1, 3});
  ASSERT_EQ(p.ranges().size(), 2u);
  EXPECT_EQ(p.ranges()[0].begin, 0u);
  EXPECT_EQ(p.ranges()[0].end, 25u);
  EXPECT_EQ(p.ranges()[1].end, 100u);
  EXPECT_EQ(p.HomeOf(24), 0);
  EXPECT_EQ(p.HomeOf(25), 1);
}

struct Particle {
  float x, v;
};

TEST_P(WorkerSweep, BatchProcessorRunsEachBatchOnItsHomeNode) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
  auto particles = NodeArray<Particle>::Create(*rt, rt->Partition(5000));
  ASSERT_TRUE(particles.ok()) << particles.status();
  for (size_t i = 0; i < particles->size(); ++i) {
    (*particles)[i] = {static_cast<float>(i), 1.0f};
  }
  auto processor = BatchProcessor<Particle>::Create(*particles, 256);
  ASSERT_TRUE(processor.ok());
  EXPECT_EQ(processor->batches().size(), 20u);  // 2500 per node: 10 each.
  std::atomic<int> misplaced{0};
  ASSERT_TRUE(
      processor
          ->ProcessAll(*rt,
                       [&](JobContext& ctx, absl::Span<Particle> batch) {
                         const size_t first = static_cast<size_t>(batch[0].x);
                         if (particles->partition().HomeOf(first) !=
                             ctx.node()) {
                           misplaced++;
                         }
                         for (Particle& p : batch) p.x += p.v;
                       })
          .ok());
  EXPECT_EQ(misplaced.load(), 0);
  for (size_t i = 0; i < particles->size(); ++i) {
    ASSERT_EQ((*particles)[i].x, static_cast<float>(i) + 1.0f);
  }
}

TEST(RuntimeParallelTest, NodeArrayRejectsAPartitionForOtherNodes) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto bad = NodeArray<int>::Create(*rt, NodePartition({{5, 0, 10}}));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

// Regression (review): with a node's first range empty, segment(k) gave
// its next range's items but block(k) the empty range's (no) block, so a
// placement check of block(k) found nothing to check.
TEST(RuntimeParallelTest, SegmentAndBlockAnswerForTheSameRange) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto array = NodeArray<int>::Create(
      *rt, NodePartition({{0, 0, 0}, {1, 0, 4}, {0, 4, 8}}));
  ASSERT_TRUE(array.ok()) << array.status();
  for (int k = 0; k < 2; ++k) {
    const absl::Span<int> segment = array->segment(k);
    const Block block = array->block(k);
    ASSERT_EQ(segment.size(), 4u) << k;
    EXPECT_EQ(block.data, static_cast<void*>(segment.data())) << k;
    EXPECT_GE(block.size, segment.size() * sizeof(int)) << k;
  }
  EXPECT_EQ(array->segment(0).data(), &(*array)[4]);
  EXPECT_EQ(array->segment(1).data(), &(*array)[0]);
}

// Regression (review): overlapping or unordered ranges were accepted; an
// overlap made Create zero 40 items past node 0's block and ParallelFor
// run items twice at once.
TEST(RuntimeParallelTest, PartitionsMustBeContiguousInOrderFromZero) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  for (const NodePartition& bad :
       {NodePartition({{0, 0, 60}, {1, 50, 100}}),     // Overlap.
        NodePartition({{1, 50, 100}, {0, 0, 50}}),     // Out of order.
        NodePartition({{0, 10, 50}}),                  // Not from 0.
        NodePartition({{0, 0, 50}, {1, 60, 100}})}) {  // A gap.
    auto array = NodeArray<int>::Create(*rt, bad);
    EXPECT_EQ(array.status().code(), absl::StatusCode::kInvalidArgument)
        << array.status();
    std::atomic<int> calls{0};
    absl::Status s =
        rt->ParallelFor(bad, 8, [&](JobContext&, size_t, size_t) { calls++; });
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "NodePartition")) << s;
    EXPECT_EQ(calls.load(), 0);
  }
  EXPECT_TRUE(rt->Partition(100).Check(rt->num_nodes()).ok());
}

// Spins until `done()` or 20 s have passed; true if done() held.
template <typename Pred>
bool SpinUntil(const Pred& done) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Regression (review): called inside a job, Runtime::ParallelFor returned
// the failure of the caller's own node's range even when another node's
// range had failed first.
// Inside a job, every range on the caller's node runs on the calling
// worker, so that the wait holds only other nodes' jobs (and sleeps outside
// TBB): one job submitted for node 1's range, none for node 0's two.
TEST(RuntimeParallelTest, ParallelForInsideAJobRunsAllOfItsNodesRangesItself) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(1)
                            .set_stealing(StealPolicy::kStrict));
  std::vector<std::atomic<int>> seen(30);
  std::atomic<int> misplaced{0};
  auto job = rt->Submit(
      [&](JobContext& caller) {
        const std::thread::id me = std::this_thread::get_id();
        return rt->ParallelFor(
            NodePartition({{0, 0, 10}, {1, 10, 20}, {0, 20, 30}}), 4,
            [&, me](JobContext& ctx, size_t b, size_t e) {
              const bool on_caller = std::this_thread::get_id() == me;
              if (ctx.node() != (b < 10 || b >= 20 ? 0 : 1) ||
                  on_caller != (ctx.node() == caller.node())) {
                misplaced.fetch_add(1);
              }
              for (size_t i = b; i < e; ++i) seen[i].fetch_add(1);
            });
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(job.Wait().ok()) << job.status();
  EXPECT_TRUE(job.value().ok()) << job.value();
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].load(), 1) << i;
  EXPECT_EQ(misplaced.load(), 0);
  const RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.jobs_submitted, 2u);  // The caller and node 1's range.
  EXPECT_EQ(stats.nodes[0].jobs_submitted, 1u);
  EXPECT_EQ(stats.nodes[1].jobs_submitted, 1u);
}

TEST(RuntimeParallelTest, ParallelForInsideAJobReturnsTheFirstFailure) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  auto job = rt->Submit(
      [&rt](JobContext&) {
        return rt->ParallelFor(
            NodePartition({{0, 0, 1}, {1, 1, 2}}), 1,
            [&rt](JobContext& ctx, size_t, size_t) {
              if (ctx.node() == 1) throw std::runtime_error("node 1 first");
              // Node 0 (the caller's): fail only after node 1's range has
              // failed (counted, then recorded a moment later).
              if (!SpinUntil([&rt] { return rt->stats().jobs_failed >= 1; })) {
                throw std::runtime_error("node 1 never failed");
              }
              std::this_thread::sleep_for(std::chrono::milliseconds(100));
              throw std::runtime_error("node 0 later");
            });
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(job.Wait().ok()) << job.status();
  const absl::Status& s = job.value();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "node 1 first")) << s;
}

// Regression (review): a job's cancellation did not reach the ranges of a
// Runtime::ParallelFor it called. Now the running ranges see it, and a
// range that had not started is skipped.
TEST(RuntimeParallelTest, ParallelForInsideACancelledJobSeesItAndSkips) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  // Node 1's only worker is held until the caller is cancelled, so node
  // 1's range cannot start before.
  std::atomic<bool> holding{false}, release{false};
  auto holder = rt->Submit(
      [&] {
        holding = true;
        SpinUntil([&] { return release.load(); });
      },
      SubmitOptions().on_node(1));
  ASSERT_TRUE(SpinUntil([&] { return holding.load(); }));
  std::atomic<bool> started{false}, saw_cancel{false};
  std::atomic<int> node1_calls{0};
  auto job = rt->Submit(
      [&](JobContext&) {
        return rt->ParallelFor(
            NodePartition({{0, 0, 1}, {1, 1, 2}}), 1,
            [&](JobContext& ctx, size_t, size_t) {
              if (ctx.node() == 1) {
                node1_calls++;
                return;
              }
              started = true;
              saw_cancel = SpinUntil([&] { return ctx.cancel_requested(); });
            });
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(SpinUntil([&] { return started.load(); }));
  EXPECT_FALSE(job.Cancel());  // Running: asked, not prevented.
  release = true;              // Node 1's range may start now.
  ASSERT_TRUE(holder.Wait().ok());
  ASSERT_TRUE(job.Wait().ok()) << job.status();
  EXPECT_TRUE(saw_cancel.load());
  EXPECT_EQ(node1_calls.load(), 0);
  const absl::Status& s = job.value();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "calling job")) << s;
}

// Regression (parallel_model_test): ParallelFor's chunks were TBB's
// auto_partitioner's, which stops splitting a range long before it is down
// to the grain (chunks of 2-5 items for grain 1), although the header
// promises chunks of at most about `grain` items.
TEST(RuntimeParallelTest, ChunksAreNeverLargerThanTheGrain) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  for (const size_t grain : {size_t{1}, size_t{3}, size_t{16}}) {
    std::atomic<size_t> largest{0};
    auto note = [&largest](size_t b, size_t e) {
      size_t seen = largest.load();
      while (e - b > seen && !largest.compare_exchange_weak(seen, e - b)) {
      }
    };
    ASSERT_TRUE(
        rt->ParallelFor(rt->Partition(400), grain,
                        [&](JobContext&, size_t b, size_t e) { note(b, e); })
            .ok());
    auto job = rt->Submit([&](JobContext& ctx) {
      ctx.ParallelFor(0, 400, grain,
                      [&](JobContext&, size_t b, size_t e) { note(b, e); });
    });
    ASSERT_TRUE(job.Wait().ok());
    EXPECT_LE(largest.load(), grain);
  }
}

// Iterations of a cross-node starvation loop: `sanitized` under ASan and
// TSan (whose threads run many times slower), `guest` in the qemu guests
// (see InNumaGuest), `plain` otherwise.
int StressIterations(int plain, int guest, int sanitized) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  (void)plain;
  (void)guest;
  return sanitized;
#else
  (void)sanitized;
  return InNumaGuest() ? guest : plain;
#endif
}

// Polls `job` every `poll` for up to 5 s; if it has not finished by then,
// reports `iteration` and the runtime's statistics and aborts (the runtime
// cannot be destroyed with a job stuck). How often the polling thread
// wakes matters to the hangs below: at 20 us none showed in 100,000
// iterations of one of them, at 0.2-1 ms they did.
void FinishesOrAbort(Runtime& rt, const JobRef& job, int iteration,
                     std::chrono::microseconds poll) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!job.done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(poll);
  }
  if (!job.done()) {
    std::fprintf(stderr, "iteration %d hung:\n%s\n", iteration,
                 rt.stats().ToText().c_str());
    std::fflush(stderr);
    std::abort();
  }
}

// The loop of the cross-node wait tests below: a runtime of two synthetic
// nodes with `workers` workers each and strict affinity; `iterations`
// times, a job submitted to node 1 first (node 1 must run it as well),
// then `body(runtime, ctx, ran)` as a job on node 0, which must finish
// (FinishesOrAbort, polled every `poll`) with OK, with the first job done
// and `ran` at `expected`.
template <typename Body>
void CrossNodeWaitRounds(std::vector<int> workers, int iterations,
                         std::chrono::microseconds poll, int expected,
                         const Body& body) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_node_workers(std::move(workers))
                            .set_stealing(StealPolicy::kStrict));
  for (int i = 0; i < iterations; ++i) {
    auto first = rt->Submit([] {}, SubmitOptions().on_node(1));
    std::atomic<int> ran{0};
    auto job = rt->Submit(
        [&rt, &ran, &body](JobContext& ctx) { return body(*rt, ctx, ran); },
        SubmitOptions().on_node(0));
    FinishesOrAbort(*rt, job, i, poll);
    ASSERT_TRUE(job.Wait().ok()) << job.Wait();
    ASSERT_TRUE(first.Wait().ok());
    ASSERT_EQ(ran.load(), expected);
  }
}

// Regression (parallel_model_test): under kStrict, on two nodes of one
// worker each, a job on node 0 that spawned two empty jobs onto node 1 and
// waited on their counter sometimes never finished although node 1 was
// idle (within 40-1,300 iterations in every try): node 0's worker slept in
// TBB's wait, and node 1's arena got no thread again, not even for jobs
// submitted from outside later (a plain oneTBB program does the same).
// JobCounter::Wait now sleeps outside TBB when all its jobs are remote, and
// keeps itself from sleeping in TBB when it helps with local ones
// (Runtime::AwakeHold). Runs `local` jobs on node 0 and two on node 1
// under one counter, waited on by a job on node 0, many times.
void JobWaitsOnRemoteJobs(int local) {
  // Hung at 40-1,300 plain.
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(3000, 300, 600), std::chrono::milliseconds(1),
      2 + local, [local](Runtime& rt, JobContext&, std::atomic<int>& ran) {
        JobCounter counter;
        for (int k = 0; k < 2 + local; ++k) {
          (void)rt.Spawn(
              [&ran] { ran.fetch_add(1); },
              SubmitOptions().on_node(k < 2 ? 1 : 0).with_counter(&counter));
        }
        return counter.Wait();
      });
}

TEST(RuntimeParallelTest, AJobWaitingOnAnIdleNodesJobsFinishes) {
  JobWaitsOnRemoteJobs(/*local=*/0);
}

// The same with a job of the waiter's own node under the counter too: the
// waiter then helps in TBB (parallel_model_test hung on such a counter,
// from Runtime::ParallelFor over ranges on both nodes, now and then).
TEST(RuntimeParallelTest, AJobWaitingOnLocalAndRemoteJobsFinishes) {
  JobWaitsOnRemoteJobs(/*local=*/1);
}

// Regression (review): JobCounter::Wait read the counter's nodes once,
// when it began. A local job the waiter runs while it helps may then count
// jobs on node 1 with the same counter: the waiter, having seen only its
// own node, posted no keep-awake task, fell asleep in TBB's wait with node
// 1's jobs queued, and node 1's arena got no thread again (hung in each of
// six runs, at iterations 578-10,875). Polled every 500 us: the hang
// needs the host's threads idle between iterations (at 20 us none in
// 100,000).
TEST(RuntimeParallelTest, AJobWaitingOnALocalJobThatSpawnsRemoteJobsFinishes) {
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(20000, 1000, 2000),
      std::chrono::microseconds(500), 3,
      [](Runtime& rt, JobContext&, std::atomic<int>& ran) {
        JobCounter counter;
        (void)rt.Spawn(
            [&rt, &ran, &counter] {
              for (int k = 0; k < 2; ++k) {
                (void)rt.Spawn(
                    [&ran] { ran.fetch_add(1); },
                    SubmitOptions().on_node(1).with_counter(&counter));
              }
              ran.fetch_add(1);
            },
            SubmitOptions().on_node(0).with_counter(&counter));
        return counter.Wait();
      });
}

// How a job on node 0 waits for its node-0 child (OuterWait), and how
// that child waits for two jobs it sent to node 1 (InnerWait).
enum class OuterWait { kFork, kCounter };
enum class InnerWait { kCounter, kHandle };

// Regression: node 0 has two workers; a job there waits for a child of its
// own node, which the other worker takes (the job spins until the child has
// started, up to 1 ms, so it nearly always does) and which waits, outside
// TBB, for jobs it sent to
// node 1. The job's own wait is TBB's: a Fork, or a JobCounter of local
// jobs only, which needs no keep-awake task of its own. Asleep there, it
// starved node 1's arena as in AJobWaitingOnAnIdleNodesJobsFinishes: the
// three forms hung in 3 of 3 runs each (iterations 607 to 12,413). A job
// that blocks outside TBB on another node's work now first posts the no-op
// task to its node's arena (JobCounter::Wait's remote path, JobRef::Wait),
// which keeps a worker of that node that waits in TBB from falling asleep.
void LocalChildWaitsOnRemoteJobs(OuterWait outer, InnerWait inner) {
  const int kIterations = StressIterations(20000, 1000, 1000);
  std::atomic<int> taken{0};  // Children that ran on the other worker.
  CrossNodeWaitRounds(
      {2, 1}, kIterations, std::chrono::microseconds(500), 3,
      [&taken, outer, inner](Runtime& rt, JobContext& ctx,
                             std::atomic<int>& ran) {
        const int parent = ctx.worker();
        std::atomic<bool> started{false};
        // The child: sends two jobs to node 1 and waits for them.
        auto child = [&](JobContext& c) {
          started.store(true);
          if (c.worker() != parent) taken.fetch_add(1);
          absl::Status s;
          if (inner == InnerWait::kCounter) {
            JobCounter counter;
            for (int k = 0; k < 2; ++k) {
              s.Update(
                  rt.Spawn([&ran] { ran.fetch_add(1); },
                           SubmitOptions().on_node(1).with_counter(&counter)));
            }
            s.Update(counter.Wait());
          } else {
            auto a = rt.Submit([&ran] { ran.fetch_add(1); },
                               SubmitOptions().on_node(1));
            auto b = rt.Submit([&ran] { ran.fetch_add(1); },
                               SubmitOptions().on_node(1));
            s.Update(a.Wait());
            s.Update(b.Wait());
          }
          return s;
        };
        // Gives the other worker time to take the child (a fixed 50 us was
        // too short on a loaded host: 3.7% of the iterations in one CI
        // run), then counts this job's own part.
        auto spin_then_count = [&] {
          const auto until =
              std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
          while (!started.load() && std::chrono::steady_clock::now() < until) {
          }
          ran.fetch_add(1);
        };
        absl::Status s;
        if (outer == OuterWait::kFork) {
          ctx.Fork([&](JobContext& c) { s = child(c); },
                   [&](JobContext&) { spin_then_count(); });
        } else {
          JobCounter counter;
          s.Update(rt.Spawn(
              [&](JobContext& c) {
                absl::Status cs = child(c);
                if (!cs.ok()) throw std::runtime_error(cs.ToString());
              },
              SubmitOptions().on_node(0).with_counter(&counter)));
          spin_then_count();
          s.Update(counter.Wait());
        }
        return s;
      });
  // The case under test: the other worker took the child (not the job's
  // own worker, inside its wait). Checked in plain builds on the host
  // only: under TSan the other worker woke within the spin in 78 of 1,000
  // iterations in one CI run, and the qemu guests' emulated CPUs are
  // slower still. (The plain build is the regression guard: its 20,000
  // iterations hung in every run without the blocking child's hold,
  // Runtime::AwakeHold.) At least 2%: with the whole suite running beside
  // it on two cores, the other worker took 7.6% of the children in one run
  // (27 Nov).
#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
  if (!InNumaGuest()) {
    EXPECT_GT(taken.load(), kIterations / 50);
  }
#endif
}

TEST(RuntimeParallelTest, AForkWhoseChildWaitsOnRemoteJobsFinishes) {
  LocalChildWaitsOnRemoteJobs(OuterWait::kFork, InnerWait::kCounter);
}

TEST(RuntimeParallelTest, AForkWhoseChildWaitsOnRemoteHandlesFinishes) {
  LocalChildWaitsOnRemoteJobs(OuterWait::kFork, InnerWait::kHandle);
}

TEST(RuntimeParallelTest, AJobWaitingOnALocalJobThatWaitsOnRemoteJobsFinishes) {
  LocalChildWaitsOnRemoteJobs(OuterWait::kCounter, InnerWait::kCounter);
}

// A job that blocks on another node's work holds its node awake (the
// keep-awake task stays queued while it waits); the node's idle worker
// must still steal the tasks the job spawned, here the second branch of a
// Fork, which the other node's job waits for. A first version of the held
// task kept the idle worker taking it again forever (an enqueued task
// comes before stealing at the top of a worker's stack): it hung at the
// first iteration. X keeps the other worker busy until the branch is
// spawned and the wait has begun.
TEST(RuntimeParallelTest, AnIdleWorkerOfANodeHeldAwakeStillStealsItsTasks) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_node_workers({2, 1})
                            .set_stealing(StealPolicy::kStrict));
  for (int iteration = 0; iteration < 20; ++iteration) {
    SCOPED_TRACE(iteration);
    std::atomic<bool> holding{false};
    std::atomic<bool> branch_ran{false};
    std::atomic<bool> remote_saw_branch{false};
    auto busy = rt->Submit(
        [&] {
          (void)Within(std::chrono::milliseconds(200),
                       [&] { return holding.load(); });
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        },
        SubmitOptions().on_node(0));
    auto forker = rt->Submit(
        [&](JobContext& ctx) {
          ctx.Fork(
              // Spawned: the other worker's to steal.
              [&](JobContext&) { branch_ran = true; },
              // Run here: waits on node 1, which waits for the first.
              [&](JobContext& c) {
                JobCounter remote;
                ASSERT_TRUE(
                    c.runtime()
                        .Spawn(
                            [&] {
                              remote_saw_branch =
                                  Within(std::chrono::seconds(2),
                                         [&] { return branch_ran.load(); });
                            },
                            SubmitOptions().on_node(1).with_counter(&remote))
                        .ok());
                holding = true;
                EXPECT_TRUE(remote.Wait().ok());
              });
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(forker.Wait().ok());
    ASSERT_TRUE(busy.Wait().ok());
    EXPECT_TRUE(remote_saw_branch.load())
        << "the branch did not run while the other branch waited";
  }
}

// Regression: a job on a node of one worker submitted a job to node 1 and
// a job of its own node declared after it, then waited on the second's
// handle. The second was made ready by node 1's worker, whose token for it
// lies outside the waiting job's isolated region, and the only worker of
// node 0 was the one waiting: it hung at the first iteration. The wait now
// runs the job inline once it is ready (Schedule wakes it).
TEST(RuntimeWaitTest, AWaitInsideAJobRunsItsJobOnceARemotePredecessorFinishes) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_node_workers({1, 1})
                            .set_stealing(StealPolicy::kStrict));
  for (int i = 0; i < 200; ++i) {
    std::atomic<int> ran{0};
    auto job = rt->Submit(
        [&rt, &ran, i](JobContext&) {
          auto remote = rt->Submit(
              [&ran, i] {
                // Sometimes finished before the wait begins, mostly after.
                if (i % 4 != 0) {
                  std::this_thread::sleep_for(std::chrono::microseconds(100));
                }
                ran.fetch_add(1);
              },
              SubmitOptions().on_node(1));
          auto local = rt->Submit([&ran] { return ran.fetch_add(1) + 1; },
                                  SubmitOptions().on_node(0).after(remote));
          absl::Status s = local.Wait();
          if (s.ok() && local.value() != 2) {
            s = absl::InternalError("ran before its predecessor");
          }
          return s;
        },
        SubmitOptions().on_node(0));
    FinishesOrAbort(*rt, job, i, std::chrono::microseconds(200));
    ASSERT_TRUE(job.Wait().ok()) << job.Wait();
    ASSERT_EQ(ran.load(), 2);
  }
  // The waited-for job ran inline on node 0's worker every time.
  EXPECT_GE(rt->stats().nodes[0].worker_stats[0].jobs_inline, 200u);
}

// Waits inside a job on jobs declared with after(), on a node of one
// worker. The waiting job (node 0) submits a chain of jobs, each declared
// after the one before, onto the nodes in `chain`, and waits on the last
// through a counter or its handle. A declared job is made ready by
// whoever finishes its last predecessor, often outside the waiting job's
// isolated region; and a predecessor the waiting job submitted to its own
// node lies in that region, where only the waiting worker can run it.
// Before, each of these shapes hung on the first iteration or nearly so;
// the wait now helps in its region while declared jobs are pending, and
// runs a counted job of its node inline once it is ready.
// kCounterOfAll counts every job of the chain, kCounter the last only,
// kCounterOfLastTwo the last two. With `drop_handles` the waiting job drops
// each handle but the last once the next job is declared, so that the
// records the wait walks may be freed under it (checked by ASan in CI).
enum class DeclaredWait { kCounter, kHandle, kCounterOfAll, kCounterOfLastTwo };

void WaitOnADeclaredChain(std::vector<int> chain, DeclaredWait wait,
                          bool drop_handles = false) {
  const int n = static_cast<int>(chain.size());
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(2000, 200, 300), std::chrono::microseconds(200),
      n,
      [&chain, n, wait, drop_handles](Runtime& rt, JobContext&,
                                      std::atomic<int>& ran) {
        static std::atomic<int> round{0};
        const bool slow_first = round.fetch_add(1) % 4 != 0;
        JobCounter counter;
        std::vector<JobHandle<int>> jobs;
        for (int k = 0; k < n; ++k) {
          SubmitOptions options = SubmitOptions().on_node(chain[k]);
          if (k > 0) options.after(jobs.back());
          if ((k + 1 == n && wait == DeclaredWait::kCounter) ||
              (k + 2 >= n && wait == DeclaredWait::kCounterOfLastTwo) ||
              wait == DeclaredWait::kCounterOfAll) {
            options.with_counter(&counter);
          }
          jobs.push_back(rt.Submit(
              [&ran, k, slow_first] {
                // Mostly finished after the wait begins, sometimes before.
                if (k == 0 && slow_first) {
                  std::this_thread::sleep_for(std::chrono::microseconds(50));
                }
                return ran.fetch_add(1);
              },
              options));
          if (drop_handles && k > 0) jobs[k - 1] = JobHandle<int>();
        }
        absl::Status s =
            wait == DeclaredWait::kHandle ? jobs.back().Wait() : counter.Wait();
        if (!s.ok()) return s;
        for (int k = 0; k < n; ++k) {
          if (!jobs[k].valid()) continue;  // Dropped.
          if (!jobs[k].done() || !jobs[k].Wait().ok() || jobs[k].value() != k) {
            return absl::InternalError(
                absl::StrCat("job ", k, " of the chain ran out of order"));
          }
        }
        return absl::OkStatus();
      });
}

TEST(RuntimeWaitTest, ACounterOfALocalJobAfterARemoteOneFinishesInsideAJob) {
  WaitOnADeclaredChain({1, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, AHandleOfALocalJobAfterALocalOneFinishesInsideAJob) {
  WaitOnADeclaredChain({0, 0}, DeclaredWait::kHandle);
}

TEST(RuntimeWaitTest, ACounterOfALocalJobAfterALocalOneFinishesInsideAJob) {
  WaitOnADeclaredChain({0, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, ACounterOfARemoteJobAfterALocalOneFinishesInsideAJob) {
  WaitOnADeclaredChain({0, 1}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, AHandleOfARemoteJobAfterALocalOneFinishesInsideAJob) {
  WaitOnADeclaredChain({0, 1}, DeclaredWait::kHandle);
}

TEST(RuntimeWaitTest, ACounterOfAChainThatLeavesAndComesBackFinishes) {
  WaitOnADeclaredChain({0, 1, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, AHandleOfAChainThatLeavesAndComesBackFinishes) {
  WaitOnADeclaredChain({0, 1, 0}, DeclaredWait::kHandle);
}

TEST(RuntimeWaitTest, ACounterOfAChainThatComesBackFromAnotherNodeFinishes) {
  WaitOnADeclaredChain({1, 1, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, ACounterOfEveryJobOfAChainThatComesBackFinishes) {
  WaitOnADeclaredChain({1, 0, 0}, DeclaredWait::kCounterOfAll);
}

// A job of the waiter's node in the middle of the chain, made ready by node
// 1's worker, that the wait does not name: the wait finds it among the
// predecessors of the job it waits on (a handle's, or a counter's jobs
// that wait for predecessors) and runs it (Runtime::FindStranded). Before,
// these hung at iteration 0 or 1.
TEST(RuntimeWaitTest, AHandleOfAChainThatComesBackFromAnotherNodeFinishes) {
  WaitOnADeclaredChain({1, 0, 0}, DeclaredWait::kHandle);
}

TEST(RuntimeWaitTest, ACounterOfTheLastJobOfAChainThatComesBackFinishes) {
  WaitOnADeclaredChain({1, 0, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, AHandleOfALongChainThatCrossesNodesFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 1, 0, 1, 1, 0, 0}, DeclaredWait::kHandle);
}

TEST(RuntimeWaitTest, ACounterOfTheLastJobOfALongChainFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 1, 0, 1, 1, 0, 0}, DeclaredWait::kCounter);
}

TEST(RuntimeWaitTest, ACounterOfALongChainEndingRemotelyFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 1, 0, 1, 1, 0, 1}, DeclaredWait::kCounter);
}

// Two counted jobs that wait, both behind the uncounted job of node 0 (a
// review found the first version of the walk took that job for one of
// the counted ones, and hung).
TEST(RuntimeWaitTest, ACounterOfTheLastTwoJobsOfAChainThatComesBackFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 0}, DeclaredWait::kCounterOfLastTwo);
}

TEST(RuntimeWaitTest, ACounterOfTheLastTwoJobsOfALongChainFinishes) {
  WaitOnADeclaredChain({1, 0, 1, 0, 0, 1, 0, 0},
                       DeclaredWait::kCounterOfLastTwo);
}

// Only the last handle held: the records of the chain are freed as it
// runs, while the wait may walk them.
TEST(RuntimeWaitTest, AHandleOfALongChainOfDroppedHandlesFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 1, 0, 1, 1, 0, 0}, DeclaredWait::kHandle,
                       /*drop_handles=*/true);
}

TEST(RuntimeWaitTest, ACounterOfALongChainOfDroppedHandlesFinishes) {
  WaitOnADeclaredChain({1, 0, 0, 1, 0, 1, 1, 0, 0},
                       DeclaredWait::kCounterOfLastTwo, /*drop_handles=*/true);
}

// As above, through a job of more predecessors than a record keeps inline
// (their edges come from the pool): the waited-for job `last` (node 0)
// comes after two remote jobs and `local_b`, which comes after `local_a`
// (node 0), which comes after a remote job. Node 1's worker makes
// `local_a` ready outside the waiting job's region; the wait finds it
// through `last`'s third edge and runs it, then `local_b`.
TEST(RuntimeWaitTest, AWaitFindsAStrandedJobThroughAPoolEdge) {
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(2000, 200, 300), std::chrono::microseconds(200),
      6, [](Runtime& rt, JobContext&, std::atomic<int>& ran) {
        auto remote = [&rt, &ran] {
          return rt.Submit([&ran] { ran.fetch_add(1); },
                           SubmitOptions().on_node(1));
        };
        static std::atomic<int> round{0};
        // Mostly finished after the wait begins, sometimes before.
        const bool slow_first = round.fetch_add(1) % 4 != 0;
        auto r0 = rt.Submit(
            [&ran, slow_first] {
              if (slow_first) {
                std::this_thread::sleep_for(std::chrono::microseconds(50));
              }
              ran.fetch_add(1);
            },
            SubmitOptions().on_node(1));
        auto r1 = remote();
        auto r2 = remote();
        std::atomic<int> order{0};
        auto local_a = rt.Submit(
            [&ran, &order] {
              ran.fetch_add(1);
              return order.fetch_add(1);
            },
            SubmitOptions().on_node(0).after(r0));
        auto local_b = rt.Submit(
            [&ran, &order] {
              ran.fetch_add(1);
              return order.fetch_add(1);
            },
            SubmitOptions().on_node(0).after(local_a));
        auto last = rt.Submit(
            [&ran, &order] {
              ran.fetch_add(1);
              return order.fetch_add(1);
            },
            SubmitOptions().on_node(0).after(r1).after(r2).after(local_b));
        absl::Status s = last.Wait();
        if (!s.ok()) return s;
        if (!local_a.done() || !local_b.done() || local_a.value() != 0 ||
            local_b.value() != 1 || last.value() != 2) {
          return absl::InternalError("the local jobs ran out of order");
        }
        return absl::OkStatus();
      });
}

// A predecessor of the waiter's node that another thread submitted: its
// token lies outside the waiting job's region from the start. The job on
// node 0 (one worker) has a thread outside the runtime submit `outside` to
// node 0, declares `last` after it, and waits on `last` (by its handle,
// or by a counter of it alone): the wait finds `outside` and runs it.
void WaitOnAJobAfterOneSubmittedFromOutside(bool by_counter) {
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(2000, 200, 300), std::chrono::microseconds(200),
      1, [by_counter](Runtime& rt, JobContext&, std::atomic<int>& ran) {
        JobHandle<void> outside;
        std::thread submitter([&] {
          outside = rt.Submit([&ran] { ran.fetch_add(1); },
                              SubmitOptions().on_node(0));
        });
        submitter.join();
        JobCounter counter;
        SubmitOptions options = SubmitOptions().on_node(0).after(outside);
        if (by_counter) options.with_counter(&counter);
        auto last = rt.Submit([&outside] { return outside.done(); }, options);
        absl::Status s = by_counter ? counter.Wait() : last.Wait();
        if (!s.ok()) return s;
        if (!last.value()) return absl::InternalError("ran before `outside`");
        return absl::OkStatus();
      });
}

TEST(RuntimeWaitTest, AHandleWaitRunsAPredecessorSubmittedFromOutside) {
  WaitOnAJobAfterOneSubmittedFromOutside(/*by_counter=*/false);
}

TEST(RuntimeWaitTest, ACounterWaitRunsAPredecessorSubmittedFromOutside) {
  WaitOnAJobAfterOneSubmittedFromOutside(/*by_counter=*/true);
}

// The walk of the predecessors (Runtime::FindStranded) while they finish
// and are cancelled under it: the remote head of the chain {1, 0, 0}
// cancels the middle job (node 0, still waiting for it) in every other
// round, after the wait on the last job has begun, or not. The last job is
// then cancelled too, and the wait returns its status. The head takes the
// only handle of the middle job and drops it, so that the middle record
// is freed once it is done with, maybe while the wait walks to it. Run
// under ASan and TSan in CI, for the lifetime of the records the walk
// reads.
TEST(RuntimeWaitTest, AWaitOnAChainWhoseMiddleIsCancelledFinishes) {
  CrossNodeWaitRounds(
      {1, 1}, StressIterations(2000, 200, 300), std::chrono::microseconds(200),
      1, [](Runtime& rt, JobContext&, std::atomic<int>& ran) {
        static std::atomic<int> round{0};
        const int r = round.fetch_add(1);
        const bool cancel = r % 2 == 0;
        std::atomic<bool> published{false};
        JobHandle<int> middle;
        auto head = rt.Submit(
            [&ran, &published, &middle, cancel, r] {
              while (!published.load(std::memory_order_acquire)) {
                std::this_thread::yield();
              }
              if (r % 4 < 2) {
                std::this_thread::sleep_for(std::chrono::microseconds(20));
              }
              JobHandle<int> mine = std::move(middle);
              if (cancel) (void)mine.Cancel();
              ran.fetch_add(1);
            },
            SubmitOptions().on_node(1));
        middle =
            rt.Submit([] { return 1; }, SubmitOptions().on_node(0).after(head));
        auto last = rt.Submit([] { return 2; },
                              SubmitOptions().on_node(0).after(middle));
        published.store(true, std::memory_order_release);
        absl::Status s = last.Wait();
        if (!head.Wait().ok()) return absl::InternalError("the head failed");
        if (cancel) {
          if (!absl::IsCancelled(s)) {
            return absl::InternalError(absl::StrCat(
                "a cancelled middle job; the last job's wait said ",
                s.ToString()));
          }
          return absl::OkStatus();
        }
        if (!s.ok() || last.value() != 2) {
          return absl::InternalError(s.ToString());
        }
        return absl::OkStatus();
      });
}

// Regression (review): Create stepped by batch_size, which wrapped for a
// batch_size near SIZE_MAX: 52 batches over 100 items, reaching 50 items
// past a node's segment.
TEST(RuntimeParallelTest, AHugeBatchSizeMeansOneBatchPerNode) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto data = NodeArray<int>::Create(*rt, rt->Partition(100));
  ASSERT_TRUE(data.ok()) << data.status();
  auto processor = BatchProcessor<int>::Create(*data, SIZE_MAX);
  ASSERT_TRUE(processor.ok());
  ASSERT_EQ(processor->batches().size(), 2u);
  EXPECT_EQ(processor->batches()[0].count + processor->batches()[1].count,
            100u);
}

// ---- Stealing
// ---------------------------------------------------------------------

TEST(RuntimeStealTest, StrictAffinityNeverCrossesNodes) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(1)
                            .set_stealing(StealPolicy::kStrict));
  JobCounter counter;
  std::atomic<int> crossed{0};
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [&crossed](JobContext& ctx) {
                        if (ctx.node() != 0 || ctx.stolen()) crossed++;
                        std::this_thread::sleep_for(
                            std::chrono::microseconds(20));
                      },
                      SubmitOptions().on_node(0).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  EXPECT_EQ(crossed.load(), 0);
  RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.nodes[1].jobs_run, 0u);
  EXPECT_EQ(stats.nodes[1].jobs_stolen, 0u);
}

TEST(RuntimeStealTest, AnIdleNodeTakesQueuedJobsAndCountsThem) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(1)
                            .set_stealing(StealPolicy::kWhenIdle));
  JobCounter counter;
  std::atomic<int> on_node1{0};
  std::atomic<int> stolen_seen{0};
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [&](JobContext& ctx) {
                        if (ctx.node() == 1) on_node1++;
                        if (ctx.stolen()) stolen_seen++;
                        std::this_thread::sleep_for(
                            std::chrono::microseconds(200));
                      },
                      SubmitOptions().on_node(0).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  RuntimeStats stats = rt->stats();
  EXPECT_GT(on_node1.load(), 0);
  EXPECT_EQ(on_node1.load(), stolen_seen.load());
  EXPECT_EQ(stats.nodes[1].jobs_stolen, static_cast<uint64_t>(on_node1.load()));
  EXPECT_EQ(stats.nodes[0].jobs_run + stats.nodes[1].jobs_run, 200u);
}

// Regression (review): under kWhenIdle a token ran whatever job was first
// in its node's queue, so the token a waiting job spawned for its child ran
// an unrelated job submitted earlier, nested in the wait; the child stayed
// queued with only the unrelated job's token (outside the waiting job's
// isolated region) to run it, and a one-worker node waited for good.
TEST(RuntimeStealTest, AWaitingJobRunsOnlyItsOwnChildrenWhenIdleStealing) {
  for (const int workers : {1, 2}) {
    SCOPED_TRACE(workers);
    // One node: no other node's thief can take the child instead.
    auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
    auto rt = MakeRuntime(Config()
                              .set_topology(topology.get())
                              .set_workers_per_node(workers)
                              .set_stealing(StealPolicy::kWhenIdle));
    // With two workers, the second is held so both jobs below meet on one.
    Gate hold;
    std::atomic<bool> held{false};
    JobHandle<void> holder;
    if (workers == 2) {
      holder = rt->Submit(
          [&] {
            held = true;
            hold.Pass();
          },
          SubmitOptions().on_node(0));
      ASSERT_TRUE(Eventually([&] { return held.load(); }));
    }
    std::atomic<bool> started{false};
    std::atomic<bool> unrelated_queued{false};
    std::atomic<bool> waiting{false};
    std::atomic<bool> nested{false};
    std::atomic<std::thread::id> waiter_thread{};
    auto waiter = rt->Submit(
        [&](JobContext& ctx) {
          waiter_thread = std::this_thread::get_id();
          started = true;
          while (!unrelated_queued) std::this_thread::yield();
          JobCounter children;
          auto child = ctx.runtime().Submit(
              [] {}, SubmitOptions().on_node(0).with_counter(&children));
          waiting = true;
          const absl::Status s = children.Wait();
          waiting = false;
          return s.ok();
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(Eventually([&] { return started.load(); }));
    auto unrelated = rt->Submit(
        [&] {
          if (waiting && std::this_thread::get_id() == waiter_thread.load()) {
            nested = true;
          }
          hold.Open();
        },
        SubmitOptions().on_node(0));
    unrelated_queued = true;
    ASSERT_TRUE(Eventually([&] { return waiter.done(); }))
        << "the waiting job never got its child run";
    ASSERT_TRUE(waiter.Wait().ok());
    EXPECT_TRUE(waiter.value());
    ASSERT_TRUE(unrelated.Wait().ok());
    EXPECT_FALSE(nested.load()) << "an unrelated job ran inside the wait";
    hold.Open();
    if (workers == 2) {
      EXPECT_TRUE(holder.Wait().ok());
    }
    EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
    EXPECT_EQ(rt->stats().jobs_failed, 0u);
  }
}

// Regression (review of the fix above): the job a token ran inside a wait
// kept its queue entry counted in the node's `queued`, and a node with a
// queued count above zero never steals: after one job waited on a child,
// node 0 sat idle beside node 1's backlog.
TEST(RuntimeStealTest, ANodeStillStealsAfterAJobWaitedOnItsChild) {
  auto topology = Synthetic("pack:2 [numa] core:1 pu:1");
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(1)
                            .set_stealing(StealPolicy::kWhenIdle));
  auto waiter = rt->Submit(
      [](JobContext& ctx) {
        JobCounter children;
        EXPECT_TRUE(ctx.runtime()
                        .Spawn([] {}, SubmitOptions().on_node(0).with_counter(
                                          &children))
                        .ok());
        return children.Wait().ok();
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(waiter.Wait().ok());
  EXPECT_TRUE(waiter.value());
  JobCounter burst;
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(
        rt->Spawn(
              [] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); },
              SubmitOptions().on_node(1).with_counter(&burst))
            .ok());
  }
  ASSERT_TRUE(burst.Wait().ok());
  EXPECT_GT(rt->stats().nodes[0].jobs_stolen, 0u)
      << "node 0 sat idle while node 1 had a backlog";
}

// Regression (found by runtime_model_test, seed 1606211016): under
// kWhenIdle a token at the top of a worker runs the oldest queued job,
// which may be the child another job is about to wait for; that child's
// own token, run inside the wait, then found its job taken and ran
// nothing, and the job of the first token stayed queued with no token left
// to run it (its waits, EndFrame and Shutdown hung). Here worker B runs
// Y's token (Y was submitted after the child L) and takes L; P's wait on
// worker A then meets L's token.
TEST(RuntimeStealTest, AJobQueuedBehindAWaitedForChildStillRuns) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(2)
                            .set_stealing(StealPolicy::kWhenIdle));
  Gate q_go, p_go;
  std::atomic<bool> q_started{false}, p_started{false}, l_submitted{false},
      l_started{false}, p_waiting{false}, y_submitted{false};
  JobHandle<void> y;
  // Q holds worker B, then submits Y: Y's token goes to B's own deque,
  // which B runs first once Q returns.
  auto q = rt->Submit(
      [&](JobContext& ctx) {
        q_started = true;
        q_go.Pass();
        y = ctx.runtime().Submit([] {}, SubmitOptions().on_node(0));
        y_submitted = true;
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(Eventually([&] { return q_started.load(); }));
  // P runs on worker A: submits its child L, then waits for it.
  auto p = rt->Submit(
      [&](JobContext& ctx) {
        p_started = true;
        JobCounter local;
        auto l = ctx.runtime().Submit(
            [&] {
              l_started = true;
              while (!p_waiting) std::this_thread::yield();
              // Long enough for P's wait to run L's token meanwhile.
              std::this_thread::sleep_for(std::chrono::milliseconds(50));
            },
            SubmitOptions().on_node(0).with_counter(&local));
        l_submitted = true;
        p_go.Pass();
        p_waiting = true;
        return local.Wait().ok();
      },
      SubmitOptions().on_node(0));
  ASSERT_TRUE(Eventually([&] { return p_started && l_submitted; }));
  q_go.Open();  // Y queues behind L; B's token for Y takes L.
  ASSERT_TRUE(Eventually([&] { return l_started.load(); }));
  p_go.Open();
  ASSERT_TRUE(p.Wait().ok());
  EXPECT_TRUE(p.value());
  ASSERT_TRUE(q.Wait().ok());
  ASSERT_TRUE(y_submitted.load());
  const bool ran = Eventually([&] { return y.done(); });
  EXPECT_TRUE(ran) << "a queued job was left with no token to run it";
  if (!ran) {
    EXPECT_TRUE(y.Cancel());  // Lets Shutdown finish.
  }
  EXPECT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
}

TEST(RuntimeStealTest, ANodeStealsOnlyOnceItsOwnQueueIsEmpty) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(1)
                            .set_stealing(StealPolicy::kWhenIdle));
  using Clock = std::chrono::steady_clock;
  std::atomic<int64_t> last_own_end{0};
  std::atomic<int64_t> first_stolen_start{INT64_MAX};
  auto now = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               Clock::now().time_since_epoch())
        .count();
  };
  JobCounter own;
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [&](JobContext& ctx) {
                        std::this_thread::sleep_for(
                            std::chrono::microseconds(300));
                        // Node 1 may steal some of these while node 0 has
                        // others queued; node 0's own queue is what counts.
                        if (ctx.node() != 0) return;
                        int64_t t = now();
                        int64_t seen = last_own_end.load();
                        while (t > seen &&
                               !last_own_end.compare_exchange_weak(seen, t)) {
                        }
                      },
                      SubmitOptions().on_node(0).with_counter(&own))
                    .ok());
  }
  JobCounter theirs;
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(
        rt->Spawn(
              [&](JobContext& ctx) {
                if (ctx.node() == 0) {
                  int64_t t = now();
                  int64_t seen = first_stolen_start.load();
                  while (t < seen &&
                         !first_stolen_start.compare_exchange_weak(seen, t)) {
                  }
                }
                std::this_thread::sleep_for(std::chrono::microseconds(300));
              },
              SubmitOptions().on_node(1).with_counter(&theirs))
            .ok());
  }
  ASSERT_TRUE(own.Wait().ok());
  ASSERT_TRUE(theirs.Wait().ok());
  if (first_stolen_start.load() != INT64_MAX) {
    EXPECT_GE(first_stolen_start.load(), last_own_end.load());
  }
}

// Regression: under kWhenIdle over several nodes a job that waited on
// jobs of another node slept until that node's workers ran them. With every
// worker of that node waiting in turn on jobs of the first node, nothing
// ran them: here a job on each of two one-worker nodes waits on a child it
// submitted to the other node. Now a waiting job runs the jobs it waits for
// that no worker has taken, whatever their node, as stolen jobs (node 1's
// worker waits inside its own job's isolated region, so it cannot take
// node 0's child's token, and the other way round: a child runs on its
// parent's worker, or on its own node's once that node's parent is done).
enum class WaitOn { kCounter, kHandle };

// A runtime of two synthetic nodes of one worker each under `policy`;
// `topology` keeps the topology, which must outlive it.
std::unique_ptr<Runtime> OneWorkerPerNode(
    StealPolicy policy, std::unique_ptr<numa::Topology>& topology) {
  topology = Synthetic("pack:2 [numa] core:1 pu:1");
  return MakeRuntime(Config()
                         .set_topology(topology.get())
                         .set_workers_per_node(1)
                         .set_stealing(policy));
}

// Counts this job in `arrived` and waits until `n` jobs have, for at most
// 200 ms; true if they all did. Under kWhenIdle a node with nothing queued
// may steal a job meant for the other node, so a barrier for "both jobs
// are running, one on each node" could wait for good (both on one worker).
bool MeetOrGoOn(std::atomic<int>& arrived, int n) {
  arrived++;
  return Within(std::chrono::milliseconds(200),
                [&] { return arrived.load() >= n; });
}

// Two jobs that wait on each other's nodes finish (a hang fails the test
// after 20 s) and return true.
void ExpectBothReturnTrue(const JobHandle<bool>& a, const JobHandle<bool>& b) {
  ASSERT_TRUE(Eventually([&] { return a.done() && b.done(); }))
      << "jobs waiting on each other's nodes hung";
  ASSERT_TRUE(a.Wait().ok());
  ASSERT_TRUE(b.Wait().ok());
  EXPECT_TRUE(a.value());
  EXPECT_TRUE(b.value());
}

void RunJobsWaitingOnEachOthersNodes(WaitOn wait_on) {
  std::unique_ptr<numa::Topology> topology;
  auto rt = OneWorkerPerNode(StealPolicy::kWhenIdle, topology);
  int stolen = 0;
  int met = 0;
  for (int iteration = 0; iteration < 20; ++iteration) {
    SCOPED_TRACE(iteration);
    std::atomic<int> started{0};
    struct Seen {
      std::atomic<int> parent_node{-1};
      std::atomic<bool> parent_met{false};
      std::atomic<int> node{-1};
      std::atomic<bool> stolen{false};
    };
    Seen seen[2];
    auto parent = [&](int p) {
      return [&, p](JobContext& ctx) {
        // Both parents hold their node's only worker before either child
        // is submitted (unless one was stolen: then the node it runs on).
        const int home = ctx.node();
        seen[p].parent_node = home;
        seen[p].parent_met = MeetOrGoOn(started, 2);
        const int other = 1 - home;
        auto child = [&seen, p](JobContext& c) {
          seen[p].node = c.node();
          seen[p].stolen = c.stolen();
        };
        if (wait_on == WaitOn::kCounter) {
          JobCounter counter;
          if (!ctx.runtime()
                   .Spawn(child,
                          SubmitOptions().on_node(other).with_counter(&counter))
                   .ok()) {
            return false;
          }
          return counter.Wait().ok();
        }
        auto handle =
            ctx.runtime().Submit(child, SubmitOptions().on_node(other));
        return handle.Wait().ok();
      };
    };
    auto a = rt->Submit(parent(0), SubmitOptions().on_node(0));
    auto b = rt->Submit(parent(1), SubmitOptions().on_node(1));
    ASSERT_NO_FATAL_FAILURE(ExpectBothReturnTrue(a, b));
    int stolen_here = 0;
    for (int p : {0, 1}) {
      SCOPED_TRACE(p);
      const int home = seen[p].parent_node.load();
      // Run by its parent's worker, as a stolen job; or by its own node's
      // worker.
      if (seen[p].stolen.load()) {
        EXPECT_EQ(seen[p].node.load(), home);
        ++stolen_here;
      } else {
        EXPECT_EQ(seen[p].node.load(), 1 - home);
      }
    }
    if (seen[0].parent_met && seen[1].parent_met &&
        seen[0].parent_node.load() != seen[1].parent_node.load()) {
      // Not both on their own nodes: each node's worker was held by a
      // parent until that parent's child had run.
      EXPECT_GE(stolen_here, 1);
      ++met;
    }
    stolen += stolen_here;
  }
  // Most iterations met (20 of 20 on an idle machine).
  EXPECT_GE(met, 5);
  RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.jobs_failed, 0u);
  // Stolen parents count too.
  EXPECT_GE(stats.nodes[0].jobs_stolen + stats.nodes[1].jobs_stolen,
            static_cast<uint64_t>(stolen));
}

TEST(RuntimeStealTest, JobsWaitingOnEachOthersNodesByCounterFinish) {
  RunJobsWaitingOnEachOthersNodes(WaitOn::kCounter);
}

TEST(RuntimeStealTest, JobsWaitingOnEachOthersNodesByHandleFinish) {
  RunJobsWaitingOnEachOthersNodes(WaitOn::kHandle);
}

// The same through a declared dependency: each parent waits on a child of
// its own node that runs after a job it submitted to the other node. The
// wait walks the child's predecessors (Runtime::FindStranded) and, under
// kWhenIdle, runs the other node's job too.
TEST(RuntimeStealTest, JobsWaitingOnEachOthersNodesThroughAPredecessorFinish) {
  std::unique_ptr<numa::Topology> topology;
  auto rt = OneWorkerPerNode(StealPolicy::kWhenIdle, topology);
  for (int iteration = 0; iteration < 20; ++iteration) {
    SCOPED_TRACE(iteration);
    std::atomic<int> started{0};
    std::atomic<int> remote_ran{0};
    auto parent = [&](JobContext& ctx) {
      const int home = ctx.node();  // Stolen: the thief's.
      (void)MeetOrGoOn(started, 2);
      auto remote = ctx.runtime().Submit([&remote_ran] { remote_ran++; },
                                         SubmitOptions().on_node(1 - home));
      auto local = ctx.runtime().Submit(
          [] {}, SubmitOptions().on_node(home).after(remote));
      return local.Wait().ok() && remote.done();
    };
    auto a = rt->Submit(parent, SubmitOptions().on_node(0));
    auto b = rt->Submit(parent, SubmitOptions().on_node(1));
    ASSERT_NO_FATAL_FAILURE(ExpectBothReturnTrue(a, b));
    EXPECT_EQ(remote_ran.load(), 2);
  }
  EXPECT_EQ(rt->stats().jobs_failed, 0u);
}

// A job of node 0 waits on a counter of a job it sent to node 1, which
// submits a job back to node 0 and waits for it. Node 0's only worker is
// in the first wait, whose isolated region the job sent back is not part
// of: under kStrict that is a cycle (docs/jobs.md, "Not covered"). Under
// kWhenIdle the job on node 1 runs it itself, as stolen (or the first
// wait ran that job inline, and it runs its own node's job inline).
TEST(RuntimeStealTest, AWaitedForJobThatComesBackToTheWaitersNodeFinishes) {
  std::unique_ptr<numa::Topology> topology;
  auto rt = OneWorkerPerNode(StealPolicy::kWhenIdle, topology);
  for (int iteration = 0; iteration < 20; ++iteration) {
    SCOPED_TRACE(iteration);
    std::atomic<int> back_ran{0};
    auto a = rt->Submit(
        [&back_ran](JobContext& ctx) {
          JobCounter counter;
          absl::Status s = ctx.runtime().Spawn(
              [&back_ran](JobContext& c) {
                auto back = c.runtime().Submit([&back_ran] { back_ran++; },
                                               SubmitOptions().on_node(0));
                EXPECT_TRUE(back.Wait().ok());
              },
              SubmitOptions().on_node(1).with_counter(&counter));
          return s.ok() && counter.Wait().ok();
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(Eventually([&] { return a.done(); }))
        << "a wait on work that came back to the waiter's node hung";
    ASSERT_TRUE(a.Wait().ok());
    EXPECT_TRUE(a.value());
    EXPECT_EQ(back_ran.load(), 1);
  }
  EXPECT_EQ(rt->stats().jobs_failed, 0u);
}

// Regression (review): a job run inside another job's wait (a child whose
// token the wait took, or a job the wait ran inline off a counter's list)
// made its successors ready there, and their tokens went into the waiting
// job's isolated region (under kStrict the first one even ran at once, the
// token's bypass): the waiting job ran them nested inside a wait in TBB,
// although they are not its children. A successor that waits on the
// waiting job itself then waited on a job beneath it on its own stack, for
// good. Here the successor S is declared after the waiting job's child C
// by another thread, and waits on the waiting job W; two nodes of one
// worker. Under kStrict, W's counter wait runs C's token; under kWhenIdle,
// W runs C (sent to node 1, whose worker is busy) off its counter's list.
// W then waits in TBB on a job declared after a slow job of node 1 (a wait
// that walks, then helps in its region), where S's token would be.
void RunASuccessorOfAJobRunInsideAWait(StealPolicy policy) {
  const bool steal = policy == StealPolicy::kWhenIdle;
  std::unique_ptr<numa::Topology> topology;
  auto rt = OneWorkerPerNode(policy, topology);
  for (int iteration = 0; iteration < 20; ++iteration) {
    SCOPED_TRACE(iteration);
    std::atomic<bool> child_ready{false}, successor_submitted{false};
    std::atomic<bool> busy_started{false}, release_busy{false};
    JobHandle<void> child;
    JobHandle<bool> waiter;
    waiter = rt->Submit(
        [&](JobContext& ctx) {
          Runtime& runtime = ctx.runtime();
          // Under kWhenIdle this job may have been stolen by node 1.
          const int mine = ctx.node();
          const int other = 1 - mine;
          JobCounter counter;
          if (steal) {
            // Keeps node 1's worker busy until the child has run.
            (void)runtime.Spawn(
                [&] {
                  busy_started = true;
                  while (!release_busy.load()) std::this_thread::yield();
                },
                SubmitOptions().on_node(other).with_counter(&counter));
            while (!busy_started.load()) std::this_thread::yield();
          }
          child = runtime.Submit([] {}, SubmitOptions()
                                            .on_node(steal ? other : mine)
                                            .with_counter(&counter));
          child_ready = true;
          while (!successor_submitted.load()) std::this_thread::yield();
          std::thread releaser;
          if (steal) {
            releaser = std::thread([&] {
              while (!child.done()) std::this_thread::yield();
              release_busy = true;
            });
          }
          const bool first = counter.Wait().ok();
          if (releaser.joinable()) releaser.join();
          // A wait in TBB in the same job.
          auto slow = runtime.Submit(
              [] { std::this_thread::sleep_for(std::chrono::milliseconds(5)); },
              SubmitOptions().on_node(other));
          JobCounter declared;
          (void)runtime.Spawn(
              [] {}, SubmitOptions().on_node(mine).after(slow).with_counter(
                         &declared));
          return first && declared.Wait().ok();
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(Eventually([&] { return child_ready.load(); }));
    JobRef waiter_ref = waiter;
    auto successor = rt->Submit([waiter_ref] { return waiter_ref.Wait().ok(); },
                                SubmitOptions().on_node(0).after(child));
    successor_submitted = true;
    ASSERT_TRUE(Eventually([&] { return waiter.done() && successor.done(); }))
        << "a successor ran nested inside the wait of the job it waits on";
    ASSERT_TRUE(waiter.Wait().ok());
    EXPECT_TRUE(waiter.value());
    ASSERT_TRUE(successor.Wait().ok());
    EXPECT_TRUE(successor.value());
  }
}

TEST(RuntimeWaitTest, ASuccessorOfAChildRunInsideAWaitIsNotNestedInIt) {
  RunASuccessorOfAJobRunInsideAWait(StealPolicy::kStrict);
}

TEST(RuntimeStealTest, ASuccessorOfAJobRunInsideAWaitIsNotNestedInIt) {
  RunASuccessorOfAJobRunInsideAWait(StealPolicy::kWhenIdle);
}

// The case a review hung on (docs/jobs.md): six jobs on node 0 of two nodes
// of two workers, each calling Runtime::ParallelFor across both nodes.
// Node 1's workers steal some of them, which then wait on their ranges of
// node 0 while node 0's workers wait on their ranges of node 1.
TEST(RuntimeStealTest, ParallelForsAcrossNodesFromStolenJobsFinish) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(2)
                            .set_stealing(StealPolicy::kWhenIdle));
  constexpr size_t kItems = 4096;
  const NodePartition part = rt->Partition(kItems);
  for (int iteration = 0; iteration < 30; ++iteration) {
    SCOPED_TRACE(iteration);
    std::array<std::atomic<int64_t>, 6> sums{};
    JobCounter jobs;
    for (size_t j = 0; j < sums.size(); ++j) {
      ASSERT_TRUE(rt->Spawn(
                        [&, j](JobContext& ctx) {
                          absl::Status s = ctx.runtime().ParallelFor(
                              part, 256,
                              [&, j](JobContext&, size_t b, size_t e) {
                                int64_t sum = 0;
                                for (size_t i = b; i < e; ++i) sum += i;
                                sums[j] += sum;
                                // Long enough for the other node to steal.
                                std::this_thread::sleep_for(
                                    std::chrono::microseconds(50));
                              });
                          EXPECT_TRUE(s.ok()) << s;
                        },
                        SubmitOptions().on_node(0).with_counter(&jobs))
                      .ok());
    }
    ASSERT_TRUE(Eventually([&] { return jobs.pending() == 0; }))
        << "ParallelFors across nodes hung";
    ASSERT_TRUE(jobs.Wait().ok());
    for (const auto& sum : sums) {
      EXPECT_EQ(sum.load(), static_cast<int64_t>(kItems * (kItems - 1) / 2));
    }
  }
  EXPECT_EQ(rt->stats().jobs_failed, 0u);
}

// The finisher whose decrement brings a counter to zero while a job waits
// on it still has to wake that job; the job's wait must not return before
// (its owner may then destroy the counter). Once, a job counted on the
// counter meanwhile took the waiter off the counter's list and woke it;
// the waiter ran that job, saw zero and returned while the finisher was
// still on its way to the counter's lock: a use after free for an owner
// that destroyed the counter. The hook pauses the finisher just after its
// decrement to zero.
std::atomic<bool> zero_hook_armed{false};
std::atomic<bool> zero_hook_paused{false};
std::atomic<bool> zero_hook_resume{false};
std::atomic<bool> zero_hook_on_waiter{false};
thread_local bool waiting_on_counter = false;

void PauseTheFinisherAtZero() {
  if (!zero_hook_armed.exchange(false)) return;
  zero_hook_on_waiter = waiting_on_counter;
  zero_hook_paused = true;
  while (!zero_hook_resume.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Installs PauseTheFinisherAtZero for one test; Arm() before each try.
// A job counted on `counter` that finishes 20 ms from now, on `options`'
// node.
absl::Status SpawnJobDoneIn20Ms(Runtime& rt, JobCounter& counter,
                                SubmitOptions options = SubmitOptions()) {
  return rt.Spawn(
      [] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); },
      options.with_counter(&counter));
}

class ZeroHookScope {
 public:
  ZeroHookScope() {
    jobs_internal::counter_zero_test_hook = &PauseTheFinisherAtZero;
  }
  ZeroHookScope(const ZeroHookScope&) = delete;
  ZeroHookScope& operator=(const ZeroHookScope&) = delete;
  ~ZeroHookScope() {
    zero_hook_armed = false;
    zero_hook_resume = true;
    jobs_internal::counter_zero_test_hook = nullptr;
  }
  static void Arm() {
    zero_hook_paused = false;
    zero_hook_resume = false;
    zero_hook_on_waiter = false;
    zero_hook_armed = true;
  }
};

TEST(RuntimeStealTest, AWaitReturnsOnlyAfterTheFinisherThatReachedZeroWokeIt) {
  std::unique_ptr<numa::Topology> topology;
  auto rt = OneWorkerPerNode(StealPolicy::kWhenIdle, topology);
  ZeroHookScope hook;
  int checked = 0;
  for (int iteration = 0; iteration < 20 && checked < 3; ++iteration) {
    SCOPED_TRACE(iteration);
    ZeroHookScope::Arm();
    JobCounter counter;
    std::atomic<bool> returned{false};
    // A job of node 0 waits (StealUntilZero, registered on the counter)
    // on a job that node 1's worker took and finishes 20 ms later.
    auto waiter = rt->Submit(
        [&](JobContext& ctx) {
          if (!SpawnJobDoneIn20Ms(ctx.runtime(), counter,
                                  SubmitOptions().on_node(1))
                   .ok()) {
            return false;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          waiting_on_counter = true;
          const bool ok = counter.Wait().ok();
          waiting_on_counter = false;
          returned = true;
          return ok;
        },
        SubmitOptions().on_node(0));
    ASSERT_TRUE(
        Eventually([&] { return zero_hook_paused.load() || waiter.done(); }));
    zero_hook_armed = false;
    const bool paused = zero_hook_paused.load();
    if (!paused || zero_hook_on_waiter) {
      // The job reached zero with no waiter registered, or the waiter ran
      // it itself: not the case under test.
      zero_hook_resume = true;
      ASSERT_TRUE(waiter.Wait().ok());
      continue;
    }
    // Node 1's worker is paused after the decrement to zero. A job
    // counted now is listed on the counter (kWhenIdle) and waits for a
    // worker: the wait must not take it and return meanwhile.
    ASSERT_TRUE(
        rt->Spawn([] {}, SubmitOptions().on_node(1).with_counter(&counter))
            .ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(returned.load())
        << "the wait returned before the finisher that brought its count "
           "to zero had woken it";
    zero_hook_resume = true;
    ASSERT_TRUE(waiter.Wait().ok());
    EXPECT_TRUE(waiter.value());
    EXPECT_EQ(counter.pending(), 0);
    ++checked;
  }
  EXPECT_GT(checked, 0) << "the finisher never reached zero with the "
                           "waiter registered";
}

// The same for a thread outside the runtime asleep on the counter (or
// helping in the node's arena, kHelp): a second zero crossing (a job
// counted and finished while the first finisher was on its way) must not
// wake it in the first finisher's place.
void RunAnOutsideWaitReturnsOnlyAfterTheFinisherWokeIt(
    OutsideWaitPolicy policy) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(2)
                            .set_outside_wait(policy));
  ZeroHookScope hook;
  int checked = 0;
  for (int iteration = 0; iteration < 20 && checked < 3; ++iteration) {
    SCOPED_TRACE(iteration);
    ZeroHookScope::Arm();
    JobCounter counter;
    std::atomic<bool> returned{false};
    std::atomic<bool> second_ran{false};
    ASSERT_TRUE(SpawnJobDoneIn20Ms(*rt, counter).ok());
    std::jthread outside([&] {  // Joined also when an assertion fails.
      waiting_on_counter = true;
      EXPECT_TRUE(counter.Wait().ok());
      returned = true;
    });
    struct Resume {  // Before the join, if an assertion returns early.
      ~Resume() { zero_hook_resume = true; }
    } resume_first;
    ASSERT_TRUE(
        Eventually([&] { return zero_hook_paused.load() || returned.load(); }));
    zero_hook_armed = false;
    if (!zero_hook_paused.load() || zero_hook_on_waiter) {
      // Reached zero before the thread slept, or ran by the thread itself
      // (kHelp): not the case under test.
      zero_hook_resume = true;
      outside.join();
      continue;
    }
    // A worker is paused after the decrement to zero; the other runs a
    // job counted now, whose finish brings the count to zero again.
    ASSERT_TRUE(rt->Spawn([&] { second_ran = true; },
                          SubmitOptions().with_counter(&counter))
                    .ok());
    ASSERT_TRUE(Eventually([&] { return second_ran.load(); }));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(returned.load())
        << "the wait returned before the finisher that brought its count "
           "to zero had woken it";
    zero_hook_resume = true;
    outside.join();
    EXPECT_EQ(counter.pending(), 0);
    ++checked;
  }
  EXPECT_GT(checked, 0) << "the finisher never reached zero with the "
                           "thread asleep";
}

// Two threads asleep on one counter that is reused while they wait: the
// first crossing's finisher is paused after its decrement to zero; a job
// counted then, and a second thread asleep for it, must not let either
// thread return when that job's finish brings the count to zero again
// (before, the second crossing's bump woke both, and the first finisher
// then bumped a counter that could be gone; found in review).
TEST(RuntimeWaitTest, TwoSleepersReturnOnlyAfterEveryFinisherWokeThem) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(Config()
                            .set_topology(topology.get())
                            .set_workers_per_node(2)
                            .set_outside_wait(OutsideWaitPolicy::kSleep));
  ZeroHookScope hook;
  int checked = 0;
  for (int iteration = 0; iteration < 20 && checked < 3; ++iteration) {
    SCOPED_TRACE(iteration);
    ZeroHookScope::Arm();
    JobCounter counter;
    std::atomic<int> returned{0};
    std::atomic<bool> second_waiting{false};
    std::atomic<bool> second_job_done{false};
    ASSERT_TRUE(SpawnJobDoneIn20Ms(*rt, counter).ok());
    std::jthread first([&] {  // Joined also when an assertion fails.
      EXPECT_TRUE(counter.Wait().ok());
      returned++;
    });
    std::jthread second;
    struct Resume {  // Before the joins, if an assertion returns early.
      ~Resume() { zero_hook_resume = true; }
    } resume_first;
    ASSERT_TRUE(Eventually(
        [&] { return zero_hook_paused.load() || returned.load() > 0; }));
    zero_hook_armed = false;
    if (!zero_hook_paused.load()) continue;  // Finished before it slept.
    // The other worker runs a job counted now, once the second thread
    // sleeps for it (its 50 us spin is long over after 5 ms).
    ASSERT_TRUE(rt->Spawn(
                      [&] {
                        (void)Within(std::chrono::seconds(2),
                                     [&] { return second_waiting.load(); });
                        std::this_thread::sleep_for(
                            std::chrono::milliseconds(5));
                        second_job_done = true;
                      },
                      SubmitOptions().with_counter(&counter))
                    .ok());
    second = std::jthread([&] {
      second_waiting = true;
      EXPECT_TRUE(counter.Wait().ok());
      returned++;
    });
    ASSERT_TRUE(Eventually([&] { return second_job_done.load(); }));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(returned.load(), 0)
        << "a wait returned before the finisher that brought the count to "
           "zero first had woken it";
    zero_hook_resume = true;
    first.join();
    second.join();
    EXPECT_EQ(returned.load(), 2);
    EXPECT_EQ(counter.pending(), 0);
    ++checked;
  }
  EXPECT_GT(checked, 0) << "the finisher never reached zero with the "
                           "first thread asleep";
}

TEST(RuntimeWaitTest, AnOutsideWaitReturnsOnlyAfterTheFinisherWokeIt) {
  RunAnOutsideWaitReturnsOnlyAfterTheFinisherWokeIt(OutsideWaitPolicy::kSleep);
}

TEST(RuntimeWaitTest, AnOutsideHelpingWaitReturnsOnlyAfterTheFinisherWokeIt) {
  RunAnOutsideWaitReturnsOnlyAfterTheFinisherWokeIt(OutsideWaitPolicy::kHelp);
}

// ---- Soak
// ------------------------------------------------------------------------

// Many frames with every worker allocating from its frame arena (and
// throwing now and then): the memory the nodes' sources hold stays bounded
// and stops growing: each worker's arena keeps what its largest frame
// needed (a frame's jobs land on workers unevenly, so a worker may reach
// a new peak late, by at most a chunk or so), nothing is lost or leaked
// (ASan), and every exception is reported.
TEST_P(WorkerSweep, MemoryIsBoundedOverManyFramesWithAllWorkersAllocating) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(GetParam()));
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  const int kFrames = 400;
#else
  const int kFrames = 4000;
#endif
  auto held = [&rt] {
    size_t bytes = 0;
    for (const auto& n : rt->memory().stats().nodes) {
      bytes += n.source.bytes_outstanding;
    }
    return bytes;
  };
  const int jobs_per_frame = 4 * rt->total_workers();
  size_t at_half = 0;
  uint64_t failures = 0;
  for (int frame = 0; frame < kFrames; ++frame) {
    if (frame == kFrames / 2) at_half = held();
    ASSERT_TRUE(rt->BeginFrame().ok());
    JobCounter counter;
    for (int j = 0; j < jobs_per_frame; ++j) {
      ASSERT_TRUE(rt->Spawn(
                        [frame, j](JobContext& ctx) {
                          const size_t n = 1000 + 997 * ((frame + j) % 50);
                          char* p = ctx.arena().AllocateArray<char>(n);
                          std::memset(p, j, n);
                          if ((frame * 31 + j) % 97 == 0) {
                            throw std::runtime_error("sometimes");
                          }
                        },
                        SubmitOptions().on_node(j % 2).with_counter(&counter))
                      .ok());
    }
    if (!counter.Wait().ok()) ++failures;
    (void)rt->EndFrame();
  }
  EXPECT_GT(failures, 0u);  // The throwing jobs were reported.
  // A worker's frame never needs more than every job of the frame (50 KB
  // each at most), in chunks of at most 1 MiB: 4 MiB per worker is ample;
  // a leak of one allocation per frame would pass it within the run.
  const size_t bound = size_t{4} << 20;
  EXPECT_LE(held(), bound * rt->total_workers());
  EXPECT_LE(held(), at_half + (size_t{1} << 20) * rt->total_workers())
      << "memory kept growing in the second half of the run";
  EXPECT_EQ(rt->frames(), static_cast<uint64_t>(kFrames));
}

// ---- Observability
// ----------------------------------------------------------------

TEST(RuntimeStatsTest, CountersAddUp) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  JobCounter counter;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [] {
                        std::this_thread::sleep_for(
                            std::chrono::microseconds(50));
                      },
                      SubmitOptions().on_node(i % 2).with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  RuntimeStats s = rt->stats();
  EXPECT_EQ(s.jobs_submitted, 100u);
  EXPECT_EQ(s.jobs_completed, 100u);
  uint64_t run = 0;
  double busy = 0;
  for (const NodeStats& n : s.nodes) {
    EXPECT_EQ(n.jobs_submitted, 50u);
    run += n.jobs_run;
    for (const WorkerStats& w : n.worker_stats) {
      EXPECT_LE(w.busy_seconds, s.uptime_seconds);
      EXPECT_GE(w.idle_seconds, 0.0);
      busy += w.busy_seconds;
    }
  }
  EXPECT_EQ(run, 100u);
  EXPECT_GE(busy, 100 * 50e-6);
  const std::string json = s.ToJson();
  EXPECT_TRUE(absl::StrContains(json, "\"jobs_completed\":100"));
  EXPECT_TRUE(absl::StrContains(s.ToText(), "node 1: 2 workers"));
}

// Short jobs' busy time is sampled: the estimate still adds up to the time
// the jobs took (measured by the jobs themselves), not a 16th of it.
// Spins for at least `d` on the calling thread; returns how long it spun.
std::chrono::nanoseconds SpinFor(std::chrono::nanoseconds d) {
  const auto t0 = std::chrono::steady_clock::now();
  auto t = t0;
  while (t - t0 < d) t = std::chrono::steady_clock::now();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t - t0);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// The busy time of the first worker of node 0.
double FirstWorkerBusy(const Runtime& rt) {
  return rt.stats().nodes[0].worker_stats[0].busy_seconds;
}

TEST(RuntimeStatsTest, BusyTimeOfShortJobsIsEstimatedWithoutBias) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  std::atomic<int64_t> measured_ns{0};
  JobCounter counter;
  const auto wall_start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20000; ++i) {
    ASSERT_TRUE(rt->Spawn(
                      [&measured_ns] {
                        measured_ns +=
                            SpinFor(std::chrono::nanoseconds(1500)).count();
                      },
                      SubmitOptions().with_counter(&counter))
                    .ok());
  }
  ASSERT_TRUE(counter.Wait().ok());
  const double wall = SecondsSince(wall_start);
  const double busy = FirstWorkerBusy(*rt);
  const double measured = static_cast<double>(measured_ns.load()) * 1e-9;
  // Each job spins at least 1.5 us: 30 ms in all. What the jobs measured
  // also holds their preemptions, which a sample catches (weighted) or
  // misses, so only the nominal time bounds the estimate from below; an
  // unweighted sample would give about a 16th of it.
  EXPECT_GT(busy, 0.5 * 20000 * 1.5e-6)
      << "busy " << busy << " s, jobs " << measured << " s, wall " << wall;
  // The one worker's busy time also holds the runtime's own work around
  // each job (several microseconds per job in an emulated NUMA guest), so
  // the jobs' own time does not bound it from above; the wall-clock time
  // of the whole run does: a worker cannot be busy longer than it exists.
  // Over-weighted samples (every job counted 16 times) would break it.
  EXPECT_LT(busy, 1.5 * wall)
      << "busy " << busy << " s, jobs " << measured << " s, wall " << wall;
}

// A long job that always runs right after a short one and before a long
// run of medium jobs (a frame whose one long job follows a short
// allocation job, say) is counted too: the sampling decides before a job
// runs, with a probability it weights by. (With a gap of 1-31 untimed jobs
// after every short timed one and the timed job standing for the whole
// gap, the long job was timed only when the gap was 1, and a medium job
// stood for it otherwise: this pattern read about 60% of its time, the
// ECS frame it comes from 52% of what a trace showed.)
TEST(RuntimeStatsTest, BusyTimeCountsALongJobThatFollowsAShortOne) {
  auto topology = Synthetic("pack:1 [numa] core:1 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  // One round, each job spawning the next as its continuation so that on
  // the one worker they run in this order: a short job (0.5 us), a long
  // one (300 us), then 40 medium ones (10 us: timed exactly once one is).
  constexpr int kJobsPerRound = 42;
  auto length = [](int k) -> std::chrono::nanoseconds {
    if (k == 0) return std::chrono::nanoseconds(500);
    if (k == 1) return std::chrono::microseconds(300);
    return std::chrono::microseconds(10);
  };
  JobCounter counter;
  std::function<void(JobContext&, int)> step = [&](JobContext& ctx, int k) {
    SpinFor(length(k));
    if (k + 1 < kJobsPerRound) {
      EXPECT_TRUE(ctx.runtime()
                      .Spawn([&, k](JobContext& c) { step(c, k + 1); },
                             SubmitOptions().with_counter(&counter))
                      .ok());
    }
  };
  const double busy_before = FirstWorkerBusy(*rt);
  const auto wall_start = std::chrono::steady_clock::now();
  constexpr int kRounds = 150;
  for (int round = 0; round < kRounds; ++round) {
    ASSERT_TRUE(rt->Spawn([&](JobContext& ctx) { step(ctx, 0); },
                          SubmitOptions().with_counter(&counter))
                    .ok());
    ASSERT_TRUE(counter.Wait().ok());
  }
  const double wall = SecondsSince(wall_start);
  const double busy = FirstWorkerBusy(*rt) - busy_before;
  // The jobs spin at least 150 x 700 us = 105 ms. The estimate is
  // unbiased with a spread of about 4% here (simulated: 400 seeds, lowest
  // 0.87); the old one read about 0.60-0.66 of it.
  const double nominal = kRounds * 700e-6;
  EXPECT_GT(busy, 0.75 * nominal) << "busy " << busy << " s, wall " << wall;
  EXPECT_LT(busy, 1.6 * wall) << "busy " << busy << " s, wall " << wall;
}

TEST(RuntimeTraceTest, ChromeTraceHasATrackPerWorkerAndASlicePerJob) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()).set_trace(true));
  ASSERT_TRUE(rt->BeginFrame().ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        rt->Spawn([] {}, SubmitOptions().on_node(i % 2).named("tick")).ok());
  }
  ASSERT_TRUE(rt->EndFrame().ok());
  std::ostringstream out;
  rt->WriteChromeTrace(out);
  const std::string json = out.str();
  EXPECT_EQ(json.rfind("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[", 0), 0u);
  size_t slices = 0;
  for (size_t p = json.find("\"name\":\"tick\""); p != std::string::npos;
       p = json.find("\"name\":\"tick\"", p + 1)) {
    slices++;
  }
  EXPECT_EQ(slices, 10u);
  EXPECT_TRUE(absl::StrContains(json, "{\"name\":\"node 1\"}"));
  EXPECT_TRUE(
      absl::StrContains(json, "\"tid\":1,\"args\":{\"name\":\"worker 1\"}"));
  EXPECT_EQ(json.substr(json.size() - 3), "]}\n");
}

// Without Config::trace nothing is recorded (and no ring memory is taken)
// until StartTrace; jobs after it are traced, jobs after StopTrace not.
TEST(RuntimeTraceTest, StartTraceLaterRecordsOnlyWhileOn) {
  auto topology = TwoNodes();
  auto rt = MakeRuntime(Config().set_topology(topology.get()));
  auto count = [&rt](const char* name) {
    std::ostringstream out;
    rt->WriteChromeTrace(out);
    const std::string json = out.str();
    const std::string key = absl::StrCat("\"name\":\"", name, "\"");
    size_t n = 0;
    for (size_t p = json.find(key); p != std::string::npos;
         p = json.find(key, p + 1)) {
      n++;
    }
    return n;
  };
  auto run = [&rt](const char* name) {
    JobCounter counter;
    for (int i = 0; i < 6; ++i) {
      ASSERT_TRUE(
          rt->Spawn([] {},
                    SubmitOptions().on_node(i % 2).with_counter(&counter).named(
                        name))
              .ok());
    }
    ASSERT_TRUE(counter.Wait().ok());
  };
  run("before");
  EXPECT_EQ(count("before"), 0u);  // Empty trace, no rings yet.
  rt->StartTrace();
  run("during");
  rt->StopTrace();
  run("after");
  EXPECT_EQ(count("before"), 0u);
  EXPECT_EQ(count("during"), 6u);
  EXPECT_EQ(count("after"), 0u);
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
