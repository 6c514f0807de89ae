// jobs::Runtime: a NUMA-aware work-stealing job runtime on oneTBB, with a
// frame arena per worker.
//
// For: running a frame's work (or a server's requests) as jobs on pinned
// workers, each job next to its data: one tbb::task_arena per NUMA node,
// sized to the node; workers bound to the node's PUs by the runtime itself
// (hwloc, through a task_scheduler_observer); every worker slot owns a
// FrameArena from its node's SmartAlloc, so what a job allocates sits on
// the node it runs on. oneTBB does the scheduling and the work stealing
// inside a node; this layer adds node affinity, frames, handles, counters,
// dependencies, cancellation, statistics and a timeline.
// Not for: blocking I/O inside jobs (a blocked job holds a worker), nor
// scheduling across processes.
//
// A tour:
//   auto rt = jobs::Runtime::Create(jobs::Config()).value();
//   rt->BeginFrame();
//   auto a = rt->Submit([](jobs::JobContext& ctx) {
//     float* tmp = ctx.arena().AllocateArray<float>(1024);  // until EndFrame
//     return Work(tmp);
//   }, jobs::SubmitOptions().on_node(0));
//   auto b = rt->Submit(Next, jobs::SubmitOptions().after(a));  // runs after a
//   rt->EndFrame();  // waits for the frame's jobs, resets every worker arena
//   if (b.Wait().ok()) Use(b.value());
//
// Frames. Jobs submitted while a frame is open (BeginFrame..EndFrame)
// belong to it; their JobContext::arena() is the worker's frame arena, and
// what they allocate there stays valid, for any job of the frame, until
// EndFrame, which waits for the frame's jobs and then resets every worker
// arena on every node. Jobs submitted outside a frame get the worker's
// scratch arena instead, rewound when the job returns (request-scoped
// memory for servers).
//
// Waiting. Handles and counters may be waited on from any thread. Every
// job runs in an isolated region of its own (tbb::this_task_arena::isolate):
// what it spawns carries the region's tag, and a worker waiting inside the
// job runs only those tasks, never an unrelated job that could use its
// arenas. Inside a job, JobContext::Fork / ::ParallelFor and a
// JobCounter::Wait help: the waiting worker runs the job's own children
// (a one-worker node can wait on the jobs it spawned); a handle's Wait runs
// an unstarted job of its own node inline; any other wait blocks the worker.
// A wait on jobs of another node keeps a task queued on the waiter's node
// while it lasts (Runtime::AwakeHold), so that no worker of that node
// sleeps in TBB's wait meanwhile: in
// oneTBB 2021.8 that can starve the other node's arena of threads for
// good (docs/jobs.md, "Waiting inside a job"). A job with predecessors is
// made ready by whoever finishes the last of them, often outside the
// waiter's isolated region: a wait inside a job on it (its handle, or a
// counter that counts it) helps in TBB while it waits for its
// predecessors, and runs it inline once it is ready if it is of the
// waiter's node, so a node of one worker can wait on declared jobs too;
// meanwhile it also runs the ready jobs of its node among their unfinished
// predecessors, whose tokens may lie outside its region (docs/jobs.md).
//
// Cost. A Spawn with no predecessors (no handle) is one TBB task and no
// record: spawned into the worker's deque when a worker spawns it onto its
// own node, enqueued into the node's arena from other threads. Submit
// (handles, results, dependencies) and idle stealing across nodes use a
// job record.
//
// Thread safety: every method may be called from any thread, including
// threads the runtime does not own, except where a REQUIRES says otherwise.
// Errors: Create returns a Status; a submission that cannot be accepted
// (bad node, runtime shut down) gives a handle that is already finished
// with that Status (Spawn returns it); jobs' exceptions are caught and
// reach whoever waits (JobHandle, JobCounter, EndFrame); misuse (EndFrame
// or Shutdown from inside a job) is reported through ReportError
// (alloc/error.h) and returns FailedPrecondition. A
// frame still open at Shutdown (or destruction: an exception may have left
// the frame loop) is not a misuse: Shutdown ends it as EndFrame would and
// returns what EndFrame returned. This layer throws nothing of its own.
#ifndef JOBS_RUNTIME_H_
#define JOBS_RUNTIME_H_

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/detail/_small_object_pool.h>
#include <oneapi/tbb/detail/_task.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/mutex.h"
#include "alloc/smart_alloc.h"
#include "jobs/config.h"
#include "jobs/internal/job_record.h"
#include "numa/numa_alloc.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {

class Runtime;

class JobContext;

// Thrown by JobContext::Fork and JobContext::ParallelFor when TBB cancelled
// them from outside: they ran inside a child of an enclosing Fork, or a
// chunk of an enclosing ParallelFor, whose other part threw. Their
// functions that had not started by then may have been skipped, so the
// code after the call must not run on their results. The enclosing call
// rethrows the first exception, not this one (TBB keeps the first of a
// cancelled group), so a job normally never sees it unless it catches around a
// nested call.
class NestedWorkCancelled : public std::exception {
 public:
  const char* what() const noexcept override {
    return "framealloc::jobs: a nested Fork or ParallelFor was cancelled "
           "because an enclosing one failed; its unstarted functions may "
           "have been skipped";
  }
};

namespace jobs_internal {
struct WorkerSlot;
template <typename Body>
void IsolateJob(JobContext& ctx, Body& body);

// ThreadSanitizer cannot see the synchronization inside libtbb (it is not
// instrumented): whenever work crosses threads through TBB, the sender
// releases and the receiver acquires an address, so TSan sees the same
// happens-before edges TBB provides. No code in normal builds.
#if defined(__SANITIZE_THREAD__)
#define FRAMEALLOC_JOBS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FRAMEALLOC_JOBS_TSAN 1
#endif
#endif
#if defined(FRAMEALLOC_JOBS_TSAN)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
inline void TsanAcquire(const void* p) { __tsan_acquire(const_cast<void*>(p)); }
inline void TsanRelease(const void* p) { __tsan_release(const_cast<void*>(p)); }
#else
inline void TsanAcquire(const void*) {}
inline void TsanRelease(const void*) {}
#endif

// The functors handed to TBB read their captures before anything else, on
// a thread TBB chose, synchronized with the sender only inside libtbb:
// those few reads are not instrumented (every access after the acquire
// is).
#if defined(__clang__)
#define FRAMEALLOC_JOBS_NO_TSAN __attribute__((no_sanitize("thread")))
#elif defined(__GNUC__)
#define FRAMEALLOC_JOBS_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define FRAMEALLOC_JOBS_NO_TSAN
#endif

// A fork child or parallel-for chunk: runs `call(fn, ctx)` as a child job
// of `parent` on the thread that executes it.
// Room for an arena mark taken later (JobContext::MarkScratch), costing
// nothing until then (a std::optional would be zeroed whole).
struct LazyMark {
  static_assert(std::is_trivially_destructible_v<ArenaMark>);
  bool taken = false;
  alignas(ArenaMark) unsigned char storage[sizeof(ArenaMark)];
  ArenaMark& mark() {
    return *std::launder(reinterpret_cast<ArenaMark*>(storage));
  }
};

// What a job on Spawn's direct path carries besides its function
// (Runtime::PrepareDirect fills it).
struct DirectHeader {
  Runtime* runtime = nullptr;
  JobCounter* counter = nullptr;
  const char* name = nullptr;
  uint64_t id = 0;
  bool in_frame = false;
};

// The TBB task of a direct job (defined after Runtime).
template <typename F>
class DirectTask;

struct ChildTask {
  Runtime* runtime;
  const JobContext* parent;
  void* fn;
  void (*call)(void* fn, JobContext& ctx);
  FRAMEALLOC_JOBS_NO_TSAN void operator()() const;
  // TBB destroys the task's copy of this on the thread that finishes it,
  // just before releasing the group's wait_context, also when a cancelled
  // group skips operator() (task_group's function_task::cancel). That thread
  // took the task inside the uninstrumented libtbb, so the acquire here is
  // what orders the parent's set-up (the task_group and its wait_context,
  // released before group.run) before that release for TSan.
  FRAMEALLOC_JOBS_NO_TSAN ~ChildTask();
  ChildTask(Runtime* r, const JobContext* p, void* f,
            void (*c)(void* fn, JobContext& ctx))
      : runtime(r), parent(p), fn(f), call(c) {}
  ChildTask(const ChildTask&) = default;
  ChildTask& operator=(const ChildTask&) = default;
};

}  // namespace jobs_internal

// Where a job should run: on a given node, or anywhere (the submitting
// worker's node, or the nodes in turn for other threads). Node(n) is node
// n whatever n is: a node the runtime does not have, negative ones
// included, is refused with InvalidArgument by Submit and Spawn (it never
// means "any": a computed node of -1 does not lose its affinity quietly).
class Affinity {
 public:
  // What node() answers for Any().
  static constexpr int kAny = -1;
  constexpr Affinity() = default;
  static constexpr Affinity Any() { return Affinity(); }
  static constexpr Affinity Node(int node) { return Affinity(node); }
  constexpr bool any() const { return any_; }
  // The node asked for; kAny for Any().
  constexpr int node() const { return node_; }
  friend constexpr bool operator==(Affinity a, Affinity b) {
    return a.any_ == b.any_ && a.node_ == b.node_;
  }

 private:
  constexpr explicit Affinity(int node) : node_(node), any_(false) {}
  int node_ = kAny;
  bool any_ = true;
};

// What a running job knows about where it runs: handed to the job, so it
// needs no thread-local lookup to find its node, worker or arena.
// Valid only during the job (do not keep it).
class JobContext {
 public:
  JobContext(const JobContext&) = delete;
  JobContext& operator=(const JobContext&) = delete;

