// Tests of OutsideWaitPolicy: a thread outside the runtime that waits
// (JobCounter::Wait, JobRef::Wait, Runtime::ParallelFor, EndFrame) runs the
// node's jobs under kHelp, in a slot of its own, and never under kSleep.
// Most tests first occupy every worker with a job that blocks until the
// test ends, so that the waits can only finish if the waiting thread runs
// the jobs itself (they would hang otherwise, and the test time out).
#include <atomic>
#include <chrono>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

std::unique_ptr<numa::Topology> Synthetic(const char* description) {
  auto t = numa::Topology::FromSynthetic(description);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

std::unique_ptr<Runtime> MakeRuntime(Config config) {
  auto rt = Runtime::Create(std::move(config));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? *std::move(rt) : nullptr;
}

// Occupies every worker of `node` with a job that spins until Release()
// (or the destructor): afterwards only a helping waiter can run that
// node's jobs.
class WorkerBlocker {
 public:
  WorkerBlocker(Runtime& rt, int node) {
    const int workers = rt.workers(node);
    for (int i = 0; i < workers; ++i) {
      EXPECT_TRUE(rt.Spawn(
                        [this] {
                          started_.fetch_add(1);
                          while (!released_.load(std::memory_order_acquire)) {
                            std::this_thread::sleep_for(
                                std::chrono::microseconds(50));
                          }
                          finished_.fetch_add(1);  // Its last touch.
                        },
                        SubmitOptions().on_node(node))
                      .ok());
    }
    // Started before the test waits: a helping waiter must not pick a
    // blocker up (it would wait for itself).
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (started_.load() < workers &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    EXPECT_EQ(started_.load(), workers) << "the blockers did not all start";
  }
  // Releases the blockers and waits until they have returned.
  ~WorkerBlocker() {
    Release();
    while (finished_.load() < started_.load()) std::this_thread::yield();
  }
  void Release() { released_.store(true, std::memory_order_release); }

 private:
  std::atomic<int> started_{0};
  std::atomic<int> finished_{0};
  std::atomic<bool> released_{false};
};

// Where one job ran.
struct Ran {
  std::thread::id thread;
  int node = -1;
  int worker = -1;
};

Config HelpConfig(const numa::Topology* topology, int workers) {
  return Config()
      .set_topology(topology)
      .set_workers_per_node(workers)
      .set_outside_wait(OutsideWaitPolicy::kHelp);
}

// A runtime of one node and one worker under kHelp, whose worker is
// blocked for the whole test: what the test waits for runs on its thread.
class OneBlockedWorker : public ::testing::Test {
 protected:
  void SetUp() override {
    topology_ = Synthetic("pack:1 [numa] core:2 pu:1");
    rt_ = MakeRuntime(HelpConfig(topology_.get(), 1));
    ASSERT_NE(rt_, nullptr);
    blocker_ = std::make_unique<WorkerBlocker>(*rt_, 0);
  }
  void TearDown() override { blocker_.reset(); }

  std::unique_ptr<numa::Topology> topology_;
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<WorkerBlocker> blocker_;
};

TEST(OutsideWaitTest, PolicyNames) {
  EXPECT_EQ(OutsideWaitPolicyName(OutsideWaitPolicy::kSleep), "sleep");
  EXPECT_EQ(OutsideWaitPolicyName(OutsideWaitPolicy::kHelp), "help");
  EXPECT_EQ(Config().outside_wait, OutsideWaitPolicy::kSleep);
}

TEST_F(OneBlockedWorker, CounterWaitRunsTheJobsOnTheWaitingThread) {
  Runtime* rt = rt_.get();
  constexpr int kJobs = 50;
  std::vector<Ran> ran(kJobs);
  JobCounter counter;
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(
        rt->Spawn(
              [&ran, i](JobContext& ctx) {
                // Frame arenas and scratch work in the outside slot.
                void* p = ctx.arena().Allocate(256, 16);
                ASSERT_NE(p, nullptr);
                ran[i] = {std::this_thread::get_id(), ctx.node(), ctx.worker()};
              },
              SubmitOptions().with_counter(&counter))
            .ok());
  }
  EXPECT_TRUE(counter.Wait().ok());
  for (int i = 0; i < kJobs; ++i) {
    EXPECT_EQ(ran[i].thread, std::this_thread::get_id()) << "job " << i;
    EXPECT_EQ(ran[i].node, 0);
    EXPECT_EQ(ran[i].worker, rt->workers(0)) << "the outside slot's index";
  }
  blocker_->Release();
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());

  const RuntimeStats stats = rt->stats();
  ASSERT_EQ(stats.nodes.size(), 1u);
  const NodeStats& node = stats.nodes[0];
  EXPECT_EQ(node.workers, 1);
  ASSERT_EQ(node.worker_stats.size(), 2u) << "one worker, one outside slot";
  EXPECT_FALSE(node.worker_stats[0].outside);
  EXPECT_TRUE(node.worker_stats[1].outside);
  EXPECT_EQ(node.worker_stats[1].worker, 1);
  EXPECT_EQ(node.worker_stats[1].jobs_run, uint64_t{kJobs});
  EXPECT_EQ(node.worker_stats[1].idle_seconds, 0.0);
  EXPECT_EQ(node.jobs_run, uint64_t{kJobs} + 1);  // And the blocker.
  EXPECT_EQ(stats.jobs_completed, uint64_t{kJobs} + 1);
  EXPECT_TRUE(absl::StrContains(stats.ToJson(), "\"outside\":true"));
  EXPECT_TRUE(absl::StrContains(stats.ToText(), "outside thread, slot 1"));
}

