// Calls from the wrong place or at the wrong time: a second runtime shut
// down or destroyed from inside a job, waits of a job on itself, batches
// processed on a runtime without their nodes, affinities of no node. Each
// test here reproduced a defect of the lifecycle review (docs/reliability.md
// 74-77) before its fix; a hang ends the process through the watchdog
// instead of running into the test's timeout.
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "alloc/error.h"
#include "alloc/internal/test_util.h"
#include "gtest/gtest.h"
#include "jobs/parallel.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

using alloc_internal::ErrorRecorder;

std::unique_ptr<Runtime> MakeRuntime(Config config) {
  auto rt = Runtime::Create(std::move(config));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? *std::move(rt) : nullptr;
}

// One worker per node: a worker that lost its slot has no other worker of
// its node to run what it waits for.
std::unique_ptr<Runtime> OneWorker() {
  return MakeRuntime(Config().set_workers_per_node(1));
}

// Ends the process with a message if not disarmed within `seconds`: a
// test that would hang fails fast, naming itself.
class Watchdog {
 public:
  Watchdog(const char* what, int seconds) : what_(what) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::seconds(seconds),
                        [this] { return done_; })) {
        std::fprintf(stderr, "HANG: %s\n", what_);
        std::fflush(stderr);
        _exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const char* const what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// What a job of `a` does after it shut down or destroyed another runtime:
// spawns children and waits for them (it helps: on a node of one worker
// nothing else runs them), and asks for EndFrame, which must still see
// that it runs inside a job.
absl::Status WorkAfterwards(Runtime& a, JobContext& ctx, std::atomic<int>& ran,
                            absl::Status* end_frame) {
  JobCounter children;
  for (int i = 0; i < 4; ++i) {
    absl::Status s =
        a.Spawn([&ran] { ran.fetch_add(1, std::memory_order_relaxed); },
                SubmitOptions().with_counter(&children));
    if (!s.ok()) return s;
  }
  absl::Status waited = children.Wait();
  *end_frame = a.EndFrame();
  EXPECT_EQ(ctx.node(), 0);
  return waited;
}

// A job of one runtime ends another (`end_other` shuts it down or destroys
// it), then works on: spawns and waits, asks for EndFrame; afterwards the
// worker runs 1,000 direct jobs as its own.
void CheckAJobThatEndsAnotherRuntimeKeepsItsWorker(
    const char* name, void (*end_other)(std::unique_ptr<Runtime>& other)) {
  Watchdog watchdog(name, 60);
  auto a = OneWorker();
  auto b = OneWorker();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ErrorRecorder errors;  // EndFrame's misuse report.
  ASSERT_TRUE(a->BeginFrame().ok());
  std::atomic<int> ran{0};
  absl::Status end_frame;
  auto job = a->Submit([&](JobContext& ctx) {
    end_other(b);
    return WorkAfterwards(*a, ctx, ran, &end_frame);
  });
  ASSERT_TRUE(job.Wait().ok());
  EXPECT_TRUE(job.value().ok()) << job.value();
  EXPECT_EQ(ran.load(), 4);
  EXPECT_EQ(end_frame.code(), absl::StatusCode::kFailedPrecondition)
      << end_frame;
  EXPECT_EQ(errors.count(), 1u);
  EXPECT_TRUE(a->EndFrame().ok());

  JobCounter later;
  std::atomic<int> later_ran{0};
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(a->Spawn([&later_ran] { later_ran.fetch_add(1); },
                         SubmitOptions().with_counter(&later))
                    .ok());
  }
  EXPECT_TRUE(later.Wait().ok());
  EXPECT_EQ(later_ran.load(), 1000);
}

// A job that shut down another runtime kept its worker's slot. (Before,
// the other runtime's observer cleared the slot when the drain entered and
// left its arena, and TBB does not tell the outer arena's observer when a
// nested entry returns: the worker ran on as a thread outside its runtime.
// Its later direct jobs were refused as "run by a thread outside the
// runtime's worker slots", its counter waits slept instead of helping (a
// hang on a node of one worker), and EndFrame waited for itself.)
TEST(RuntimeMisuseTest, AJobThatShutsDownAnotherRuntimeKeepsItsWorker) {
  CheckAJobThatEndsAnotherRuntimeKeepsItsWorker(
      "AJobThatShutsDownAnotherRuntimeKeepsItsWorker",
      [](std::unique_ptr<Runtime>& other) {
        EXPECT_TRUE(other->Shutdown(ShutdownMode::kFinish).ok());
      });
}

