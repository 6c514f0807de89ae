// jobs::Runtime: node arenas, pinning observers, job records, frames,
// stealing and statistics. See runtime.h for the contract.
#include "jobs/runtime.h"

#include <oneapi/tbb/concurrent_queue.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_scheduler_observer.h>
#include <x86intrin.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <system_error>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "alloc/error.h"
#include "alloc/internal/json.h"
#include "jobs/internal/trace_ring.h"
#include "numa/binding.h"

namespace framealloc {
namespace jobs {

using jobs_internal::DirectHeader;
using jobs_internal::ExtraEdge;
using jobs_internal::JobRecord;
using jobs_internal::JobState;
using jobs_internal::kClosedList;
using jobs_internal::kStateMask;
using jobs_internal::kWaiterBit;
using jobs_internal::Successor;

namespace jobs_internal {

// Job ids a worker slot takes from the runtime's counter at a time.
constexpr uint64_t kIdBlock = 256;

// One worker slot of one node's task arena. The thread occupying the slot
// (TBB hands slots from thread to thread) is the only writer of its
// arenas, trace and counters; counters are relaxed atomics so stats() may
// read them at any time.
struct alignas(64) WorkerSlot {
  Runtime* runtime = nullptr;
  SmartAlloc* alloc = nullptr;  // The node's.
  int node = 0;
  int index = 0;
  std::unique_ptr<FrameArena> frame_arena;
  std::unique_ptr<FrameArena> scratch_arena;
  std::atomic<uint64_t> jobs_run{0};
  std::atomic<uint64_t> jobs_stolen{0};
  std::atomic<uint64_t> jobs_inline{0};
  std::atomic<uint64_t> busy_ticks{0};
  // Jobs finished by the thread in this slot, by final state (done,
  // failed, cancelled): per slot so that finishing a job touches no shared
  // counter. Release: Shutdown's acquire sums see the jobs' effects.
  std::atomic<uint64_t> finished[3] = {};
  // ...of which the thread has done every step of the finish: counted
  // after the counter, the frame, the handle and the successors (and a
  // direct job's function, destroyed), for Shutdown (`finished` is counted
  // before them, for stats()). Release.
  std::atomic<uint64_t> settled{0};
  // Jobs this slot's thread submitted, per target node: single-writer
  // counters, so that submitting from a worker touches no shared line.
  // Release stores, for Shutdown's acquire sums.
  std::unique_ptr<std::atomic<uint64_t>[]> submitted_to;
  // The block of job ids this slot's thread hands out next (owner only).
  uint64_t next_id = 0;
  uint64_t id_limit = 0;
  // The next job id, from this slot's block; a new block from `shared`
  // (the runtime's counter) when it runs out: workers touch no shared
  // counter per submission.
  uint64_t TakeId(std::atomic<uint64_t>& shared) {
    if (next_id == id_limit) {
      next_id = shared.fetch_add(kIdBlock, std::memory_order_relaxed);
      id_limit = next_id + kIdBlock;
    }
    return next_id++;
  }
  // Counts a job this slot's thread submitted to node `to` (single writer: a
  // plain store; release for Shutdown's acquire sums).
  void CountSubmitted(int to) {
    std::atomic<uint64_t>& mine = submitted_to[to];
    mine.store(mine.load(std::memory_order_relaxed) + 1,
               std::memory_order_release);
  }
  int depth = 0;  // Nested jobs running on this slot now (owner only).
  // The context of the job running on this slot now, innermost first
  // (owner only): Runtime::ParallelFor called inside a job finds its caller.
  JobContext* current = nullptr;
  // The job running on this slot now belongs to a frame (owner only): what
  // it submits joins that frame.
  bool frame_job = false;
  // Busy-time sampling (owner only). Reading the clock costs as much as a
  // short job (rdtsc takes 12-40 ns in the VMs this runs on), so while the
  // jobs are short not every top-level job is timed. Each job is timed with
  // a probability fixed before it runs, from what came before it only, and
  // a timed job counts 1/probability times (a Horvitz-Thompson estimate:
  // unbiased for any mix of lengths, a long job right after a short one
  // included). After a long timed job the next is always timed (weight 1):
  // a run of long jobs is timed exactly. After a short timed job the next
  // is timed with probability 1/2 (weight 2), each later one with 1/16
  // (weight 16) until one is: a clock read per 9 short jobs on average.
  // (Before, a timed short job was followed by a gap of 1-31 untimed jobs
  // chosen uniformly and the timed job stood for the whole gap: a long job that
  // always came right after a short one, as in a frame whose one long job
  // follows a short allocation job, was almost never timed and the busy time
  // read 52% for a worker a trace showed 91% busy.)
  uint32_t untimed = 0;        // Top-level jobs since the last timed one.
  uint32_t next_sample = 1;    // Time the job when `untimed` reaches this.
  uint32_t sample_weight = 1;  // 1 / the probability it was chosen with.
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  // Starts a top-level job: the weight of its busy-time sample, 0 if it
  // is not timed.
  uint32_t BeginBusySample() {
    if (++untimed < next_sample) return 0;
    untimed = 0;
    return sample_weight;
  }
  uint64_t NextRandom() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  }
  // Ends a timed job that took `ticks`: adds its weighted time and picks
  // the next job to time.
  void EndBusySample(uint32_t weight, uint64_t ticks) {
    busy_ticks.store(
        busy_ticks.load(std::memory_order_relaxed) + ticks * weight,
        std::memory_order_relaxed);
    if (ticks >= kLongJobTicks) {
      next_sample = 1;
      sample_weight = 1;
      return;
    }
    uint64_t r = NextRandom();
    if ((r & 1) == 0) {  // The next job, with probability 1/2.
      next_sample = 1;
      sample_weight = 2;
      return;
    }
    // Else a later one: job 1 + g with g >= 1 geometric (each job after the
    // next has probability 1/16 given the ones before it were not chosen):
    // g is the place of the first zero among the random nibbles.
    uint32_t g = 1;
    r >>= 4;  // The bit used above, and three unused.
    for (int nibbles = 15;; --nibbles) {
      if (nibbles == 0) {
        r = NextRandom();
        nibbles = 16;
      }
      if ((r & 15) == 0) break;
      r >>= 4;
      ++g;
    }
    next_sample = 1 + g;
    sample_weight = 16;
  }
  // A job this long (about 5 us at 3 GHz, 8 us at 2.1) makes timing it
  // negligible.
  static constexpr uint64_t kLongJobTicks = 16384;
  // Jobs outside frames running on this slot now, nested (owner only): the
  // outermost resets the scratch arena when it returns, inner ones rewind
  // to a mark.
  int scratch_depth = 0;
  TraceRing trace;
  // The slot a thread outside the runtime occupies while it helps in a
  // wait (OutsideWaitPolicy::kHelp), not a worker's.
  bool outside = false;
};

// The slot the calling thread occupies in one of the runtimes' node
// arenas, set by the node's observer when the thread enters the arena.
thread_local WorkerSlot* tls_slot = nullptr;
// The slots the calling thread held when it entered the node arenas it is
// in, innermost last, each with the observer told of the entry. TBB tells
// an arena's observers when a thread enters and leaves it, but not the
// outer arena's when a nested entry (task_arena::execute from inside a
// job: another runtime's Shutdown draining its arenas) returns: the exit
// puts the outer slot back. (Before, it cleared it, and the worker ran the
// rest of its stay as a thread outside its runtime: its jobs refused as
// run by no slot, its waits asleep instead of helping.) Fixed size, so
// the callbacks never allocate; entries nested deeper than this are not
// kept, and their exits restore the slot of the nearest kept entry of the
// same observer, or clear it.
struct OuterSlot {
  const void* observer;
  WorkerSlot* slot;
};
inline constexpr int kMaxNestedArenas = 8;
thread_local OuterSlot tls_outer_slots[kMaxNestedArenas];
thread_local int tls_outer_depth = 0;
// The binding a pinned worker had before it entered a node arena.
thread_local std::vector<int> tls_saved_binding;

// TBB hands a slot from thread to thread inside libtbb: tell TSan.
inline void SlotAcquire(WorkerSlot* slot) { TsanAcquire(slot); }
inline void SlotRelease(WorkerSlot* slot) { TsanRelease(slot); }

// Adds to a counter only the slot's current thread writes: a plain load and
// store (no locked instruction); readers get a relaxed snapshot.
inline void Bump(std::atomic<uint64_t>& counter, uint64_t by = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + by,
                std::memory_order_relaxed);
}

// Ticks of the time-stamp counter, and their length, measured once.
inline uint64_t Ticks() { return __rdtsc(); }
double SecondsPerTick() {
  static const double seconds_per_tick = [] {
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t c0 = Ticks();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const auto t1 = std::chrono::steady_clock::now();
    const uint64_t c1 = Ticks();
    const double seconds = std::chrono::duration<double>(t1 - t0).count();
    return c1 > c0 ? seconds / static_cast<double>(c1 - c0) : 1e-9;
  }();
  return seconds_per_tick;
}

// Pools of destroyed runtimes whose records were still referenced
// (Runtime::~Runtime): kept for the process's life, reachable (so that
// LeakSanitizer does not count them), since a handle may be dropped at any
// time.
void KeepOrphanedPool(std::unique_ptr<SmartAlloc> pool) {
  struct Kept {
    alloc_internal::Mutex mu;
    std::vector<std::unique_ptr<SmartAlloc>> pools ABSL_GUARDED_BY(mu);
  };
  static Kept* kept = new Kept();
  alloc_internal::MutexLock lock(&kept->mu);
  kept->pools.push_back(std::move(pool));
}

void FreeRecord(SmartAlloc* pool, void* record, size_t size, size_t alignment) {
  pool->pool_deallocate(record, size, alignment);
}

[[noreturn]] void FailedValueAccess(const JobRecord* record) {
  std::string message;
  if (record == nullptr) {
    message = "JobHandle::value() on an empty handle";
  } else {
    const uint32_t state =
        record->state.load(std::memory_order_acquire) & kStateMask;
    message = absl::StrCat(
        "JobHandle::value() on job ", record->id,
        record->name ? absl::StrCat(" '", record->name, "'") : "",
        state < kDone ? " that has not finished (call Wait() first)"
                      : absl::StrCat(" that did not succeed: ",
                                     record->status.ToString()));
  }
  ReportFatalError(ErrorReport{ErrorKind::kMisuse, "JobHandle::value",
                               std::move(message), 0, 0, absl::OkStatus()});
}

}  // namespace jobs_internal

using jobs_internal::Bump;
using jobs_internal::kMaxNestedArenas;
using jobs_internal::SlotAcquire;
using jobs_internal::SlotRelease;
using jobs_internal::Ticks;
using jobs_internal::tls_outer_depth;
using jobs_internal::tls_outer_slots;
using jobs_internal::tls_slot;
using jobs_internal::TsanAcquire;
using jobs_internal::TsanRelease;
using jobs_internal::WorkerSlot;

namespace {

// TBB runs at most `max_allowed_parallelism` threads in the whole process
// (by default the machine's PUs), and the smallest active global_control
// wins. Every live runtime needs its workers: one control sized to the
// sum of all live runtimes' workers (plus one), at least the machine.
class Parallelism {
 public:
  static Parallelism& Get() {
    static Parallelism* instance = new Parallelism();
    return *instance;
  }
  void Add(int workers) {
    std::lock_guard<std::mutex> lock(mu_);
    workers_ += workers;
    Apply();
  }
  void Remove(int workers) {
    std::lock_guard<std::mutex> lock(mu_);
    workers_ -= workers;
    Apply();
  }

