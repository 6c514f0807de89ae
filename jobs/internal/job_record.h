// The shared state of one submitted job: its function, result, state
// machine, dependants and reference count.
//
// For: jobs/runtime.h and jobs/runtime.cc only. Not for: users, who hold
// JobHandle<R> (a counted reference to a record).
//
// States: kWaiting (predecessors unfinished) -> kQueued (a token for it is
// posted to a node) -> kRunning -> kDone | kFailed; or kWaiting/kQueued ->
// kCancelling -> kCancelled. Exactly one thread wins the kQueued -> kRunning
// claim: the node's token, another node's thief, or a waiter running the job
// inline; it may still cancel the job (kRunning -> kCancelling) if its
// counter or the runtime was cancelled, unless kRunPromisedBit is set. A
// job made ready by Schedule with a counter (and, under kWhenIdle on more
// than one node, every counted job Enqueue submits) is kQueued |
// kListingBit, not to be claimed, until it is listed on the counter. Bit
// kWaiterBit marks a thread asleep on the state word (C++20 atomic::wait),
// or helping in TBB until the job turns ready or final (OutsideHelpers in
// runtime.cc), so finishing a job only makes a system call, or releases
// helpers, when somebody waits on it.
#ifndef JOBS_INTERNAL_JOB_RECORD_H_
#define JOBS_INTERNAL_JOB_RECORD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>

#include "absl/status/status.h"

namespace framealloc {

class SmartAlloc;

namespace jobs {

class JobContext;
class JobCounter;
class Runtime;

namespace jobs_internal {

enum JobState : uint32_t {
  kWaiting = 0,
  kQueued = 1,
  kRunning = 2,
  // Claimed by a cancellation (from kWaiting or kQueued, or from kRunning
  // by the claimer: see kRunPromisedBit), not final yet:
  // Finish still writes the status and then moves it to kCancelled. (Made
  // final by the claim itself, a waiter could read the status before it
  // was written: a TSan run saw Wait() return OK for a cancelled job.)
  kCancelling = 3,
  kDone = 4,
  kFailed = 5,
  kCancelled = 6,
};
inline constexpr uint32_t kStateMask = 0xff;
inline constexpr uint32_t kWaiterBit = 0x100;
// Set by a JobRef::Cancel that found the job kRunning and returned false
// ("it runs"): the claimer may no longer cancel it.
inline constexpr uint32_t kRunPromisedBit = 0x200;

// Set by Schedule (or, under kWhenIdle on more than one node, Enqueue)
// from the job's turn to kQueued until it has listed the job on its
// counter (JobCounter::NoteReady: a lock and a release of the helpers):
// until then nobody may claim or cancel it (Claim and Transition wait), so
// that it cannot finish, and its counter's owner destroy the counter,
// while the lister still uses the counter.
inline constexpr uint32_t kListingBit = 0x400;
// Set with kListingBit and kept to the end: the job was listed on its
// counter, and Finish takes it off the list if a waiter has not.
inline constexpr uint32_t kListedBit = 0x800;

inline bool IsFinal(uint32_t word) { return (word & kStateMask) >= kDone; }

// JobRecord::on_list.
inline constexpr uint8_t kNotListed = 0;
inline constexpr uint8_t kOnWaitingList = 1;
inline constexpr uint8_t kOnReadyList = 2;

struct JobRecord;

// One edge "when this finishes, tell `job`".
struct Successor {
  JobRecord* job;
  Successor* next;
};

// The successor list once the job has finished: nothing may be added.
inline Successor* const kClosedList = reinterpret_cast<Successor*>(1);

// An edge past a job's inline ones, taken from the pool at submission and
// owned by the job it leads to (freed with its record): it also names the
// predecessor, until that one finishes, and chains the job's other pool
// edges.
struct ExtraEdge : Successor {
  std::atomic<JobRecord*> from{nullptr};
  ExtraEdge* sibling = nullptr;
};

struct JobRecord {
  // Runs the function with `ctx` and stores the result. May throw: the
  // runtime catches and records the exception.
  void (*invoke)(JobRecord* self, JobContext& ctx) = nullptr;
  // Destroys the function and result and frees the record.
  void (*destroy)(JobRecord* self) = nullptr;