// The same when the job destroys the other runtime (its destructor shuts
// it down).
TEST(RuntimeMisuseTest, AJobThatDestroysAnotherRuntimeKeepsItsWorker) {
  CheckAJobThatEndsAnotherRuntimeKeepsItsWorker(
      "AJobThatDestroysAnotherRuntimeKeepsItsWorker",
      [](std::unique_ptr<Runtime>& other) { other.reset(); });
}

// A continuation a job spawns while its own runtime drains under kFinish
// is accepted: also after the job shut down another runtime (before, the
// job counted as a thread outside its runtime, and was refused).
TEST(RuntimeMisuseTest, AContinuationAfterAnotherRuntimesShutdownIsAccepted) {
  Watchdog watchdog("AContinuationAfterAnotherRuntimesShutdownIsAccepted", 60);
  auto a = OneWorker();
  auto b = OneWorker();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::atomic<bool> go{false};
  std::atomic<int> continued{0};
  JobCounter counter;
  absl::Status continuation;
  ASSERT_TRUE(a->Spawn(
                   [&] {
                     while (!go.load()) std::this_thread::yield();
                     (void)b->Shutdown(ShutdownMode::kFinish);
                     // a's Shutdown(kFinish) has begun (go is set after
                     // it starts draining: see below).
                     continuation = a->Spawn([&] { continued.fetch_add(1); });
                   },
                   SubmitOptions().with_counter(&counter))
                  .ok());
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    go.store(true);
  });
  EXPECT_TRUE(a->Shutdown(ShutdownMode::kFinish).ok());
  opener.join();
  EXPECT_TRUE(continuation.ok()) << continuation;
  EXPECT_EQ(continued.load(), 1);
}

// A job waiting on its own handle, or on a counter that counts it, would
// wait for itself: refused as a misuse, as EndFrame from a job is (before,
// both hung, and EndFrame, Shutdown and the destructor with them).
TEST(RuntimeMisuseTest, AJobWaitingOnItsOwnHandleIsRefused) {
  Watchdog watchdog("AJobWaitingOnItsOwnHandleIsRefused", 60);
  auto rt = OneWorker();
  ASSERT_NE(rt, nullptr);
  ErrorRecorder errors;
  auto self = std::make_shared<JobRef>();
  std::atomic<bool> ready{false};
  auto job = rt->Submit([self, &ready] {
    while (!ready.load()) std::this_thread::yield();
    return self->Wait();
  });
  *self = job;
  ready.store(true);
  ASSERT_TRUE(job.Wait().ok());
  EXPECT_EQ(job.value().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(job.value().message(), "wait for itself"))
      << job.value();
  ASSERT_EQ(errors.count(), 1u);
  EXPECT_EQ(errors.reports()[0].kind, ErrorKind::kMisuse);
}

