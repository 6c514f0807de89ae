// jobs::Config: how a Runtime is laid out on the machine.
//
// For: choosing the topology, the number of workers per NUMA node, whether
// workers are pinned, whether a node may run another node's jobs, how each
// node's memory is bound and how each node's SmartAlloc is configured.
// Fluent setters, validated by Runtime::Create (InvalidArgument naming the
// field, FailedPrecondition for pinning a topology that cannot bind).
// Not for: per-job choices (SubmitOptions in jobs/runtime.h).
#ifndef JOBS_CONFIG_H_
#define JOBS_CONFIG_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "alloc/smart_alloc.h"
#include "numa/node_memory_source.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {

// Whether the runtime binds its worker threads to their node's PUs.
enum class PinningPolicy {
  // Pin when the topology is this machine's (Topology::is_this_system()
  // and thread binding is supported); otherwise jobs still run on their
  // logical node, nothing is bound, and Runtime::pinned() says so. A node
  // without PUs (memory only, or its PUs outside the process's CPU set)
  // has its workers unpinned (Runtime::node_pinned). A worker whose
  // binding fails anyway runs unpinned, counted in NodeStats::pin_failures.
  kAuto,
  // Always pin; Runtime::Create fails with FailedPrecondition where the
  // topology cannot bind threads (synthetic, XML, no binding support) or
  // a node has no PU to bind to.
  kNode,
  // Never pin: workers float over the machine (a thread pool next to
  // others that are pinned, or a container without sched_setaffinity).
  kNone,
};

// Whether a job with node affinity may run on another node.
enum class StealPolicy {
  // A job submitted to node k runs on node k's workers, always.
  kStrict,
  // A job submitted to node k prefers node k; a node with no work of its
  // own takes queued jobs of a node that has more than it can run. Such
  // jobs see the thief's node in their context (its arena, its memory) and
  // are counted in WorkerStats::jobs_stolen. On more than one node, a job
  // that waits (on a counter, a handle, or a job's declared predecessors)
  // also runs the jobs it waits for that no worker has taken, whatever
  // their node, as stolen jobs: a waiting worker is an idle one, and jobs
  // of different nodes that wait on each other's nodes do not deadlock
  // for want of a free worker (docs/jobs.md, "Waiting inside a job").
  kWhenIdle,
};

// What Shutdown (and the destructor) does with jobs that have not started.
enum class ShutdownMode {
  kFinish,  // Run them; returns when every submitted job has finished.
  kCancel,  // Cancel them (their handles say Cancelled); running jobs finish.
};

// What a thread outside the runtime (one that is not running one of its
// jobs: the main loop, a server's request thread) does while it waits for
// jobs: JobCounter::Wait, JobRef::Wait, Runtime::ParallelFor, EndFrame.
enum class OutsideWaitPolicy {
  // Spin for up to 50 us, then sleep until the jobs are done. The thread
  // runs nothing of the runtime's; waking it costs a futex wake-up (tens
  // of microseconds in a VM) after the last job.
  kSleep,
  // Join the node's task arena in the slot it keeps for an outside thread
  // and run the node's jobs until the wait is over, as a thread that
  // waits in tbb::task_arena::execute does: the jobs it waits for may run
  // on it at once, with no worker to wake first and no wake-up after the
  // last one. Jobs it runs see a worker slot of their own (index
  // Runtime::workers(node), its own frame arena) and count in
  // WorkerStats like a worker's. One thread helps per node at a time
  // (others sleep); it helps only where its jobs would keep their
  // affinity: on a runtime of one node, or of several nodes that pins its
  // workers, only a thread bound within the node's PUs (see
  // numa::BindThreadToNode). The cost: the wait may return only after the
  // job it picked up last, which may be unrelated and long, and a job that
  // blocks until the waiting thread does something after its wait would
  // never finish. Use it for a frame loop's main thread (whose jobs are
  // short and its own), not for threads that must answer quickly.
  kHelp,
};

// The policies' names as the statistics and errors print them ("?" for a
// value outside the enum).
absl::string_view PinningPolicyName(PinningPolicy p);
absl::string_view OutsideWaitPolicyName(OutsideWaitPolicy p);
absl::string_view StealPolicyName(StealPolicy p);