  // The node the job runs on (the thief's, for a stolen job).
  int node() const { return node_; }
  // The worker slot within the node, 0..Runtime::workers(node)-1; or
  // Runtime::workers(node) for a thread outside the runtime that runs jobs
  // while it waits (OutsideWaitPolicy::kHelp).
  int worker() const { return worker_; }
  // Frame jobs: the worker's frame arena (memory valid until EndFrame).
  // Other jobs: the worker's scratch arena, rewound when the job returns.
  FrameArena& arena() const {
    // A nested job's scratch space is marked on first use, so that the
    // many nested jobs that allocate nothing pay nothing for it.
    if (ABSL_PREDICT_FALSE(scratch_mark_ != nullptr && !scratch_mark_->taken)) {
      MarkScratch();
    }
    return *arena_;
  }
  // The node's SmartAlloc (pools, heap, budgets), memory on this node.
  SmartAlloc& alloc() const;
  Runtime& runtime() const { return *runtime_; }
  bool in_frame() const { return in_frame_; }
  // The job was submitted to another node and taken by this one.
  bool stolen() const { return stolen_; }
  // The job's id: unique in the runtime, from 1, increasing in submission
  // order per submitting thread (workers take them in blocks of 256);
  // fork children have 0.
  uint64_t job_id() const { return job_id_; }
  // Cancellation was asked for this job (JobRef::Cancel), its counter or
  // the runtime (kCancel shutdown) after the job started: long jobs may
  // poll this and stop. Fork and ParallelFor children see their job's, and
  // so do the ranges of a Runtime::ParallelFor that a job calls.
  bool cancel_requested() const;

  // Runs every function (each `void(JobContext&)`) as a child job on this
  // node and returns when all have finished; the calling worker runs
  // children itself while it waits, isolated from unrelated jobs. The last
  // function runs on the calling worker with this very context. An
  // exception thrown by a function cancels the children that have not
  // started (they never run) and is rethrown here once the running ones
  // have finished (one of them, if several throw; the others are dropped).
  // A Fork that runs in a child of an enclosing Fork, or in a chunk of an
  // enclosing ParallelFor, is cancelled with it when another part of the
  // enclosing call throws: its unstarted children are skipped and it
  // throws NestedWorkCancelled once the running ones have finished.
  template <typename... Fs>
  void Fork(Fs&&... fs);

  // Calls f(ctx, begin, end) over [begin, end) in chunks of at most about
  // `grain` (>= 1) items (TBB's blocked_range splits while a range is
  // larger than the grain: chunks of grain/2 to grain, smaller when the
  // whole range is), in parallel on this node's workers, each chunk with
  // the context of the worker that runs it. Returns when all are done;
  // exceptions and cancellation by an enclosing call as Fork (the chunks
  // not yet started are skipped; NestedWorkCancelled when cancelled).
  //
  // Fork and ParallelFor called while the job's thread is inside another
  // task_arena (the job called that arena's execute, and this runs in it)
  // run their functions or chunks one after another on the calling thread:
  // that arena's threads are not the runtime's, and must not run them with
  // this worker's frame arena.
  template <typename F>
  void ParallelFor(size_t begin, size_t end, size_t grain, F&& f);

 private:
  friend class Runtime;
  template <typename Body>
  friend void jobs_internal::IsolateJob(JobContext& ctx, Body& body);
  JobContext() = default;
  // Whether the calling thread is in its worker slot's node arena now (not
  // inside another task_arena's execute, below the job). See
  // Runtime::InSlotsArena.
  bool InOwnArena() const;

  Runtime* runtime_ = nullptr;
  jobs_internal::WorkerSlot* slot_ = nullptr;
  // The job's record (fork children: the parent's); null for direct jobs.
  jobs_internal::JobRecord* record_ = nullptr;
  JobCounter* counter_ = nullptr;  // The job's counter (fork children: the
                                   // parent's), for cancel_requested().
  // The job that called the Runtime::ParallelFor this job is a range of
  // (and its fork children): its cancellation is this one's too.
  const JobContext* cancel_parent_ = nullptr;
  FrameArena* arena_ = nullptr;
  // A job nested in another on the same worker, outside frames, rewinds
  // the scratch arena to where it was when it started: to a mark taken on
  // its first arena() call (MarkScratch), kept in its runner's frame.
  jobs_internal::LazyMark* scratch_mark_ = nullptr;
  void MarkScratch() const;
  uint64_t job_id_ = 0;
  int node_ = 0;
  int worker_ = 0;
  bool in_frame_ = false;
  bool stolen_ = false;
  // Already inside this job's isolated region (a fork child, or the body
  // of a Fork/ParallelFor): TBB gives tasks spawned here, and the thieves
  // that run them, the region's tag, so nested forks need no region of
  // their own.
  bool isolated_ = false;
  // A fork child or a ParallelFor chunk (Runtime::RunChild): its nested
  // Fork and ParallelFor are bound to the enclosing group, whose failure
  // cancels them. A job's own are isolated from whatever the thread is
  // running: a job run inline by a wait inside another job's child must
  // not be cancelled by that job's failure.
  bool in_child_ = false;
  tbb::task_group_context::kind_type NestedKind() const {
    return in_child_ ? tbb::task_group_context::bound
                     : tbb::task_group_context::isolated;
  }
};

class JobCounter;

// An untyped, counted reference to a submitted job: enough to wait on it,
// cancel it, or name it as a predecessor. Copyable; cheap. Drop references
// before their runtime: the runtime's destructor reports one that outlives
// it as a misuse (the default error handler aborts); with a handler that
// returns, it keeps working (its job is final) and the runtime keeps its
// record pool for the rest of the process (not in --config=minimal builds;
// docs/jobs.md).
class JobRef {
 public:
  JobRef() = default;
  JobRef(const JobRef& other);
  JobRef(JobRef&& other) noexcept : record_(other.record_) {
    other.record_ = nullptr;
  }
  JobRef& operator=(JobRef other) noexcept {
    std::swap(record_, other.record_);
    return *this;
  }
  ~JobRef();

  // False for a default-constructed or moved-from reference.
  bool valid() const { return record_ != nullptr; }
  // The job has finished (run, failed, or cancelled).
  bool done() const;
  // Waits until the job has finished. OK if it ran to completion;
  // Cancelled if it was cancelled (or a predecessor failed); Unknown with
  // the exception's text if it threw (exception() holds it); the
  // submission's error (InvalidArgument, FailedPrecondition) if it was
  // refused. Inside a job of the same node an unstarted job runs inline,
  // also one that becomes ready (its predecessors done) during the wait.
  // Inside any job, while the job still waits for its predecessors, the
  // worker runs its own job's children meanwhile (one of them may be a
  // predecessor), with the node kept awake (Runtime::AwakeHold).
  absl::Status Wait() const;
  // The job's status once done() (Wait's result); Unavailable before.
  absl::Status status() const;
  // What the job threw, after Wait(); null if it did not throw.
  std::exception_ptr exception() const;
  // Cancels the job if it has not started: returns true if it will not
  // run (its dependants are cancelled too), false if it already runs or
  // ran. A running job sees the request in JobContext::cancel_requested().
  bool Cancel();
  uint64_t id() const;

 protected:
  friend class Runtime;
  explicit JobRef(jobs_internal::JobRecord* adopted) : record_(adopted) {}
  jobs_internal::JobRecord* record_ = nullptr;
};

namespace jobs_internal {

struct Empty {};

// A record that owns the job's function and its result.
template <typename F, typename R>
struct TypedJob final : JobRecord {
  using Stored = std::conditional_t<std::is_void_v<R>, Empty, R>;
  std::optional<F> fn;
  std::optional<Stored> result;

  static void Invoke(JobRecord* self, JobContext& ctx);
  static void Destroy(JobRecord* self);
};

template <typename F>
using ResultOf = std::conditional_t<std::is_invocable_v<F&, JobContext&>,
                                    std::invoke_result<F&, JobContext&>,
                                    std::invoke_result<F&>>;

}  // namespace jobs_internal

// A reference to a job whose function returns R (void allowed).
template <typename R>
class JobHandle : public JobRef {
 public:
  JobHandle() = default;

  // The job's result. REQUIRES: Wait() returned OK (fatal error otherwise).
  template <typename U = R, typename = std::enable_if_t<!std::is_void_v<U>>>
  U& value() const;

 private:
  friend class Runtime;
  explicit JobHandle(jobs_internal::JobRecord* adopted) : JobRef(adopted) {}
};

namespace jobs_internal {
// A count a thread may sleep on (JobCounter, the open frame's jobs) has
// this bit set while one does; see WaitUntilZero in runtime.cc.
inline constexpr int64_t kSleeperBit = int64_t{1} << 61;
// A JobCounter's count has this bit (among the count bits, so that no
// waiter sees zero meanwhile) while the finisher that brought it to zero
// wakes the sleepers it found (JobCounter::FinishLast).
inline constexpr int64_t kBumpingBit = int64_t{1} << 60;
// Tests only: when set, called by the finisher whose decrement brought a
// JobCounter to zero with a waiter registered, after that decrement and
// before it wakes the waiters (JobCounter::FinishLast, once per round of
// it; not on the hot path).
inline std::atomic<void (*)()> counter_zero_test_hook{nullptr};
// Tests only: when set, called by the thread that claimed a submitted job
// (a job record: Submit, or Spawn with predecessors) to run it, after the
// claim and before it looks at the runtime's and the counter's
// cancellation (Runtime::Execute; not on Spawn's direct path).
inline std::atomic<void (*)()> claimed_test_hook{nullptr};
}  // namespace jobs_internal