 private:
  void Apply() {
    control_.reset();
    if (workers_ > 0) {
      // Never below TBB's default (one thread per PU), and enough for every
      // runtime worker plus a submitting thread. Not more: threads beyond
      // the cores spin before they sleep, which slowed fine-grained TBB
      // work in the same process (measured: 43 -> 400 ns per spawn with
      // machine + workers); arenas of the application share the pool with
      // the runtime's, as TBB's arenas always do.
      // And never below a larger limit the application set (its own
      // global_control): TBB keeps the smallest active one, so a smaller
      // one here would cap the application's arenas (before: an
      // application's 8 became 2 on a one-PU topology).
      const size_t machine =
          std::max<size_t>(1, std::thread::hardware_concurrency());
      const size_t application = tbb::global_control::active_value(
          tbb::global_control::max_allowed_parallelism);
      control_ = std::make_unique<tbb::global_control>(
          tbb::global_control::max_allowed_parallelism,
          std::max({machine, application, static_cast<size_t>(workers_) + 1}));
    }
  }
  std::mutex mu_;
  int workers_ = 0;
  std::unique_ptr<tbb::global_control> control_;
};

ErrorReport Report(ErrorKind kind, absl::string_view where,
                   std::string message) {
  ErrorReport report{kind, where, std::move(message), 0, 0, absl::OkStatus()};
  return report;
}

// A copy that shares no heap representation with `s`. Statuses cross
// threads here (worker -> waiter), and part of absl::Status's reference
// counting lives in the (uninstrumented) Abseil library, so TSan cannot
// order a shared representation's last release; a detached copy is never
// shared.
absl::Status Detached(const absl::Status& s) {
  return s.ok() ? absl::OkStatus() : absl::Status(s.code(), s.message());
}

std::string JobName(uint64_t id, const char* name) {
  return name != nullptr ? absl::StrCat("job ", id, " '", name, "'")
                         : absl::StrCat("job ", id);
}
std::string JobName(const JobRecord* record) {
  return JobName(record->id, record->name);
}

// While Schedule lists a job on its counter (kListingBit: a lock of the
// counter's helpers_mu_ and the release of the helpers that can run it), a
// claim or a cancellation of that job waits; never a token's (tokens are
// posted after), only an inline runner's or a canceller's.
void WaitWhileListing(JobRecord* record, uint32_t& s) {
  // The lister holds the bit for a lock and a list insertion; past a short
  // spin it is likely preempted (more threads than cores): yield to it.
  for (int spins = 0; (s & jobs_internal::kListingBit) != 0; ++spins) {
    if (spins < 64) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
    s = record->state.load(std::memory_order_acquire);
  }
}

// seq_cst (the same instruction as acq_rel on x86), for PostToken's check
// against Uncount (see there); so is Transition's.
bool Claim(JobRecord* record) {
  uint32_t s = record->state.load(std::memory_order_acquire);
  while ((s & kStateMask) == jobs_internal::kQueued) {
    if (ABSL_PREDICT_FALSE((s & jobs_internal::kListingBit) != 0)) {
      WaitWhileListing(record, s);
      continue;
    }
    if (record->state.compare_exchange_weak(
            s, (s & ~kStateMask) | jobs_internal::kRunning,
            std::memory_order_seq_cst, std::memory_order_acquire)) {
      return true;
    }
  }
  return false;
}

// Moves a job that has not started to `to` (kQueued or kCancelling).
bool Transition(JobRecord* record, uint32_t from, uint32_t to) {
  uint32_t s = record->state.load(std::memory_order_acquire);
  while ((s & kStateMask) == from) {
    if (ABSL_PREDICT_FALSE((s & jobs_internal::kListingBit) != 0)) {
      WaitWhileListing(record, s);
      continue;
    }
    if (record->state.compare_exchange_weak(s, (s & ~kStateMask) | to,
                                            std::memory_order_seq_cst,
                                            std::memory_order_acquire)) {
      return true;
    }
  }
  return false;
}

// A count that a thread waits on until it reaches zero (a JobCounter's
// jobs, the open frame's jobs). Its low bits are the count; kSleeperBit
// means a waiter sleeps on `wake`, which the decrement that reaches zero
// bumps. The waiter sleeps on `wake` rather than on the count because the
// count changes with every job: a futex wait on it returns at once while
// jobs run, and the waiter ends up polling the line the workers write
// (profiled: the worker's two locked counter operations, stalled on that
// line, were a quarter of a chained job's samples).
using jobs_internal::kSleeperBit;
constexpr int64_t kCountBits = kSleeperBit - 1;

// Before a waiter sleeps it spins, for up to this long, looking at what it
// waits for every 16 pauses (not every pause: the workers write that line
// with every job). A sleep costs the waiter a futex wake-up of tens of
// microseconds in these VMs, and the next batch it submits then finds the
// workers asleep too: a loop that submits 2,000 chained jobs and waits paid
// that on every round (with a spin of 256 pauses, ~3 us, the chain took
// 115-120 ns per job on two workers; spinning 30-100 us, 87-97 ns; 300 us,
// 78-86 ns; measured with a throwaway driver). A waiter that waits longer
// pays this much processor time per wait.
constexpr double kWaitSpinSeconds = 50e-6;

// Spins until done() or kWaitSpinSeconds have passed; returns done().
template <typename Done>
bool SpinUntil(const Done& done) {
  static const uint64_t spin_ticks =
      static_cast<uint64_t>(kWaitSpinSeconds / jobs_internal::SecondsPerTick());
  const uint64_t spin_end = Ticks() + spin_ticks;
  do {
    if (done()) return true;
    for (int i = 0; i < 16; ++i) _mm_pause();
  } while (Ticks() < spin_end);
  return done();
}

// An arming fetch_or returned `before`, with the count at zero: the wait is
// over, but a bit this waiter set must not stay behind. A later zero
// crossing (the counter reused for another batch) would find it and write
// the counter (clear it, bump `wake`) after its owner, seeing zero, had
// destroyed it. Takes the bit back and returns true; or returns false if
// it now stands for a crossing the caller must wait for as an armed waiter
// (until `wake` moves): jobs were added meanwhile, or a finisher already
// found it. A bit that was set before is another waiter's, still waiting.
bool Disarm(std::atomic<int64_t>& count, int64_t before) {
  if ((before & kSleeperBit) != 0) return true;
  int64_t now = before | kSleeperBit;
  while ((now & kCountBits) == 0 && (now & kSleeperBit) != 0) {
    if (count.compare_exchange_weak(now, now & ~kSleeperBit,
                                    std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      return true;
    }
  }
  return false;
}

// The count once no finisher is still waking sleepers in it (a JobCounter's
// kBumpingBit alone: that finisher takes the bit off next, and a waiter
// that armed for it would only make it wake the sleepers again).
int64_t SettledCount(const std::atomic<int64_t>& count) {
  int64_t now = count.load(std::memory_order_acquire);
  while ((now & kCountBits) == jobs_internal::kBumpingBit) {
    std::this_thread::yield();
    now = count.load(std::memory_order_acquire);
  }
  return now;
}

// Waits until the count bits of `count` are zero. Returns only after the
// count was seen at zero, and, if this waiter had set kSleeperBit, after
// the decrement that reached zero has made its last touch (for a frame
// the bump of `wake`; for a JobCounter the step that takes kBumpingBit off
// after the bump): the caller may then destroy both.
void WaitUntilZero(std::atomic<int64_t>& count, std::atomic<uint32_t>& wake) {
  if (SpinUntil([&count] {
        return (count.load(std::memory_order_acquire) & kCountBits) == 0;
      })) {
    return;
  }
  for (;;) {
    // Read before the bit is set: a bump after the set changes it.
    const uint32_t seen = wake.load(std::memory_order_acquire);
    const int64_t before =
        count.fetch_or(kSleeperBit, std::memory_order_acq_rel);
    if ((before & kCountBits) == 0 && Disarm(count, before)) return;
    while (wake.load(std::memory_order_acquire) == seen) {
      wake.wait(seen, std::memory_order_acquire);
    }
    // A bump for an earlier zero crossing (jobs were added since) wakes
    // this waiter too: sleep again unless the count is zero now.
    if ((SettledCount(count) & kCountBits) == 0) return;
  }
}

// Threads outside the runtimes that wait inside a node's arena
// (OutsideWaitPolicy::kHelp). Such a thread must stay in TBB's dispatch
// loop to run jobs, so instead of sleeping on a futex it waits on a TBB
// wait_context registered here, and every wake-up a sleeper would get (a
// count reaching zero with kSleeperBit set, a job turning final with
// kWaiterBit set) also releases every registered one. A released helper
// looks at what it waits for and registers again if that has not
// happened. Process-wide, because a counter does not know its runtime;
// there are few (one per node arena at most, and the jobs waiting inside
// JobRef::Wait on a job that waits for its predecessors), and the
// finishers look at the count only on the paths that wake a sleeper.
//
// A release from any thread reaches the helper: in oneTBB 2021.8 (this
// project's), wait_context::release notifies the process-wide market's
// wait list, as HelpUntilZero also relies on.
//
// Registration is seq_cst, and so are the finishers' wake (the bump, the
// state exchange) and their look at the count: a helper that registers
// and then reads what it waits for, and a finisher that changes it and
// then reads the count, cannot both miss the other.
// Runs the current arena's tasks (those of the caller's isolated region, if
// it is in one) until `done` is released; the context only scopes
// cancellation, which the runtime does not use. libtbb saw the release
// uninstrumented: an atomic add of zero on the same word afterwards lets
// TSan order it before `done`'s memory is reused.
void RunTasksUntilReleased(tbb::detail::d1::wait_context& done) {
  tbb::task_group_context context(tbb::task_group_context::isolated);
  tbb::detail::d1::wait(done, context);
  done.reserve(0);
}

// Releases each of a list of waiters taken off a registry (OutsideHelpers,
// AwakeHelpers): `next` is read first, since the release lets the waiter
// return and its entry (on its stack) go.
template <typename Entry>
void ReleaseEach(Entry* list) {
  while (list != nullptr) {
    Entry* next = list->next;
    list->done.release();
    list = next;
  }
}

class OutsideHelpers {
 public:
  struct Entry {
    tbb::detail::d1::wait_context done{1};
    Entry* next = nullptr;
    bool registered = false;  // Guarded by the registry's mutex.
  };

  static void Register(Entry* entry) {
    Registry& r = Get();
    alloc_internal::MutexLock lock(&r.mu);
    entry->next = r.head;
    entry->registered = true;
    r.head = entry;
    r.count.fetch_add(1, std::memory_order_seq_cst);
  }

  // Runs the arena's jobs until `entry` is released.
  static void RunJobsUntilReleased(Entry* entry) {
    RunTasksUntilReleased(entry->done);
  }

  // Takes `entry` out if a release has not: afterwards nobody touches it.
  static void Drop(Entry* entry) {
    Registry& r = Get();
    {
      alloc_internal::MutexLock lock(&r.mu);
      if (entry->registered) {
        for (Entry** p = &r.head; *p != nullptr; p = &(*p)->next) {
          if (*p == entry) {
            *p = entry->next;
            break;
          }
        }
        entry->registered = false;
        r.count.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
    }
    // A ReleaseAll took it and releases it just after its unlock.
    RunJobsUntilReleased(entry);
  }

  // Releases every registered helper (after a wake-up).
  static void ReleaseAll() {
    Registry& r = Get();
    if (r.count.load(std::memory_order_seq_cst) == 0) return;
    Entry* list;
    {
      alloc_internal::MutexLock lock(&r.mu);
      list = r.head;
      r.head = nullptr;
      for (Entry* e = list; e != nullptr; e = e->next) {
        e->registered = false;
        r.count.fetch_sub(1, std::memory_order_seq_cst);
      }
    }
    ReleaseEach(list);
  }

 private:
  struct Registry {
    alloc_internal::Mutex mu;
    Entry* head ABSL_GUARDED_BY(mu) = nullptr;
    std::atomic<int> count{0};
  };
  static Registry& Get() {
    static Registry* registry = new Registry();
    return *registry;
  }
};

// Workers that run a node's keep-awake task while a hold on the node lasts
// (Runtime::AwakeHold): each helps with the arena's spawned tasks in a
// nested wait, which steals from the other workers' deques but takes no
// enqueued task, until released: by the node's last hold as it goes, by a
// token enqueued to the node (Runtime::PostToken), and every 50 us (plus
// the timer's slack) by a ticker thread, so that the worker also takes
// the enqueued tasks at the top of its stack. The ticker is one for the
// process, started by the first Runtime::Init (on the thread that creates
// the runtime, whose CPU binding it inherits, not a pinned worker's), and
// asleep while no worker helps so.
class AwakeHelpers {
 public:
  // Starts the ticker once; false if the thread could not be created.
  static bool StartTicker() {
    Registry& r = Get();
    alloc_internal::MutexLock lock(&r.mu);
    if (r.ticking) return true;
    try {
      std::thread(&Tick).detach();
    } catch (const std::system_error&) {
      return false;
    }
    r.ticking = true;
    return true;
  }

  static bool any() { return Get().count.load(std::memory_order_seq_cst) != 0; }

  struct Entry {
    tbb::detail::d1::wait_context done{1};
    const void* node = nullptr;
    Entry* next = nullptr;
  };

  // Registers `entry` and runs the arena's spawned tasks until released.
  static void HelpUntilReleased(Entry* entry) {
    Registry& r = Get();
    {
      alloc_internal::MutexLock lock(&r.mu);
      entry->next = r.head;
      r.head = entry;
    }
    if (r.count.fetch_add(1, std::memory_order_seq_cst) == 0) {
      r.count.notify_one();
    }
    RunTasksUntilReleased(entry->done);
  }

  // Releases the helpers of `node` (every helper if null).
  static void Release(const void* node) {
    Registry& r = Get();
    if (r.count.load(std::memory_order_seq_cst) == 0) return;
    Entry* taken = nullptr;
    {
      alloc_internal::MutexLock lock(&r.mu);
      for (Entry** link = &r.head; *link != nullptr;) {
        Entry* e = *link;
        if (node != nullptr && e->node != node) {
          link = &e->next;
          continue;
        }
        *link = e->next;
        e->next = taken;
        taken = e;
        r.count.fetch_sub(1, std::memory_order_seq_cst);
      }
    }
    ReleaseEach(taken);
  }

 private:
  struct Registry {
    alloc_internal::Mutex mu;
    Entry* head ABSL_GUARDED_BY(mu) = nullptr;
    bool ticking ABSL_GUARDED_BY(mu) = false;
    std::atomic<int> count{0};
  };
  static Registry& Get() {
    static Registry* registry = new Registry();  // Never freed: the ticker.
    return *registry;
  }
  [[noreturn]] static void Tick() {
    Registry& r = Get();
    for (;;) {
      r.count.wait(0, std::memory_order_acquire);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      Release(nullptr);
    }
  }
};

// Called with the value a decrement left in `count`: if it reached zero
// while a waiter sleeps, clears the bit and wakes the waiter. The bump is
// the last touch of `count` and `wake` (notify_all only names the
// address), so the waiter may destroy them as soon as it sees it.
void WakeIfZero(int64_t left, std::atomic<int64_t>& count,
                std::atomic<uint32_t>& wake) {
  if ((left & kCountBits) != 0 || (left & kSleeperBit) == 0) return;
  count.fetch_and(~kSleeperBit, std::memory_order_acq_rel);
  wake.fetch_add(1, std::memory_order_seq_cst);
  wake.notify_all();
  OutsideHelpers::ReleaseAll();
}

// WaitUntilZero for a thread that helps inside a node's arena: the same
// protocol, with each sleep replaced by running the arena's jobs until a
// wake-up releases the helper. Returns only after the count was seen at
// zero, and after the bump of `wake` when this waiter had set the bit.
void HelpOutsideUntilZero(std::atomic<int64_t>& count,
                          std::atomic<uint32_t>& wake) {
  uint32_t seen = 0;
  bool armed = false;  // Our kSleeperBit is set for the crossing after `seen`.
  for (;;) {
    OutsideHelpers::Entry entry;
    OutsideHelpers::Register(&entry);
    if (!armed || wake.load(std::memory_order_seq_cst) != seen) {
      // First time round, or the count crossed zero since we armed.
      if (armed && (SettledCount(count) & kCountBits) == 0) {
        OutsideHelpers::Drop(&entry);
        return;
      }
      seen = wake.load(std::memory_order_seq_cst);
      const int64_t before =
          count.fetch_or(kSleeperBit, std::memory_order_acq_rel);
      if ((before & kCountBits) == 0 && Disarm(count, before)) {
        OutsideHelpers::Drop(&entry);
        return;
      }
      armed = true;
    }
    // Released by the bump after `seen`, or by another wait's wake-up.
    OutsideHelpers::RunJobsUntilReleased(&entry);
  }
}

// JobRef::Wait's loop for a thread that runs a node's tasks while it
// waits (an outside helper in the arena, or a job in its own isolated
// region): sets kWaiterBit as a sleeper would, so that Schedule and Finish
// release it, and runs the tasks until `done(state)`. Returns that state.
// Sets kWaiterBit on `record` unless, or until, `stop(state)` holds (or
// the bit is set already); returns the state it saw last. seq_cst: see
// OutsideHelpers.
template <typename Stop>
uint32_t SetWaiterBitUnless(JobRecord* record, const Stop& stop) {
  uint32_t s = record->state.load(std::memory_order_seq_cst);
  while (!stop(s) && (s & kWaiterBit) == 0 &&
         !record->state.compare_exchange_weak(s, s | kWaiterBit,
                                              std::memory_order_seq_cst)) {
  }
  return s;
}

// SetWaiterBitUnless for a job that still waits for its predecessors.
uint32_t SetWaiterBitWhileWaiting(JobRecord* record) {
  return SetWaiterBitUnless(record, [](uint32_t s) {
    return (s & kStateMask) != jobs_internal::kWaiting;
  });
}

template <typename Done>
uint32_t HelpUntilState(JobRecord* record, const Done& done) {
  for (;;) {
    OutsideHelpers::Entry entry;
    OutsideHelpers::Register(&entry);
    const uint32_t s = SetWaiterBitUnless(record, done);
    if (done(s)) {
      OutsideHelpers::Drop(&entry);
      return s;
    }
    OutsideHelpers::RunJobsUntilReleased(&entry);
  }
}

void HelpOutsideUntilFinal(JobRecord* record) {
  HelpUntilState(record, [](uint32_t s) { return jobs_internal::IsFinal(s); });
}

}  // namespace

// ---------------------------------------------------------------------------
// Nodes and their observers.

// Pins the workers that enter a node's arena (when the runtime pins) and
// tells each thread which slot it occupies.
class NodeObserver final : public tbb::task_scheduler_observer {
 public:
  NodeObserver(tbb::task_arena& arena, std::vector<WorkerSlot*> slots,
               const numa::Topology* topology, int node, bool pin)
      : tbb::task_scheduler_observer(arena),
        slots_(std::move(slots)),
        topology_(topology),
        node_(node),
        pin_(pin) {
    TsanRelease(this);  // Our fields, for the threads TBB calls us on.
  }

  void on_scheduler_entry(bool is_worker) override {
    TsanAcquire(this);
    inside_.fetch_add(1, std::memory_order_relaxed);
    if (tls_outer_depth < kMaxNestedArenas) {
      tls_outer_slots[tls_outer_depth++] = {this, tls_slot};
    }
    // Only workers run jobs: a thread that joins with execute() (Shutdown
    // draining no-op tokens) gets no slot.
    tls_slot = is_worker ? SlotFor(tbb::this_task_arena::current_thread_index())
                         : nullptr;
    if (pin_ && is_worker) {
      // The kernel's mask, not hwloc's: a topology that lacks some of the
      // machine's CPUs (HWLOC_SYNTHETIC with HWLOC_THISSYSTEM=1) would
      // drop them from hwloc's answer, and refuse them when given back
      // (the worker then stayed pinned for whatever TBB gave it next).
      auto previous = numa::GetThreadAffinity();
      absl::Status bound = numa::BindThreadToNode(*topology_, node_);
      if (previous.ok() && bound.ok()) {
        jobs_internal::tls_saved_binding = *std::move(previous);
      } else if (!bound.ok()) {
        // Not the caller's misuse, and the worker runs all the same
        // (unpinned): counted in NodeStats::pin_failures, not reported to
        // the error handler (whose default aborts). Create refuses the
        // cases it can see (a node without PUs under kNode); this is what
        // only the first binding shows (the process's CPU set narrowed
        // since, a container's seccomp profile).
        pin_failures_.fetch_add(1, std::memory_order_relaxed);
        alloc_internal::MutexLock lock(&pin_error_mu_);
        if (pin_error_.empty()) pin_error_ = bound.ToString();
      }
    }
    TsanRelease(this);  // For the destructor, after observe(false).
  }

  // The arena has one slot reserved for an outside thread (index 0: only
  // Shutdown's drain ever uses it) and one per worker (1..n): TBB admits
  // exactly n workers, and slot i holds worker i - 1. (With no reserved
  // slot, TBB builds a one-worker arena with two slots, and in a guest with
  // spare threads two workers ran in it at once: found by the 4-node run
  // of ACancelledQueuedJobNeverRuns.)
  WorkerSlot* SlotFor(int index) const {
    const int n = static_cast<int>(slots_.size());
    return index >= 1 && index <= n ? slots_[index - 1] : nullptr;
  }

  void on_scheduler_exit(bool is_worker) override {
    TsanAcquire(this);
    // The slot the thread held before it entered this arena (the innermost
    // entry of this observer; anything above it was left unbalanced).
    tls_slot = nullptr;
    for (int i = tls_outer_depth - 1; i >= 0; --i) {
      if (tls_outer_slots[i].observer == this) {
        tls_slot = tls_outer_slots[i].slot;
        tls_outer_depth = i;
        break;
      }
    }
    if (pin_ && is_worker && !jobs_internal::tls_saved_binding.empty()) {
      // Give the thread back as it came: TBB may hand it to another arena
      // (another runtime, the application's own TBB code) next.
      (void)numa::SetThreadAffinity(jobs_internal::tls_saved_binding);
      jobs_internal::tls_saved_binding.clear();
    }
    inside_.fetch_sub(1, std::memory_order_release);
    TsanRelease(this);
  }

 private:
  const std::vector<WorkerSlot*> slots_;
  const numa::Topology* const topology_;
  const int node_;
  const bool pin_;
  std::atomic<uint64_t> pin_failures_{0};
  mutable alloc_internal::Mutex pin_error_mu_;
  std::string pin_error_ ABSL_GUARDED_BY(pin_error_mu_);  // The first.

 public:
  // Threads inside the arena now (entries minus exits).
  std::atomic<int> inside_{0};

  uint64_t pin_failures() const {
    return pin_failures_.load(std::memory_order_relaxed);
  }
  std::string pin_error() const {
    alloc_internal::MutexLock lock(&pin_error_mu_);
    return pin_error_;
  }
};

struct Runtime::Node {
  int index = 0;
  int workers = 0;
  std::vector<int> pus;
  bool pinned = false;  // Its workers are bound to `pus`.
  SmartAlloc* alloc = nullptr;
  tbb::task_arena arena;
  // The tokens' group, with a context of its own. A default (bound)
  // context binds, when the group is first used, to the context of the
  // task that posts the first token: a Fork child's or a parallel_for
  // chunk's. An exception there cancels that context, and with it every
  // later token of the node, so no Submit-ed job of the node ran again and
  // waits and Shutdown hung (found in review:
  // RuntimeExceptionTest.AThrowingForkLeavesTheNodeRunningLaterJobs).
  tbb::task_group_context group_context{tbb::task_group_context::isolated};
  tbb::task_group group{group_context};
  // The context of Spawn's direct tasks (never cancelled: the runtime
  // cancels jobs itself).
  tbb::task_group_context direct_context{tbb::task_group_context::isolated};
  std::unique_ptr<NodeObserver> observer;
  // The workers' slots, then (OutsideWaitPolicy::kHelp) the outside one.
  std::vector<std::unique_ptr<WorkerSlot>> slots;
  WorkerSlot* outside_slot = nullptr;  // Null under kSleep.
  // An outside thread helps in this node's arena now (HelpOutside).
  std::atomic<bool> outside_taken{false};
  // kWhenIdle only: the node's queued jobs, which its tokens and other
  // nodes' thieves take from.
  tbb::concurrent_queue<JobRecord*> queue;
  alignas(64) std::atomic<int64_t> queued{0};
  std::atomic<int> thieves{0};
  // Jobs submitted to this node by threads outside the worker slots (the
  // slots count their own in WorkerSlot::submitted_to); on a line of its
  // own.
  alignas(64) std::atomic<uint64_t> submitted{0};
  // ...of which were then refused: an outside submission is counted before
  // it looks at accepting_ (see CountOutsideSubmission).
  std::atomic<uint64_t> withdrawn{0};
  // The jobs of this node that keep it awake now (AwakeHold), and whether
  // the keep-awake task is queued or running (one at a time).
  alignas(64) std::atomic<int> awake_holds{0};
  std::atomic<bool> awake_posted{false};
};

struct Runtime::FrameState {
  std::atomic<bool> open{false};
  // A BeginFrame or EndFrame is running: claimed with an exchange, so that
  // two of them on different threads (a frame loop's EndFrame and
  // Shutdown's, say) never both reset the arenas or open the frame. The
  // release of the claim orders begin_ticks for the next claimant.
  std::atomic<bool> busy{false};
  std::atomic<int64_t> pending{0};  // See WaitUntilZero.
  std::atomic<uint32_t> wake{0};
  std::atomic<uint64_t> jobs{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> ended{0};
  uint64_t begin_ticks = 0;  // Frame owner only.
  alloc_internal::Mutex mu;
  std::vector<FrameTiming> history ABSL_GUARDED_BY(mu);
  size_t history_next ABSL_GUARDED_BY(mu) = 0;
  std::string first_failure ABSL_GUARDED_BY(mu);
};

// ---------------------------------------------------------------------------
// Configuration and creation.

absl::string_view PinningPolicyName(PinningPolicy p) {
  switch (p) {
    case PinningPolicy::kAuto:
      return "auto";
    case PinningPolicy::kNode:
      return "node";
    case PinningPolicy::kNone:
      return "none";
  }
  return "?";
}

absl::string_view StealPolicyName(StealPolicy p) {
  switch (p) {
    case StealPolicy::kStrict:
      return "strict";
    case StealPolicy::kWhenIdle:
      return "when-idle";
  }
  return "?";
}

absl::string_view OutsideWaitPolicyName(OutsideWaitPolicy p) {
  switch (p) {
    case OutsideWaitPolicy::kSleep:
      return "sleep";
    case OutsideWaitPolicy::kHelp:
      return "help";
  }
  return "?";
}

namespace {

// InvalidArgument naming `field` when `value` is not one of the enum's
// `count` enumerators (0..count-1): the runtime compares against single
// enumerators, so another value would run as a default that its name
// functions do not print.
template <typename E>
absl::Status CheckEnum(const char* field, E value, int count,
                       const char* allowed) {
  const int v = static_cast<int>(value);
  if (v >= 0 && v < count) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("Config::", field, " must be ", allowed, ", got ", v));
}

}  // namespace

absl::Status Config::Validate() const {
  for (absl::Status s :
       {CheckEnum("pinning", pinning, 3, "kAuto, kNode or kNone"),
        CheckEnum("stealing", stealing, 2, "kStrict or kWhenIdle"),
        CheckEnum("shutdown", shutdown, 2, "kFinish or kCancel"),
        CheckEnum("outside_wait", outside_wait, 2, "kSleep or kHelp"),
        CheckEnum("memory_policy", memory_policy, 3,
                  "kNone, kAdvisory or kStrict")}) {
    if (!s.ok()) return s;
  }
  if (workers_per_node < 0 || workers_per_node > kMaxWorkersPerNode) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Config::workers_per_node must be in 0..", kMaxWorkersPerNode,
        " (0: one per PU), got ", workers_per_node));
  }
  for (size_t i = 0; i < node_workers.size(); ++i) {
    if (node_workers[i] < 1 || node_workers[i] > kMaxWorkersPerNode) {
      return absl::InvalidArgumentError(
          absl::StrCat("Config::node_workers[", i, "] must be in 1..",
                       kMaxWorkersPerNode, ", got ", node_workers[i]));
    }
  }
  if (trace_events_per_worker == 0 ||
      trace_events_per_worker > kMaxTraceEventsPerWorker) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Config::trace_events_per_worker must be in 1..",
        kMaxTraceEventsPerWorker, ", got ", trace_events_per_worker));
  }
  if (frame_history > kMaxFrameHistory) {
    return absl::InvalidArgumentError(
        absl::StrCat("Config::frame_history must be in 0..", kMaxFrameHistory,
                     ", got ", frame_history));
  }
  if (alloc.source != nullptr) {
    return absl::InvalidArgumentError(
        "Config::alloc.source must be null: each node's memory source takes "
        "its place");
  }
  return alloc.Validate();
}