// What Runtime::Create builds: the topology, workers, policies and memory.
// Each field is checked by Validate() (and Create), which names the bad
// field; the set_* functions chain.
struct Config {
  // The machine's layout. Not owned; must outlive the runtime. Null: the
  // runtime discovers this machine's topology and owns it.
  const numa::Topology* topology = nullptr;
  // Workers on every node; 0: one per processing unit of the node.
  int workers_per_node = 0;
  // Per-node override (size == number of nodes; each >= 1). Wins over
  // workers_per_node when non-empty.
  std::vector<int> node_workers;
  PinningPolicy pinning = PinningPolicy::kAuto;
  StealPolicy stealing = StealPolicy::kStrict;
  // How each node's memory source binds its blocks (numa/node_memory_source.h).
  numa::MemoryPolicy memory_policy = numa::MemoryPolicy::kAdvisory;
  // The configuration of every node's SmartAlloc; its `arena` options also
  // shape the per-worker frame arenas. Its `source` must be null.
  AllocConfig alloc;
  // Record every job's start and end from the start (see
  // Runtime::StartTrace). Events kept per worker, oldest dropped first:
  // 1..kMaxTraceEventsPerWorker, 40 bytes each, allocated for every worker
  // slot when tracing first starts.
  bool trace = false;
  size_t trace_events_per_worker = size_t{1} << 16;
  // Frames whose timings Runtime::frame_history() keeps, oldest dropped
  // first: 0..kMaxFrameHistory (0: none).
  size_t frame_history = 256;
  // What the destructor does with pending jobs.
  ShutdownMode shutdown = ShutdownMode::kFinish;
  // How threads outside the runtime wait for its jobs.
  OutsideWaitPolicy outside_wait = OutsideWaitPolicy::kSleep;
  // Where the runtime's own bookkeeping (job records, dependency edges)
  // takes its pool pages; not owned, must outlive the runtime. nullptr:
  // SystemMemorySource::Default(). A refusal there is a fatal out-of-memory
  // report (alloc/error.h): with a throwing handler, the exception leaves
  // Submit or Spawn and the job is not submitted. For tests that make the
  // runtime's own allocations fail, and hosts that account for them.
  MemorySource* record_source = nullptr;

  Config& set_topology(const numa::Topology* t) {
    topology = t;
    return *this;
  }
  Config& set_workers_per_node(int n) {
    workers_per_node = n;
    return *this;
  }
  Config& set_node_workers(std::vector<int> n) {
    node_workers = std::move(n);
    return *this;
  }
  Config& set_pinning(PinningPolicy p) {
    pinning = p;
    return *this;
  }
  Config& set_stealing(StealPolicy p) {
    stealing = p;
    return *this;
  }
  Config& set_memory_policy(numa::MemoryPolicy p) {
    memory_policy = p;
    return *this;
  }
  Config& set_alloc(AllocConfig c) {
    alloc = std::move(c);
    return *this;
  }
  Config& set_trace(bool on) {
    trace = on;
    return *this;
  }
  Config& set_trace_events_per_worker(size_t n) {
    trace_events_per_worker = n;
    return *this;
  }
  Config& set_frame_history(size_t n) {
    frame_history = n;
    return *this;
  }
  Config& set_shutdown(ShutdownMode m) {
    shutdown = m;
    return *this;
  }
  Config& set_outside_wait(OutsideWaitPolicy p) {
    outside_wait = p;
    return *this;
  }
  Config& set_record_source(MemorySource* s) {
    record_source = s;
    return *this;
  }

  // Checks the fields that do not depend on the topology (InvalidArgument
  // naming the field). Runtime::Create checks the rest.
  absl::Status Validate() const;
};

// The largest number of workers one node may have.
inline constexpr int kMaxWorkersPerNode = 256;
// The most frames Config::frame_history may keep: over four hours at 60
// frames a second, 64 MiB of timings.
inline constexpr size_t kMaxFrameHistory = size_t{1} << 20;
// The most events Config::trace_events_per_worker may keep: 160 MiB per
// worker slot.
inline constexpr size_t kMaxTraceEventsPerWorker = size_t{1} << 22;

}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_CONFIG_H_