// Counts the unfinished jobs submitted with it (SubmitOptions::counter):
// the light way to wait for a batch. Keeps the first failure. Not movable;
// it must outlive its jobs: the destructor waits for them. Destroyed by a
// job it counts (which it would wait for), it is a fatal misuse
// (ReportFatalError): returning would free what that job's end updates.
class JobCounter {
 public:
  JobCounter() = default;
  JobCounter(const JobCounter&) = delete;
  JobCounter& operator=(const JobCounter&) = delete;
  ~JobCounter();

  // Waits until every job counted here has finished. OK, or the first
  // failure (Cancelled, Unknown for an exception: exception() holds it).
  // Inside a job, the worker helps: it runs the jobs this job spawned
  // (and nothing unrelated) until the count reaches zero; jobs counted
  // here by other threads it waits for. Several jobs may wait on one
  // counter, each helping with its own. Counted jobs with predecessors
  // (SubmitOptions::after) that the waiter's node must run are run inline
  // once ready, wherever they were made ready. Outside a job it spins for up to
  // 50 us, then sleeps until the count reaches zero. The counter may be
  // destroyed as soon as the last Wait returns.
  absl::Status Wait();
  // Jobs counted here that have not started are cancelled, and so are
  // those submitted later, until Reset(). Running jobs see
  // JobContext::cancel_requested().
  void Cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  int64_t pending() const {
    return pending_.load(std::memory_order_acquire) & kJobMask;
  }
  // The first exception a counted job threw, or null.
  std::exception_ptr exception() const;
  // Forgets the failure and the cancellation. REQUIRES: pending() == 0.
  void Reset();

 private:
  friend class Runtime;
  void Add() { pending_.fetch_add(1, std::memory_order_relaxed); }
  // A counted job ran to completion: the hot path, one compare-exchange.
  // The decrement is the finisher's last touch of the counter, which may
  // be destroyed once its count is zero, unless it is the decrement to
  // zero with a waiter registered (FinishLast).
  void FinishOk() {
    int64_t v = pending_.load(std::memory_order_relaxed);
    do {
      if ((v & kCountMask) == 1 &&
          (v & (kHelperBit | jobs_internal::kSleeperBit)) != 0) {
        FinishLast();
        return;
      }
    } while (!pending_.compare_exchange_weak(
        v, v - 1, std::memory_order_acq_rel, std::memory_order_relaxed));
  }
  // A counted job finished; `status` is its failure (null if it ran to
  // completion).
  void Finish(const absl::Status* status, const std::exception_ptr& exception);
  // The decrement to zero with waiters registered (kSleeperBit,
  // kHelperBit): clears their bits in the same step, under helpers_mu_
  // with helpers (taking them off the list), then wakes them: only this
  // finisher wakes the waiters it found. Before, a finisher that touched
  // the counter after a plain decrement to zero could meet it destroyed (a
  // waiter woken by a new job's NoteReady ran that job, saw zero and
  // returned). Sleepers found are woken with kBumpingBit set in the count,
  // which the finisher takes off last (the same way, should a sleeper have
  // armed meanwhile): a sleeper woken by an earlier crossing's bump cannot
  // see zero while a later crossing's finisher still has to bump.
  [[gnu::noinline]] void FinishLast();
  // Wait() from inside a job on `slot`: runs the node's tasks of this
  // job's isolated region (its own children among them) until the count
  // drops to zero, with the node held awake (Runtime::AwakeHold) once jobs
  // of other nodes (or runtimes) are counted here (see Wait).
  void HelpUntilZero(jobs_internal::WorkerSlot* slot);
  // Wait() from inside a job on `slot` of a runtime that steals when idle
  // over several nodes (Runtime::steal_while_waiting_), with every counted
  // job on other nodes and none with predecessors: every counted job is
  // listed here when it is submitted, so the job runs those that no worker has
  // taken, and sleeps (outside TBB, where it could starve another node's
  // arena) until a job is listed or the count drops to zero. Turns to
  // HelpUntilZero if a job of its node, or one with predecessors, is
  // counted meanwhile.
  void StealUntilZero(jobs_internal::WorkerSlot* slot);
  // Releases every job waiting in HelpUntilZero, to look again.
  void ReleaseHelpers();
  struct Helper;
  // Takes every job waiting in HelpUntilZero off the list (clearing
  // kHelperBit), for ReleaseTaken after the lock.
  Helper* TakeHelpersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Takes those of `runtime`'s `node` only, or of any of its nodes if
  // `node` is -1 (kHelperBit stays while others wait).
  Helper* TakeHelpersOfLocked(const Runtime* runtime, int node)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Releases helpers taken off the list; touches nothing of the counter.
  static void ReleaseTaken(Helper* helpers);
  // A job with predecessors (SubmitOptions::after) was counted here: from
  // now on a Wait inside a job helps in TBB, with the node held awake (see
  // Wait), since what it waits for may lie in its own isolated region or
  // on another node. Never cleared, as nodes_.
  [[gnu::cold, gnu::noinline]] void NoteDeclared();
  // Runtime::Enqueue counted `record`, which has predecessors (kListedBit
  // set), here: lists it as waiting, for the jobs waiting in HelpUntilZero,
  // which look among its predecessors for jobs of their node that only
  // they can run (Runtime::HelpWhileWaiting), and releases them to look.
  void NoteWaiting(jobs_internal::JobRecord* record);
  // Runtime::Schedule made `record`, counted here, ready (kQueued, with
  // kListingBit held so that it cannot finish meanwhile): moves it to the
  // ready list for the jobs waiting in HelpUntilZero, which run those of
  // their node inline (Schedule may run outside their isolated region, so
  // they could not take its token), and releases them to look. It stays
  // listed until it finishes (Unlist) or a waiter takes it. Under
  // kWhenIdle over several nodes Runtime::Enqueue lists so every counted
  // job it submits, and the waiters of every node look
  // (Runtime::RunsInline).
  void NoteReady(jobs_internal::JobRecord* record);
  // Runtime::Finish of a listed job (kListedBit), before the job is
  // counted as finished here: takes it off its list if it is still there.
  void Unlist(jobs_internal::JobRecord* record);
  // Collects, each with a reference, the jobs of `runtime` on the waiting
  // list that still wait for predecessors, and drops from it those that
  // no longer do (made ready without Schedule: a successor run next by the
  // worker that finished its predecessor).
  void TakeWaitingLocked(const Runtime* runtime,
                         std::vector<jobs_internal::JobRecord*>* waiting)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Takes the listed jobs that `slot`'s worker can run inline (not
  // started; Runtime::RunsInline) off the list, each with a reference,
  // chained by next_ready; drops those that have started from the list.
  jobs_internal::JobRecord* TakeRunnableLocked(
      const jobs_internal::WorkerSlot* slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Before a helper registers: sets kHelperBit in the step that reads the
  // count. False if the count was zero (the wait is over; the bit is taken
  // back unless other helpers are registered).
  bool ArmHelperLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Takes kHelperBit back, unless helpers are registered.
  void DropHelperBitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(helpers_mu_);
  // Runs inline, on the calling worker, the jobs TakeRunnableLocked took
  // (those that a token or another waiter claimed first are skipped), and
  // drops the references it took.
  static void RunTaken(jobs_internal::JobRecord* runnable);
  // NoteSubmission's rare path: a job was counted on a node new to this
  // counter (`bit` of nodes_).
  [[gnu::cold, gnu::noinline]] void NoteNewNode(uint64_t bit);
  // A job counted here was submitted to `node` of `runtime`: where Wait()
  // from outside may help (OutsideWaitPolicy). Stores only on a change (the
  // line is the count's, which Add just wrote).
  void NoteSubmission(Runtime* runtime, int node) {
    if (home_runtime_.load(std::memory_order_relaxed) != runtime) {
      home_runtime_.store(runtime, std::memory_order_relaxed);
    }
    if (home_node_.load(std::memory_order_relaxed) != node) {
      home_node_.store(node, std::memory_order_relaxed);
    }
    if (const uint64_t bit = NodeBit(node);
        (nodes_.load(std::memory_order_relaxed) & bit) == 0) [[unlikely]] {
      NoteNewNode(bit);
    }
  }
  // The bit of `node` in nodes_ (nodes from 63 on share the last).
  static uint64_t NodeBit(int node) {
    return uint64_t{1} << (node < 63 ? node : 63);
  }

  // The count of unfinished jobs, plus kHelperBit while jobs wait in
  // HelpUntilZero: the finisher that brings the count to zero then wakes
  // them through helpers_ (they cannot be gone: they are still waiting).
  // Release on decrement so that the jobs' effects are visible to the
  // waiter that observes 0 with acquire.
  // jobs_internal::kSleeperBit while a thread sleeps in Wait() (see
  // WaitUntilZero in runtime.cc): it sleeps on wake_, which changes only
  // when the count reaches zero, not on the count, which changes with
  // every job. jobs_internal::kBumpingBit, counted as part of the count,
  // while the finisher that brought it to zero wakes sleepers
  // (FinishLast).
  static constexpr int64_t kHelperBit = int64_t{1} << 62;
  static constexpr int64_t kCountMask = jobs_internal::kSleeperBit - 1;
  static constexpr int64_t kJobMask = jobs_internal::kBumpingBit - 1;
  std::atomic<int64_t> pending_{0};
  // A job waiting in HelpUntilZero or StealUntilZero (on its stack).
  struct Helper {
    // Released by ReleaseTaken: `done` (HelpUntilZero, which waits in TBB)
    // or else `woken` (StealUntilZero, asleep on it).
    tbb::detail::d1::wait_context* done;
    Helper* next;
    // The waiting job's worker: NoteReady releases only the helpers that
    // can run the job it lists.
    const Runtime* runtime;
    int node;
    std::atomic<uint32_t>* woken = nullptr;
  };
  // Taken only to register a helper and by the finisher that finds
  // kHelperBit; kHelperBit is set exactly while helpers_ is not empty.
  alloc_internal::Mutex helpers_mu_;
  Helper* helpers_ ABSL_GUARDED_BY(helpers_mu_) = nullptr;
  // Jobs counted here that Schedule made ready and that have neither
  // finished nor been taken by a waiter (NoteReady), chained by
  // JobRecord::next_ready and prev_ready.
  jobs_internal::JobRecord* ready_ ABSL_GUARDED_BY(helpers_mu_) = nullptr;
  // Jobs counted here that wait for predecessors (NoteWaiting), chained
  // as ready_.
  jobs_internal::JobRecord* waiting_ ABSL_GUARDED_BY(helpers_mu_) = nullptr;
  // Bumped by NoteWaiting (under helpers_mu_); jobs in HelpUntilZero
  // walking from a snapshot of waiting_ (counted in walking_) look again
  // when it changes.
  std::atomic<uint64_t> waiting_generation_{0};
  std::atomic<int> walking_{0};
  // See NoteDeclared.
  std::atomic<bool> declared_{false};
  std::atomic<uint32_t> wake_{0};  // Bumped when the count reaches zero.
  // The runtime and node of the last job counted here (NoteSubmission);
  // cleared by a Wait that saw the count at zero. A runtime outlives the
  // jobs it runs, so a Wait that finds a job pending may use it (a counter
  // shared by the jobs of several runtimes names the last one's).
  std::atomic<Runtime*> home_runtime_{nullptr};
  std::atomic<int> home_node_{0};
  // Every node a job counted here was ever submitted to (NodeBit; never
  // cleared, so that a job submitted while a Wait returns cannot be
  // missed): a Wait inside a job whose jobs all went to other nodes sleeps
  // instead of waiting in TBB (see Wait).
  std::atomic<uint64_t> nodes_{0};
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> failed_{false};
  // Set once any counter was ever cancelled, so that running a job reads
  // its counter's (contended) cache line only in programs that cancel.
  static std::atomic<bool> any_cancelled_;
  mutable alloc_internal::Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  std::exception_ptr first_exception_ ABSL_GUARDED_BY(mu_);
};

// Per-submission choices. Fluent.
struct SubmitOptions {
  Affinity affinity;
  JobCounter* counter = nullptr;  // Not owned; counts the job.
  absl::InlinedVector<JobRef, 2> predecessors;
  const char* name = nullptr;  // Static string: the job's name in traces.