TEST_F(OneBlockedWorker, HandleWaitRunsTheUnstartedJobAndItsForksHere) {
  Runtime* rt = rt_.get();
  std::atomic<int> elsewhere{0};
  const std::thread::id me = std::this_thread::get_id();
  auto handle = rt->Submit([&elsewhere, me](JobContext& ctx) {
    int a = 0, b = 0;
    ctx.Fork(
        [&a, &elsewhere, me](JobContext& c) {
          if (std::this_thread::get_id() != me) elsewhere.fetch_add(1);
          a = c.worker();
        },
        [&b](JobContext& c) { b = c.worker(); });
    if (std::this_thread::get_id() != me) elsewhere.fetch_add(1);
    return a + b + 40;
  });
  ASSERT_TRUE(handle.Wait().ok());
  EXPECT_EQ(handle.value(), 42) << "both halves in the outside slot (1 + 1)";
  EXPECT_EQ(elsewhere.load(), 0);
}

TEST_F(OneBlockedWorker, ParallelForFromOutsideRunsOnTheWaitingThread) {
  Runtime* rt = rt_.get();
  constexpr size_t kItems = 1000;
  std::vector<std::atomic<int>> hits(kItems);
  ASSERT_TRUE(
      rt->ParallelFor(kItems, 16, [&hits](JobContext&, size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) {
            hits[i].fetch_add(1);
          }
        }).ok());
  for (size_t i = 0; i < kItems; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
}

TEST_F(OneBlockedWorker, EndFrameRunsTheFramesJobsAndResetsTheOutsideArena) {
  Runtime* rt = rt_.get();
  for (int frame = 0; frame < 3; ++frame) {
    ASSERT_TRUE(rt->BeginFrame().ok());
    std::atomic<int> done{0};
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(rt->Spawn([&done](JobContext& ctx) {
                      ASSERT_TRUE(ctx.in_frame());
                      auto* p =
                          static_cast<char*>(ctx.arena().Allocate(1024, 16));
                      ASSERT_NE(p, nullptr);
                      p[0] = p[1023] = 1;
                      done.fetch_add(1);
                    }).ok());
    }
    ASSERT_TRUE(rt->EndFrame().ok());
    EXPECT_EQ(done.load(), 20);
    const std::vector<FrameTiming> history = rt->frame_history();
    ASSERT_FALSE(history.empty());
    EXPECT_EQ(history.back().jobs, 20u);
    // Each frame starts from an empty outside arena: the peak is this
    // frame's 20 KiB, not the frames' sum.
    EXPECT_GE(history.back().arena_bytes, 20u * 1024);
    EXPECT_LT(history.back().arena_bytes, 2u * 20 * 1024);
  }
}