Runtime::Runtime(Config config)
    : config_(std::move(config)), frame_(std::make_unique<FrameState>()) {}

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(Config config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  std::unique_ptr<Runtime> runtime(new Runtime(std::move(config)));
  if (absl::Status s = runtime->Init(); !s.ok()) return s;
  return runtime;
}

absl::Status Runtime::Init() {
  if (config_.topology == nullptr) {
    auto discovered = numa::Topology::Discover();
    if (!discovered.ok()) return discovered.status();
    owned_topology_ = *std::move(discovered);
    topology_ = owned_topology_.get();
  } else {
    topology_ = config_.topology;
  }
  const int nodes = topology_->num_nodes();
  if (!config_.node_workers.empty() &&
      static_cast<int>(config_.node_workers.size()) != nodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("Config::node_workers has ", config_.node_workers.size(),
                     " entries; the topology has ", nodes, " nodes"));
  }
  const bool can_pin =
      topology_->is_this_system() && topology_->support().thread_binding;
  switch (config_.pinning) {
    case PinningPolicy::kNode:
      if (!can_pin) {
        return absl::FailedPreconditionError(absl::StrCat(
            "PinningPolicy::kNode: cannot bind threads on topology '",
            topology_->origin(), "' (",
            topology_->is_this_system() ? "no thread binding support"
                                        : "not this machine",
            "); use kAuto or kNone"));
      }
      for (int k = 0; k < nodes; ++k) {
        if (topology_->node(k).pus.empty()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "PinningPolicy::kNode: node ", k,
              " has no PU to pin its workers to (memory only, or its PUs are "
              "outside this process's CPU set); use kAuto, which leaves that "
              "node's workers unpinned, or kNone"));
        }
      }
      pinned_ = true;
      break;
    case PinningPolicy::kAuto:
      pinned_ = can_pin;
      break;
    case PinningPolicy::kNone:
      pinned_ = false;
      break;
  }

  auto memory =
      numa::NumaAlloc::Create(topology_, numa::NumaAllocOptions()
                                             .set_policy(config_.memory_policy)
                                             .set_config(config_.alloc));
  if (!memory.ok()) return memory.status();
  memory_ = *std::move(memory);
  control_ = std::make_unique<SmartAlloc>(
      AllocConfig().set_source(config_.record_source));

  // Raise TBB's thread limit before any arena asks for its workers.
  int planned = 0;
  for (int k = 0; k < nodes; ++k) {
    const int w = config_.node_workers.empty() ? config_.workers_per_node
                                               : config_.node_workers[k];
    planned += w != 0 ? w
                      : std::max<int>(
                            1, static_cast<int>(topology_->node(k).pus.size()));
  }
  if (!AwakeHelpers::StartTicker()) {
    return absl::ResourceExhaustedError(
        "jobs::Runtime: could not start the keep-awake ticker thread");
  }
  Parallelism::Get().Add(planned);
  registered_parallelism_ = planned;

  for (int k = 0; k < nodes; ++k) {
    auto node = std::make_unique<Node>();
    node->index = k;
    for (int pu : topology_->node(k).pus) node->pus.push_back(pu);
    int workers = config_.node_workers.empty() ? config_.workers_per_node
                                               : config_.node_workers[k];
    if (workers == 0) {
      workers = std::max<int>(1, static_cast<int>(node->pus.size()));
    }
    node->workers = workers;
    // A node without PUs (memory only, or its PUs outside this process's
    // CPU set: hwloc keeps such a node with an empty cpuset) has nowhere to
    // pin its workers: under kAuto they float (kNode refused it above).
    node->pinned = pinned_ && !node->pus.empty();
    node->alloc = &memory_->node(k);
    auto add_slot = [&](int index) {
      auto slot = std::make_unique<WorkerSlot>();
      slot->runtime = this;
      slot->alloc = node->alloc;
      slot->node = k;
      slot->index = index;
      slot->submitted_to =
          std::make_unique<std::atomic<uint64_t>[]>(static_cast<size_t>(nodes));
      slot->frame_arena = node->alloc->new_scoped_arena();
      slot->scratch_arena = node->alloc->new_scoped_arena();
      // Rings are filled only when tracing is asked for (2 MiB per worker
      // at the default capacity).
      if (config_.trace) slot->trace.Init(config_.trace_events_per_worker);
      node->slots.push_back(std::move(slot));
      return node->slots.back().get();
    };
    std::vector<WorkerSlot*> raw_slots;
    for (int w = 0; w < workers; ++w) raw_slots.push_back(add_slot(w));
    if (config_.outside_wait == OutsideWaitPolicy::kHelp) {
      // Not the observer's: it goes with TBB's slot 0, which HelpOutside
      // hands to the thread it lets in.
      node->outside_slot = add_slot(workers);
      node->outside_slot->outside = true;
    }
    // `workers` worker slots plus one reserved for an outside thread: the
    // threads that submit never join (they enqueue); a thread that helps in
    // its wait (OutsideWaitPolicy::kHelp) and Shutdown's drain do.
    node->arena.initialize(workers + 1, /*reserved_for_masters=*/1);
    node->observer = std::make_unique<NodeObserver>(
        node->arena, std::move(raw_slots), topology_, k, node->pinned);
    node->observer->observe(true);
    total_workers_ += workers;
    nodes_.push_back(std::move(node));
  }
  steal_while_waiting_ =
      config_.stealing == StealPolicy::kWhenIdle && nodes_.size() > 1;
  {
    alloc_internal::MutexLock lock(&frame_->mu);
    // Grown as frames end beyond this: a long history costs only what it
    // holds.
    frame_->history.reserve(std::min<size_t>(config_.frame_history, 1024));
  }
  {
    alloc_internal::MutexLock lock(&trace_mu_);
    trace_rings_ready_ = config_.trace;
  }
  trace_on_.store(config_.trace, std::memory_order_release);
  start_tsc_ = Ticks();
  (void)jobs_internal::SecondsPerTick();
  TsanRelease(this);  // The layout above, for every token (TsanAcquire).
  return absl::OkStatus();
}

Runtime::~Runtime() {
  (void)Shutdown(config_.shutdown);
  // Threads that help in their waits (OutsideWaitPolicy::kHelp) leave once
  // what they wait for is done, which Shutdown has made so for this
  // runtime's jobs; they touch their node until they are uncounted.
  while (outside_helpers_.load(std::memory_order_acquire) > 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  // Pinned workers get their old binding back when they leave a node's
  // arena (on_scheduler_exit); an observer switched off first would never
  // see them leave, and TBB would hand pinned threads to other arenas.
  // Idle workers leave within milliseconds; wait up to two seconds.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (auto& node : nodes_) {
    while (node->observer &&
           node->observer->inside_.load(std::memory_order_acquire) > 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  for (auto& node : nodes_) {
    if (node->observer) {
      node->observer->observe(false);  // Waits for callbacks in flight.
      TsanAcquire(node->observer.get());
    }
    node->arena.terminate();
  }
  if (registered_parallelism_ > 0) {
    Parallelism::Get().Remove(registered_parallelism_);
  }
  // Handles (JobRef, JobHandle) may outlive the runtime: their jobs are
  // final now, but their records stay in control_ until the last reference
  // goes (large ones in its tracked heap, past the pools' largest class).
  // Then the pool is kept, reachable and never freed, and the misuse
  // reported (RuntimeShutdownTest.HandlesMayOutliveTheRuntime). Minimal
  // builds count no frees (statistics are compiled out), so they cannot
  // tell, and free the pool as before: there, drop handles first.
  // (No pool: Create failed before it was made.)
  if (kMinimalBuild || control_ == nullptr) return;
  const AllocStats stats = control_->stats();
  auto left = [](const KindStats& k) {
    return k.allocations > k.frees ? k.allocations - k.frees : 0;
  };
  const uint64_t live = left(stats.pool) + left(stats.heap);
  if (live > 0) {
    ReportErrorAndContinue(Report(
        ErrorKind::kMisuse, "jobs::Runtime",
        absl::StrCat("destroyed while ", live,
                     " job record(s) are still referenced (a JobHandle or "
                     "JobRef held past the runtime; a job of more than two "
                     "predecessors counts its extra edges too); they stay "
                     "valid, and their pool (",
                     stats.pool.live_bytes() + stats.heap.live_bytes(),
                     " bytes live) is kept until the process exits. Drop "
                     "handles before the runtime they came from.")));
    jobs_internal::KeepOrphanedPool(std::move(control_));
  }
}

int Runtime::num_nodes() const { return static_cast<int>(nodes_.size()); }
int Runtime::workers(int node) const { return nodes_[node]->workers; }

bool Runtime::pinned() const {
  return std::all_of(nodes_.begin(), nodes_.end(),
                     [](const auto& node) { return node->pinned; });
}

bool Runtime::node_pinned(int node) const { return nodes_[node]->pinned; }

int Runtime::slots(int node) const {
  return static_cast<int>(nodes_[node]->slots.size());
}

NodePartition Runtime::Partition(size_t n) const {
  std::vector<int> weights;
  for (const auto& node : nodes_) weights.push_back(node->workers);
  return NodePartition::Proportional(n, weights);
}

NodePartition NodePartition::Proportional(size_t n,
                                          const std::vector<int>& weights) {
  long total = 0;
  for (int w : weights) total += std::max(w, 0);
  std::vector<NodeRange> ranges;
  size_t begin = 0;
  long seen = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    seen += std::max(weights[k], 0);
    const size_t end =
        total == 0
            ? (k + 1 == weights.size() ? n : 0)
            : static_cast<size_t>(static_cast<__int128>(n) * seen / total);
    ranges.push_back({static_cast<int>(k), begin, std::max(begin, end)});
    begin = std::max(begin, end);
  }
  return NodePartition(std::move(ranges));
}

absl::Status NodePartition::Check(int num_nodes) const {
  size_t next = 0;
  for (const NodeRange& r : ranges_) {
    if (r.node < 0 || r.node >= num_nodes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NodePartition: range [", r.begin, ", ", r.end, ") is homed on node ",
          r.node, "; the runtime has ", num_nodes, " node(s)"));
    }
    if (r.begin != next || r.end < r.begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NodePartition: range [", r.begin, ", ", r.end, ") of node ", r.node,
          " does not start where the one before ends (", next,
          "): ranges must be contiguous, in order, from 0"));
    }
    next = r.end;
  }
  return absl::OkStatus();
}

int NodePartition::HomeOf(size_t i) const {
  for (const NodeRange& r : ranges_) {
    if (i >= r.begin && i < r.end) return r.node;
  }
  ReportFatalError(
      Report(ErrorKind::kInvalidArgument, "NodePartition::HomeOf",
             absl::StrCat("item ", i, " is outside the partition (", size(),
                          " items)")));
}

// ---------------------------------------------------------------------------
// Records.

void* Runtime::AllocateRecord(size_t size, size_t alignment) {
  return control_->pool_allocate(size, alignment);
}

void Runtime::AllocateEdges(JobRecord* record, int n) {
#if defined(__cpp_exceptions)
  try {
#endif
    for (int i = 0; i < n; ++i) {
      auto* edge = new (AllocateRecord(sizeof(ExtraEdge), alignof(ExtraEdge)))
          ExtraEdge();
      edge->sibling = record->extra_edges;
      record->extra_edges = edge;
    }
#if defined(__cpp_exceptions)
  } catch (...) {
    // The handler of the pool's fatal out-of-memory report threw. Nothing
    // is counted or linked yet, and nobody else knows the record: freeing
    // it and the edges taken so far leaves no trace of the submission.
    FreeExtraEdges(record);
    record->destroy(record);
    throw;
  }
#endif
}

void Runtime::FreeExtraEdges(JobRecord* record) {
  ExtraEdge* edge = record->extra_edges;
  record->extra_edges = nullptr;
  while (edge != nullptr) {
    ExtraEdge* next = edge->sibling;
    edge->~ExtraEdge();
    jobs_internal::FreeRecord(record->pool, edge, sizeof(ExtraEdge),
                              alignof(ExtraEdge));
    edge = next;
  }
}

void Runtime::Release(JobRecord* record) {
  // The last reference (a Spawn's record, a handle already dropped) needs
  // no locked decrement: references are only ever copied from one that is
  // held, so with a count of 1 no other can appear. Acquire: the other
  // holders' releases happened before.
  if (record->refs.load(std::memory_order_acquire) == 1 ||
      record->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    if (record->extra_edges != nullptr) [[unlikely]] {
      FreeExtraEdges(record);
    }
    record->destroy(record);
  }
}

// TBB gives worker w of a node the arena's slot w + 1; slot 0 is the
// reserved one (the outside helper's, or Shutdown's drain). Inside another
// task_arena's execute the thread holds a slot of that arena, most often
// the first free reserved one, 0. (A slot of the same number there passes:
// a best effort, one call into TBB, cheap enough for Spawn's path.)
bool Runtime::InSlotsArena(const WorkerSlot* slot) {
  return tbb::this_task_arena::current_thread_index() ==
         (slot->outside ? 0 : slot->index + 1);
}

bool JobContext::InOwnArena() const {
  return slot_ == nullptr || Runtime::InSlotsArena(slot_);
}

WorkerSlot* Runtime::CurrentSlot() const {
  WorkerSlot* slot = tls_slot;
  return slot != nullptr && slot->runtime == this ? slot : nullptr;
}

int Runtime::OutsideHelpNode() const {
  if (num_nodes() == 1 || !pinned_) return 0;
  auto binding = numa::GetThreadBinding(*topology_);
  if (!binding.ok() || binding->empty()) return -1;
  for (const auto& node : nodes_) {
    if (std::all_of(binding->begin(), binding->end(), [&node](int pu) {
          return std::find(node->pus.begin(), node->pus.end(), pu) !=
                 node->pus.end();
        })) {
      return node->index;
    }
  }
  return -1;
}

bool Runtime::HelpOutside(int node_index, absl::FunctionRef<void()> wait) {
  // (A thread that used TBB has an arena slot of its own, the implicit
  // arena's, outside any task: current_thread_index() cannot tell; a TBB
  // task of another arena may enter this one too, as execute() allows.)
  if (config_.outside_wait != OutsideWaitPolicy::kHelp || tls_slot != nullptr ||
      node_index < 0 || node_index >= num_nodes()) {
    return false;
  }
  // Counted before accepting_ is read, both seq_cst, against Shutdown's
  // store and the destructor's later wait for the count: either this sees
  // the runtime shut down, or the destructor waits until this has left
  // the arena and touched the node for the last time.
  outside_helpers_.fetch_add(1, std::memory_order_seq_cst);
  struct Uncount {
    std::atomic<int>& n;
    ~Uncount() { n.fetch_sub(1, std::memory_order_release); }
  } uncount{outside_helpers_};
  if (!accepting_.load(std::memory_order_seq_cst)) return false;
  // Jobs keep their affinity: on a runtime of several nodes, only a thread
  // bound within a pinned node runs the node's jobs (a node without PUs,
  // whose workers float, takes any helper).
  if (num_nodes() > 1 && nodes_[node_index]->pinned &&
      OutsideHelpNode() != node_index) {
    return false;
  }
  Node& node = *nodes_[node_index];
  if (node.outside_taken.exchange(true, std::memory_order_acquire)) {
    return false;  // Another thread helps there.
  }
  bool helped = false;
  const std::thread::id me = std::this_thread::get_id();
  node.arena.execute([&] {
    // With no free slot (Shutdown's drain holds the reserved one), TBB
    // hands the functor to a thread of the arena instead: do nothing there.
    if (std::this_thread::get_id() != me) return;
    WorkerSlot* slot = node.outside_slot;
    struct Leave {
      WorkerSlot* slot;
      ~Leave() {
        tls_slot = nullptr;
        SlotRelease(slot);
      }
    } leave{slot};
    SlotAcquire(slot);  // The previous helper's writes to the slot.
    tls_slot = slot;
    wait();
    helped = true;
  });
  node.outside_taken.store(false, std::memory_order_release);
  return helped;
}

SmartAlloc& JobContext::alloc() const { return *slot_->alloc; }

void JobContext::MarkScratch() const {
  new (scratch_mark_->storage) ArenaMark(arena_->Mark());
  scratch_mark_->taken = true;
}

bool JobContext::cancel_requested() const {
  if (runtime_->cancel_all_.load(std::memory_order_acquire)) return true;
  if (record_ != nullptr &&
      record_->cancel_requested.load(std::memory_order_acquire)) {
    return true;
  }
  if (counter_ != nullptr && counter_->cancelled()) return true;
  return cancel_parent_ != nullptr && cancel_parent_->cancel_requested();
}