  SubmitOptions& on_node(int node) {
    affinity = Affinity::Node(node);
    return *this;
  }
  SubmitOptions& on(Affinity a) {
    affinity = a;
    return *this;
  }
  SubmitOptions& with_counter(JobCounter* c) {
    counter = c;
    return *this;
  }
  // The job runs when every job given has finished (in any order). If one
  // of them fails or is cancelled, this job is cancelled.
  template <typename... Refs>
  SubmitOptions& after(const Refs&... refs) {
    (predecessors.push_back(refs), ...);
    return *this;
  }
  SubmitOptions& named(const char* n) {
    name = n;
    return *this;
  }
};

// A contiguous range of item indexes homed on one node.
struct NodeRange {
  int node = 0;
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
  bool empty() const { return begin == end; }
};

// Items 0..n-1 split into one contiguous range per node, in node order.
class NodePartition {
 public:
  NodePartition() = default;
  explicit NodePartition(std::vector<NodeRange> ranges)
      : ranges_(std::move(ranges)) {}
  // `n` items split in proportion to `weights` (one per node, e.g. the
  // workers of each node); ranges of nodes with weight 0 are empty.
  // REQUIRES: some weight > 0 when n > 0 (with none, every item goes to the
  // last node; with no weights at all, the partition is empty).
  static NodePartition Proportional(size_t n, const std::vector<int>& weights);

  const std::vector<NodeRange>& ranges() const { return ranges_; }
  size_t size() const { return ranges_.empty() ? 0 : ranges_.back().end; }
  // The node that holds item i. REQUIRES: i < size().
  int HomeOf(size_t i) const;
  // InvalidArgument unless the ranges are contiguous, in order, from 0,
  // each homed on a node in [0, num_nodes). (The constructor takes any
  // ranges; ParallelFor and NodeArray::Create check them.)
  absl::Status Check(int num_nodes) const;

 private:
  std::vector<NodeRange> ranges_;
};

// Counters of one worker slot. Exact once the runtime is quiescent.
struct WorkerStats {
  int node = 0;
  int worker = 0;
  uint64_t jobs_run = 0;     // Jobs and fork children run by this slot.
  uint64_t jobs_stolen = 0;  // ...of which submitted to another node.
  uint64_t jobs_inline = 0;  // ...of which run inline by a waiting job.
  // Time inside top-level jobs. Exact while the jobs are long (after a
  // timed job of more than about 8 us the next is timed too); after a short
  // one, the next job is timed with probability 1/2 and each later one with
  // 1/16 until one is, and a timed job counts 1/probability times (reading
  // the clock costs as much as a very short job): an unbiased estimate for
  // any mix of lengths, whose spread is largest for a long job that follows
  // a short one (a trace times every job).
  double busy_seconds = 0;
  double idle_seconds = 0;  // Uptime minus busy time (0 for `outside`).
  // The slot of a thread outside the runtime that helps while it waits
  // (OutsideWaitPolicy::kHelp; worker == the node's worker count): its
  // jobs, not idle time, since it is not the runtime's thread.
  bool outside = false;
};

struct NodeStats {
  int node = 0;
  int workers = 0;
  std::vector<int> pus;  // OS indexes of the node's PUs.
  bool pinned = false;   // Runtime::node_pinned(node).
  // Worker entries whose binding to the node failed (the thread then runs
  // unpinned; the runtime goes on), and the first failure's reason.
  uint64_t pin_failures = 0;
  std::string pin_error;
  uint64_t jobs_submitted = 0;  // Submitted with this node's affinity.
  uint64_t jobs_run = 0;
  uint64_t jobs_stolen = 0;  // Taken by this node from another node.
  // The workers' (not the outside slot's: see WorkerStats::outside).
  double busy_seconds = 0;
  double idle_seconds = 0;
  // One per worker, then the outside slot's under OutsideWaitPolicy::kHelp.
  std::vector<WorkerStats> worker_stats;
};

// One frame, from BeginFrame to the end of EndFrame.
struct FrameTiming {
  uint64_t frame = 0;
  double seconds = 0;        // BeginFrame to EndFrame's return.
  double wait_seconds = 0;   // EndFrame waiting for the frame's jobs.
  double reset_seconds = 0;  // EndFrame resetting the worker arenas.
  uint64_t jobs = 0;         // Jobs submitted in the frame.
  uint64_t failed_jobs = 0;  // ...that failed or were cancelled.
  // The sum over the worker arenas of the most bytes each held at once in
  // the frame (FrameArenaStats::frame_peak_bytes_used: padding and the
  // arenas' destructor records included; memory rewound and taken again
  // counts once).
  uint64_t arena_bytes = 0;
  // Allocations the jobs held in the worker arenas at the frame's end,
  // before the reset (FrameArenaStats::allocations less the arenas' own
  // destructor records; a rewind lowers it).
  uint64_t arena_allocations = 0;
};

struct RuntimeStats {
  std::vector<NodeStats> nodes;
  uint64_t jobs_submitted = 0;
  uint64_t jobs_completed = 0;  // Ran to the end.
  uint64_t jobs_failed = 0;     // Threw.
  uint64_t jobs_cancelled = 0;
  uint64_t jobs_refused = 0;  // Submissions that were not accepted.
  uint64_t frames = 0;
  double uptime_seconds = 0;
  bool pinned = false;  // Runtime::pinned(): every node's workers are.
  std::string ToJson() const;
  std::string ToText() const;
};

class Runtime {
 public:
  // Builds the runtime: topology, one SmartAlloc and one task arena per
  // node, per-worker arenas. InvalidArgument for a bad configuration,
  // FailedPrecondition for strict pinning or strict memory binding where
  // the machine cannot bind.
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(Config config = {});
  // Shutdown(config().shutdown). REQUIRES: not called from one of its jobs.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // ---- Layout ---------------------------------------------------------------
  const numa::Topology& topology() const { return *topology_; }
  const Config& config() const { return config_; }
  int num_nodes() const;
  int workers(int node) const;
  // The slots whose index a job of node `node` may see in
  // JobContext::worker(): workers(node), plus one under
  // OutsideWaitPolicy::kHelp (the outside thread's). Size per-worker
  // tables with this.
  int slots(int node) const;
  int total_workers() const { return total_workers_; }
  // Every worker is bound to its node's PUs (PinningPolicy::kNode, or
  // kAuto on this machine, and every node has PUs).
  bool pinned() const;
  // Node `node`'s workers are bound to its PUs. False for every node when
  // the runtime does not pin, and under kAuto for a node without PUs (a
  // memory-only node, or one whose PUs are outside this process's CPU set),
  // whose workers float. REQUIRES: 0 <= node < num_nodes().
  bool node_pinned(int node) const;
  // The per-node SmartAllocs (NumaAlloc: node(k), on_node(k), stats()).
  numa::NumaAlloc& memory() { return *memory_; }
  // `n` items split over the nodes in proportion to their workers.
  NodePartition Partition(size_t n) const;

