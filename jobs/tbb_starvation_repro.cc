// The oneTBB 2021.8 starvation behind JobCounter::Wait's two cross-node
// paths (docs/jobs.md, "Waiting inside a job"), without the job runtime:
// two arenas of one worker each; a task in arena 0 enqueues tasks to arena
// 1 and waits for them in TBB's nested wait. Now and then arena 1 never
// gets a thread again, and the program reports the round that hung: on
// the 2-core host of 27 Nov 2026, 4 runs of 6 hung (at rounds 1,047 to
// 7,839; the other two ran 20,000 and 50,000 rounds), and with
// --keep_awake or --futex none of 5 and 2 (20,000-50,000 rounds each).
//
//   ./bazelw run -c opt //jobs:tbb_starvation_repro                # hangs
//   ./bazelw run -c opt //jobs:tbb_starvation_repro -- --keep_awake  # not
//
// --keep_awake enqueues to arena 0, before the wait, a task the waiter's
// isolated region cannot take (the remedy of Runtime::AwakeHold, whose task
// stays queued while the wait lasts); --futex waits outside TBB instead
// (the remedy when every job waited for is remote). Exits 0 when every
// round finished, 1 at the first that hung.
//
// --sibling is the same starvation one step removed: arena 0 has two
// workers, and the task forks a child that the other worker takes (after
// the task spins 50 us) and that waits on a futex for arena 1's tasks,
// while the task waits for the child in TBB. With --poll_us=500, 3 runs of
// 3 hung (rounds 5,504, 7,063 and 15,850); with --keep_awake (the child
// posts the task before it blocks: Runtime::AwakeHold again) none
// of 3 (20,000 rounds each, the child taken by the other worker in
// 83-90% of them).
//
//   ./bazelw run -c opt //jobs:tbb_starvation_repro -- --sibling --poll_us=500
//
// --extra_threads=n raises max_allowed_parallelism by n threads beyond the
// arenas' slots: with 2, 2 runs of 3 still hung (rounds 5,491 and 6,779;
// 27 Nov), so the starvation is not a shortage of worker threads.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "oneapi/tbb/detail/_task.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/task_arena.h"
#include "oneapi/tbb/task_group.h"

ABSL_FLAG(int, rounds, 20000, "rounds to run");
ABSL_FLAG(bool, keep_awake, false,
          "enqueue a task the waiter cannot take to its arena first");
ABSL_FLAG(bool, futex, false, "wait on an atomic outside TBB instead");
ABSL_FLAG(int, hang_ms, 5000, "a round not done after this long hung");
ABSL_FLAG(int, poll_us, 200, "how often the main thread looks at a round");
ABSL_FLAG(int, extra_threads, 0,
          "raise max_allowed_parallelism by this many threads beyond the "
          "arenas' slots");
ABSL_FLAG(bool, sibling, false,
          "arena 0 has two workers; the task forks a child (taken by the "
          "other worker after a 50 us spin) that waits on a futex for arena "
          "1's tasks while the task waits for it in TBB");

namespace {
namespace d1 = tbb::detail::d1;
}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const bool keep_awake = absl::GetFlag(FLAGS_keep_awake);
  const bool futex = absl::GetFlag(FLAGS_futex);
  const bool sibling = absl::GetFlag(FLAGS_sibling);
  tbb::global_control threads(
      tbb::global_control::max_allowed_parallelism,
      (sibling ? 4 : 3) + absl::GetFlag(FLAGS_extra_threads));
  tbb::task_arena a0, a1;
  a0.initialize(/*max_concurrency=*/sibling ? 3 : 2,
                /*reserved_for_masters=*/1);
  a1.initialize(2, 1);
  tbb::task_group_context context0(tbb::task_group_context::isolated);
  tbb::task_group_context context1(tbb::task_group_context::isolated);
  tbb::task_group g0(context0), g1(context1);
  std::atomic<int> taken{0};  // --sibling: children run by the other worker.
  // Enqueues two tasks to arena 1 and waits for them on a futex.
  auto wait_on_arena1_outside_tbb = [&a1, &g1] {
    std::atomic<int> left{2};
    for (int k = 0; k < 2; ++k) {
      a1.enqueue(g1.defer([&left] {
        if (left.fetch_sub(1) == 1) left.notify_all();
      }));
    }
    for (int now = left.load(); now != 0; now = left.load()) {
      left.wait(now);
    }
  };
  for (int round = 0; round < rounds; ++round) {
    std::atomic<bool> first{false}, done{false};
    a1.enqueue(g1.defer([&first] { first = true; }));
    a0.enqueue(g0.defer([&] {
      tbb::this_task_arena::isolate([&] {
        if (sibling) {
          // The waiting task's wait is on its own arena's work (a child),
          // and that child blocks outside TBB on arena 1.
          tbb::task_group fork;
          const int forker = tbb::this_task_arena::current_thread_index();
          fork.run([&, forker] {
            if (tbb::this_task_arena::current_thread_index() != forker) {
              taken.fetch_add(1, std::memory_order_relaxed);
            }
            if (keep_awake) a0.enqueue(g0.defer([] {}));
            wait_on_arena1_outside_tbb();
          });
          const auto until =
              std::chrono::steady_clock::now() + std::chrono::microseconds(50);
          while (std::chrono::steady_clock::now() < until) {
          }
          fork.wait();
          return;
        }
        if (keep_awake) a0.enqueue(g0.defer([] {}));
        if (futex) {
          wait_on_arena1_outside_tbb();
          return;
        }
        d1::wait_context left(2);
        tbb::task_group_context wait_context(tbb::task_group_context::isolated);
        for (int k = 0; k < 2; ++k) {
          a1.enqueue(g1.defer([&left] { left.release(); }));
        }
        d1::wait(left, wait_context);
      });
      done = true;
    }));
    const auto deadline =
        std::chrono::steady_clock::now() +
        std::chrono::milliseconds(absl::GetFlag(FLAGS_hang_ms));
    while (!(done && first) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(
          std::chrono::microseconds(absl::GetFlag(FLAGS_poll_us)));
    }
    if (!(done && first)) {
      std::printf(
          "round %d hung: waiting task done=%d, arena 1's first task "
          "ran=%d\n",
          round, static_cast<int>(done.load()), static_cast<int>(first.load()));
      std::fflush(stdout);
      std::_Exit(1);  // The arenas cannot be destroyed with a task stuck.
    }
  }
  a0.execute([&g0] { g0.wait(); });
  a1.execute([&g1] { g1.wait(); });
  std::printf("%d rounds, none hung", rounds);
  if (sibling)
    std::printf(" (child taken by the other worker in %d)", taken.load());
  std::printf("\n");
  return 0;
}