  std::atomic<uint32_t> state{kWaiting};
  // References: the submitter's handle (if any), the scheduling path, each
  // token or thief that may still look at the record.
  std::atomic<int32_t> refs{1};
  // Unfinished predecessors, plus one while the submission is in progress.
  std::atomic<int32_t> unmet{1};
  // A predecessor failed or was cancelled: this job is cancelled too.
  std::atomic<bool> predecessor_failed{false};
  // Handle::Cancel() asked for cancellation (seen by the running job too).
  std::atomic<bool> cancel_requested{false};
  // Counted in its node's `queued` (StealPolicy::kWhenIdle): whoever first
  // takes it out of the count (the thread that pops its queue entry, or
  // the one that runs or cancels it by another way) clears this.
  std::atomic<bool> queued_count{false};
  std::atomic<Successor*> successors{nullptr};
  // The edges for this job's first kInlineEdges predecessors, kept in the
  // record itself (on their successor lists) instead of allocated: most
  // jobs have one or two. Alive as long as the edge is on a list: the job
  // cannot run, or be freed, before every predecessor has let go of it.
  static constexpr int kInlineEdges = 2;
  Successor inline_edges[kInlineEdges] = {};
  bool IsInlineEdge(const Successor* edge) const {
    const auto at = reinterpret_cast<uintptr_t>(edge);
    const auto first = reinterpret_cast<uintptr_t>(&inline_edges[0]);
    return at >= first && at < first + sizeof(inline_edges);
  }

  Runtime* runtime = nullptr;
  JobCounter* counter = nullptr;  // Not owned; may be null.
  const char* name = nullptr;     // Static string or null.
  uint64_t id = 0;
  int node = 0;           // Node the job was submitted to.
  bool in_frame = false;  // Counted in the frame open at submission.

  // Written by the thread that finishes the job, before the state becomes
  // final (release); read by waiters after they see it (acquire).
  absl::Status status;
  std::exception_ptr exception;
  // The result, set by invoke (null for void jobs and until it returns).
  void* result_ptr = nullptr;

  // Its place on one of its counter's lists: a job with predecessors is
  // on the waiting list from its submission (JobCounter::NoteWaiting), on
  // the ready list once Schedule made it ready (JobCounter::NoteReady),
  // until it finishes or a waiter takes it (or, on the waiting list, sees
  // it started). Guarded by the counter's helpers_mu_ (next_ready also
  // chains the jobs a waiter took, on its own).
  JobRecord* next_ready = nullptr;
  JobRecord* prev_ready = nullptr;
  uint8_t on_list = 0;  // kNotListed, kOnWaitingList or kOnReadyList.

  // The pool the record came from (the runtime's), which outlives the
  // runtime while records are alive (Runtime::~Runtime). Last, with the
  // other cold fields: placed after `runtime`, where it moved the fields
  // the worker and the submitter write by 8 bytes, it made the declared
  // chain of jobs_benchmark 1.45x slower (116-128 ns a job against 80-83,
  // three alternated runs each, 27 Nov).
  SmartAlloc* pool = nullptr;

  // The job's unfinished predecessors, for a wait inside a job that looks
  // for the ones it must run itself (Runtime::FindStranded): inline_from[k]
  // names the predecessor whose list holds inline_edges[k], the pool edges
  // name theirs, each cleared (seq_cst) by that predecessor's Finish. A
  // non-null name read under the runtime's walk_mu_ is a live record: a
  // Finish that clears a name waits for the walkers (Runtime::Finish).
  std::atomic<JobRecord*> inline_from[kInlineEdges] = {};
  ExtraEdge* extra_edges = nullptr;  // Owned; chained by `sibling`.
};

// Gives a record's memory back to `pool` (its JobRecord::pool).
void FreeRecord(SmartAlloc* pool, void* record, size_t size, size_t alignment);

}  // namespace jobs_internal
}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_INTERNAL_JOB_RECORD_H_