  // ---- Submission ----------------------------------------------------

  // Submits `f` (callable as f(JobContext&) or f()); the handle gives its
  // result. Never blocks (dependencies wait in the runtime, not here).
  // `options` is only read (taken by reference: the fluent
  // SubmitOptions().with_counter(c) is an lvalue, and a by-value parameter
  // copied it, predecessors' reference counts included, on every call).
  template <typename F>
  auto Submit(F&& f, const SubmitOptions& options = {})
      -> JobHandle<typename jobs_internal::ResultOf<std::decay_t<F>>::type>;
  // As Submit, without a handle (count it with options.counter). Returns
  // the submission error, if any; the job's own failure goes to the
  // counter.
  //
  // Both store a copy (or a move) of `f`. If that throws, the exception
  // leaves Submit or Spawn and the memory taken for the job is freed; a
  // job Spawn had already accepted counts as failed (its counter and frame
  // see the failure, so their waits still end). A job with more than two
  // predecessors takes an edge per further one from the runtime's pool
  // (Config::record_source) before it is counted anywhere: if the
  // out-of-memory report's handler throws there, the exception leaves
  // Submit or Spawn, the job and its edges are freed, and no counter,
  // frame or statistic has seen it. A job that runs destroys
  // the stored copy, and what it captured, when it returns and before it
  // counts as finished: once a handle's, a counter's or EndFrame's wait
  // returns, no destructor of its captures is still running. (A job
  // cancelled before it started: Spawn's copy goes before it counts as
  // cancelled, Submit's with the job's record, when its handles and the
  // runtime let go of it.) So `f`'s type, and what it captures, must not
  // throw from its destructor: Submit and Spawn do not compile otherwise.
  template <typename F>
  absl::Status Spawn(F&& f, const SubmitOptions& options = {});

  // ---- Frames ---------------------------------------------------------

  // Opens a frame. FailedPrecondition if one is open, the runtime is shut
  // down, or another thread is in BeginFrame or EndFrame at this moment
  // (frames belong to one loop; a second thread is refused, never run
  // concurrently with it).
  absl::Status BeginFrame();
  // Waits for every job of the open frame, then resets every worker's
  // frame arena on every node. Returns OK, or a summary of the frame's
  // failed jobs (their own handles hold the details). FailedPrecondition
  // if no frame is open, another thread is in BeginFrame or EndFrame, or
  // when called from inside a job of this runtime (that one is also
  // reported: it would wait for itself).
  absl::Status EndFrame();
  bool frame_open() const;
  // Frames ended so far.
  uint64_t frames() const;

  // ---- Parallel algorithms ---------------------------------------------

  // Calls f(ctx, begin, end) over every range of `partition`, each on its
  // home node, split in chunks of at most about `grain` items (as
  // JobContext::ParallelFor; each node's range is split on its own).
  // Returns when all are done: OK, or the first failure in time, on
  // whichever node; InvalidArgument for a partition that fails
  // NodePartition::Check. Inside a job (or a fork child), the ranges are
  // part of the calling job: their cancel_requested() is true once the
  // caller's is, and a node's range that has not started by then is
  // skipped (the call then returns Cancelled). The caller's node's ranges
  // run on the calling worker, one after another, as the caller's own
  // ctx.ParallelFor would (the node's other workers take chunks of them),
  // and the other nodes' ranges are waited for: a cross-node wait. Under
  // kStrict it can deadlock when every worker of two nodes waits on the
  // other at once (docs/jobs.md, "Waiting inside a job"): call it from the
  // frame loop, or give the nodes spare workers. Under kWhenIdle the
  // caller runs the ranges that no worker of their node has taken. From a
  // fork child or a chunk whose enclosing Fork or ParallelFor fails
  // meanwhile, the caller's node's ranges are cancelled with it
  // (NestedWorkCancelled): the call then returns Cancelled.
  template <typename F>
  absl::Status ParallelFor(const NodePartition& partition, size_t grain, F&& f);
  // Items 0..n-1 split by Partition(n).
  template <typename F>
  absl::Status ParallelFor(size_t n, size_t grain, F&& f) {
    return ParallelFor(Partition(n), grain, std::forward<F>(f));
  }

  // ---- Lifecycle -------------------------------------------------------

  // Stops accepting jobs (later submissions fail with FailedPrecondition), then
  // finishes or cancels what is pending, and returns when no job is left.
  // A frame still open is ended first (its jobs finished or cancelled as
  // `mode` says, its arenas reset), and its EndFrame status is returned.
  // Idempotent. FailedPrecondition when called from one of its jobs.
  absl::Status Shutdown(ShutdownMode mode);
  bool accepting() const { return accepting_.load(std::memory_order_acquire); }

  // ---- Observability ---------------------------------------------------

  RuntimeStats stats() const;
  // The last Config::frame_history frames, oldest first.
  std::vector<FrameTiming> frame_history() const;
  // Records each job's start and end per worker from now on / no more.
  void StartTrace();
  void StopTrace();
  // The recorded timeline in Chrome's trace event format (one process per
  // node, one thread per worker, one complete event per job): open it in
  // Perfetto (ui.perfetto.dev) or chrome://tracing.
  // REQUIRES: no job is running (after EndFrame, a Wait, or Shutdown).
  void WriteChromeTrace(std::ostream& out) const;
  absl::Status WriteChromeTrace(const std::string& path) const;

  // Used by JobContext. Runs `body` as a child job on the calling worker.
  void RunChild(const JobContext& parent,
                absl::FunctionRef<void(JobContext&)> body);
  void RunChild(const JobContext& parent, void* fn,
                void (*call)(void* fn, JobContext& ctx));

 private:
  struct Node;
  struct FrameState;
  struct ThiefTask;
  friend class JobRef;
  friend class JobCounter;
  friend class JobContext;

  explicit Runtime(Config config);
  absl::Status Init();