absl::Status Runtime::Enqueue(JobRecord* record, const SubmitOptions& options) {
  record->runtime = this;
  record->name = options.name;
  // Edges past the record's inline ones come from the pool, whose fatal
  // report may throw (a throwing error handler): they are taken first,
  // before the job is counted anywhere (counter, frame, node, statistics)
  // or linked into a predecessor, so that a throw leaves nothing to undo.
  // (They belong to the record from here on: freed with it.)
  if (options.predecessors.size() >
      static_cast<size_t>(JobRecord::kInlineEdges)) [[unlikely]] {
    int pool_edges = -JobRecord::kInlineEdges;
    for (const JobRef& pred : options.predecessors) {
      if (pred.valid()) ++pool_edges;
    }
    if (pool_edges > 0) AllocateEdges(record, pool_edges);
  }
  ExtraEdge* spare_edges = record->extra_edges;
  WorkerSlot* here = CurrentSlot();
  if (here != nullptr) {
    record->id = here->TakeId(next_id_);
  } else {
    record->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  }
  int node;
  if (options.affinity.any()) {
    node = here != nullptr
               ? here->node
               : static_cast<int>(
                     next_any_.fetch_add(1, std::memory_order_relaxed) %
                     nodes_.size());
  } else {
    node = options.affinity.node();
  }

  absl::Status refused;
  // An outside submission is counted before it is checked (and withdrawn
  // if refused).
  const bool counted = here == nullptr && node >= 0 && node < num_nodes();
  if (node < 0 || node >= num_nodes()) {
    refused = absl::InvalidArgumentError(absl::StrCat(
        JobName(record), ": node ", node, " does not exist; the runtime has ",
        num_nodes(), " node(s), 0..", num_nodes() - 1));
  } else if (counted && !CountOutsideSubmission(node)) {
    refused = absl::FailedPreconditionError(absl::StrCat(
        JobName(record), " not accepted: the runtime is shut down"));
  } else if (!accepting_.load(std::memory_order_acquire) &&
             (here == nullptr || cancel_all_.load(std::memory_order_acquire))) {
    // While a kFinish shutdown drains, running jobs may still submit
    // their continuations; nobody else may.
    refused = absl::FailedPreconditionError(absl::StrCat(
        JobName(record), " not accepted: the runtime is shut down"));
  } else {
    for (const JobRef& pred : options.predecessors) {
      if (pred.valid() && pred.record_->runtime != this) {
        refused = absl::InvalidArgumentError(
            absl::StrCat(JobName(record), ": predecessor ",
                         JobName(pred.record_), " belongs to another runtime"));
        break;
      }
    }
  }
  if (!refused.ok()) {
    // Never runs: finished at once with the reason, nothing counted.
    if (counted) {
      nodes_[node]->withdrawn.fetch_add(1, std::memory_order_release);
    }
    record->node = 0;
    record->status = refused;
    record->successors.store(kClosedList, std::memory_order_relaxed);
    record->state.store(jobs_internal::kFailed, std::memory_order_release);
    refused_.fetch_add(1, std::memory_order_relaxed);
    Release(record);
    return refused;
  }

  record->node = node;
  if (here != nullptr) here->CountSubmitted(node);
  if (options.counter != nullptr) {
    record->counter = options.counter;
    options.counter->Add();
    options.counter->NoteSubmission(this, node);
  }
  record->in_frame = JoinFrame(here);

  int edges = 0;
  for (const JobRef& pred : options.predecessors) {
    if (!pred.valid()) continue;
    JobRecord* p = pred.record_;
    record->unmet.fetch_add(1, std::memory_order_relaxed);
    // The predecessor's name (see JobRecord::inline_from): set before the
    // edge is linked (its Finish clears it), cleared if it is not.
    Successor* edge;
    std::atomic<JobRecord*>* from;
    if (edges < JobRecord::kInlineEdges) {
      edge = &record->inline_edges[edges];
      from = &record->inline_from[edges];
    } else {
      // One per valid predecessor past the inline ones.
      from = &spare_edges->from;
      edge = spare_edges;
      spare_edges = spare_edges->sibling;
    }
    ++edges;
    edge->job = record;
    from->store(p, std::memory_order_relaxed);
    Successor* head = p->successors.load(std::memory_order_acquire);
    bool linked = false;
    while (head != kClosedList) {
      edge->next = head;
      if (p->successors.compare_exchange_weak(head, edge,
                                              std::memory_order_acq_rel,
                                              std::memory_order_acquire)) {
        linked = true;
        break;
      }
    }
    if (!linked) {
      // Already finished: its state is final and visible (acquire above).
      from->store(nullptr, std::memory_order_relaxed);
      if ((p->state.load(std::memory_order_acquire) & kStateMask) !=
          jobs_internal::kDone) {
        record->predecessor_failed.store(true, std::memory_order_relaxed);
      }
      record->unmet.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  if (edges > 0 && options.counter != nullptr) {
    if (!options.counter->declared_.load(std::memory_order_relaxed)) {
      options.counter->NoteDeclared();
    }
    // Nobody else can touch the state yet: its predecessors cannot make
    // it ready before the decrement below.
    record->state.store(jobs_internal::kWaiting | jobs_internal::kListedBit,
                        std::memory_order_relaxed);
    options.counter->NoteWaiting(record);
  }
  if (options.predecessors.empty()) {
    // Nothing else can reach the record before it is scheduled (its handle
    // is made after this returns): no locked operations needed. Release:
    // the claim's acquire in RunToken sees the whole record.
    record->unmet.store(0, std::memory_order_relaxed);
    if (steal_while_waiting_ && options.counter != nullptr) {
      // Listed as ready on its counter, as Schedule lists the jobs it makes
      // ready: a job that waits on the counter, on any node, runs it if no
      // worker has taken it (RunsInline). kListingBit, as there: a waiter
      // that takes it off the list meanwhile may claim it only afterwards.
      // Also a job's submission to its own node, whose token lies in the
      // submitter's isolated region: the job that waits may be another
      // (one that runs the submitter nested in its wait, say), or the
      // submitter asleep in StealUntilZero (a review found both hangs when
      // those were not listed).
      record->state.store(jobs_internal::kQueued | jobs_internal::kListingBit |
                              jobs_internal::kListedBit,
                          std::memory_order_relaxed);
      options.counter->NoteReady(record);
      record->state.fetch_and(~jobs_internal::kListingBit,
                              std::memory_order_seq_cst);
    } else {
      record->state.store(jobs_internal::kQueued, std::memory_order_release);
    }
    PostToken(node, record);
  } else if (record->unmet.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    Schedule(record);
  }
  return absl::OkStatus();
}

struct Runtime::RunInfo {
  JobRecord* record = nullptr;  // Null on the direct path.
  JobCounter* counter = nullptr;
  const char* name = nullptr;
  uint64_t id = 0;
  bool in_frame = false;
  bool stolen = false;
  bool inline_run = false;
};

ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool Runtime::JoinFrame(
    const WorkerSlot* here) {
  FrameState& frame = *frame_;
  if (here != nullptr && here->frame_job) {
    // Submitted by a job of the frame: part of that frame even if EndFrame
    // has begun (it may use the parent's frame memory), and EndFrame, which
    // waits for the parent meanwhile, cannot miss it.
    frame.pending.fetch_add(1, std::memory_order_relaxed);
    frame.jobs.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  // Paired with EndFrame (seq_cst both sides): either this sees the frame
  // closed, or EndFrame sees the job.
  if (!frame.open.load(std::memory_order_acquire)) return false;
  frame.pending.fetch_add(1, std::memory_order_seq_cst);
  if (frame.open.load(std::memory_order_seq_cst)) {
    frame.jobs.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  WakeIfZero(frame.pending.fetch_sub(1, std::memory_order_acq_rel) - 1,
             frame.pending, frame.wake);
  return false;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void Runtime::CountFinished(
    WorkerSlot* here, JobState state) {
  const int kind = state == jobs_internal::kDone     ? 0
                   : state == jobs_internal::kFailed ? 1
                                                     : 2;
  if (here != nullptr) {
    // Single writer: a plain store, release for Shutdown's acquire sums.
    here->finished[kind].store(
        here->finished[kind].load(std::memory_order_relaxed) + 1,
        std::memory_order_release);
  } else {
    finished_elsewhere_[kind].fetch_add(1, std::memory_order_release);
  }
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void Runtime::CountSettled(
    WorkerSlot* here) {
  if (here != nullptr) {
    here->settled.store(here->settled.load(std::memory_order_relaxed) + 1,
                        std::memory_order_release);
  } else {
    settled_elsewhere_.fetch_add(1, std::memory_order_release);
  }
}

void Runtime::LeaveFrame(bool failed, const absl::Status& status) {
  FrameState& frame = *frame_;
  if (failed) {
    if (frame.failed.fetch_add(1, std::memory_order_relaxed) == 0) {
      alloc_internal::MutexLock lock(&frame.mu);
      frame.first_failure = status.ToString();
    }
  }
  LeaveFrameOk();
}

void Runtime::LeaveFrameOk() {
  FrameState& frame = *frame_;
  WakeIfZero(frame.pending.fetch_sub(1, std::memory_order_acq_rel) - 1,
             frame.pending, frame.wake);
}

Runtime::DirectTarget Runtime::PrepareDirect(const SubmitOptions& options,
                                             DirectHeader* header) {
  DirectTarget target;
  if (!options.predecessors.empty() ||
      (config_.stealing == StealPolicy::kWhenIdle && nodes_.size() > 1)) {
    return target;
  }
  WorkerSlot* here = CurrentSlot();
  int node;
  if (here != nullptr) {
    // Running jobs may submit while a kFinish shutdown drains.
    if (!accepting_.load(std::memory_order_acquire) &&
        cancel_all_.load(std::memory_order_acquire)) {
      return target;
    }
    node = options.affinity.any() ? here->node : options.affinity.node();
    if (node != here->node) return target;
    // Inside another task_arena (a job called its execute): a local spawn
    // would land there. The record path enqueues it (PostToken).
    if (!InSlotsArena(here)) [[unlikely]] {
      return target;
    }
    header->id = here->TakeId(next_id_);
    here->CountSubmitted(node);
  } else {
    if (!accepting_.load(std::memory_order_acquire)) return target;
    node = options.affinity.any()
               ? static_cast<int>(
                     next_any_.fetch_add(1, std::memory_order_relaxed) %
                     nodes_.size())
               : options.affinity.node();
    if (node < 0 || node >= num_nodes()) return target;
    if (!CountOutsideSubmission(node)) {
      // Shutdown began: the record path refuses it with the reason.
      nodes_[node]->withdrawn.fetch_add(1, std::memory_order_release);
      return target;
    }
    header->id = next_id_.fetch_add(1, std::memory_order_relaxed);
    target.arena = &nodes_[node]->arena;
  }
  header->runtime = this;
  header->name = options.name;
  if (options.counter != nullptr) {
    header->counter = options.counter;
    options.counter->Add();
    options.counter->NoteSubmission(this, node);
  }
  header->in_frame = JoinFrame(here);
  target.context = &nodes_[node]->direct_context;
  return target;
}

void Runtime::RefuseDirect(const DirectHeader& header, WorkerSlot* slot) {
  absl::Status status;
  JobState state;
  if (slot == nullptr) {
    // TBB ran the task on a thread in none of our slots: cannot happen (it
    // was spawned into a worker's deque of this node's arena), but never
    // run a job without its context.
    state = jobs_internal::kFailed;
    status = absl::InternalError(
        absl::StrCat(JobName(header.id, header.name),
                     ": run by a thread outside the runtime's worker slots"));
  } else {
    state = jobs_internal::kCancelled;
    status = absl::CancelledError(absl::StrCat(JobName(header.id, header.name),
                                               " cancelled before it started"));
  }
  FailDirect(header, slot, state, status, nullptr);
}

void Runtime::AbandonDirect(const DirectHeader& header) {
  WorkerSlot* const slot = CurrentSlot();
  FailDirect(header, slot, jobs_internal::kFailed,
             absl::UnknownError(
                 absl::StrCat(JobName(header.id, header.name),
                              ": storing its function threw; it never ran")),
             std::current_exception());
}

void Runtime::FailDirect(const DirectHeader& header, WorkerSlot* slot,
                         JobState state, const absl::Status& status,
                         const std::exception_ptr& exception) {
  CountFinished(slot, state);
  if (header.counter != nullptr) header.counter->Finish(&status, exception);
  if (header.in_frame) LeaveFrame(true, status);
  CountSettled(slot);
}

void Runtime::RunDirect(const DirectHeader& header, void* fn,
                        void (*call)(void* fn, JobContext& ctx),
                        void (*destroy)(void* fn)) {
  WorkerSlot* slot = CurrentSlot();
  // The function, and what it captured, is destroyed before the job is
  // accounted for, as a record's (TypedJob::Invoke) and as TBB's own
  // tasks do: a Wait on its counter, EndFrame and Shutdown return only
  // after the captures' destructors (before, they could still run on a
  // worker after Shutdown returned:
  // RuntimeShutdownTest.ASpawnedFunctionIsDestroyedBeforeShutdownReturns).
  if (ABSL_PREDICT_FALSE(
          slot == nullptr || cancel_all_.load(std::memory_order_acquire) ||
          (header.counter != nullptr &&
           JobCounter::any_cancelled_.load(std::memory_order_acquire) &&
           header.counter->cancelled()))) {
    if (destroy != nullptr) destroy(fn);
    RefuseDirect(header, slot);
    return;
  }
  RunInfo info;
  info.counter = header.counter;
  info.name = header.name;
  info.id = header.id;
  info.in_frame = header.in_frame;
  // As Finish: the finished count first (a waiter's stats() include the
  // job), then the counter, then the frame (after which EndFrame may
  // reset the arenas; nothing here touches them).
  std::unique_ptr<JobFailure> failure = RunJob(slot, info, fn, call);
  if (destroy != nullptr) destroy(fn);
  if (ABSL_PREDICT_FALSE(failure != nullptr)) {
    FailDirect(header, slot, jobs_internal::kFailed, failure->status,
               failure->exception);
    return;
  }
  CountFinished(slot, jobs_internal::kDone);
  if (header.counter != nullptr) header.counter->FinishOk();
  if (header.in_frame) LeaveFrameOk();
  CountSettled(slot);
}

void Runtime::Schedule(JobRecord* record, bool by_finish) {
  // A failed predecessor cancels the job straight from kWaiting: once
  // kQueued, a Wait() on its handle could claim it and run it inline.
  // (The predecessors' stores are seen: each made it before the decrement
  // of `unmet` that this call's caller saw reach zero.)
  if (record->predecessor_failed.load(std::memory_order_acquire)) {
    if (Transition(record, jobs_internal::kWaiting,
                   jobs_internal::kCancelling)) {
      Finish(record, jobs_internal::kCancelled,
             absl::CancelledError(absl::StrCat(
                 JobName(record), " cancelled: a predecessor failed")),
             nullptr);
    }
    Release(record);  // Or cancelled while it waited: already finished.
    return;
  }
  JobCounter* const counter = record->counter;
  if (!Transition(record, jobs_internal::kWaiting,
                  counter == nullptr
                      ? jobs_internal::kQueued
                      : jobs_internal::kQueued | jobs_internal::kListingBit |
                            jobs_internal::kListedBit)) {
    Release(record);  // Cancelled while it waited; already finished.
    return;
  }
  // This thread may be outside the isolated region of a job that waits on
  // the counter, whose wait could then not take the token: the counter
  // lists the job, and such a wait runs it inline (JobCounter::NoteReady,
  // RuntimeWaitTest.ACounterOfALocalJobAfterARemoteOneFinishesInsideAJob).
  // kListingBit keeps the job from finishing, and the counter alive, until
  // it is cleared.
  uint32_t state;
  if (counter != nullptr) {
    counter->NoteReady(record);
    state = record->state.fetch_and(~jobs_internal::kListingBit,
                                    std::memory_order_seq_cst);
  } else {
    state = record->state.load(std::memory_order_seq_cst);
  }
  // A JobRef::Wait asleep on it, or helping in TBB while it waited for its
  // predecessors: a job of its node may run it inline now (see
  // JobRef::Wait). A waiter that sets the bit after the transition sees
  // kQueued by itself.
  if ((state & kWaiterBit) != 0) {
    record->state.notify_all();
    OutsideHelpers::ReleaseAll();
  }
  PostToken(record->node, record, by_finish);
}

struct Runtime::ThiefTask {
  Runtime* runtime;
  int thief;
  int victim;
  FRAMEALLOC_JOBS_NO_TSAN void operator()() const {
    Runtime* rt = runtime;
    const int t = thief;
    const int v = victim;
    TsanAcquire(rt);
    rt->RunThief(t, v);
  }
};

// The scheduling reference of `record` (if any) moves to the token; under
// kWhenIdle to the node's queue, and the token takes a reference of its own
// (see RunToken). A token with no record (kWhenIdle: RunQueuedToken) runs
// the first job in the queue that nobody has claimed.
void Runtime::PostToken(int node_index, JobRecord* record, bool by_finish) {
  Node& node = *nodes_[node_index];
  if (config_.stealing == StealPolicy::kWhenIdle && record != nullptr) {
    record->refs.fetch_add(1, std::memory_order_relaxed);  // The token's.
    record->queued_count.store(true, std::memory_order_seq_cst);
    node.queue.push(record);
    const int64_t queued =
        node.queued.fetch_add(1, std::memory_order_acq_rel) + 1;
    // A Wait() run inline or a Cancel may have taken the job since it
    // turned kQueued, before the flag was up: its Uncount saw nothing to
    // do. Then uncount it here (the exchange makes it once). seq_cst with
    // the claim and Uncount's load: one of the two sees the other.
    if ((record->state.load(std::memory_order_seq_cst) & kStateMask) !=
        jobs_internal::kQueued) {
      Uncount(record);
    }
    if (queued > node.workers) {
      for (auto& other : nodes_) {
        if (other->index == node_index ||
            other->queued.load(std::memory_order_acquire) != 0) {
          continue;
        }
        int thieves = other->thieves.load(std::memory_order_relaxed);
        if (thieves >= other->workers ||
            !other->thieves.compare_exchange_strong(thieves, thieves + 1)) {
          continue;
        }
        other->arena.enqueue(
            other->group.defer(ThiefTask{this, other->index, node_index}));
      }
    }
  }
  // Reads its captures uninstrumented (see FRAMEALLOC_JOBS_NO_TSAN). The
  // record's state word orders what was written before the job turned
  // kQueued; this thread's reads of the record since (kWhenIdle, above) are
  // released to the token: the record is freed, and its memory reused,
  // only after the token has dropped its reference. (Without, TSan saw such
  // a read race with a worker building a new job in the freed record: 3
  // runs in 40 of runtime_model_test under TSan.)
  if (record != nullptr) TsanRelease(record);
  struct Token {
    Runtime* runtime;
    int node;
    JobRecord* record;
    FRAMEALLOC_JOBS_NO_TSAN void operator()() const {
      Runtime* rt = runtime;
      const int n = node;
      JobRecord* r = record;
      TsanAcquire(rt);  // The runtime's layout, written by Init.
      if (r != nullptr) TsanAcquire(r);  // PostToken's use of the record.
      rt->RunToken(n, r);
    }
  } token{this, node_index, record};
  WorkerSlot* here = CurrentSlot();
  if (record != nullptr && here != nullptr && here->node == node_index &&
      !(by_finish && here->depth > 0) && InSlotsArena(here)) {
    node.group.run(token);  // Local deque: LIFO here, stolen FIFO.
  } else {
    // Enqueued tasks carry no isolated region: a token with no record,
    // posted from inside a job's wait, must not stay in that wait's region,
    // where it would run nothing (RunQueuedToken); nor a job that a job
    // run inside a wait made ready, which the wait would run nested,
    // though it is not the waiting job's (a successor that waits on the
    // waiting job then waited on its own stack for good).
    node.arena.enqueue(node.group.defer(token));
    // Workers helping in a nested wait while the node is held awake take
    // no enqueued task: send them back to the top of their stacks.
    if (AwakeHelpers::any()) AwakeHelpers::Release(&node);
  }
}

// A job that waits in TBB (JobCounter::HelpUntilZero) on jobs of other
// nodes must not fall asleep there: in oneTBB 2021.8, a worker asleep in a
// nested wait of one arena while the jobs it waits for sit in another
// arena's queue can leave that arena with no thread for good (on two
// nodes of one worker each, within a few hundred rounds: the plain oneTBB
// program of docs/jobs.md hangs the same way). A waiter sleeps there only
// when its arena looks empty; the keep-awake task, enqueued with no
// isolated region, is one the waiting job's region cannot take, so the
// arena does not look empty while it is queued: the waiter keeps looking
// for work (yielding) instead.
// A worker inside a job that blocks outside TBB (JobCounter::Wait on jobs
// all on other nodes, JobRef::Wait on another node's job) cannot starve
// anything by itself, but another worker of its node may be waiting for it
// in TBB: a Fork or ParallelFor whose child it runs, or a JobCounter of
// this node's jobs (which takes no hold itself). Asleep there, that worker
// starves the other node's arena just as above, and the jobs this one
// waits for never run (RuntimeParallelTest.AForkWhoseChildWaitsOn*: hung
// in every run of 20,000 iterations). So the blocking job holds its node
// awake too.
// A worker at the top of its stack takes the task (enqueued tasks come
// before stealing there; nested waits take none), or an outside thread
// helping in the arena (kHelp), whose first level there is a top level
// too (its own wait then ends at the next release, within the tick). While any
// hold lasts it enqueues the task again, so that the arena never looks empty
// for long, and then helps with the node's spawned tasks in a nested wait
// (AwakeHelpers) until the holds end or the ticker sends it back to the
// top of its stack for the enqueued ones. (The task once ran as a no-op,
// and the waiter could then sleep: RUNTIME_MODEL_SEEDS=22574150 hung
// about once in 200 runs so, a job of a node of two workers asleep in
// HelpUntilZero on a job declared on the other node, which never ran. A
// first version that re-enqueued the task and returned kept the node's
// idle workers from ever stealing, since they took the task again first:
// a job's own local submissions, waited for by another node's job, never
// ran while the job blocked; found in review.)
class Runtime::AwakeHold {
 public:
  AwakeHold() = default;
  AwakeHold(const AwakeHold&) = delete;
  AwakeHold& operator=(const AwakeHold&) = delete;
  ~AwakeHold() {
    if (node_ != nullptr &&
        node_->awake_holds.fetch_sub(1, std::memory_order_seq_cst) == 1) {
      AwakeHelpers::Release(node_);  // Back to the top of their stacks.
    }
  }
  // Holds `slot`'s node awake until destroyed; once.
  void Take(WorkerSlot* slot) {
    if (node_ != nullptr) return;
    Node* node = slot->runtime->nodes_[slot->node].get();
    node->awake_holds.fetch_add(1, std::memory_order_seq_cst);
    node_ = node;
    if (!node->awake_posted.exchange(true, std::memory_order_seq_cst)) {
      try {
        slot->runtime->PostKeepAwake(slot->node);
      } catch (...) {
        // Not posted (bad_alloc): the next hold tries again.
        node->awake_posted.store(false, std::memory_order_seq_cst);
        throw;
      }
    }
  }

 private:
  Node* node_ = nullptr;
};

void Runtime::PostKeepAwake(int node_index) {
  Node& node = *nodes_[node_index];
  struct KeepAwake {
    Node* node;
    // Posts the task again; false if that failed (bad_alloc: the holds go
    // on without it, as before they had one).
    static bool Repost(Node* n) {
      try {
        n->arena.enqueue(n->group.defer(KeepAwake{n}));
        return true;
      } catch (...) {
        n->awake_posted.store(false, std::memory_order_seq_cst);
        return false;
      }
    }
    // Nothing throws out of it (TBB would cancel the node's group): Repost
    // catches, and the nested wait's own context is never cancelled (the
    // stolen tasks' exceptions go to theirs).
    FRAMEALLOC_JOBS_NO_TSAN void operator()() const {
      Node* n = node;
      if (n->awake_holds.load(std::memory_order_seq_cst) > 0) {
        // In the queue again before this worker lets it go; meanwhile the
        // worker steals the node's spawned tasks (an enqueued task comes
        // before them at the top of its stack, and this one always would),
        // until the ticker or the last hold releases it.
        if (Repost(n)) {
          AwakeHelpers::Entry entry;
          entry.node = n;
          AwakeHelpers::HelpUntilReleased(&entry);
          // (A hold that went before the entry was listed released
          // nothing: the ticker does, within a tick.)
        }
      } else {
        // The last hold is gone: stop, unless a hold came after the look
        // and saw the task still posted (then one of the two posts it).
        n->awake_posted.store(false, std::memory_order_seq_cst);
        if (n->awake_holds.load(std::memory_order_seq_cst) > 0 &&
            !n->awake_posted.exchange(true, std::memory_order_seq_cst)) {
          (void)Repost(n);
        }
      }
      TsanRelease(n);  // For Shutdown's drain.
    }
  };
  node.arena.enqueue(node.group.defer(KeepAwake{&node}));
}

void Runtime::RunToken(int node_index, JobRecord* record) {
  WorkerSlot* slot = CurrentSlot();
  Node& node = *nodes_[node_index];
  if (config_.stealing == StealPolicy::kWhenIdle) {
    RunQueuedToken(node, slot, record);
    return;
  }
  if (record != nullptr) {
    // Strict affinity: a job's ready successor on this node runs next here,
    // at the top of the worker's stack only. Inside a wait (a job's child
    // whose token the wait took) the successor is not the waiting job's:
    // its token goes outside the wait's region (PostToken).
    JobRecord* next = nullptr;
    JobRecord** const bypass =
        slot != nullptr && slot->depth == 0 ? &next : nullptr;
    if (Claim(record)) Execute(record, slot, /*stolen=*/false, false, bypass);
    Release(record);
    while (next != nullptr) {
      JobRecord* r = next;
      next = nullptr;
      if (Claim(r)) Execute(r, slot, /*stolen=*/false, false, &next);
      Release(r);
    }
    TsanRelease(&node);  // For Shutdown's drain.
    return;
  }
  TsanRelease(&node);  // For Shutdown's drain.
}

// kWhenIdle: a node's jobs wait in its queue, where an idle node's thief
// can take them, and each has a token in the node's arena. A token at the
// top of its worker's stack runs the first job in the queue that nobody
// has claimed (oldest first, as the thieves take them). A token run inside
// a job's wait (its worker's depth > 0: TBB gives that wait only tasks of
// the job's isolated region, so this is the token of a job the waiting job
// submitted) runs its own job or, if that is claimed already, passes its
// turn on to a token outside the wait: never an unrelated job nested in
// the waiting one, which could take the place of the waited-for child and
// leave it queued with its token outside the region (a one-worker node
// would then wait for good). Its queue entry stays, claimed and no longer
// counted in `queued` (Uncount), and whoever pops it later drops it.
void Runtime::RunQueuedToken(Node& node, WorkerSlot* slot, JobRecord* own) {
  if (slot != nullptr && slot->depth > 0) {
    if (own != nullptr) {
      if (Claim(own)) {
        Execute(own, slot, /*stolen=*/false, false);
      } else {
        // Claimed elsewhere: perhaps by a token at the top of a worker
        // that took it from the queue as the oldest entry, leaving its own
        // job queued with this token as the one left to run it. Pass the
        // turn on to a token outside this wait (one too many if the job
        // was run inline, stolen or cancelled: it then finds nothing).
        PostToken(node.index, nullptr);
      }
      Release(own);
    }
    TsanRelease(&node);  // For Shutdown's drain.
    return;
  }
  if (own != nullptr) {
    // Its state turned kQueued (release) before the token was posted: the
    // acquire orders the record's set-up before this thread's release of
    // it, for TSan as for the model (libtbb carried the token unseen).
    (void)own->state.load(std::memory_order_acquire);
    Release(own);  // The queue holds it too.
  }
  JobRecord* queued = nullptr;
  while (node.queue.try_pop(queued)) {
    Uncount(queued);
    const bool mine = Claim(queued);
    if (mine) Execute(queued, slot, /*stolen=*/false, false);
    Release(queued);
    if (mine) break;
  }
  if (node.queued.load(std::memory_order_acquire) == 0) {
    MaybeSteal(node.index);
  }
  TsanRelease(&node);  // For Shutdown's drain.
}

void Runtime::Uncount(JobRecord* record) {
  if (record->queued_count.load(std::memory_order_seq_cst) &&
      record->queued_count.exchange(false, std::memory_order_seq_cst)) {
    nodes_[record->node]->queued.fetch_sub(1, std::memory_order_acq_rel);
  }
}

// A node with nothing queued looks for a node with more queued jobs than
// workers and sends itself a thief.
void Runtime::MaybeSteal(int idle_node) {
  Node& idle = *nodes_[idle_node];
  for (auto& victim : nodes_) {
    if (victim->index == idle_node ||
        victim->queued.load(std::memory_order_acquire) <= victim->workers) {
      continue;
    }
    int thieves = idle.thieves.load(std::memory_order_relaxed);
    if (thieves >= idle.workers ||
        !idle.thieves.compare_exchange_strong(thieves, thieves + 1)) {
      return;
    }
    idle.group.run(ThiefTask{this, idle_node, victim->index});
    return;
  }
}

void Runtime::RunThief(int thief_node, int victim_node) {
  Node& thief = *nodes_[thief_node];
  Node& victim = *nodes_[victim_node];
  WorkerSlot* slot = CurrentSlot();
  JobRecord* record = nullptr;
  // Only while this node has nothing of its own to do.
  while (thief.queued.load(std::memory_order_acquire) == 0 &&
         victim.queue.try_pop(record)) {
    Uncount(record);
    if (Claim(record)) Execute(record, slot, /*stolen=*/true, false);
    Release(record);
  }
  thief.thieves.fetch_sub(1, std::memory_order_acq_rel);
  TsanRelease(&thief);  // For Shutdown's drain.
}

// The set-up and tear-down that every job and fork child shares, around
// its body: the context (node, worker, arena), the slot's nesting depth and
// frame membership, the scratch arena (reset after the outermost job
// outside frames, rewound to a mark taken on first use after a nested
// one), busy-time sampling, the statistics and the trace slice. The
// destructor tears down, also when the body throws.
class Runtime::JobScope {
 public:
  ABSL_ATTRIBUTE_ALWAYS_INLINE JobScope(Runtime* runtime, WorkerSlot* slot,
                                        bool in_frame, uint64_t id,
                                        const char* name, uint8_t flags)
      : slot_(slot),
        scratch_(slot->scratch_arena.get()),
        name_(name),
        id_(id),
        flags_(flags),
        in_frame_(in_frame) {
    SlotAcquire(slot);
    ctx.runtime_ = runtime;
    ctx.slot_ = slot;
    ctx.job_id_ = id;
    ctx.node_ = slot->node;
    ctx.worker_ = slot->index;
    ctx.in_frame_ = in_frame;
    ctx.stolen_ = (flags & jobs_internal::kTraceStolen) != 0;
    // Every job runs in an isolated region (RunJob; children in their
    // parent's): a wait inside it runs only what it spawned.
    ctx.isolated_ = true;
    ctx.arena_ = in_frame ? slot->frame_arena.get() : scratch_;
    outer_scratch_ = !in_frame && slot->scratch_depth == 0;
    if (!in_frame) {
      if (!outer_scratch_) ctx.scratch_mark_ = &mark_;
      ++slot->scratch_depth;
    }
    outer_frame_job_ = slot->frame_job;
    slot->frame_job = in_frame;
    outer_job_ = slot->current;
    slot->current = &ctx;
    const bool top = slot->depth++ == 0;
    busy_weight_ = top ? slot->BeginBusySample() : 0;
    traced_ = runtime->trace_on_.load(std::memory_order_acquire);
    start_ = busy_weight_ != 0 || traced_ ? Ticks() : 0;
  }
  JobScope(const JobScope&) = delete;
  JobScope& operator=(const JobScope&) = delete;

  ABSL_ATTRIBUTE_ALWAYS_INLINE ~JobScope() {
    WorkerSlot* slot = slot_;
    if (!in_frame_) {
      --slot->scratch_depth;
      if (outer_scratch_) {
        scratch_->Reset();  // A handful of stores when nothing was allocated.
      } else if (mark_.taken) {
        (void)scratch_->Rewind(mark_.mark());
      }
    }
    --slot->depth;
    slot->frame_job = outer_frame_job_;
    slot->current = outer_job_;
    if (busy_weight_ != 0 || traced_) {
      const uint64_t end = Ticks();
      if (busy_weight_ != 0) slot->EndBusySample(busy_weight_, end - start_);
      if (traced_) slot->trace.Add({id_, name_, start_, end, flags_});
    }
    Bump(slot->jobs_run);
    if (flags_ & jobs_internal::kTraceStolen) Bump(slot->jobs_stolen);
    if (flags_ & jobs_internal::kTraceInline) Bump(slot->jobs_inline);
    SlotRelease(slot);
  }

  JobContext ctx;

 private:
  WorkerSlot* const slot_;
  FrameArena* const scratch_;
  const char* const name_;
  const uint64_t id_;
  const uint8_t flags_;
  const bool in_frame_;
  bool outer_scratch_ = false;
  JobContext* outer_job_ = nullptr;
  bool outer_frame_job_ = false;
  bool traced_ = false;
  uint32_t busy_weight_ = 0;
  uint64_t start_ = 0;
  jobs_internal::LazyMark mark_;  // Taken on the job's first arena().
};

// Out of line (and only reached from catch clauses), so the failure's
// Status and exception_ptr stay out of every job's hot path.
ABSL_ATTRIBUTE_NOINLINE std::unique_ptr<Runtime::JobFailure>
Runtime::CaughtFailure(uint64_t id, const char* name) {
  auto failure = std::make_unique<JobFailure>();
  failure->exception = std::current_exception();
  try {
    std::rethrow_exception(failure->exception);
  } catch (const NestedWorkCancelled& e) {
    // Runtime::ParallelFor's own ranges in a fork child or chunk that an
    // enclosing failure cancelled: not a failure of their own.
    failure->status =
        absl::CancelledError(absl::StrCat(JobName(id, name), ": ", e.what()));
  } catch (const std::exception& e) {
    failure->status = absl::UnknownError(
        absl::StrCat(JobName(id, name), " threw: ", e.what()));
  } catch (...) {
    failure->status = absl::UnknownError(
        absl::StrCat(JobName(id, name), " threw a non-std exception"));
  }
  return failure;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline std::unique_ptr<Runtime::JobFailure>
Runtime::RunJob(WorkerSlot* slot, const RunInfo& info, void* fn,
                void (*call)(void* fn, JobContext& ctx)) {
  JobScope scope(this, slot, info.in_frame, info.id, info.name,
                 static_cast<uint8_t>(
                     (info.stolen ? jobs_internal::kTraceStolen : 0) |
                     (info.inline_run ? jobs_internal::kTraceInline : 0)));
  JobContext& ctx = scope.ctx;
  ctx.record_ = info.record;
  ctx.counter_ = info.counter;
  try {
    // Every job runs in an isolated region of its own: what it spawns
    // carries the region's tag, and a wait inside it (a JobCounter, a
    // Fork) runs only those tasks, never an unrelated job.
    tbb::this_task_arena::isolate([call, fn, &ctx] { call(fn, ctx); });
  } catch (...) {
    return CaughtFailure(info.id, info.name);
  }
  return nullptr;
}

void Runtime::Execute(JobRecord* record, WorkerSlot* slot, bool stolen,
                      bool inline_run, JobRecord** bypass) {
  // Claimed, perhaps not through its queue entry (a token inside a wait,
  // a handle's Wait): out of the node's count of queued jobs now, or the
  // entry left behind would keep the node from stealing until popped.
  Uncount(record);
  if (slot == nullptr) {
    // A TBB thread that is in no slot of ours: cannot happen with
    // one reserved slot that only Shutdown uses, but never run a job without
    // its context.
    Finish(record, jobs_internal::kFailed,
           absl::InternalError(
               absl::StrCat(JobName(record),
                            ": run by a thread outside the runtime's "
                            "worker slots")),
           nullptr);
    return;
  }
  if (auto* hook =
          jobs_internal::claimed_test_hook.load(std::memory_order_acquire)) {
    hook();
  }
  // (JobRef::Cancel wins or loses by the claim itself: not checked here.)
  if (cancel_all_.load(std::memory_order_acquire) ||
      (record->counter != nullptr &&
       JobCounter::any_cancelled_.load(std::memory_order_acquire) &&
       record->counter->cancelled())) {
    // Back from kRunning to kCancelling, unless a JobRef::Cancel() found
    // the job claimed and told its caller that it runs (kRunPromisedBit):
    // then it runs, and sees the cancellation in cancel_requested().
    // (Finished as cancelled from kRunning, such a job made Cancel()
    // return false for a job that never ran:
    // RuntimeCancelTest.CancelReturnsFalseOnlyForAJobThatRuns.)
    uint32_t s = record->state.load(std::memory_order_acquire);
    while ((s & jobs_internal::kRunPromisedBit) == 0) {
      if (record->state.compare_exchange_weak(
              s, (s & ~kStateMask) | jobs_internal::kCancelling,
              std::memory_order_seq_cst, std::memory_order_acquire)) {
        Finish(record, jobs_internal::kCancelled,
               absl::CancelledError(absl::StrCat(
                   JobName(record), " cancelled before it started")),
               nullptr);
        return;
      }
    }
  }
  RunInfo info;
  info.record = record;
  info.counter = record->counter;
  info.name = record->name;
  info.id = record->id;
  info.in_frame = record->in_frame;
  info.stolen = stolen;
  info.inline_run = inline_run;
  std::unique_ptr<JobFailure> failure =
      RunJob(slot, info, record, [](void* r, JobContext& ctx) {
        auto* job = static_cast<JobRecord*>(r);
        job->invoke(job, ctx);
      });
  if (failure != nullptr) {
    Finish(record, jobs_internal::kFailed, std::move(failure->status),
           std::move(failure->exception), bypass);
  } else {
    Finish(record, jobs_internal::kDone, absl::OkStatus(), nullptr, bypass);
  }
}

void Runtime::RunChild(const JobContext& parent, void* fn,
                       void (*call)(void* fn, JobContext& ctx)) {
  WorkerSlot* slot = CurrentSlot();
  if (slot == nullptr) slot = parent.slot_;  // Defensive: same node.
  // Runs inside the parent's Fork/ParallelFor region. Part of its
  // parent's job: stolen if the parent was, but not counted as a stolen
  // job again.
  JobScope scope(this, slot, parent.in_frame_, 0, "child",
                 jobs_internal::kTraceChild);
  scope.ctx.record_ = parent.record_;
  scope.ctx.counter_ = parent.counter_;
  scope.ctx.stolen_ = parent.stolen_;
  scope.ctx.cancel_parent_ = parent.cancel_parent_;
  scope.ctx.in_child_ = true;
  call(fn, scope.ctx);  // Exceptions go to the Fork/ParallelFor that waits.
}

void Runtime::RunChild(const JobContext& parent,
                       absl::FunctionRef<void(JobContext&)> body) {
  RunChild(parent, &body, [](void* f, JobContext& ctx) {
    (*static_cast<absl::FunctionRef<void(JobContext&)>*>(f))(ctx);
  });
}

void Runtime::Finish(JobRecord* record, JobState state, absl::Status status,
                     std::exception_ptr exception, JobRecord** bypass) {
  Uncount(record);  // Cancelled while queued: as Execute.
  record->status = std::move(status);
  record->exception = std::move(exception);
  // Counted before the state turns final, so a waiter's stats() include
  // the job it waited for; settled at the end, for Shutdown.
  WorkerSlot* const here = CurrentSlot();
  CountFinished(here, state);
  // Release: the result, status and everything the job wrote become
  // visible to whoever sees the final state.
  // seq_cst: see OutsideHelpers.
  const uint32_t previous =
      record->state.exchange(state, std::memory_order_seq_cst);
  if (previous & kWaiterBit) {
    record->state.notify_all();
    OutsideHelpers::ReleaseAll();
  }
  // Before the counter counts it finished (its owner may destroy it then).
  if (previous & jobs_internal::kListedBit) record->counter->Unlist(record);
  const bool failed = state != jobs_internal::kDone;
  Successor* edge =
      record->successors.exchange(kClosedList, std::memory_order_acq_rel);
  const bool had_successors = edge != nullptr;
  while (edge != nullptr) {
    Successor* next = edge->next;
    JobRecord* successor = edge->job;
    // No longer its unfinished predecessor (FindStranded). seq_cst: with
    // the look at stranded_walkers_ below.
    if (successor->IsInlineEdge(edge)) {
      successor->inline_from[edge - &successor->inline_edges[0]].store(
          nullptr, std::memory_order_seq_cst);
    } else {
      static_cast<ExtraEdge*>(edge)->from.store(nullptr,
                                                std::memory_order_seq_cst);
    }
    if (failed) {
      successor->predecessor_failed.store(true, std::memory_order_relaxed);
    }
    if (successor->unmet.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Scheduler bypass: the first successor of this node made ready here
      // runs next on this worker, as TBB's continuations do.
      if (bypass != nullptr && *bypass == nullptr && !failed &&
          successor->node == record->node &&
          !successor->predecessor_failed.load(std::memory_order_acquire)) {
        if (Transition(successor, jobs_internal::kWaiting,
                       jobs_internal::kQueued)) {
          *bypass = successor;
        } else {
          Release(successor);  // Cancelled while it waited.
        }
      } else {
        Schedule(successor, /*by_finish=*/true);
      }
    }
    edge = next;
  }
  // A wait that walks predecessors (FindStranded) may have read this
  // record's name before it was cleared: it holds walk_mu_ while it uses
  // the record, which must outlive that (it may be freed once this
  // returns). A walker that comes later reads the cleared names.
  if (had_successors && stranded_walkers_.load(std::memory_order_seq_cst) != 0)
      [[unlikely]] {
    alloc_internal::MutexLock lock(&walk_mu_);
  }
  if (record->counter != nullptr) {
    record->counter->Finish(failed ? &record->status : nullptr,
                            record->exception);
  }
  if (record->in_frame) LeaveFrame(failed, record->status);
  CountSettled(here);
}

bool Runtime::RunsInline(const JobRecord* record,
                         const WorkerSlot* slot) const {
  return record->runtime == slot->runtime &&
         (record->node == slot->node || steal_while_waiting_);
}

bool Runtime::TryRunInline(JobRecord* record) {
  WorkerSlot* slot = CurrentSlot();
  if (slot == nullptr || !RunsInline(record, slot)) return false;
  if (!Claim(record)) return false;
  Execute(record, slot, /*stolen=*/record->node != slot->node,
          /*inline_run=*/true);
  return true;
}

void Runtime::FindStranded(absl::Span<JobRecord* const> targets,
                           const WorkerSlot* here,
                           std::vector<JobRecord*>* ready) {
  // seq_cst, with Finish's clearing of the names and its look at the count:
  // a Finish that does not see this walker cleared its names before the
  // walker reads them. Counted back after the unlock, also if the walk
  // throws (bad_alloc).
  stranded_walkers_.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic<int>& walkers;
    ~Leave() { walkers.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{stranded_walkers_};
  alloc_internal::MutexLock lock(&walk_mu_);
  absl::flat_hash_set<JobRecord*> seen(targets.begin(), targets.end());
  std::vector<JobRecord*> pending;
  // Queues the predecessors `job` still waits for; a name read here is a
  // live record until walk_mu_ is unlocked.
  auto expand = [&](JobRecord* job) {
    auto visit = [&](JobRecord* pred) {
      if (pred != nullptr && seen.insert(pred).second) pending.push_back(pred);
    };
    for (auto& from : job->inline_from) {
      visit(from.load(std::memory_order_seq_cst));
    }
    for (ExtraEdge* edge = job->extra_edges; edge != nullptr;
         edge = edge->sibling) {
      visit(edge->from.load(std::memory_order_seq_cst));
    }
  };
  // The targets themselves are the caller's to watch: only what they wait
  // for is looked at.
  for (JobRecord* target : targets) {
    if ((target->state.load(std::memory_order_seq_cst) & kStateMask) ==
        jobs_internal::kWaiting) {
      expand(target);
    }
  }
  while (!pending.empty()) {
    JobRecord* job = pending.back();
    pending.pop_back();
    uint32_t s;
    if (RunsInline(job, here)) {
      // Asleep on predecessors: Schedule releases this helper when it
      // turns ready (the bit, as a handle's waiter sets it).
      s = SetWaiterBitWhileWaiting(job);
      if ((s & kStateMask) == jobs_internal::kQueued) {
        ready->push_back(job);  // First: if it throws, no reference is owed.
        job->refs.fetch_add(1, std::memory_order_relaxed);  // Alive here.
        continue;
      }
    } else {
      s = job->state.load(std::memory_order_seq_cst);
    }
    // Only a job still waiting has predecessors left to run.
    if ((s & kStateMask) == jobs_internal::kWaiting) expand(job);
  }
}

void Runtime::HelpWhileWaiting(absl::Span<JobRecord* const> targets,
                               WorkerSlot* here,
                               const std::atomic<uint64_t>* generation,
                               uint64_t seen) {
  OutsideHelpers::Entry entry;
  OutsideHelpers::Register(&entry);
  std::vector<JobRecord*> ready;
  // Unregisters and lets go of the jobs found, also if the walk throws.
  struct Cleanup {
    OutsideHelpers::Entry* entry;
    std::vector<JobRecord*>& ready;
    ~Cleanup() {
      if (entry != nullptr) OutsideHelpers::Drop(entry);
      for (JobRecord* job : ready) Release(job);
    }
  } cleanup{&entry, ready};
  // Looked at after registering: a change after this releases the entry.
  if (generation != nullptr &&
      generation->load(std::memory_order_seq_cst) != seen) {
    return;
  }
  for (JobRecord* target : targets) {
    if ((SetWaiterBitWhileWaiting(target) & kStateMask) !=
        jobs_internal::kWaiting) {
      return;
    }
  }
  // Registered first: a predecessor that turns ready after the walk set
  // its bit releases the entry.
  FindStranded(targets, here, &ready);
  if (ready.empty()) {
    cleanup.entry = nullptr;
    OutsideHelpers::RunJobsUntilReleased(&entry);
    return;
  }
  cleanup.entry = nullptr;
  OutsideHelpers::Drop(&entry);
  for (JobRecord* job : ready) {
    (void)TryRunInline(job);  // Unless its token, or a waiter, took it.
  }
}

uint32_t Runtime::HelpUntilReady(JobRecord* target, WorkerSlot* here) {
  for (;;) {
    const uint32_t s = target->state.load(std::memory_order_acquire);
    if ((s & kStateMask) != jobs_internal::kWaiting) return s;
    HelpWhileWaiting({&target, 1}, here);
  }
}

// ---------------------------------------------------------------------------
// Handles and counters.

JobRef::JobRef(const JobRef& other) : record_(other.record_) {
  if (record_ != nullptr) record_->refs.fetch_add(1, std::memory_order_relaxed);
}

JobRef::~JobRef() {
  if (record_ != nullptr) Runtime::Release(record_);
}

bool JobRef::done() const {
  return record_ != nullptr &&
         jobs_internal::IsFinal(record_->state.load(std::memory_order_acquire));
}

uint64_t JobRef::id() const { return record_ ? record_->id : 0; }

bool Runtime::WaitsOnItself(const JobRecord* record,
                            const JobCounter* counter) {
  const WorkerSlot* here = tls_slot;
  if (here == nullptr || here->current == nullptr) return false;
  const JobContext& job = *here->current;
  return (record != nullptr && job.record_ == record) ||
         (counter != nullptr && job.counter_ == counter);
}

absl::Status Runtime::RefuseWaitOnItself(const char* where,
                                         const JobRecord* record,
                                         const JobCounter* counter) {
  if (!WaitsOnItself(record, counter)) return absl::OkStatus();
  absl::Status s = absl::FailedPreconditionError(absl::StrCat(
      where, " called from inside ",
      record != nullptr ? "the job it waits for (or a fork child of it)"
                        : "a job counted by that counter (or a fork child of "
                          "one)",
      ": it would wait for itself"));
  ReportError(Report(ErrorKind::kMisuse, where, std::string(s.message())));
  return s;
}

absl::Status JobRef::Wait() const {
  JobRecord* r = record_;
  if (r == nullptr) {
    return absl::InvalidArgumentError("Wait() on an empty job reference");
  }
  uint32_t s = r->state.load(std::memory_order_acquire);
  if (!jobs_internal::IsFinal(s)) {
    if (absl::Status refused =
            Runtime::RefuseWaitOnItself("jobs::JobRef::Wait", r, nullptr);
        !refused.ok()) {
      return refused;
    }
  }
  if (!jobs_internal::IsFinal(s) && r->runtime->TryRunInline(r)) {
    s = r->state.load(std::memory_order_acquire);
  }
  if (!jobs_internal::IsFinal(s) && r->runtime->HelpOutside(r->node, [r] {
        // A job of the node not yet started is this one: run it here.
        if (!r->runtime->TryRunInline(r)) HelpOutsideUntilFinal(r);
      })) {
    s = r->state.load(std::memory_order_acquire);
  }
  // A job of this node that waited for predecessors turns kQueued when
  // the last of them finishes, on whatever thread finished it: outside
  // this wait's isolated region, so the token posted for it is not one a
  // wait here could run. A job of its node waiting on it runs it inline
  // then (Schedule wakes it); on a node of one worker nothing else would
  // (RuntimeWaitTest.AWaitInsideAJobRunsItsJobOnceARemotePredecessorFinishes).
  bool inline_here = false;
  Runtime::AwakeHold awake;  // Until the wait ends.
  if (!jobs_internal::IsFinal(s)) {
    WorkerSlot* here = tls_slot;
    if (here != nullptr &&
        tbb::this_task_arena::current_thread_index() !=
            tbb::task_arena::not_initialized &&
        Runtime::InSlotsArena(here)) {
      // Inside a job, on a job still waiting for its predecessors: one may
      // lie in this job's isolated region (submitted by it to its own
      // node), where only this worker may run it. So help in TBB until the
      // job is ready, with the node held awake (the predecessors may be
      // on other nodes: AwakeHold). kWaiterBit makes Schedule and
      // Finish release the helper (before, on a node of one worker, such a
      // wait slept and hung at once:
      // RuntimeWaitTest.AHandleOfALocalJobAfterALocalOneFinishesInsideAJob).
      if ((s & kStateMask) == jobs_internal::kWaiting) {
        awake.Take(here);
        if (here->runtime == r->runtime) {
          // Also runs the ready jobs of this node among its predecessors
          // whose tokens lie outside this job's region (before, a job of
          // this node in the middle of a chain, made ready by another
          // node's worker and not the one waited on, was never run on a
          // node of one worker: the wait hung;
          // RuntimeWaitTest.AHandleOfAChainThatComesBackFromAnotherNodeFinishes).
          s = r->runtime->HelpUntilReady(r, here);
        } else {
          s = HelpUntilState(r, [](uint32_t state) {
            return (state & kStateMask) != jobs_internal::kWaiting;
          });
        }
      }
      // Under kWhenIdle over several nodes, also a job of another node
      // (RunsInline): it may have no worker left to run it.
      inline_here = here->runtime->RunsInline(r, here);
      // A job about to block outside TBB on another node's (or another
      // runtime's) job: as JobCounter::Wait's remote path.
      if (here->runtime != r->runtime || here->node != r->node) {
        awake.Take(here);
      }
    }
    SpinUntil([r, &s, inline_here] {
      s = r->state.load(std::memory_order_acquire);
      return jobs_internal::IsFinal(s) ||
             (inline_here && (s & kStateMask) == jobs_internal::kQueued);
    });
  }
  while (!jobs_internal::IsFinal(s)) {
    if (inline_here && (s & kStateMask) == jobs_internal::kQueued &&
        r->runtime->TryRunInline(r)) {
      s = r->state.load(std::memory_order_acquire);
      continue;
    }
    if ((s & kWaiterBit) == 0) {
      if (!r->state.compare_exchange_weak(s, s | kWaiterBit,
                                          std::memory_order_acq_rel,
                                          std::memory_order_acquire)) {
        continue;
      }
      s |= kWaiterBit;
    }
    r->state.wait(s, std::memory_order_acquire);
    s = r->state.load(std::memory_order_acquire);
  }
  return Detached(r->status);
}

absl::Status JobRef::status() const {
  if (record_ == nullptr) {
    return absl::InvalidArgumentError("status() of an empty job reference");
  }
  if (!done()) {
    return absl::UnavailableError(
        absl::StrCat(JobName(record_), " has not finished"));
  }
  return Detached(record_->status);
}

std::exception_ptr JobRef::exception() const {
  return done() ? record_->exception : nullptr;
}

bool JobRef::Cancel() {
  JobRecord* r = record_;
  if (r == nullptr) return false;
  r->cancel_requested.store(true, std::memory_order_release);
  absl::Status why =
      absl::CancelledError(absl::StrCat(JobName(r), " cancelled"));
  if (Transition(r, jobs_internal::kWaiting, jobs_internal::kCancelling) ||
      Transition(r, jobs_internal::kQueued, jobs_internal::kCancelling)) {
    r->runtime->Finish(r, jobs_internal::kCancelled, std::move(why), nullptr);
    return true;
  }
  // Lost the claim: true if another cancellation won it. A job claimed to
  // run may still be cancelled by its claimer (its counter or the runtime
  // was cancelled: Execute): the mark holds it to running, so that false
  // means "it runs or ran".
  uint32_t s = r->state.load(std::memory_order_acquire);
  while ((s & kStateMask) == jobs_internal::kRunning &&
         (s & jobs_internal::kRunPromisedBit) == 0 &&
         !r->state.compare_exchange_weak(s, s | jobs_internal::kRunPromisedBit,
                                         std::memory_order_seq_cst,
                                         std::memory_order_acquire)) {
  }
  const uint32_t state = s & kStateMask;
  return state == jobs_internal::kCancelling ||
         state == jobs_internal::kCancelled;
}

JobCounter::~JobCounter() {
  // Destroyed by a job it counts (or a fork child of one): a wait would
  // never end, and returning would free the counter that the job's end
  // still updates (a use after free). Nothing safe remains.
  if (Runtime::WaitsOnItself(nullptr, this)) {
    ReportFatalError(Report(
        ErrorKind::kMisuse, "jobs::JobCounter::~JobCounter",
        "destroyed by a job it counts (or a fork child of one): its "
        "destructor would wait for that job, which cannot finish first"));
  }
  (void)Wait();
}

absl::Status JobCounter::Wait() {
  if (tls_slot != nullptr) {
    if (absl::Status refused = Runtime::RefuseWaitOnItself(
            "jobs::JobCounter::Wait", nullptr, this);
        !refused.ok()) {
      return refused;
    }
  }
  // Inside another task_arena (a job called its execute), helping there
  // could run nothing of ours: wait as a thread outside the runtime.
  if (tls_slot != nullptr &&
      tbb::this_task_arena::current_thread_index() !=
          tbb::task_arena::not_initialized &&
      Runtime::InSlotsArena(tls_slot)) {
    // Inside a job: help run its children instead of blocking the worker,
    // then wait for what other threads counted here. A worker asleep in
    // TBB's wait (oneTBB 2021.8) for jobs queued on another node's arena
    // can starve that arena of threads for good: on two nodes of one
    // worker each, jobs enqueued to node 1 while node 0's worker waited
    // there never ran, nor did any submitted to node 1 later
    // (RuntimeParallelTest.AJobWaitingOnAnIdleNodesJobsFinishes and
    // ...OnLocalAndRemoteJobsFinishes; //jobs:tbb_starvation_repro). So
    // when every job counted here went to other nodes of this job's
    // runtime, there are no children of this node to help with, and the
    // job sleeps on the count as an outside thread does. Otherwise it
    // helps, with a task kept in its arena while jobs of other nodes are
    // counted here, which keeps it from falling asleep in TBB
    // (HelpUntilZero, AwakeHold). So it does, held awake, once a job with
    // predecessors was counted here (NoteDeclared): a predecessor may lie
    // in this job's isolated region, where only this worker may run it,
    // even when the counted job is on another node.
    // Under kWhenIdle over several nodes the counted jobs are listed
    // (Runtime::Enqueue), and it runs those that no worker has taken,
    // whatever their node: their nodes' workers may all be waiting,
    // perhaps on this one's node (Runtime::RunsInline; StealUntilZero).
    Runtime* const here = tls_slot->runtime;
    Runtime::AwakeHold awake;  // Until WaitUntilZero returns.
    if (here != home_runtime_.load(std::memory_order_relaxed) ||
        (nodes_.load(std::memory_order_relaxed) & NodeBit(tls_slot->node)) !=
            0 ||
        declared_.load(std::memory_order_acquire)) {
      HelpUntilZero(tls_slot);
    } else if (here->steal_while_waiting_) {
      StealUntilZero(tls_slot);
    } else if ((pending_.load(std::memory_order_acquire) & kCountMask) != 0) {
      // This worker is about to block outside TBB on another node's jobs:
      // another worker of its node may be waiting for it in TBB (a Fork,
      // a counter of local jobs), and must not fall asleep there either
      // (Runtime::AwakeHold).
      awake.Take(tls_slot);
    }
    WaitUntilZero(pending_, wake_);
  } else {
    Runtime* runtime = home_runtime_.load(std::memory_order_relaxed);
    const bool helped =
        runtime != nullptr &&
        (pending_.load(std::memory_order_acquire) & kCountMask) != 0 &&
        runtime->HelpOutside(home_node_.load(std::memory_order_relaxed),
                             [this] { HelpOutsideUntilZero(pending_, wake_); });
    if (!helped) WaitUntilZero(pending_, wake_);
    // Seen at zero: the runtime named may be gone before the next batch.
    home_runtime_.store(nullptr, std::memory_order_relaxed);
  }
  alloc_internal::MutexLock lock(&mu_);
  return Detached(first_error_);
}

std::atomic<bool> JobCounter::any_cancelled_{false};

void JobCounter::Cancel() {
  any_cancelled_.store(true, std::memory_order_release);
  cancelled_.store(true, std::memory_order_release);
}

std::exception_ptr JobCounter::exception() const {
  alloc_internal::MutexLock lock(&mu_);
  return first_exception_;
}

void JobCounter::Reset() {
  alloc_internal::MutexLock lock(&mu_);
  first_error_ = absl::OkStatus();
  first_exception_ = nullptr;
  failed_.store(false, std::memory_order_relaxed);
  cancelled_.store(false, std::memory_order_release);
}

void JobCounter::Finish(const absl::Status* status,
                        const std::exception_ptr& exception) {
  if (status != nullptr) {
    alloc_internal::MutexLock lock(&mu_);
    if (first_error_.ok()) {
      first_error_ = Detached(*status);
      first_exception_ = exception;
    }
    failed_.store(true, std::memory_order_relaxed);
  }
  FinishOk();
}

void JobCounter::FinishLast() {
  constexpr int64_t kWaiterBits = kHelperBit | kSleeperBit;
  // What this finisher takes off the count: its job, then (after waking
  // sleepers) kBumpingBit.
  int64_t unit = 1;
  for (;;) {
    int64_t v = pending_.load(std::memory_order_acquire);
    if ((v & kCountMask) != unit || (v & kWaiterBits) == 0) {
      // Counted again, or no waiter (left): as FinishOk.
      if (pending_.compare_exchange_weak(v, v - unit, std::memory_order_acq_rel,
                                         std::memory_order_relaxed)) {
        return;
      }
      continue;
    }
    // To zero with waiters: their bits go in the same step, and with
    // sleepers kBumpingBit comes on until they are woken. (With helpers
    // only, the count is zero after this step, and a waiter that does not
    // help may return before ReleaseTaken: the helpers taken are in Wait()
    // still, so that Wait is not the counter's last.)
    const auto next = [unit](int64_t from) {
      return ((from - unit) & ~kWaiterBits) |
             ((from & kSleeperBit) != 0 ? jobs_internal::kBumpingBit : 0);
    };
    Helper* helpers = nullptr;
    if ((v & kHelperBit) == 0) {
      // Sleepers only: a sleeper returns only once the count is zero,
      // after the bump of wake_ below (WaitUntilZero).
      if (!pending_.compare_exchange_strong(v, next(v),
                                            std::memory_order_acq_rel,
                                            std::memory_order_relaxed)) {
        continue;
      }
    } else {
      alloc_internal::MutexLock lock(&helpers_mu_);
      // Under the lock the bit is set exactly while helpers are listed,
      // and a listed helper returns only once released: by this thread,
      // after its last touch of the counter (ReleaseTaken).
      v = pending_.load(std::memory_order_acquire);
      if ((v & kCountMask) != unit || (v & kHelperBit) == 0 ||
          !pending_.compare_exchange_strong(v, next(v),
                                            std::memory_order_acq_rel,
                                            std::memory_order_relaxed)) {
        continue;  // Looks again, with the lock let go.
      }
      helpers = helpers_;
      helpers_ = nullptr;
    }
    if (auto* hook = jobs_internal::counter_zero_test_hook.load(
            std::memory_order_acquire)) {
      hook();
    }
    if ((v & kSleeperBit) == 0) {
      ReleaseTaken(helpers);
      return;
    }
    wake_.fetch_add(1, std::memory_order_seq_cst);
    wake_.notify_all();
    OutsideHelpers::ReleaseAll();
    // The helpers taken may go on now: they see kBumpingBit and wait (and
    // register again), as the sleepers do. Then the bit comes off, the
    // same way as the job did.
    ReleaseTaken(helpers);
    unit = jobs_internal::kBumpingBit;
  }
}

void JobCounter::NoteNewNode(uint64_t bit) {
  // A job helping in HelpUntilZero may have decided it needs no hold
  // before this job was counted. seq_cst with the helper's registration
  // and its look at nodes_: either it sees this bit or this sees its
  // kHelperBit, and releases it to look again.
  nodes_.fetch_or(bit, std::memory_order_seq_cst);
  if ((pending_.load(std::memory_order_seq_cst) & kHelperBit) != 0) {
    ReleaseHelpers();
  }
}

void JobCounter::ReleaseHelpers() {
  // Jobs wait in HelpUntilZero and cannot return before their
  // wait_contexts are released: the counter is alive until the first
  // release. Take them all (a helper that registers later sees the count
  // at zero, or a count that rose again, by itself), then release them
  // without touching the counter again. A released helper whose count is
  // not zero registers again.
  Helper* helpers;
  {
    alloc_internal::MutexLock lock(&helpers_mu_);
    helpers = TakeHelpersLocked();
  }
  ReleaseTaken(helpers);
}

JobCounter::Helper* JobCounter::TakeHelpersLocked() {
  Helper* helpers = helpers_;
  helpers_ = nullptr;
  if (helpers != nullptr) {
    pending_.fetch_and(~kHelperBit, std::memory_order_acq_rel);
  }
  return helpers;
}

JobCounter::Helper* JobCounter::TakeHelpersOfLocked(const Runtime* runtime,
                                                    int node) {
  Helper* taken = nullptr;
  for (Helper** link = &helpers_; *link != nullptr;) {
    Helper* h = *link;
    if (h->runtime != runtime || (node >= 0 && h->node != node)) {
      link = &h->next;
      continue;
    }
    *link = h->next;
    h->next = taken;
    taken = h;
  }
  if (taken != nullptr && helpers_ == nullptr) {
    pending_.fetch_and(~kHelperBit, std::memory_order_acq_rel);
  }
  return taken;
}

void JobCounter::ReleaseTaken(Helper* helpers) {
  while (helpers != nullptr) {
    Helper* next = helpers->next;  // Read before the release: its stack.
    if (helpers->done != nullptr) {
      helpers->done->release();
    } else {
      // The sleeper may return, and its word go, once it sees the store:
      // the notify only names the address (as WakeIfZero's).
      std::atomic<uint32_t>* woken = helpers->woken;
      woken->store(1, std::memory_order_release);
      woken->notify_one();
    }
    helpers = next;
  }
}

void JobCounter::NoteDeclared() {
  // As NoteNewNode: a helper that decided before this that it needs no
  // hold is released to look again.
  declared_.store(true, std::memory_order_seq_cst);
  if ((pending_.load(std::memory_order_seq_cst) & kHelperBit) != 0) {
    ReleaseHelpers();
  }
}

namespace {

// Puts `record` at the head of one of a counter's lists.
void LinkListed(JobRecord*& head, JobRecord* record, uint8_t list) {
  record->prev_ready = nullptr;
  record->next_ready = head;
  if (head != nullptr) head->prev_ready = record;
  head = record;
  record->on_list = list;
}

// Takes `record` off the counter's list `head`.
void UnlinkReady(JobRecord*& head, JobRecord* record) {
  if (record->prev_ready != nullptr) {
    record->prev_ready->next_ready = record->next_ready;
  } else {
    head = record->next_ready;
  }
  if (record->next_ready != nullptr) {
    record->next_ready->prev_ready = record->prev_ready;
  }
  record->next_ready = nullptr;
  record->prev_ready = nullptr;
  record->on_list = jobs_internal::kNotListed;
}

}  // namespace

void JobCounter::NoteWaiting(JobRecord* record) {
  Helper* helpers;
  {
    alloc_internal::MutexLock lock(&helpers_mu_);
    LinkListed(waiting_, record, jobs_internal::kOnWaitingList);
    waiting_generation_.fetch_add(1, std::memory_order_seq_cst);
    helpers = TakeHelpersLocked();
  }
  // The job cannot be ready, let alone finish, before its Enqueue returns:
  // the counter outlives this. Jobs that wait in HelpWhileWaiting for
  // other jobs of this counter are released too, to look at this one's
  // predecessors: each counts itself in walking_ before it takes its
  // snapshot of the list, and looks at the generation again after it
  // registers (seq_cst on both sides: either it sees the new generation,
  // or this sees it counted, and ReleaseAll finds it registered or it sees
  // the generation).
  ReleaseTaken(helpers);
  if (walking_.load(std::memory_order_seq_cst) != 0) {
    OutsideHelpers::ReleaseAll();
  }
}

void JobCounter::NoteReady(JobRecord* record) {
  Helper* helpers;
  {
    alloc_internal::MutexLock lock(&helpers_mu_);
    if (record->on_list == jobs_internal::kOnWaitingList) {
      UnlinkReady(waiting_, record);
    }
    LinkListed(ready_, record, jobs_internal::kOnReadyList);
    helpers = TakeHelpersOfLocked(
        record->runtime,
        record->runtime->steal_while_waiting_ ? -1 : record->node);
  }
  // The job cannot finish before Schedule clears kListingBit, so the
  // counter (and the helpers, still waiting for it) outlive this.
  ReleaseTaken(helpers);
}

void JobCounter::Unlist(JobRecord* record) {
  alloc_internal::MutexLock lock(&helpers_mu_);
  if (record->on_list == jobs_internal::kOnReadyList) {
    UnlinkReady(ready_, record);
  } else if (record->on_list == jobs_internal::kOnWaitingList) {
    UnlinkReady(waiting_, record);
  }
}

void JobCounter::TakeWaitingLocked(const Runtime* runtime,
                                   std::vector<JobRecord*>* waiting) {
  for (JobRecord* r = waiting_; r != nullptr;) {
    JobRecord* next = r->next_ready;
    // Alive: listed, so its Finish has not passed Unlist yet.
    if ((r->state.load(std::memory_order_acquire) & kStateMask) !=
        jobs_internal::kWaiting) {
      UnlinkReady(waiting_, r);
    } else if (r->runtime == runtime) {
      waiting->push_back(r);  // First: if it throws, no reference is owed.
      r->refs.fetch_add(1, std::memory_order_relaxed);
    }
    r = next;
  }
}

JobRecord* JobCounter::TakeRunnableLocked(const WorkerSlot* slot) {
  JobRecord* runnable = nullptr;
  for (JobRecord* r = ready_; r != nullptr;) {
    JobRecord* next = r->next_ready;
    // Alive: listed, so its Finish has not passed Unlist yet.
    if ((r->state.load(std::memory_order_acquire) & kStateMask) !=
        jobs_internal::kQueued) {
      UnlinkReady(ready_, r);  // Claimed by its token, or cancelled.
    } else if (slot->runtime->RunsInline(r, slot)) {
      UnlinkReady(ready_, r);
      r->refs.fetch_add(1, std::memory_order_relaxed);
      r->next_ready = runnable;
      runnable = r;
    }
    r = next;
  }
  return runnable;
}

bool JobCounter::ArmHelperLocked() {
  // The bit is set in the same step that reads the count: a finisher that
  // brings it to zero later sees it and releases the helpers.
  const int64_t before =
      pending_.fetch_or(kHelperBit, std::memory_order_seq_cst);
  if ((before & kCountMask) != 0) return true;
  DropHelperBitLocked();
  return false;
}

void JobCounter::DropHelperBitLocked() {
  // The bit stays only if other helpers wait (their finisher has not come
  // yet).
  if (helpers_ == nullptr) {
    pending_.fetch_and(~kHelperBit, std::memory_order_acq_rel);
  }
}

void JobCounter::RunTaken(JobRecord* runnable) {
  // Those taken by their tokens meanwhile are only released.
  while (runnable != nullptr) {
    JobRecord* next = runnable->next_ready;
    runnable->next_ready = nullptr;
    (void)runnable->runtime->TryRunInline(runnable);
    Runtime::Release(runnable);
    runnable = next;
  }
}

void JobCounter::HelpUntilZero(WorkerSlot* slot) {
  Runtime::AwakeHold awake;         // Taken once jobs of other nodes count.
  std::vector<JobRecord*> waiting;  // See TakeWaitingLocked.
  // Lets go of them, also if a walk throws (bad_alloc).
  struct Waiting {
    std::vector<JobRecord*>& jobs;
    void Release() {
      for (JobRecord* job : jobs) Runtime::Release(job);
      jobs.clear();
    }
    ~Waiting() { Release(); }
  } held{waiting};
  while ((pending_.load(std::memory_order_acquire) & kCountMask) != 0) {
    tbb::detail::d1::wait_context done(1);
    Helper me{&done, nullptr, slot->runtime, slot->node};
    JobRecord* runnable = nullptr;
    uint64_t generation = 0;
    // Counted before the snapshot of the waiting list (see NoteWaiting).
    struct Walking {
      std::atomic<int>& walking;
      explicit Walking(std::atomic<int>& w) : walking(w) {
        walking.fetch_add(1, std::memory_order_seq_cst);
      }
      ~Walking() { walking.fetch_sub(1, std::memory_order_seq_cst); }
    } walking{walking_};
    {
      alloc_internal::MutexLock lock(&helpers_mu_);
      // Jobs of this node that Schedule made ready, maybe outside this
      // job's isolated region, where this wait could not take their
      // tokens: run them here. NoteReady lists them under this lock and
      // then releases the helpers registered by then.
      if (ready_ != nullptr) runnable = TakeRunnableLocked(slot);
      // Else counted jobs that wait for predecessors, one of which may be
      // a job of this node made ready outside this job's region, and not
      // counted here: look for those among their predecessors.
      if (runnable == nullptr && waiting_ != nullptr) {
        generation = waiting_generation_.load(std::memory_order_relaxed);
        TakeWaitingLocked(slot->runtime, &waiting);
      }
      if (runnable == nullptr && waiting.empty()) {
        if (!ArmHelperLocked()) return;  // Finished meanwhile.
        me.next = helpers_;
        helpers_ = &me;
      }
    }
    if (runnable != nullptr) {
      RunTaken(runnable);
      continue;
    }
    if (!waiting.empty()) {
      // (Their predecessors may be on other nodes: AwakeHold.)
      awake.Take(slot);
      // Back when one of them turns ready (then listed as ready) or
      // final, or after running a stranded predecessor.
      slot->runtime->HelpWhileWaiting(absl::MakeConstSpan(waiting), slot,
                                      &waiting_generation_, generation);
      held.Release();
      continue;
    }
    // Jobs of other nodes counted here: keep this worker from falling
    // asleep in TBB's wait while they are queued there (AwakeHold).
    // Looked at after registering (seq_cst, as NoteSubmission's bit and
    // its look at kHelperBit): a job counted on another node later, by a
    // child this wait runs or by another thread, releases this helper,
    // which then looks again
    // (RuntimeParallelTest.AJobWaitingOnALocalJobThatSpawnsRemoteJobsFinishes).
    // So with jobs that have predecessors (NoteDeclared): those may be on
    // any node.
    if (slot->runtime != home_runtime_.load(std::memory_order_relaxed) ||
        (nodes_.load(std::memory_order_seq_cst) & ~NodeBit(slot->node)) != 0 ||
        declared_.load(std::memory_order_seq_cst)) {
      awake.Take(slot);
    }
    // Runs this job's region's tasks (its children) until a finisher
    // releases `done`.
    RunTasksUntilReleased(done);
  }
}

void JobCounter::StealUntilZero(WorkerSlot* slot) {
  Runtime::AwakeHold awake;  // Taken before it first blocks.
  while ((pending_.load(std::memory_order_acquire) & kCountMask) != 0) {
    // A job with predecessors was counted since (those need the walk), or
    // a job of this node (its token may lie in this job's region): help in
    // TBB. (Both release this helper: NoteDeclared, NoteNewNode.)
    if (declared_.load(std::memory_order_seq_cst) ||
        (nodes_.load(std::memory_order_seq_cst) & NodeBit(slot->node)) != 0) {
      HelpUntilZero(slot);
      return;
    }
    std::atomic<uint32_t> woken{0};
    Helper me{nullptr, nullptr, slot->runtime, slot->node, &woken};
    JobRecord* runnable = nullptr;
    bool help_instead = false;
    {
      alloc_internal::MutexLock lock(&helpers_mu_);
      if (ready_ != nullptr) runnable = TakeRunnableLocked(slot);
      if (runnable == nullptr && waiting_ != nullptr) {
        help_instead = true;  // NoteWaiting came before this lock.
      } else if (runnable == nullptr) {
        // As HelpUntilZero; NoteReady, NoteWaiting, NoteNewNode and the
        // decrement to zero release it.
        if (!ArmHelperLocked()) return;  // Finished meanwhile.
        // seq_cst, after the bit, as NoteNewNode's bit and its look at
        // kHelperBit: a job of this node counted meanwhile is seen here,
        // or NoteNewNode sees the bit and releases this helper.
        if ((nodes_.load(std::memory_order_seq_cst) & NodeBit(slot->node)) !=
            0) {
          DropHelperBitLocked();
          help_instead = true;
        } else {
          me.next = helpers_;
          helpers_ = &me;
        }
      }
    }
    if (help_instead) {
      HelpUntilZero(slot);
      return;
    }
    if (runnable != nullptr) {
      RunTaken(runnable);
      continue;
    }
    // About to block outside TBB: another worker of this node may be
    // waiting for this job in TBB (Runtime::AwakeHold).
    awake.Take(slot);
    while (woken.load(std::memory_order_acquire) == 0) {
      woken.wait(0, std::memory_order_acquire);
    }
  }
}

// ---------------------------------------------------------------------------
// Frames.

namespace {

// BeginFrame's and EndFrame's claim on the frame (FrameState::busy): taken
// with a seq_cst exchange (see BeginFrame and Shutdown), given back when the
// call returns.
class FrameClaim {
 public:
  explicit FrameClaim(std::atomic<bool>& busy)
      : busy_(busy), held_(!busy.exchange(true, std::memory_order_seq_cst)) {}
  FrameClaim(const FrameClaim&) = delete;
  FrameClaim& operator=(const FrameClaim&) = delete;
  ~FrameClaim() {
    if (held_) busy_.store(false, std::memory_order_release);
  }
  bool held() const { return held_; }

 private:
  std::atomic<bool>& busy_;
  const bool held_;
};

}  // namespace

absl::Status Runtime::BeginFrame() {
  FrameState& frame = *frame_;
  FrameClaim claim(frame.busy);
  if (!claim.held()) {
    return absl::FailedPreconditionError(
        "BeginFrame: another thread is beginning or ending a frame now");
  }
  // After the claim (seq_cst both): a Shutdown that stopped accepting
  // before this read is refused here; one after it sees the claim, or the
  // frame open, and ends the frame (see Shutdown).
  if (!accepting_.load(std::memory_order_seq_cst)) {
    return absl::FailedPreconditionError(
        "BeginFrame: the runtime is shut down");
  }
  if (frame.open.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "BeginFrame: frame ", frame.ended.load(std::memory_order_relaxed),
        " is still open (call EndFrame first)"));
  }
  frame.jobs.store(0, std::memory_order_relaxed);
  frame.failed.store(0, std::memory_order_relaxed);
  {
    alloc_internal::MutexLock lock(&frame.mu);
    frame.first_failure.clear();
  }
  frame.begin_ticks = Ticks();
  frame.open.store(true, std::memory_order_seq_cst);
  return absl::OkStatus();
}

absl::Status Runtime::EndFrame() {
  if (CurrentSlot() != nullptr) {
    absl::Status s = absl::FailedPreconditionError(
        "EndFrame called from inside a job: it would wait for itself; end "
        "frames from the thread that runs the frame loop");
    ReportError(Report(ErrorKind::kMisuse, "jobs::Runtime::EndFrame",
                       std::string(s.message())));
    return s;
  }
  FrameState& frame = *frame_;
  FrameClaim claim(frame.busy);
  if (!claim.held()) {
    return absl::FailedPreconditionError(
        "EndFrame: another thread is beginning or ending a frame now");
  }
  if (!frame.open.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("EndFrame: no frame is open");
  }
  frame.open.store(false, std::memory_order_seq_cst);
  const uint64_t wait_start = Ticks();
  if (config_.outside_wait != OutsideWaitPolicy::kHelp ||
      (frame.pending.load(std::memory_order_acquire) & kCountBits) == 0 ||
      !HelpOutside(OutsideHelpNode(), [&frame] {
        HelpOutsideUntilZero(frame.pending, frame.wake);
      })) {
    WaitUntilZero(frame.pending, frame.wake);
  }
  const uint64_t reset_start = Ticks();
  uint64_t arena_bytes = 0;
  uint64_t arena_allocations = 0;
  for (auto& node : nodes_) {
    for (auto& slot : node->slots) {
      SlotAcquire(slot.get());
      const FrameArenaStats stats = slot->frame_arena->stats();
      arena_bytes += stats.frame_peak_bytes_used;
      arena_allocations += stats.allocations - stats.destructor_records;
      slot->frame_arena->Reset();
      SlotRelease(slot.get());
    }
  }
  const uint64_t end = Ticks();
  const double spt = jobs_internal::SecondsPerTick();
  FrameTiming timing;
  timing.frame = frame.ended.load(std::memory_order_relaxed);
  timing.seconds = static_cast<double>(end - frame.begin_ticks) * spt;
  timing.wait_seconds = static_cast<double>(reset_start - wait_start) * spt;
  timing.reset_seconds = static_cast<double>(end - reset_start) * spt;
  timing.jobs = frame.jobs.load(std::memory_order_relaxed);
  timing.failed_jobs = frame.failed.load(std::memory_order_relaxed);
  timing.arena_bytes = arena_bytes;
  timing.arena_allocations = arena_allocations;
  std::string first_failure;
  {
    alloc_internal::MutexLock lock(&frame.mu);
    if (config_.frame_history > 0) {
      if (frame.history.size() < config_.frame_history) {
        frame.history.push_back(timing);
      } else {
        frame.history[frame.history_next] = timing;
      }
      frame.history_next = (frame.history_next + 1) % config_.frame_history;
    }
    first_failure = frame.first_failure;
  }
  frame.ended.fetch_add(1, std::memory_order_release);
  if (timing.failed_jobs > 0) {
    return absl::UnknownError(absl::StrCat(
        "frame ", timing.frame, ": ", timing.failed_jobs, " of ", timing.jobs,
        " jobs failed or were cancelled; first: ", first_failure));
  }
  return absl::OkStatus();
}

bool Runtime::frame_open() const {
  return frame_->open.load(std::memory_order_acquire);
}

uint64_t Runtime::frames() const {
  return frame_->ended.load(std::memory_order_acquire);
}

std::vector<FrameTiming> Runtime::frame_history() const {
  // Through one reference, so that clang's thread-safety analysis sees the
  // lock and the reads name the same mutex.
  FrameState& frame = *frame_;
  alloc_internal::MutexLock lock(&frame.mu);
  if (frame.history.size() < config_.frame_history) return frame.history;
  std::vector<FrameTiming> out;
  for (size_t i = 0; i < frame.history.size(); ++i) {
    out.push_back(
        frame.history[(frame.history_next + i) % frame.history.size()]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Parallel algorithms.

absl::Status Runtime::ParallelForImpl(
    const NodePartition& partition, size_t grain,
    absl::FunctionRef<void(JobContext&, size_t, size_t)> body) {
  if (absl::Status s = partition.Check(num_nodes()); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ParallelFor: ", s.message()));
  }
  // Inside a job (or a fork child), the ranges are part of it: they see
  // its cancellation in cancel_requested(), and those not started when it
  // comes are skipped. Its context outlives them: this call returns after
  // the wait below. (Declared before the counter, whose destructor waits
  // for the ranges.)
  WorkerSlot* here = CurrentSlot();
  JobContext* caller = here != nullptr ? here->current : nullptr;
  std::atomic<bool> skipped{false};
  auto cancelled = [caller] {
    return caller != nullptr && caller->cancel_requested();
  };
  // One counter for every range, the caller's own included, so that it
  // keeps the failure that happened first, whichever node it was on.
  JobCounter counter;
  // A range that finds the caller cancelled: the ranges not started yet
  // are refused (and counted) as cancelled; this one returns at once (and
  // counts as a job that ran, as one that polls cancel_requested() does).
  auto skip = [&counter, &skipped] {
    counter.Cancel();
    skipped.store(true, std::memory_order_relaxed);
  };
  // The caller's node's ranges run on the calling worker (below), so that
  // the counter holds only other nodes' jobs: the wait then sleeps outside
  // TBB (JobCounter::Wait) instead of spinning there, held awake.
  const int own_node = caller != nullptr ? here->node : -1;
  for (const NodeRange& r : partition.ranges()) {
    if (r.empty()) continue;
    if (r.node == own_node) continue;  // Run below by the caller itself.
    absl::Status s = Spawn(
        [body, r, grain, caller, cancelled, skip](JobContext& ctx) {
          if (cancelled()) {
            skip();
            return;
          }
          ctx.cancel_parent_ = caller;
          ctx.ParallelFor(r.begin, r.end, grain, body);
        },
        SubmitOptions().on_node(r.node).with_counter(&counter).named(
            "parallel_for"));
    if (!s.ok()) {
      counter.Cancel();
      (void)counter.Wait();
      return s;
    }
  }
  // The caller's node's ranges, one after another, on the calling worker
  // with the caller's own context (as Fork's last function): their chunks
  // are the caller's children, stolen by the node's other workers, and a
  // failure goes into the counter at the time it happens (each range runs
  // whatever the others did, as the spawned ones do).
  for (const NodeRange& r : partition.ranges()) {
    if (r.empty() || r.node != own_node) continue;
    counter.Add();
    if (cancelled()) {
      skip();
      counter.FinishOk();
      continue;
    }
    std::unique_ptr<JobFailure> failure;
    try {
      caller->ParallelFor(r.begin, r.end, grain, body);
    } catch (...) {
      failure = CaughtFailure(caller->job_id_, "parallel_for");
    }
    if (failure != nullptr) {
      counter.Finish(&failure->status, failure->exception);
    } else {
      counter.FinishOk();
    }
  }
  absl::Status status = counter.Wait();
  if (status.ok() ? skipped.load(std::memory_order_relaxed)
                  : absl::IsCancelled(status) && cancelled()) {
    status = absl::CancelledError(absl::StrCat(
        "ParallelFor: the calling job",
        caller->job_id_ != 0 ? absl::StrCat(" (job ", caller->job_id_, ")")
                             : std::string(),
        " was cancelled; the ranges that had not started were skipped"));
  }
  return status;
}

// ---------------------------------------------------------------------------
// Lifecycle.

absl::Status Runtime::Shutdown(ShutdownMode mode) {
  if (CurrentSlot() != nullptr) {
    absl::Status s = absl::FailedPreconditionError(
        "Shutdown called from inside one of the runtime's jobs: it would "
        "wait for itself");
    ReportError(Report(ErrorKind::kMisuse, "jobs::Runtime::Shutdown",
                       std::string(s.message())));
    return s;
  }
  alloc_internal::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return absl::OkStatus();
  if (mode == ShutdownMode::kCancel) {
    cancel_all_.store(true, std::memory_order_release);
  }
  // Paired with CountOutsideSubmission (seq_cst on both sides, and
  // SubmittedTo reads the outside count seq_cst): the counts read below
  // include every outside submission that found accepting_ still true.
  accepting_.store(false, std::memory_order_seq_cst);
  absl::Status result;
  // A frame left open (see the header) is ended here as EndFrame would.
  // While another thread holds the frame (its loop's EndFrame, resetting
  // the arenas, or a BeginFrame), wait for it: Shutdown returns only once
  // no frame call of another thread still touches the runtime. (A
  // BeginFrame that claims after this loop reads accepting_ false and
  // opens nothing.)
  FrameState& frame = *frame_;
  for (int spins = 0;; ++spins) {
    if (!frame.busy.load(std::memory_order_seq_cst) &&
        !frame.open.load(std::memory_order_seq_cst)) {
      break;
    }
    absl::Status ended = EndFrame();
    if (!absl::IsFailedPrecondition(ended)) {
      result = std::move(ended);
      break;
    }
    if (spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  // Every accepted job finishes (runs, fails or is cancelled): wait until
  // the settled count catches up with the submitted one. Rare: polls.
  // Settled, not finished: a job counts itself finished before it releases
  // its handle, successors, counter and frame, and a job run outside the
  // tokens drained below (inline by a waiting thread, or a Spawn's direct
  // task) could still be doing so when the counts met (a counter's
  // pending() was 1 after Shutdown returned:
  // RuntimeShutdownTest.NoJobIsStillFinishingWhenShutdownReturns).
  // Settled first: a job counts its continuations as submitted before it
  // counts itself settled, and the acquire that sees it settled sees
  // them too. If every job settled by the first read was all that had
  // been submitted by the second, nothing was left running to submit
  // more. (Read the other way round, a job that submitted its
  // continuation between the two reads and then finished made the counts
  // meet with the continuation pending: found in the 2- and 4-node
  // guests.)
  for (int spins = 0;; ++spins) {
    uint64_t settled = settled_elsewhere_.load(std::memory_order_acquire);
    for (const auto& node : nodes_) {
      for (const auto& slot : node->slots) {
        settled += slot->settled.load(std::memory_order_acquire);
      }
    }
    uint64_t submitted = 0;
    for (int k = 0; k < num_nodes(); ++k) submitted += SubmittedTo(k);
    if (settled >= submitted) break;
    if (spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  // Every job has finished; tokens of jobs that ran elsewhere (inline,
  // stolen, cancelled) may still sit in the arenas as no-ops: drain them.
  // execute() may hand the functor to a worker (no slot is reserved for
  // this thread): it reads its capture uninstrumented, like the tokens.
  struct Drain {
    tbb::task_group* group;
    FRAMEALLOC_JOBS_NO_TSAN void operator()() const {
      tbb::task_group* g = group;
      g->wait();
    }
  };
  for (auto& node : nodes_) {
    node->arena.execute(Drain{&node->group});
    TsanAcquire(node.get());
    // Entries of jobs claimed elsewhere (inline, or by their token inside
    // a wait) that no token popped: every job has finished.
    JobRecord* stale = nullptr;
    while (node->queue.try_pop(stale)) {
      Uncount(stale);
      Release(stale);
    }
  }
  shut_down_ = true;
  return result;
}

// ---------------------------------------------------------------------------
// Statistics and the timeline.

RuntimeStats Runtime::stats() const {
  RuntimeStats s;
  const uint64_t now = Ticks();
  const double spt = jobs_internal::SecondsPerTick();
  s.uptime_seconds = static_cast<double>(now - start_tsc_) * spt;
  s.pinned = pinned();
  for (const auto& node : nodes_) {
    NodeStats n;
    n.node = node->index;
    n.workers = node->workers;
    n.pus = node->pus;
    n.pinned = node->pinned;
    n.pin_failures = node->observer->pin_failures();
    if (n.pin_failures > 0) n.pin_error = node->observer->pin_error();
    n.jobs_submitted = SubmittedTo(node->index);
    for (const auto& slot : node->slots) {
      WorkerStats w;
      w.node = node->index;
      w.worker = slot->index;
      w.jobs_run = slot->jobs_run.load(std::memory_order_relaxed);
      w.jobs_stolen = slot->jobs_stolen.load(std::memory_order_relaxed);
      w.jobs_inline = slot->jobs_inline.load(std::memory_order_relaxed);
      // Short jobs' time is sampled (WorkerSlot::BeginBusySample): the
      // estimate can overshoot the uptime by a sample's weight.
      w.busy_seconds =
          std::min(s.uptime_seconds, static_cast<double>(slot->busy_ticks.load(
                                         std::memory_order_relaxed)) *
                                         spt);
      w.outside = slot->outside;
      n.jobs_run += w.jobs_run;
      n.jobs_stolen += w.jobs_stolen;
      if (!w.outside) {
        w.idle_seconds = std::max(0.0, s.uptime_seconds - w.busy_seconds);
        n.busy_seconds += w.busy_seconds;
        n.idle_seconds += w.idle_seconds;
      }
      n.worker_stats.push_back(w);
    }
    s.jobs_submitted += n.jobs_submitted;
    s.nodes.push_back(std::move(n));
  }
  const std::array<uint64_t, 3> finished = FinishedCounts();
  s.jobs_completed = finished[0];
  s.jobs_failed = finished[1];
  s.jobs_cancelled = finished[2];
  s.jobs_refused = refused_.load(std::memory_order_relaxed);
  s.frames = frames();
  return s;
}

bool Runtime::CountOutsideSubmission(int node) {
  // Counted first, then accepting_ looked at, both seq_cst, against
  // Shutdown's seq_cst store of accepting_ and later seq_cst read of the
  // counts (SubmittedTo): either Shutdown's count includes this job (and waits
  // for it), or this sees accepting_ false. Checked only the other way round, a
  // submitter that passed the check just before Shutdown began could count
  // and enqueue its job after Shutdown had found everything finished and
  // returned, and the job ran after Shutdown (or during the destructor).
  nodes_[node]->submitted.fetch_add(1, std::memory_order_seq_cst);
  return accepting_.load(std::memory_order_seq_cst);
}

uint64_t Runtime::SubmittedTo(int node) const {
  // Withdrawn first: every withdrawal read has its count in the later read
  // of `submitted` (the sum may be high for a moment, never low).
  const uint64_t withdrawn =
      nodes_[node]->withdrawn.load(std::memory_order_acquire);
  uint64_t n =
      nodes_[node]->submitted.load(std::memory_order_seq_cst) - withdrawn;
  for (const auto& from : nodes_) {
    for (const auto& slot : from->slots) {
      n += slot->submitted_to[node].load(std::memory_order_acquire);
    }
  }
  return n;
}

std::array<uint64_t, 3> Runtime::FinishedCounts() const {
  std::array<uint64_t, 3> sums{};
  for (int k = 0; k < 3; ++k) {
    sums[k] = finished_elsewhere_[k].load(std::memory_order_acquire);
  }
  for (const auto& node : nodes_) {
    for (const auto& slot : node->slots) {
      for (int k = 0; k < 3; ++k) {
        sums[k] += slot->finished[k].load(std::memory_order_acquire);
      }
    }
  }
  return sums;
}

std::string RuntimeStats::ToJson() const {
  std::string out = absl::StrFormat(
      "{\"uptime_seconds\":%.6f,\"pinned\":%s,\"jobs_submitted\":%d,"
      "\"jobs_completed\":%d,\"jobs_failed\":%d,\"jobs_cancelled\":%d,"
      "\"jobs_refused\":%d,\"frames\":%d,\"nodes\":[",
      uptime_seconds, pinned ? "true" : "false", jobs_submitted, jobs_completed,
      jobs_failed, jobs_cancelled, jobs_refused, frames);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const NodeStats& n = nodes[i];
    absl::StrAppendFormat(
        &out,
        "%s{\"node\":%d,\"workers\":%d,\"pinned\":%s,\"pin_failures\":%d,"
        "\"jobs_submitted\":%d,"
        "\"jobs_run\":%d,\"jobs_stolen\":%d,\"busy_seconds\":%.6f,"
        "\"idle_seconds\":%.6f,\"worker_stats\":[",
        i ? "," : "", n.node, n.workers, n.pinned ? "true" : "false",
        n.pin_failures, n.jobs_submitted, n.jobs_run, n.jobs_stolen,
        n.busy_seconds, n.idle_seconds);
    for (size_t j = 0; j < n.worker_stats.size(); ++j) {
      const WorkerStats& w = n.worker_stats[j];
      absl::StrAppendFormat(
          &out,
          "%s{\"worker\":%d,\"jobs_run\":%d,\"jobs_stolen\":%d,"
          "\"jobs_inline\":%d,\"busy_seconds\":%.6f,\"idle_seconds\":%.6f%s}",
          j ? "," : "", w.worker, w.jobs_run, w.jobs_stolen, w.jobs_inline,
          w.busy_seconds, w.idle_seconds, w.outside ? ",\"outside\":true" : "");
    }
    out += "]}";
  }
  out += "]}";
  return out;
}

std::string RuntimeStats::ToText() const {
  std::string out = absl::StrFormat(
      "jobs: %d submitted, %d completed, %d failed, %d cancelled, %d refused; "
      "%d frames; %.3f s up; workers %s\n",
      jobs_submitted, jobs_completed, jobs_failed, jobs_cancelled, jobs_refused,
      frames, uptime_seconds, pinned ? "pinned" : "not pinned");
  for (const NodeStats& n : nodes) {
    absl::StrAppendFormat(&out,
                          "node %d: %d workers%s, %d submitted, %d run, %d "
                          "stolen, busy %.3f s, idle %.3f s\n",
                          n.node, n.workers, n.pinned ? " (pinned)" : "",
                          n.jobs_submitted, n.jobs_run, n.jobs_stolen,
                          n.busy_seconds, n.idle_seconds);
    if (n.pin_failures > 0) {
      absl::StrAppendFormat(&out,
                            "  %d worker entries could not be pinned (they "
                            "ran unpinned); first: %s\n",
                            n.pin_failures, n.pin_error);
    }
    for (const WorkerStats& w : n.worker_stats) {
      absl::StrAppendFormat(
          &out, "  %s %d: %d run (%d stolen, %d inline), busy %.3f s\n",
          w.outside ? "outside thread, slot" : "worker", w.worker, w.jobs_run,
          w.jobs_stolen, w.jobs_inline, w.busy_seconds);
    }
  }
  return out;
}

void Runtime::StartTrace() {
  alloc_internal::MutexLock lock(&trace_mu_);
  if (!trace_rings_ready_) {
    // Before the flag: a worker that sees it (acquire) sees its ring.
    for (auto& node : nodes_) {
      for (auto& slot : node->slots) {
        slot->trace.Init(config_.trace_events_per_worker);
      }
    }
    trace_rings_ready_ = true;
  }
  trace_on_.store(true, std::memory_order_release);
}

void Runtime::StopTrace() { trace_on_.store(false, std::memory_order_release); }

void Runtime::WriteChromeTrace(std::ostream& out) const {
  std::vector<jobs_internal::TraceTrack> tracks;
  for (const auto& node : nodes_) {
    for (const auto& slot : node->slots) {
      tracks.push_back({node->index, slot->index, &slot->trace, slot->outside});
    }
  }
  jobs_internal::WriteChromeTrace(out, tracks, start_tsc_,
                                  jobs_internal::SecondsPerTick());
}

absl::Status Runtime::WriteChromeTrace(const std::string& path) const {
  std::ofstream file(path);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open '", path, "' for writing"));
  }
  WriteChromeTrace(file);
  file.close();
  if (!file) {
    return absl::DataLossError(absl::StrCat("writing '", path, "' failed"));
  }
  return absl::OkStatus();
}

}  // namespace jobs
}  // namespace framealloc