TEST(RuntimeMisuseTest, AJobWaitingOnItsOwnCounterIsRefused) {
  Watchdog watchdog("AJobWaitingOnItsOwnCounterIsRefused", 60);
  auto rt = OneWorker();
  ASSERT_NE(rt, nullptr);
  ErrorRecorder errors;
  JobCounter counter;
  auto job = rt->Submit([&counter] { return counter.Wait(); },
                        SubmitOptions().with_counter(&counter));
  ASSERT_TRUE(job.Wait().ok());
  EXPECT_EQ(job.value().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(job.value().message(), "counted by"))
      << job.value();
  EXPECT_EQ(errors.count(), 1u);
  EXPECT_TRUE(counter.Wait().ok());
  // A fork child of such a job is part of it: refused too.
  absl::Status child_wait;
  auto forked = rt->Submit(
      [&](JobContext& ctx) {
        ctx.Fork([&](JobContext&) { child_wait = counter.Wait(); },
                 [](JobContext&) {});
      },
      SubmitOptions().with_counter(&counter));
  ASSERT_TRUE(forked.Wait().ok());
  EXPECT_EQ(child_wait.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(errors.count(), 2u);
  // A wait on another counter, and on another job's handle, is no misuse.
  JobCounter other;
  auto fine = rt->Submit([&] {
    auto inner = rt->Submit([] { return 7; });
    EXPECT_TRUE(rt->Spawn([] {}, SubmitOptions().with_counter(&other)).ok());
    absl::Status s = other.Wait();
    return s.ok() ? inner.Wait() : s;
  });
  ASSERT_TRUE(fine.Wait().ok());
  EXPECT_TRUE(fine.value().ok()) << fine.value();
  EXPECT_EQ(errors.count(), 2u);
}

// Batches homed on a node the runtime does not have are refused before any
// runs (before, those ahead of the first bad one ran, a varying number).
TEST(RuntimeMisuseTest, BatchesOnARuntimeWithoutTheirNodesRunNone) {
  auto topology = numa::Topology::FromSynthetic("pack:2 [numa] core:1 pu:1");
  ASSERT_TRUE(topology.ok()) << topology.status();
  auto two = MakeRuntime(Config().set_topology(topology->get()));
  auto one = OneWorker();
  ASSERT_NE(two, nullptr);
  ASSERT_NE(one, nullptr);
  ASSERT_EQ(two->num_nodes(), 2);
  ASSERT_EQ(one->num_nodes(), 1);
  auto array = NodeArray<int>::Create(*two, two->Partition(100));
  ASSERT_TRUE(array.ok()) << array.status();
  for (size_t i = 0; i < 100; ++i) array->span(i, i + 1)[0] = 0;
  auto batches = BatchProcessor<int>::Create(*array, 10);
  ASSERT_TRUE(batches.ok()) << batches.status();
  std::atomic<int> processed{0};
  absl::Status s =
      batches->ProcessAll(*one, [&](JobContext&, absl::Span<int> items) {
        for (int& item : items) ++item;
        processed.fetch_add(static_cast<int>(items.size()));
      });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "node 1")) << s;
  EXPECT_EQ(processed.load(), 0);
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(array->span(i, i + 1)[0], 0);
  // On its own runtime every item is processed once.
  EXPECT_TRUE(batches
                  ->ProcessAll(*two,
                               [&](JobContext&, absl::Span<int> items) {
                                 for (int& item : items) ++item;
                               })
                  .ok());
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(array->span(i, i + 1)[0], 1);
}

// Node(-1) is a node the runtime does not have, not "any" (before, it was
// Any() itself: a computed node of -1 ran anywhere, quietly).
TEST(RuntimeMisuseTest, ANegativeNodeIsRefusedNotAny) {
  EXPECT_FALSE(Affinity::Node(-1).any());
  EXPECT_FALSE(Affinity::Node(-1) == Affinity::Any());
  EXPECT_TRUE(Affinity::Any().any());
  EXPECT_EQ(Affinity::Any().node(), Affinity::kAny);
  EXPECT_TRUE(Affinity::Node(0) == Affinity::Node(0));
  auto rt = OneWorker();
  ASSERT_NE(rt, nullptr);
  for (int node : {-1, -2, 1}) {
    auto handle = rt->Submit([] {}, SubmitOptions().on_node(node));
    const absl::Status waited = handle.Wait();
    EXPECT_EQ(waited.code(), absl::StatusCode::kInvalidArgument)
        << "node " << node << ": " << waited;
    EXPECT_EQ(rt->Spawn([] {}, SubmitOptions().on_node(node)).code(),
              absl::StatusCode::kInvalidArgument)
        << "node " << node;
    // From inside a job too (the direct path's own check).
    auto inner = rt->Submit([&rt, node] {
      return rt->Spawn([] {}, SubmitOptions().on_node(node));
    });
    ASSERT_TRUE(inner.Wait().ok());
    EXPECT_EQ(inner.value().code(), absl::StatusCode::kInvalidArgument)
        << "node " << node;
  }
}

// Raw oneTBB arenas of the application's own: libtbb is not instrumented
// for TSan, which cannot follow their hand-offs.
#if defined(__SANITIZE_THREAD__)
#define SKIP_RAW_TBB_UNDER_TSAN() \
  GTEST_SKIP() << "raw oneTBB code: libtbb is not instrumented for TSan"
#else
#define SKIP_RAW_TBB_UNDER_TSAN() (void)0
#endif