  void* AllocateRecord(size_t size, size_t alignment);
  // The `n` pool edges a job past its inline ones needs, onto the
  // record's `extra_edges`. If an allocation's fatal report throws, frees
  // what it took and `record` (never published), and lets the exception
  // go on.
  void AllocateEdges(jobs_internal::JobRecord* record, int n);
  // Frees the record's pool edges (into its own pool: the runtime may be
  // gone).
  static void FreeExtraEdges(jobs_internal::JobRecord* record);
  template <typename F>
  friend class jobs_internal::DirectTask;
  // Spawn's direct path: a job with no predecessors and no handle becomes
  // one TBB task and no record: spawned into the worker's own deque when a
  // worker spawns it onto its own node (what task_group::run costs), else
  // enqueued into the node's arena (what task_arena::enqueue costs), plus
  // the runtime's accounting. PrepareDirect accepts and counts the job
  // into `header` and says where it goes (context null: the record path,
  // for predecessors, idle stealing across nodes, another worker's node,
  // and every submission that is refused, whose errors it reports).
  struct DirectTarget {
    tbb::task_group_context* context = nullptr;
    tbb::task_arena* arena = nullptr;  // Null: spawn on this worker.
  };
  DirectTarget PrepareDirect(const SubmitOptions& options,
                             jobs_internal::DirectHeader* header);
  // Runs a direct job on the calling worker (or refuses it), destroys its
  // function with `destroy` (null: trivially destructible), then accounts
  // for it.
  void RunDirect(const jobs_internal::DirectHeader& header, void* fn,
                 void (*call)(void* fn, JobContext& ctx),
                 void (*destroy)(void* fn));
  // A direct job that does not run (cancelled, or no worker slot): its
  // accounting, off the hot path.
  void RefuseDirect(const jobs_internal::DirectHeader& header,
                    jobs_internal::WorkerSlot* slot);
  // A job record holding `f`, with `refs` references (its memory freed
  // again if storing `f` throws).
  template <typename F>
  jobs_internal::TypedJob<
      std::decay_t<F>, typename jobs_internal::ResultOf<std::decay_t<F>>::type>*
  NewRecord(F&& f, int refs);
  // A direct job accepted by PrepareDirect whose function could not be
  // stored (its copy threw): accounted as failed, off the hot path.
  void AbandonDirect(const jobs_internal::DirectHeader& header);
  // A direct job that did not run to completion, in `state`: its
  // accounting (finished count, counter, frame, settled), with its
  // failure.
  void FailDirect(const jobs_internal::DirectHeader& header,
                  jobs_internal::WorkerSlot* slot,
                  jobs_internal::JobState state, const absl::Status& status,
                  const std::exception_ptr& exception);
  // How a job failed: what RunJob returns when the body threw (null when it
  // ran to completion, which is the only case the hot path sees).
  struct JobFailure {
    absl::Status status;
    std::exception_ptr exception;
  };
  // The exception being handled, as the failure of job `id`. Called from
  // catch clauses only.
  static std::unique_ptr<JobFailure> CaughtFailure(uint64_t id,
                                                   const char* name);
  // Runs `call(fn, ctx)` as a job on `slot` in its own isolated region,
  // with the context of `info`; returns null, or how it failed.
  struct RunInfo;
  // Counts a job into the open frame, if any, or into the frame of the
  // job submitting it from `here` (null: not a worker): true if it joined.
  bool JoinFrame(const jobs_internal::WorkerSlot* here);
  // A job of the frame finished (failed: with `status`).
  void LeaveFrame(bool failed, const absl::Status& status);
  // A job of the frame ran to completion.
  void LeaveFrameOk();
  // Counts a job that finished in `state`, on the slot `here` (null: a
  // thread outside the worker slots). Before the state turns final, so a
  // waiter's stats() include the job.
  void CountFinished(jobs_internal::WorkerSlot* here,
                     jobs_internal::JobState state);
  // Counts a job whose finish is complete (counter, frame, final state,
  // successors all done; a job's function destroyed),
  // on `here` as CountFinished: what Shutdown waits for.
  void CountSettled(jobs_internal::WorkerSlot* here);
  // What every job and fork child sets up and tears down on its slot
  // (runtime.cc).
  class JobScope;
  std::unique_ptr<JobFailure> RunJob(jobs_internal::WorkerSlot* slot,
                                     const RunInfo& info, void* fn,
                                     void (*call)(void* fn, JobContext& ctx));
  // Fills the common fields, applies the options and schedules. Returns
  // the submission error (the record is then finished with it).
  absl::Status Enqueue(jobs_internal::JobRecord* record,
                       const SubmitOptions& options);
  // Makes `record`, whose last predecessor finished, ready: lists it on
  // its counter and posts its token (or finishes it as cancelled if a
  // predecessor failed). `by_finish`: called by that predecessor's Finish
  // (see PostToken), not by the submission itself.
  void Schedule(jobs_internal::JobRecord* record, bool by_finish = false);
  // Posts a token for `record` (none: under kWhenIdle, a turn to run the
  // node's oldest queued job) to `node`'s arena. A worker of that node
  // spawns it into its own deque, inside the isolated region of the job it
  // runs, if any: a job's own submissions, which its waits may run. Every
  // other token is enqueued, outside every region; so are the tokens of
  // jobs that a Finish makes ready (`by_finish`) while the worker is
  // inside a job (a wait running a job nested in its own): they are not
  // the children of the job that waits, which must not run them nested
  // (RuntimeWaitTest.ASuccessorOfAChildRunInsideAWaitIsNotNestedInIt).
  void PostToken(int node, jobs_internal::JobRecord* record,
                 bool by_finish = false);
  void RunToken(int node, jobs_internal::JobRecord* record);
  // Keeps a node's arena from looking empty while it lives: a job about to
  // wait in TBB on jobs that are, or may become, other nodes' (see
  // JobCounter::Wait), or to block outside TBB on another node's (or
  // runtime's) work, while a worker of its node may wait for it in TBB.
  // oneTBB 2021.8 can starve another node's arena of threads for good
  // while a worker sleeps in a nested wait of an arena that looks empty.
  class AwakeHold;
  // Enqueues the node's keep-awake task (see AwakeHold).
  void PostKeepAwake(int node);
  void RunQueuedToken(Node& node, jobs_internal::WorkerSlot* slot,
                      jobs_internal::JobRecord* own);
  void RunThief(int node, int victim);
  // Takes a kWhenIdle job out of its node's count of queued jobs, once.
  void Uncount(jobs_internal::JobRecord* record);
  void MaybeSteal(int idle_node);
  // `bypass`, when given, may receive one successor made ready by this
  // job, for the caller to run next on the same worker (continuation)
  // instead of spawning it; its scheduling reference comes with it.
  void Execute(jobs_internal::JobRecord* record,
               jobs_internal::WorkerSlot* slot, bool stolen, bool inline_run,
               jobs_internal::JobRecord** bypass = nullptr);
  void Finish(jobs_internal::JobRecord* record, jobs_internal::JobState state,
              absl::Status status, std::exception_ptr exception,
              jobs_internal::JobRecord** bypass = nullptr);
  // Runs `record` on the calling worker if it may (RunsInline) and nobody
  // has claimed it; true if it ran here.
  bool TryRunInline(jobs_internal::JobRecord* record);
  // Whether the job running on the calling thread (a fork child: its
  // parent) is `record`, or is counted by `counter`: a wait on them would
  // wait for itself. RefuseWaitOnItself: then FailedPrecondition, reported
  // as misuse (`where` names the wait); OK otherwise.
  static bool WaitsOnItself(const jobs_internal::JobRecord* record,
                            const JobCounter* counter);
  static absl::Status RefuseWaitOnItself(const char* where,
                                         const jobs_internal::JobRecord* record,
                                         const JobCounter* counter);
  // Whether a job waiting on worker `slot` may run `record` inline: a job
  // of this runtime and of the slot's node; under kWhenIdle over several
  // nodes, of any node (it then runs as stolen, with the slot's context):
  // a waiting worker is an idle one, and the job it waits for may
  // otherwise have no worker left to run it (its node's all wait, perhaps
  // on this one: RuntimeStealTest.JobsWaitingOnEachOthersNodes*).
  bool RunsInline(const jobs_internal::JobRecord* record,
                  const jobs_internal::WorkerSlot* slot) const;
  // JobRef::Wait inside a job of this runtime (on worker slot `here`) on
  // `target`, a job of this runtime still waiting for its predecessors:
  // helps in the job's isolated region until the target is no longer
  // kWaiting, and runs inline every job of its node among the target's
  // unfinished predecessors, direct or not, that is ready but whose token
  // lies outside that region (made ready by another thread, or submitted
  // by one), which on a node of one worker nothing else would run.
  // Returns the target's state.
  uint32_t HelpUntilReady(jobs_internal::JobRecord* target,
                          jobs_internal::WorkerSlot* here);
  // One round of HelpUntilReady, for any number of `targets` (jobs of this
  // runtime the caller holds references to; a JobCounter's waiting jobs):
  // returns at once if one of them no longer waits for its predecessors
  // (seen after registering as a helper and setting their kWaiterBit);
  // else runs the ready jobs FindStranded finds, if any, or else helps in
  // TBB until a target, or a predecessor of this node that was still
  // waiting, turns ready (or final), or another wake-up releases it.
  // With `generation`, returns at once also if it no longer holds `seen`
  // once the helper is registered (JobCounter::NoteWaiting).
  void HelpWhileWaiting(absl::Span<jobs_internal::JobRecord* const> targets,
                        jobs_internal::WorkerSlot* here,
                        const std::atomic<uint64_t>* generation = nullptr,
                        uint64_t seen = 0);
  // HelpWhileWaiting's look at the unfinished predecessors of `targets`,
  // under walk_mu_: sets kWaiterBit on those that the worker in `here`
  // could run (RunsInline) still waiting (so that Schedule releases the
  // helper when they turn ready) and returns, each with a reference, those
  // of them that are ready.
  void FindStranded(absl::Span<jobs_internal::JobRecord* const> targets,
                    const jobs_internal::WorkerSlot* here,
                    std::vector<jobs_internal::JobRecord*>* ready);
  absl::Status ParallelForImpl(
      const NodePartition& partition, size_t grain,
      absl::FunctionRef<void(JobContext&, size_t, size_t)> body);
  jobs_internal::WorkerSlot* CurrentSlot() const;
  // Whether the calling thread, which holds `slot`, is in the slot's node
  // arena now, not inside another task_arena that a job entered with
  // execute (where what it spawns would go to that arena's threads).
  static bool InSlotsArena(const jobs_internal::WorkerSlot* slot);
  // OutsideWaitPolicy::kHelp: the calling thread, outside the runtime's
  // jobs, joins node `node`'s arena in the slot kept for an outside thread
  // and calls `wait` there (which runs the node's jobs until what it waits
  // for is done). False, with nothing called, where it may not help (the
  // policy is kSleep, another thread helps there, the thread is inside a
  // TBB arena already or bound outside the node, the runtime is shut
  // down): the caller then waits as kSleep does.
  bool HelpOutside(int node, absl::FunctionRef<void()> wait);
  // The node whose PUs contain the calling thread's binding, for a frame's
  // wait (0 on a runtime of one node or one that does not pin); -1 if none.
  int OutsideHelpNode() const;
  // Jobs finished so far: done, failed, cancelled.
  std::array<uint64_t, 3> FinishedCounts() const;
  // Jobs accepted for `node` so far, from every thread.
  uint64_t SubmittedTo(int node) const;
  // Counts a submission to `node` from a thread outside the worker slots;
  // false if the runtime no longer accepts jobs (the caller then withdraws
  // it: Node::withdrawn).
  bool CountOutsideSubmission(int node);
  static void Release(jobs_internal::JobRecord* record);

  Config config_;
  std::unique_ptr<numa::Topology> owned_topology_;
  const numa::Topology* topology_ = nullptr;
  std::unique_ptr<numa::NumaAlloc> memory_;
  // Job records come from these pools (any thread may free).
  std::unique_ptr<SmartAlloc> control_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unique_ptr<FrameState> frame_;
  int total_workers_ = 0;
  // Threads inside HelpOutside now: the destructor waits for them to leave
  // the arenas before it frees the nodes.
  std::atomic<int> outside_helpers_{0};
  // The runtime pins workers (kNode, or kAuto on this machine); a node
  // without PUs still does not (Node::pinned).
  bool pinned_ = false;
  // StealPolicy::kWhenIdle over more than one node: a job that waits runs
  // the jobs it waits for that have not started, whatever their node
  // (stolen), as an idle node's thief would (see RunsInline). Set by Init.
  bool steal_while_waiting_ = false;
  int registered_parallelism_ = 0;  // Workers added to TBB's limit.

  // Read by every job, written almost never: a cache line of their own,
  // away from the counters submitters write.
  alignas(64) std::atomic<bool> accepting_{true};
  std::atomic<bool> cancel_all_{false};
  std::atomic<bool> trace_on_{false};
  alignas(64) std::atomic<uint64_t> next_id_{1};
  std::atomic<uint32_t> next_any_{0};
  std::atomic<uint64_t> refused_{0};
  // Jobs finished on threads outside the worker slots (a Cancel() from
  // the application, for one), by final state; the slots keep their own.
  alignas(64) std::atomic<uint64_t> finished_elsewhere_[3] = {};
  std::atomic<uint64_t> settled_elsewhere_{0};  // See CountSettled.
  uint64_t start_tsc_ = 0;