TEST_F(OneBlockedWorker, ExceptionsAndResultsReachTheHelpingWaiter) {
  Runtime* rt = rt_.get();
  JobCounter counter;
  ASSERT_TRUE(rt->Spawn([] { throw std::runtime_error("boom"); },
                        SubmitOptions().with_counter(&counter))
                  .ok());
  absl::Status s = counter.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "boom")) << s;
  EXPECT_NE(counter.exception(), nullptr);

  auto handle = rt->Submit([]() -> int { throw std::logic_error("bad"); });
  s = handle.Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_NE(handle.exception(), nullptr);
}

TEST(OutsideWaitTest, HelpsOnTheNodeOfTheCountedJobs) {
  // Two logical nodes (nothing pinned: any thread may help on either).
  auto topology = Synthetic("pack:2 [numa] core:1 pu:1");
  auto rt = MakeRuntime(HelpConfig(topology.get(), 1));
  ASSERT_NE(rt, nullptr);
  WorkerBlocker blocker(*rt, 1);
  std::vector<Ran> ran(10);
  JobCounter counter;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        rt->Spawn(
              [&ran, i](JobContext& ctx) {
                ran[i] = {std::this_thread::get_id(), ctx.node(), ctx.worker()};
              },
              SubmitOptions().on_node(1).with_counter(&counter))
            .ok());
  }
  EXPECT_TRUE(counter.Wait().ok());
  for (const Ran& r : ran) {
    EXPECT_EQ(r.thread, std::this_thread::get_id());
    EXPECT_EQ(r.node, 1);
    EXPECT_EQ(r.worker, rt->workers(1));
  }
}

TEST(OutsideWaitTest, SleepPolicyNeverRunsJobsOnTheWaiter) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(
      Config().set_topology(topology.get()).set_workers_per_node(1));
  ASSERT_NE(rt, nullptr);
  std::atomic<int> on_waiter{0};
  const std::thread::id me = std::this_thread::get_id();
  for (int round = 0; round < 20; ++round) {
    JobCounter counter;
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(rt->Spawn(
                        [&on_waiter, me](JobContext& ctx) {
                          EXPECT_LT(ctx.worker(), 1);
                          if (std::this_thread::get_id() == me) {
                            on_waiter.fetch_add(1);
                          }
                        },
                        SubmitOptions().with_counter(&counter))
                      .ok());
    }
    ASSERT_TRUE(counter.Wait().ok());
  }
  EXPECT_EQ(on_waiter.load(), 0);
  EXPECT_EQ(rt->stats().nodes[0].worker_stats.size(), 1u);
}