// A job's ParallelFor and Fork inside the application's task_arena execute
// run on the job's own thread (before, their chunks went to that arena's
// threads, which ran them with the worker's slot: up to three at once on
// one frame arena, and thousands of frame blocks overwritten).
TEST(RuntimeMisuseTest, ChunksInsideAnotherArenasExecuteStayOnTheWorker) {
  SKIP_RAW_TBB_UNDER_TSAN();
  Watchdog watchdog("ChunksInsideAnotherArenasExecuteStayOnTheWorker", 60);
  auto rt = OneWorker();
  ASSERT_NE(rt, nullptr);
  // An idle runtime of four workers raises TBB's thread limit, so that the
  // application's arena gets threads of its own to steal with.
  auto idle = MakeRuntime(Config().set_workers_per_node(4));
  ASSERT_NE(idle, nullptr);
  tbb::task_arena app(3);
  for (int round = 0; round < 5; ++round) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    std::atomic<int> chunks{0}, foreign{0}, corrupted{0}, forked{0};
    auto job = rt->Submit([&](JobContext& ctx) {
      const std::thread::id me = std::this_thread::get_id();
      app.execute([&] {
        ctx.ParallelFor(0, 64, 1, [&](JobContext& c, size_t b, size_t) {
          if (std::this_thread::get_id() != me) foreign.fetch_add(1);
          std::vector<unsigned char*> blocks;
          for (int i = 0; i < 200; ++i) {
            auto* p = static_cast<unsigned char*>(c.arena().Allocate(64, 8));
            std::memset(p, static_cast<int>(b & 0xff), 64);
            blocks.push_back(p);
          }
          for (unsigned char* p : blocks) {
            for (int i = 0; i < 64; ++i) {
              if (p[i] != static_cast<unsigned char>(b & 0xff)) {
                corrupted.fetch_add(1);
                break;
              }
            }
          }
          chunks.fetch_add(1);
        });
        ctx.Fork([&](JobContext&) { forked.fetch_add(1); },
                 [&](JobContext&) { forked.fetch_add(1); },
                 [&](JobContext&) { forked.fetch_add(1); });
      });
    });
    ASSERT_TRUE(job.Wait().ok()) << job.Wait();
    ASSERT_TRUE(rt->EndFrame().ok());
    EXPECT_EQ(chunks.load(), 64);
    EXPECT_EQ(foreign.load(), 0);
    EXPECT_EQ(corrupted.load(), 0);
    EXPECT_EQ(forked.load(), 3);
  }
}

// What a job submits inside the application's task_arena execute runs on
// the runtime's workers (before: in that arena, "run by a thread outside
// the runtime's worker slots", or, in an arena of one slot, never). It is
// enqueued to the node, like an outside thread's submission: on a node of
// two workers the other one runs it while the job waits on a counter; on
// a node of one worker a handle's wait runs it inline (a counter's would
// wait for good: docs/jobs.md, "Embedding the runtime in a server").
TEST(RuntimeMisuseTest, SubmissionsInsideAnotherArenasExecuteRunOnTheRuntime) {
  SKIP_RAW_TBB_UNDER_TSAN();
  Watchdog watchdog("SubmissionsInsideAnotherArenasExecuteRunOnTheRuntime", 60);
  for (int workers : {2, 1}) {
    for (int slots : {2, 1}) {
      auto rt = MakeRuntime(Config().set_workers_per_node(workers));
      ASSERT_NE(rt, nullptr);
      tbb::task_arena app(slots);
      std::atomic<int> ran{0};
      auto outer = rt->Submit([&](JobContext& ctx) -> absl::Status {
        JobHandle<int> inner;
        JobCounter spawned;
        absl::Status spawn;
        app.execute([&] {
          inner = ctx.runtime().Submit([&](JobContext& c) {
            ran.fetch_add(1);
            return c.worker();
          });
          if (workers > 1) {
            spawn = ctx.runtime().Spawn([&] { ran.fetch_add(1); },
                                        SubmitOptions().with_counter(&spawned));
          }
        });
        if (!spawn.ok()) return spawn;
        if (absl::Status s = spawned.Wait(); !s.ok()) return s;
        return inner.Wait();
      });
      ASSERT_TRUE(outer.Wait().ok());
      EXPECT_TRUE(outer.value().ok())
          << workers << " workers, " << slots << " slots: " << outer.value();
      EXPECT_EQ(ran.load(), workers > 1 ? 2 : 1)
          << workers << " workers, " << slots << " slots";
    }
  }
}