  // Serializes StartTrace; the rings are filled once, on first use.
  alloc_internal::Mutex trace_mu_;
  bool trace_rings_ready_ ABSL_GUARDED_BY(trace_mu_) = false;

  alloc_internal::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;

  // Held by FindStranded while it reads records through predecessor names
  // (JobRecord::inline_from).
  alloc_internal::Mutex walk_mu_;
  // Threads in FindStranded now (or about to be): a Finish that clears a
  // predecessor's name then waits for them on walk_mu_. Read by every
  // Finish of a job with successors, written by walks only: a line of its
  // own, away from the flags every job reads.
  alignas(64) std::atomic<int> stranded_walkers_{0};
};

// ---------------------------------------------------------------------------
// Implementation details.

namespace jobs_internal {

template <typename F, typename R>
void TypedJob<F, R>::Invoke(JobRecord* self, JobContext& ctx) {
  auto* job = static_cast<TypedJob*>(self);
  struct DropFn {
    TypedJob* job;
    ~DropFn() { job->fn.reset(); }
  } drop{job};
  if constexpr (std::is_void_v<R>) {
    if constexpr (std::is_invocable_v<F&, JobContext&>) {
      (*job->fn)(ctx);
    } else {
      (*job->fn)();
    }
    job->result.emplace();
  } else {
    if constexpr (std::is_invocable_v<F&, JobContext&>) {
      job->result.emplace((*job->fn)(ctx));
    } else {
      job->result.emplace((*job->fn)());
    }
    job->result_ptr = &*job->result;
  }
}

template <typename F, typename R>
void TypedJob<F, R>::Destroy(JobRecord* self) {
  auto* job = static_cast<TypedJob*>(self);
  SmartAlloc* pool = job->pool;
  job->~TypedJob();
  FreeRecord(pool, self, sizeof(TypedJob), alignof(TypedJob));
}

// A direct job: the user's function and its header in one TBB task,
// allocated from TBB's per-thread small-object pool and spawned into the
// worker's own deque, the way oneTBB's task_group::run builds its tasks
// (the same d1 layer of oneTBB's headers, which task_group, parallel_for
// and the flow graph are written on). No wait_context: the runtime's
// counters (JobCounter, the frame, the per-slot finished counts) say when
// it is done.
template <typename F>
class DirectTask final : public tbb::detail::d1::task {
 public:
  // Allocates and spawns a task for `fn` into `context` on the calling
  // worker's deque. REQUIRES: called by a thread of the context's arena.
  template <typename G>
  static void Spawn(G&& fn, const DirectHeader& header,
                    tbb::detail::d1::task_group_context& context) {
    DirectTask* task = Make(std::forward<G>(fn), header);
    TsanRelease(task);  // For the worker that runs it.
    tbb::detail::d1::spawn(*task, context);
  }
  // As Spawn, from a thread outside `arena`: into the arena's shared
  // queue, the way task_arena::enqueue does.
  template <typename G>
  static void Enqueue(G&& fn, const DirectHeader& header,
                      tbb::detail::d1::task_group_context& context,
                      tbb::task_arena& arena) {
    DirectTask* task = Make(std::forward<G>(fn), header);
    TsanRelease(task);
    tbb::detail::r1::enqueue(*task, context, &arena);
  }

  task* execute(tbb::detail::d1::execution_data& ed) override {
    TsanAcquire(this);  // Everything the spawner wrote, the task included.
    // RunDirect destroys the function before it accounts for the job: a
    // wait, EndFrame or Shutdown may end, and the runtime go, once it is
    // counted. Only the task's memory is left to free.
    header_.runtime->RunDirect(
        header_, &fn_, &Call,
        std::is_trivially_destructible_v<F> ? nullptr : &DestroyFn);
    Finalize(ed);
    return nullptr;
  }
  // Only when the context is cancelled, which the runtime never does; run
  // the job all the same (cancellation is the runtime's, not TBB's).
  task* cancel(tbb::detail::d1::execution_data& ed) override {
    return execute(ed);
  }

 private:
  static void Call(void* fn, JobContext& ctx) {
    F& f = *static_cast<F*>(fn);
    if constexpr (std::is_invocable_v<F&, JobContext&>) {
      f(ctx);
    } else {
      f();
    }
  }
  static void DestroyFn(void* fn) { static_cast<F*>(fn)->~F(); }
  template <typename G>
  DirectTask(G&& fn, const DirectHeader& header,
             tbb::detail::d1::small_object_pool* pool)
      : fn_(std::forward<G>(fn)), header_(header), pool_(pool) {}
  // Leaves fn_ alone: RunDirect destroyed it (DestroyFn).
  ~DirectTask() override {}

  // The task, its memory freed again if copying or moving the function
  // throws (the exception goes on to Runtime::Spawn).
  template <typename G>
  static DirectTask* Make(G&& fn, const DirectHeader& header) {
    tbb::detail::d1::small_object_pool* pool = nullptr;
    void* memory = Allocate(pool);
#if defined(__cpp_exceptions)
    if constexpr (!std::is_nothrow_constructible_v<F, G&&>) {
      try {
        return new (memory) DirectTask(std::forward<G>(fn), header, pool);
      } catch (...) {
        Free(memory, pool);
        throw;
      }
    }
#endif
    return new (memory) DirectTask(std::forward<G>(fn), header, pool);
  }
  static void Free(void* memory, tbb::detail::d1::small_object_pool* pool) {
#if defined(FRAMEALLOC_JOBS_TSAN)
    (void)pool;
    ::operator delete (memory, sizeof(DirectTask),
                       std::align_val_t{alignof(DirectTask)});
#else
    tbb::detail::r1::deallocate(*pool, memory, sizeof(DirectTask));
#endif
  }

  // The task's memory. Normally TBB's per-thread small-object pool, as for
  // task_group's tasks. Under ThreadSanitizer, the heap instead: the pool
  // hands memory from thread to thread inside uninstrumented libtbb, and
  // between TBB's own tasks (task_group's, task_arena::enqueue's), which
  // carry no annotations, and ours. A block one of those read on one thread
  // and ours then wrote on another looked like a race (5 runs in 30 of
  // OutsideWaitTest.ManyOutsideWaitersFinishEverything x20). TSan
  // intercepts the heap, so it knows each block is new.
  static void* Allocate(tbb::detail::d1::small_object_pool*& pool) {
#if defined(FRAMEALLOC_JOBS_TSAN)
    pool = nullptr;
    return ::operator new (sizeof(DirectTask),
                           std::align_val_t{alignof(DirectTask)});
#else
    return tbb::detail::r1::allocate(pool, sizeof(DirectTask));
#endif
  }

  void Finalize(const tbb::detail::d1::execution_data& ed) {
    tbb::detail::d1::small_object_pool* pool = pool_;
    this->~DirectTask();
#if defined(FRAMEALLOC_JOBS_TSAN)
    (void)pool;
    (void)ed;
    ::operator delete (this, sizeof(DirectTask),
                       std::align_val_t{alignof(DirectTask)});
#else
    tbb::detail::r1::deallocate(*pool, this, sizeof(DirectTask), ed);
#endif
  }