// Several outside threads submit and wait at once (one helps at a time per
// node, the others sleep), with chains that move between the waiting
// thread and the workers; every job runs once and every wait returns.
TEST(OutsideWaitTest, ManyOutsideWaitersFinishEverything) {
  auto rt = MakeRuntime(Config().set_workers_per_node(2).set_outside_wait(
      OutsideWaitPolicy::kHelp));
  ASSERT_NE(rt, nullptr);
  constexpr int kThreads = 3;
  constexpr int kRounds = 100;
  std::atomic<uint64_t> ran{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&rt, &ran, t] {
      for (int round = 0; round < kRounds; ++round) {
        if ((round + t) % 2 == 0) {
          JobCounter counter;
          struct Link {
            Runtime* rt;
            JobCounter* counter;
            std::atomic<uint64_t>* ran;
            int left;
            void operator()(JobContext&) const {
              ran->fetch_add(1);
              if (left > 0) {
                EXPECT_TRUE(rt->Spawn(Link{rt, counter, ran, left - 1},
                                      SubmitOptions().with_counter(counter))
                                .ok());
              }
            }
          };
          ASSERT_TRUE(rt->Spawn(Link{rt.get(), &counter, &ran, 19},
                                SubmitOptions().with_counter(&counter))
                          .ok());
          ASSERT_TRUE(counter.Wait().ok());
        } else {
          auto h = rt->Submit([&ran](JobContext& ctx) {
            ran.fetch_add(1);
            ctx.Fork([&ran](JobContext&) { ran.fetch_add(1); },
                     [&ran](JobContext&) { ran.fetch_add(1); });
            return 7;
          });
          ASSERT_TRUE(h.Wait().ok());
          EXPECT_EQ(h.value(), 7);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // Half the rounds are 20-job chains, half a job with two fork children.
  EXPECT_EQ(ran.load(), uint64_t{kThreads} * kRounds / 2 * (20 + 3));
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  const RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.jobs_completed, stats.jobs_submitted);
}

// A thread that keeps submitting and waiting while another shuts the
// runtime down: its submissions are refused from then on, its waits return,
// nothing hangs.
TEST(OutsideWaitTest, ShutdownWhileAThreadHelps) {
  for (int round = 0; round < 10; ++round) {
    auto rt = MakeRuntime(Config().set_workers_per_node(1).set_outside_wait(
        OutsideWaitPolicy::kHelp));
    ASSERT_NE(rt, nullptr);
    std::atomic<bool> refused{false};
    std::atomic<int> waits{0};
    std::thread helper([&] {
      while (!refused.load()) {
        JobCounter counter;
        for (int i = 0; i < 20; ++i) {
          if (!rt->Spawn([] {}, SubmitOptions().with_counter(&counter)).ok()) {
            refused.store(true);
          }
        }
        EXPECT_TRUE(counter.Wait().ok());
        waits.fetch_add(1);
      }
    });
    while (waits.load() < 5) std::this_thread::yield();
    ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
    helper.join();
    const RuntimeStats stats = rt->stats();
    EXPECT_EQ(stats.jobs_completed, stats.jobs_submitted);
  }
}

// A counter reused batch after batch and destroyed right after its last
// wait: a waiter that arrived as the count reached zero must not leave its
// sleeper bit behind, or the next batch's last job would write the counter
// after it was freed (ASan's and TSan's runs would report it).
TEST(OutsideWaitTest, ReusedCountersAreFreeAfterTheirLastWait) {
  for (OutsideWaitPolicy policy :
       {OutsideWaitPolicy::kHelp, OutsideWaitPolicy::kSleep}) {
    auto rt =
        MakeRuntime(Config().set_workers_per_node(2).set_outside_wait(policy));
    ASSERT_NE(rt, nullptr);
    for (int round = 0; round < 2000; ++round) {
      auto counter = std::make_unique<JobCounter>();
      for (int batch = 0; batch < 2; ++batch) {
        ASSERT_TRUE(
            rt->Spawn([] {}, SubmitOptions().with_counter(counter.get())).ok());
        ASSERT_TRUE(counter->Wait().ok());
      }
      EXPECT_EQ(counter->pending(), 0);
      counter.reset();
    }
  }
}

// The runtime destroyed while another thread helps in a wait on it: the
// destructor finishes the job, then waits for the thread to leave the arena
// before it frees the nodes.
TEST(OutsideWaitTest, DestroyedWhileAThreadHelps) {
  for (int round = 0; round < 5; ++round) {
    auto rt = MakeRuntime(Config().set_workers_per_node(1).set_outside_wait(
        OutsideWaitPolicy::kHelp));
    ASSERT_NE(rt, nullptr);
    std::atomic<bool> waiting{false};
    absl::Status waited = absl::UnknownError("not waited");
    JobCounter counter;
    ASSERT_TRUE(rt->Spawn(
                      [] {
                        std::this_thread::sleep_for(
                            std::chrono::milliseconds(20));
                      },
                      SubmitOptions().with_counter(&counter))
                    .ok());
    std::thread waiter([&] {
      waiting.store(true);
      waited = counter.Wait();
    });
    while (!waiting.load()) std::this_thread::yield();
    rt.reset();
    waiter.join();
    EXPECT_TRUE(waited.ok()) << waited;
  }
}

TEST(OutsideWaitTest, TraceNamesTheOutsideTrack) {
  auto topology = Synthetic("pack:1 [numa] core:2 pu:1");
  auto rt = MakeRuntime(HelpConfig(topology.get(), 1).set_trace(true));
  ASSERT_NE(rt, nullptr);
  {
    WorkerBlocker blocker(*rt, 0);
    JobCounter counter;
    ASSERT_TRUE(
        rt->Spawn([] {}, SubmitOptions().with_counter(&counter).named("helped"))
            .ok());
    ASSERT_TRUE(counter.Wait().ok());
  }
  ASSERT_TRUE(rt->Shutdown(ShutdownMode::kFinish).ok());
  std::ostringstream out;
  rt->WriteChromeTrace(out);
  EXPECT_TRUE(absl::StrContains(out.str(), "outside thread (helping)"));
  EXPECT_TRUE(absl::StrContains(out.str(), "\"helped\""));
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