// A larger thread limit the application set stays in force while a
// runtime lives (before: the runtime's own control, sized to its workers,
// capped it: an application's 8 became 2 on a one-PU topology).
TEST(RuntimeMisuseTest, ARuntimeKeepsTheApplicationsLargerThreadLimit) {
  using tbb::global_control;
  const size_t before =
      global_control::active_value(global_control::max_allowed_parallelism);
  const size_t wanted = before + 6;
  {
    global_control application(global_control::max_allowed_parallelism, wanted);
    auto topology = numa::Topology::FromSynthetic("pack:1 [numa] core:1 pu:1");
    ASSERT_TRUE(topology.ok()) << topology.status();
    auto rt = MakeRuntime(Config().set_topology(topology->get()));
    ASSERT_NE(rt, nullptr);
    EXPECT_EQ(
        global_control::active_value(global_control::max_allowed_parallelism),
        wanted);
  }
  EXPECT_EQ(
      global_control::active_value(global_control::max_allowed_parallelism),
      before);
}

// A job that destroys a counter that counts it is a fatal misuse (before
// the fix of defect 75 it hung; with its first version the destructor's
// refused wait returned and the job's end updated the freed counter).
TEST(RuntimeMisuseDeathTest, AJobDestroyingItsOwnCounterIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        auto rt = OneWorker();
        auto* counter = new JobCounter;
        auto job = rt->Submit([counter] { delete counter; },
                              SubmitOptions().with_counter(counter));
        (void)job.Wait();
      },
      "destroyed by a job it counts");
}

// The calling thread's CPUs as the kernel holds them.
std::vector<int> AffinityOf(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(tid, sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// A pinned worker gets back the CPUs it had, also those the topology does
// not list (a topology given through HWLOC_SYNTHETIC with
// HWLOC_THISSYSTEM=1). Before, the observer saved hwloc's answer, which
// drops them, and gave it back through the topology's PU check, which
// refused: the worker stayed pinned for whatever TBB gave it next. Run in
// a child process: the worker threads outlive the runtime.
void CheckAPinnedWorkerGetsItsCpusBack() {
  const std::vector<int> allowed = AffinityOf(0);
  if (allowed.size() < 2 || allowed[0] != 0 || allowed[1] != 1) {
    GTEST_SKIP() << "needs CPUs 0 and 1";
  }
  setenv("HWLOC_SYNTHETIC", "pack:1 [numa] pu:2(indexes=0,2)", 1);
  setenv("HWLOC_THISSYSTEM", "1", 1);
  auto topology = numa::Topology::Discover();
  unsetenv("HWLOC_SYNTHETIC");
  unsetenv("HWLOC_THISSYSTEM");
  ASSERT_TRUE(topology.ok()) << topology.status();
  if (!(*topology)->is_this_system() ||
      !(*topology)->support().thread_binding) {
    GTEST_SKIP() << "hwloc did not take the synthetic topology as this system";
  }
  pid_t worker = 0;
  std::vector<int> inside;
  {
    auto rt = MakeRuntime(Config()
                              .set_topology(topology->get())
                              .set_workers_per_node(1)
                              .set_pinning(PinningPolicy::kNode));
    ASSERT_NE(rt, nullptr);
    auto job = rt->Submit([&] {
      worker = static_cast<pid_t>(syscall(SYS_gettid));
      inside = AffinityOf(0);
    });
    ASSERT_TRUE(job.Wait().ok());
  }
  ASSERT_FALSE(inside.empty());
  EXPECT_EQ(inside.front(), 0);              // Pinned to node 0 ...
  EXPECT_LT(inside.size(), allowed.size());  // ... which lacks CPU 1.
  // The worker left the runtime's arena when the runtime went (its
  // destructor waits for that): its old mask is back.
  EXPECT_EQ(AffinityOf(worker), allowed);
}

TEST(RuntimeMisuseDeathTest, APinnedWorkerGetsItsCpusBack) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        CheckAPinnedWorkerGetsItsCpusBack();
        std::exit(::testing::Test::HasFailure() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