  union {
    F fn_;  // Constructed by the constructor, destroyed by RunDirect.
  };
  DirectHeader header_;
  tbb::detail::d1::small_object_pool* pool_;
};

// Reports a value() call on a job that did not succeed; never returns.
[[noreturn]] void FailedValueAccess(const JobRecord* record);

}  // namespace jobs_internal

template <typename R>
template <typename U, typename>
U& JobHandle<R>::value() const {
  auto* job = record_;
  if (job == nullptr || (job->state.load(std::memory_order_acquire) &
                         jobs_internal::kStateMask) != jobs_internal::kDone) {
    jobs_internal::FailedValueAccess(job);
  }
  // The record's dynamic type is TypedJob<F, R> for some F unknown here:
  // Invoke left the address of its result in result_ptr.
  return *static_cast<U*>(job->result_ptr);
}

template <typename F>
auto Runtime::Submit(F&& f, const SubmitOptions& options)
    -> JobHandle<typename jobs_internal::ResultOf<std::decay_t<F>>::type> {
  using R = typename jobs_internal::ResultOf<std::decay_t<F>>::type;
  auto* job = NewRecord(std::forward<F>(f), 2);  // Handle + scheduling.
  (void)Enqueue(job, options);
  return JobHandle<R>(job);
}

template <typename F>
jobs_internal::TypedJob<
    std::decay_t<F>, typename jobs_internal::ResultOf<std::decay_t<F>>::type>*
Runtime::NewRecord(F&& f, int refs) {
  using Fn = std::decay_t<F>;
  static_assert(std::is_nothrow_destructible_v<Fn>,
                "a job function, and what it captures, must not throw from "
                "its destructor (it is destroyed where no caller could "
                "catch it: a worker, or the last handle's owner)");
  using Job =
      jobs_internal::TypedJob<Fn, typename jobs_internal::ResultOf<Fn>::type>;
  void* memory = AllocateRecord(sizeof(Job), alignof(Job));
  auto* job = new (memory) Job();
#if defined(__cpp_exceptions)
  try {
#endif
    job->fn.emplace(std::forward<F>(f));
#if defined(__cpp_exceptions)
  } catch (...) {
    job->~Job();
    jobs_internal::FreeRecord(control_.get(), memory, sizeof(Job),
                              alignof(Job));
    throw;
  }
#endif
  job->pool = control_.get();
  job->invoke = &Job::Invoke;
  job->destroy = &Job::Destroy;
  job->refs.store(refs, std::memory_order_relaxed);
  return job;
}

template <typename F>
absl::Status Runtime::Spawn(F&& f, const SubmitOptions& options) {
  using Fn = std::decay_t<F>;
  static_assert(std::is_nothrow_destructible_v<Fn>,
                "a job function, and what it captures, must not throw from "
                "its destructor (it is destroyed on a worker, where no "
                "caller could catch it)");
  jobs_internal::DirectHeader header;
  if (const DirectTarget target = PrepareDirect(options, &header);
      target.context != nullptr) {
#if defined(__cpp_exceptions)
    try {
#endif
      if (target.arena == nullptr) {
        jobs_internal::DirectTask<Fn>::Spawn(std::forward<F>(f), header,
                                             *target.context);
      } else {
        jobs_internal::DirectTask<Fn>::Enqueue(std::forward<F>(f), header,
                                               *target.context, *target.arena);
      }
#if defined(__cpp_exceptions)
    } catch (...) {
      AbandonDirect(header);
      throw;
    }
#endif
    return absl::OkStatus();
  }
  return Enqueue(NewRecord(std::forward<F>(f), 1), options);  // Scheduling.
}

template <typename F>
absl::Status Runtime::ParallelFor(const NodePartition& partition, size_t grain,
                                  F&& f) {
  return ParallelForImpl(
      partition, grain,
      [&f](JobContext& ctx, size_t begin, size_t end) { f(ctx, begin, end); });
}

namespace jobs_internal {

inline void ChildTask::operator()() const {
  TsanAcquire(parent);  // Everything the parent did before spawning.
#if defined(FRAMEALLOC_JOBS_TSAN)
  try {
    runtime->RunChild(*parent, fn, call);
  } catch (...) {
    // The exception reaches the waiting parent through libtbb: its object,
    // made here, must be ordered before the parent reads or destroys it.
    TsanRelease(parent);
    throw;
  }
#else
  runtime->RunChild(*parent, fn, call);
#endif
  TsanRelease(parent);  // Everything this child did, for the parent.
}

inline ChildTask::~ChildTask() { TsanAcquire(parent); }

template <typename F>
void CallChild(void* fn, JobContext& ctx) {
  (*static_cast<F*>(fn))(ctx);
}

// One parallel-for chunk body: TBB copies it into its tasks.
template <typename F>
struct ChunkBody {
  Runtime* runtime;
  const JobContext* parent;
  F* f;
  FRAMEALLOC_JOBS_NO_TSAN void operator()(
      const tbb::blocked_range<size_t>& r) const {
    Runtime* rt = runtime;
    const JobContext* p = parent;
    F* fn = f;
    const size_t begin = r.begin();
    const size_t end = r.end();
    TsanAcquire(p);
    auto chunk = [fn, begin, end](JobContext& child) {
      (*fn)(child, begin, end);
    };
#if defined(FRAMEALLOC_JOBS_TSAN)
    try {
      rt->RunChild(*p, chunk);
    } catch (...) {
      TsanRelease(p);  // As ChildTask: the exception object, for the waiter.
      throw;
    }
#else
    rt->RunChild(*p, chunk);
#endif
    TsanRelease(p);
  }
};

}  // namespace jobs_internal

namespace jobs_internal {

// Runs `body` in a new isolated region (tbb::this_task_arena::isolate): a
// worker waiting inside it runs only tasks spawned inside it, never an
// unrelated job that could use the same arenas. `ctx` is marked isolated
// meanwhile, so nested forks on it reuse the region.
template <typename Body>
void IsolateJob(JobContext& ctx, Body& body) {
  struct Restore {
    bool& flag;
    ~Restore() { flag = false; }
  } restore{ctx.isolated_};
  ctx.isolated_ = true;
  tbb::this_task_arena::isolate(body);
}

}  // namespace jobs_internal

template <typename... Fs>
void JobContext::Fork(Fs&&... fs) {
  static_assert(sizeof...(Fs) >= 1, "Fork needs at least one function");
  if (ABSL_PREDICT_FALSE(!InOwnArena())) {
    // Inside another task_arena: one after another, here (see ParallelFor).
    size_t index = 0;
    constexpr size_t kLast = sizeof...(Fs) - 1;
    auto run = [&](auto& fn) {
      using Fn = std::remove_reference_t<decltype(fn)>;
      if (index++ == kLast) {
        fn(*this);
      } else {
        runtime_->RunChild(*this,
                           const_cast<void*>(static_cast<const void*>(&fn)),
                           &jobs_internal::CallChild<Fn>);
      }
    };
    (run(fs), ...);
    return;
  }
  auto body = [&](tbb::task_group& group) {
    // Every function but the last goes to the node's workers; the caller
    // runs the last, then helps with the rest in group.wait().
    size_t index = 0;
    constexpr size_t kLast = sizeof...(Fs) - 1;
    struct WaitOnUnwind {
      tbb::task_group& group;
      const JobContext* ctx;
      bool armed = true;
      ~WaitOnUnwind() {
        if (armed) {
          // An exception is leaving: the children must finish before
          // their captures go, and one of theirs rethrown by wait() must
          // not leave this destructor (std::terminate): the one already in
          // flight wins.
          group.cancel();
          try {
            group.wait();
          } catch (...) {
            jobs_internal::TsanAcquire(ctx);  // Before it is destroyed.
          }
          jobs_internal::TsanAcquire(ctx);
        }
      }
    } guard{group, this};
    auto dispatch = [&](auto& fn) {
      using Fn = std::remove_reference_t<decltype(fn)>;
      if (index++ == kLast) {
        // Same thread, same slot, same arena: the caller's own context.
        fn(*this);
      } else {
        jobs_internal::TsanRelease(this);
        group.run(jobs_internal::ChildTask{
            runtime_, this, const_cast<void*>(static_cast<const void*>(&fn)),
            &jobs_internal::CallChild<Fn>});
      }
    };
    (dispatch(fs), ...);
    guard.armed = false;
    tbb::task_group_status status;
#if defined(FRAMEALLOC_JOBS_TSAN)
    try {
      status = group.wait();
    } catch (...) {
      jobs_internal::TsanAcquire(this);  // A child's exception (see above).
      throw;
    }
#else
    status = group.wait();
#endif
    jobs_internal::TsanAcquire(this);
    // No child threw, yet the group was cancelled: only an enclosing
    // group's failure does that (in a child or chunk; a job's own group is
    // isolated), and children may have been skipped.
    if (status == tbb::task_group_status::canceled) {
      throw NestedWorkCancelled();
    }
  };
  auto run = [&](tbb::task_group& group) {
    if (isolated_) {
      body(group);
    } else {
      // The job's first fork: one isolated region for its whole fork tree.
      auto region = [&] { body(group); };
      jobs_internal::IsolateJob(*this, region);
    }
  };
  if (in_child_) {
    // A child's fork: task_group's own context, bound to the enclosing
    // group, whose failure cancels it.
    tbb::task_group group;
    run(group);
  } else {
    // A job's own fork: isolated from whatever group the thread is running
    // (NestedKind), with task_group's default traits. (Through a proxy
    // context: one indirection, paid once per job, not per nested fork.)
    tbb::task_group_context context(
        tbb::task_group_context::isolated,
        tbb::task_group_context::default_traits |
            tbb::task_group_context::concurrent_wait);
    tbb::task_group group(context);
    run(group);
  }
}

template <typename F>
void JobContext::ParallelFor(size_t begin, size_t end, size_t grain, F&& f) {
  if (begin >= end) return;
  if (grain == 0) grain = 1;
  using Fn = std::remove_reference_t<F>;
  if (ABSL_PREDICT_FALSE(!InOwnArena())) {
    // Inside another task_arena: the chunks one after another, here.
    const jobs_internal::ChunkBody<Fn> chunk{runtime_, this, &f};
    for (size_t b = begin; b < end;) {
      const size_t e = end - b > grain ? b + grain : end;
      chunk(tbb::blocked_range<size_t>(b, e, grain));
      b = e;
    }
    return;
  }
  // In a child or chunk, bound to the running task's context, as
  // parallel_for's own would be: an enclosing Fork's or ParallelFor's
  // failure cancels it too, chunks may then be skipped, and the caller must
  // not go on as if they ran. A job's own is isolated (NestedKind). (Made
  // before the release below: chunks on other threads read it.)
  tbb::task_group_context context(NestedKind());
  jobs_internal::TsanRelease(this);
  auto body = [&] {
    // simple_partitioner: split down to the grain, as promised above
    // (auto_partitioner stops early: chunks of 4 items for grain 1).
    tbb::parallel_for(tbb::blocked_range<size_t>(begin, end, grain),
                      jobs_internal::ChunkBody<Fn>{runtime_, this, &f},
                      tbb::simple_partitioner(), context);
    if (context.is_group_execution_cancelled()) throw NestedWorkCancelled();
  };
#if defined(FRAMEALLOC_JOBS_TSAN)
  try {
#endif
    if (isolated_) {
      body();
    } else {
      jobs_internal::IsolateJob(*this, body);
    }
#if defined(FRAMEALLOC_JOBS_TSAN)
  } catch (...) {
    jobs_internal::TsanAcquire(this);  // A chunk's exception (ChunkBody).
    throw;
  }
#endif
  jobs_internal::TsanAcquire(this);
}

}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_RUNTIME_H_
