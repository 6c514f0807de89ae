// A randomized, model-checked test of the runtime's data-parallel APIs:
// Runtime::ParallelFor (from outside and from inside jobs and fork
// children), JobContext::ParallelFor, NodeArray and BatchProcessor.
//
// Each iteration builds, from a seed, a random program and runs it on a
// runtime with a random Config (1 or 2 synthetic nodes, 1-2 workers each,
// kStrict or kWhenIdle stealing, kSleep or kHelp outside waits): 1-3
// rounds, each inside a frame or not, each a list of calls made by the main
// thread and sometimes by a second outside thread at the same time:
//   - Runtime::ParallelFor over a random partition (empty, one item, fewer
//     items than the grain, uneven or empty ranges, several ranges on one
//     node, nodes out of order, now and then an invalid one) with a random
//     grain (0, 1, small, huge), from outside or from a job (Submit, with a
//     counter of its own; sometimes from a fork child of the job);
//   - ctx.ParallelFor(begin, end, grain, f) inside a job;
//   - BatchProcessor::ProcessAll over a NodeArray (a structure of arrays of
//     two columns) with a random batch size, from outside or from a job.
// Bodies visit their items (a per-item atomic count), check where they run
// and what chunk they got, may run a nested ctx.ParallelFor, allocate from
// ctx.arena() (frame memory is checked again just before EndFrame), throw
// at chosen items, and cancel the calling job (its counter) at a chosen
// item; the main thread also cancels calling jobs right after submitting
// them. The calling job returns the call's status, or throws it.
// Checked against jobs/runtime.h and jobs/parallel.h: on success every item
// exactly once; on failure none twice and the status is a failure that
// happened (Unknown naming a thrown exception, or Cancelled only when the
// caller was cancelled); chunks within one node range and at most `grain`
// items; each range on its node (ctx.node() under kStrict; else the node or
// ctx.stolen()); batches on their home node; cancel_requested() only when
// asked; in_frame(); the statistics' identities (submitted = completed +
// failed + cancelled, the model's count of submissions, and jobs_run summed
// over the slots = jobs that ran + child runs); Shutdown clean.
//
// Waits across nodes inside jobs: under kWhenIdle a stolen job that waits
// across nodes can deadlock (docs/jobs.md, "Waiting inside a job"), so
// there every range a job waits on is moved to the node the job runs on;
// under kStrict only node 0's jobs wait on node 1 (never the other way
// round), since every worker of two nodes waiting on the other deadlocks
// under any policy. Those hung now and then with node 1 idle: a worker
// asleep in TBB's wait for jobs queued on another node's arena left that
// arena with no thread (oneTBB 2021.8). JobCounter::Wait now sleeps outside
// TBB when all its jobs are remote, and when some are local keeps its
// arena from looking empty while it helps (Runtime::AwakeHold;
// RuntimeParallelTest.AJobWaitingOnAnIdleNodesJobsFinishes and
// ...OnLocalAndRemoteJobsFinishes). PARALLEL_MODEL_CROSS_NODE_WAITS=0
// leaves them out.
//
// Seeds: a fixed list; PARALLEL_MODEL_SEEDS=a,b,c runs those instead;
// PARALLEL_MODEL_HANG_SECONDS=t sets the watchdog, which prints the seed
// and aborts a hung iteration; PARALLEL_MODEL_VERBOSE=1 prints each program;
// PARALLEL_MODEL_CROSS_NODE_WAITS=0 leaves out kStrict cross-node waits in
// jobs.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "jobs/internal/model_harness.h"
#include "jobs/parallel.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

using model_harness::TopologyOf;
using model_harness::Watchdog;

using model_harness::kSanitized;

bool CrossNodeWaits() {
  static const bool on = [] {
    const char* env = std::getenv("PARALLEL_MODEL_CROSS_NODE_WAITS");
    return env == nullptr || std::string(env) != "0";
  }();
  return on;
}

constexpr int kIterations = kSanitized ? 1000 : 2000;

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  int Uniform(int lo, int hi) {  // [lo, hi]
    return std::uniform_int_distribution<int>(lo, hi)(engine_);
  }
  bool Chance(double p) {
    return std::uniform_real_distribution<double>(0, 1)(engine_) < p;
  }

 private:
  std::mt19937_64 engine_;
};

// ---- The program ----------------------------------------------------------

enum class Api {
  kOutside,  // Runtime::ParallelFor from a thread outside the runtime.
  kInJob,    // Runtime::ParallelFor from a job (or its fork child).
  kContext,  // ctx.ParallelFor in a job.
  kBatch,    // BatchProcessor::ProcessAll, from outside or from a job.
};

struct CallSpec {
  int id = 0;
  int round = 0;
  int thread = 0;  // 0: main; 1: the second outside thread.
  Api api = Api::kOutside;
  NodePartition partition;  // kOutside, kInJob, kBatch.
  bool valid = true;        // The partition passes Check.
  size_t lo = 0, hi = 0;    // kContext: [lo, hi).
  size_t grain = 1;         // Batch size for kBatch.
  std::vector<size_t> throw_at;
  size_t cancel_at = SIZE_MAX;  // kInJob: cancels the caller's counter.
  bool cancel_handle = false;   // The main thread cancels the calling job.
  bool in_job = false;          // kBatch from a job.
  bool via_fork = false;        // kInJob from a fork child.
  bool job_throws = false;      // The calling job rethrows a failure.
  int job_node = -1;            // The calling job's node; -1: any.
  int arena_words = 0;
  bool nested = false;  // Chunks visit through a nested ctx.ParallelFor.
  int spin_us = 0;
};

const char* ApiName(Api api) {
  switch (api) {
    case Api::kOutside:
      return "Runtime::ParallelFor from outside";
    case Api::kInJob:
      return "Runtime::ParallelFor in a job";
    case Api::kContext:
      return "ctx.ParallelFor";
    case Api::kBatch:
      return "BatchProcessor";
  }
  return "?";
}

struct Plan {
  uint64_t seed = 0;
  int nodes = 1;
  std::vector<int> workers;
  StealPolicy stealing = StealPolicy::kStrict;
  OutsideWaitPolicy outside = OutsideWaitPolicy::kSleep;
  ShutdownMode shutdown = ShutdownMode::kFinish;
  std::vector<bool> frame;   // Per round.
  std::vector<bool> second;  // Per round: a second outside thread.
  std::vector<CallSpec> calls;

  std::string Describe() const {
    std::string out = absl::StrCat(
        "seed ", seed, ": ", nodes, " node(s), workers {",
        absl::StrJoin(workers, ","), "}, ", StealPolicyName(stealing),
        ", outside wait ", OutsideWaitPolicyName(outside), ", ", frame.size(),
        " round(s), ", calls.size(), " calls");
    for (const CallSpec& c : calls) {
      std::string ranges;
      for (const NodeRange& r : c.partition.ranges()) {
        absl::StrAppend(&ranges, " n", r.node, "[", r.begin, ",", r.end, ")");
      }
      absl::StrAppend(
          &out, "\n  call ", c.id, " (round ", c.round, ", thread ", c.thread,
          "): ", ApiName(c.api), c.in_job ? " in a job" : "",
          c.via_fork ? " via a fork child" : "", ", grain ", c.grain,
          c.api == Api::kContext ? absl::StrCat(", [", c.lo, ",", c.hi, ")")
                                 : absl::StrCat(",", ranges),
          c.valid ? "" : " (invalid)", ", throws at {",
          absl::StrJoin(c.throw_at, ","), "}",
          c.cancel_at != SIZE_MAX ? absl::StrCat(", cancels at ", c.cancel_at)
                                  : "",
          c.cancel_handle ? ", handle cancelled" : "",
          c.nested ? ", nested" : "");
    }
    return out;
  }
};

size_t PickSize(Rng& rng) {
  switch (rng.Uniform(0, 5)) {
    case 0:
      return 0;
    case 1:
      return 1;
    case 2:
      return static_cast<size_t>(rng.Uniform(2, 5));
    case 3:
    case 4:
      return static_cast<size_t>(rng.Uniform(6, 64));
    default:
      return static_cast<size_t>(rng.Uniform(65, kSanitized ? 300 : 700));
  }
}

size_t PickGrain(Rng& rng) {
  static constexpr size_t kGrains[] = {
      0, 1, 1, 2, 3, 7, 16, 64, size_t{1} << 20};
  return kGrains[rng.Uniform(0, 8)];
}

NodePartition PickPartition(Rng& rng, int nodes, bool* valid) {
  const size_t n = PickSize(rng);
  *valid = true;
  switch (rng.Uniform(0, 9)) {
    case 0: {  // Proportional, maybe with a node of weight 0.
      std::vector<int> weights;
      for (int k = 0; k < nodes; ++k) weights.push_back(rng.Uniform(0, 3));
      if (n > 0 && std::all_of(weights.begin(), weights.end(),
                               [](int w) { return w == 0; })) {
        weights[0] = 1;
      }
      return NodePartition::Proportional(n, weights);
    }
    case 1: {  // Invalid: a gap, an overlap or a node that does not exist.
      *valid = false;
      switch (rng.Uniform(0, 2)) {
        case 0:
          return NodePartition({{0, 0, n}, {nodes - 1, n + 1, n + 3}});
        case 1:
          return NodePartition({{0, 0, n + 2}, {nodes - 1, 1, n + 4}});
        default:
          return NodePartition({{nodes, 0, n}});
      }
    }
    default: {  // 1-4 ranges at random cuts, random nodes.
      const int k = rng.Uniform(1, 4);
      std::vector<size_t> cuts;
      for (int i = 0; i + 1 < k; ++i) {
        cuts.push_back(
            static_cast<size_t>(rng.Uniform(0, static_cast<int>(n))));
      }
      std::sort(cuts.begin(), cuts.end());
      cuts.push_back(n);
      std::vector<NodeRange> ranges;
      size_t begin = 0;
      for (int i = 0; i < k; ++i) {
        const int node =
            rng.Chance(0.5) ? i % nodes : rng.Uniform(0, nodes - 1);
        ranges.push_back({node, begin, cuts[i]});
        begin = cuts[i];
      }
      return NodePartition(std::move(ranges));
    }
  }
}

Plan BuildPlan(uint64_t seed) {
  Rng rng(seed);
  Plan plan;
  plan.seed = seed;
  plan.nodes = rng.Chance(0.5) ? 1 : 2;
  for (int k = 0; k < plan.nodes; ++k)
    plan.workers.push_back(rng.Uniform(1, 2));
  plan.stealing =
      rng.Chance(0.5) ? StealPolicy::kStrict : StealPolicy::kWhenIdle;
  plan.outside =
      rng.Chance(0.5) ? OutsideWaitPolicy::kSleep : OutsideWaitPolicy::kHelp;
  plan.shutdown =
      rng.Chance(0.5) ? ShutdownMode::kFinish : ShutdownMode::kCancel;
  const int rounds = rng.Uniform(1, 3);
  for (int r = 0; r < rounds; ++r) {
    plan.frame.push_back(rng.Chance(0.5));
    plan.second.push_back(rng.Chance(0.3));
    const int calls = rng.Uniform(2, 8);
    for (int i = 0; i < calls; ++i) {
      CallSpec c;
      c.id = static_cast<int>(plan.calls.size());
      c.round = r;
      c.thread = plan.second[r] && rng.Chance(0.4) ? 1 : 0;
      const int api = rng.Uniform(0, 9);
      c.api = api < 3   ? Api::kOutside
              : api < 6 ? Api::kInJob
              : api < 8 ? Api::kContext
                        : Api::kBatch;
      c.grain = PickGrain(rng);
      size_t n = 0;
      if (c.api == Api::kContext) {
        n = PickSize(rng);
        c.hi = n;
        c.lo = rng.Chance(0.7) ? 0 : static_cast<size_t>(rng.Uniform(0, 3));
        if (c.lo > c.hi && rng.Chance(0.5)) c.lo = c.hi;
        n = std::max(c.lo, c.hi);
      } else {
        c.partition = PickPartition(rng, plan.nodes, &c.valid);
        if (c.api == Api::kBatch && !c.valid) {
          c.partition =
              NodePartition::Proportional(PickSize(rng), plan.workers);
          c.valid = true;
        }
        n = c.partition.size();
        if (!c.valid) n = 0;
        if (c.api == Api::kBatch) {
          static constexpr size_t kBatches[] = {1, 2, 5, 16, 100, SIZE_MAX};
          c.grain = kBatches[rng.Uniform(0, 5)];
          // From a job only where its cross-node wait cannot deadlock (see
          // the top): one node, or node 0 under kStrict (if enabled).
          c.in_job =
              (plan.nodes == 1 ||
               (plan.stealing == StealPolicy::kStrict && CrossNodeWaits())) &&
              rng.Chance(0.3);
        }
      }
      if (n > 0) {
        for (int t = rng.Chance(0.3) ? rng.Uniform(1, 2) : 0; t > 0; --t) {
          c.throw_at.push_back(
              static_cast<size_t>(rng.Uniform(0, static_cast<int>(n) - 1)));
        }
        if (c.api == Api::kInJob && rng.Chance(0.25)) {
          c.cancel_at =
              static_cast<size_t>(rng.Uniform(0, static_cast<int>(n) - 1));
        }
      }
      const bool job =
          c.api == Api::kInJob || c.api == Api::kContext || c.in_job;
      if (job) {
        c.job_node = rng.Chance(0.3) ? -1 : rng.Uniform(0, plan.nodes - 1);
        if (c.api == Api::kBatch && plan.nodes == 2) c.job_node = 0;
        c.cancel_handle = c.api == Api::kInJob && rng.Chance(0.1);
        c.job_throws = rng.Chance(0.3);
        c.via_fork = c.api == Api::kInJob && rng.Chance(0.2);
      }
      c.arena_words = rng.Chance(0.4) ? rng.Uniform(1, 24) : 0;
      c.nested = c.api != Api::kBatch && rng.Chance(0.2);
      c.spin_us = rng.Chance(0.2) ? rng.Uniform(1, 30) : 0;
      // The second thread makes outside calls only (jobs it would submit are
      // no different from the main thread's).
      if (job && c.thread == 1) c.thread = 0;
      plan.calls.push_back(std::move(c));
    }
  }
  return plan;
}

// What the programs did, over all seeds (printed at the end): a check that
// they reach every outcome.
struct Tally {
  std::atomic<uint64_t> calls[4] = {};
  std::atomic<uint64_t> ok{0}, threw{0}, cancelled{0}, invalid{0};
  std::atomic<uint64_t> cancel_fired{0}, never_ran{0}, chunks{0}, stolen{0};
  std::atomic<uint64_t> helped{0}, fork{0}, frame_words{0};
} tally;

// ---- Running it -------------------------------------------------------------

uint64_t Pattern(int call, size_t at, int i) {
  return (uint64_t(call) << 40) ^ (uint64_t(at) << 8) ^ uint64_t(i) ^
         0x9E3779B97F4A7C15ull;
}

struct Item {
  uint32_t index;
  uint32_t visits;
};

// What happened to one call.
struct CallRun {
  NodePartition used;  // The partition actually passed (kInJob: remapped).
  std::unique_ptr<std::atomic<int>[]> visits;
  size_t n = 0;
  std::mutex mu;
  std::vector<std::string> thrown;  // Texts of exceptions thrown.
  std::atomic<bool> cancel_fired{false};
  std::atomic<bool> ran{false};  // The calling job's body ran.
  absl::Status status;           // What the call returned (or the throw).
  bool returned = false;         // The call returned (kInJob / kContext).
  std::unique_ptr<JobCounter> counter;
  JobHandle<absl::Status> handle;
  std::atomic<int> job_node{-1};  // Where the calling job ran.
  std::atomic<bool> started{false}, finished{false};  // For Dump.
  bool job_stolen = false;
  bool job_in_frame = false;
  absl::StatusOr<NodeArray<Item>> array = absl::UnknownError("none");
};

class Iteration {
 public:
  Iteration(const Plan& plan, Runtime* rt) : plan_(plan), rt_(rt) {
    runs_.reserve(plan.calls.size());
    for (size_t i = 0; i < plan.calls.size(); ++i) {
      runs_.push_back(std::make_unique<CallRun>());
    }
  }

  void Run() {
    for (size_t r = 0; r < plan_.frame.size(); ++r)
      RunRound(static_cast<int>(r));
    Watchdog::Get().Phase("Shutdown");
    absl::Status s = rt_->Shutdown(plan_.shutdown);
    if (!s.ok()) Violation(-1, absl::StrCat("Shutdown: ", s.ToString()));
    CheckStats();
  }

  std::vector<std::string> violations() {
    std::lock_guard<std::mutex> lock(mu_);
    return violations_;
  }
  // For the watchdog: the calls started and not finished (atomics only).
  static void Dump(void* self) {
    auto& it = *static_cast<Iteration*>(self);
    for (size_t i = 0; i < it.runs_.size(); ++i) {
      const CallRun& r = *it.runs_[i];
      if (!r.started.load() || r.finished.load()) continue;
      size_t visited = 0;
      for (size_t k = 0; k < r.n; ++k) visited += r.visits[k].load() > 0;
      std::fprintf(stderr,
                   "  call %zu: started, not finished; its job %s on node %d; "
                   "%zu of %zu items visited\n",
                   i, r.ran.load() ? "ran" : "did not run", r.job_node.load(),
                   visited, r.n);
    }
  }
  void DropHandles() {
    for (auto& r : runs_) r->handle = {};
  }

 private:
  void Violation(int call, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (violations_.size() < 40) {
      violations_.push_back(call >= 0 ? absl::StrCat("call ", call, ": ", what)
                                      : what);
    }
  }

  bool Strict() const {
    return plan_.stealing == StealPolicy::kStrict || plan_.nodes == 1;
  }

  // The partition a job running on `node` may wait on (see the top).
  NodePartition WaitablePartition(const NodePartition& p, int node) const {
    if (plan_.nodes == 1) return p;
    if (plan_.stealing == StealPolicy::kStrict && node == 0 &&
        CrossNodeWaits()) {
      return p;
    }
    std::vector<NodeRange> ranges = p.ranges();
    for (NodeRange& r : ranges) r.node = node;
    return NodePartition(std::move(ranges));
  }

  // Checks the place of work homed on `home` run by `ctx`.
  void CheckNode(int call, const JobContext& ctx, int home, const char* what) {
    if (Strict() ? ctx.node() != home || ctx.stolen()
                 : ctx.node() != home && !ctx.stolen()) {
      Violation(call,
                absl::StrCat(what, " homed on node ", home, " ran on node ",
                             ctx.node(), " (stolen: ", ctx.stolen(), ")"));
    }
  }

  void CheckContext(int call, const JobContext& ctx, bool cancel_possible) {
    const CallSpec& c = plan_.calls[call];
    const int n = ctx.node();
    if (n < 0 || n >= plan_.nodes || ctx.worker() < 0 ||
        ctx.worker() >= rt_->slots(n) ||
        (ctx.worker() == rt_->workers(n) &&
         plan_.outside != OutsideWaitPolicy::kHelp)) {
      Violation(call, absl::StrCat("ran in node ", n, " slot ", ctx.worker()));
    }
    if (ctx.in_frame() != plan_.frame[c.round]) {
      Violation(call, absl::StrCat("in_frame() is ", ctx.in_frame()));
    }
    if (ctx.cancel_requested() && !cancel_possible) {
      Violation(call, "cancel_requested() with nobody asking");
    }
  }

  // Visits item i of call `call` (throws where the plan says).
  void Visit(int call, size_t i) {
    const CallSpec& c = plan_.calls[call];
    CallRun& r = *runs_[call];
    if (std::find(c.throw_at.begin(), c.throw_at.end(), i) !=
        c.throw_at.end()) {
      std::string text = absl::StrCat("pf-", call, "-", i);
      {
        std::lock_guard<std::mutex> lock(r.mu);
        r.thrown.push_back(text);
      }
      throw std::runtime_error(text);
    }
    if (i == c.cancel_at) {
      r.cancel_fired.store(true);
      r.counter->Cancel();
    }
    if (i >= r.n) {
      Violation(call, absl::StrCat("item ", i, " is past the end ", r.n));
      return;
    }
    if (r.visits[i].fetch_add(1) != 0) {
      Violation(call, absl::StrCat("item ", i, " visited twice"));
    }
  }

  // Allocates from the context's arena and fills it; frame memory is kept
  // for the check before EndFrame.
  uint64_t* Allocate(int call, const JobContext& ctx, size_t at) {
    const int words = plan_.calls[call].arena_words;
    if (words == 0) return nullptr;
    uint64_t* p = ctx.arena().AllocateArray<uint64_t>(words);
    for (int i = 0; i < words; ++i) p[i] = Pattern(call, at, i);
    if (ctx.in_frame()) {
      std::lock_guard<std::mutex> lock(mu_);
      frame_memory_.push_back({call, at, p});
      tally.frame_words += words;
    }
    return p;
  }
  void CheckMemory(int call, const uint64_t* p, size_t at, const char* when) {
    for (int i = 0; i < plan_.calls[call].arena_words; ++i) {
      if (p[i] != Pattern(call, at, i)) {
        Violation(call, absl::StrCat("arena memory of chunk ", at, " changed ",
                                     when, " (word ", i, ")"));
        return;
      }
    }
  }

  void Spin(int us) {
    if (us == 0) return;
    const auto end =
        std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (std::chrono::steady_clock::now() < end) {
    }
  }

  // One chunk [b, e) of a ParallelFor of call `call`; `chunk_node`: the node
  // the chunk must run on (-1: its range's, from the partition used).
  void Chunk(int call, JobContext& ctx, size_t b, size_t e, int chunk_node,
             bool cancel_possible) {
    child_runs_.fetch_add(1);
    ++tally.chunks;
    tally.stolen += ctx.stolen();
    tally.helped += ctx.worker() == rt_->workers(ctx.node());
    const CallSpec& c = plan_.calls[call];
    CallRun& r = *runs_[call];
    const size_t grain = std::max<size_t>(c.grain, 1);
    if (b >= e || e - b > grain) {
      Violation(call,
                absl::StrCat("chunk [", b, ", ", e, ") for grain ", c.grain));
    }
    if (chunk_node >= 0) {
      if (ctx.node() != chunk_node) {
        Violation(call,
                  absl::StrCat("chunk [", b, ", ", e, ") ran on node ",
                               ctx.node(), ", its caller on ", chunk_node));
      }
    } else {
      const NodeRange* range = nullptr;
      for (const NodeRange& nr : r.used.ranges()) {
        if (b >= nr.begin && b < nr.end) range = &nr;
      }
      if (range == nullptr || e > range->end) {
        Violation(call, absl::StrCat("chunk [", b, ", ", e,
                                     ") is not inside one range"));
      } else {
        CheckNode(call, ctx, range->node, "a chunk");
      }
    }
    CheckContext(call, ctx, cancel_possible);
    uint64_t* mine = Allocate(call, ctx, b);
    Spin(c.spin_us);
    if (c.nested && e - b >= 2) {
      const int node = ctx.node();
      ctx.ParallelFor(b, e, 1, [&](JobContext& inner, size_t ib, size_t ie) {
        child_runs_.fetch_add(1);
        if (inner.node() != node || ib >= ie || ib < b || ie > e) {
          Violation(call, absl::StrCat("nested chunk [", ib, ", ", ie,
                                       ") on node ", inner.node()));
        }
        CheckContext(call, inner, cancel_possible);
        for (size_t i = ib; i < ie; ++i) Visit(call, i);
      });
    } else {
      for (size_t i = b; i < e; ++i) Visit(call, i);
    }
    if (mine != nullptr) CheckMemory(call, mine, b, "during its chunk");
  }

  // Runtime::ParallelFor of `call` over r.used, from `ctx`'s job (null:
  // outside); returns its status.
  absl::Status RuntimeFor(int call, JobContext* ctx) {
    CallRun& r = *runs_[call];
    const CallSpec& c = plan_.calls[call];
    const bool cancel_possible = c.cancel_at != SIZE_MAX || c.cancel_handle;
    if (plan_.calls[call].valid) {
      // What it spawns: every non-empty range not on the calling job's
      // node (those the caller runs itself).
      for (const NodeRange& nr : r.used.ranges()) {
        if (nr.empty() || (ctx != nullptr && nr.node == ctx->node())) {
          continue;
        }
        expected_submitted_.fetch_add(1);
      }
    }
    return rt_->ParallelFor(
        r.used, c.grain,
        [this, call, cancel_possible](JobContext& x, size_t b, size_t e) {
          Chunk(call, x, b, e, -1, cancel_possible);
        });
  }

  // The body of the job that makes call `call`.
  absl::Status JobBody(int call, JobContext& ctx) {
    CallRun& r = *runs_[call];
    const CallSpec& c = plan_.calls[call];
    r.ran.store(true);
    r.job_node = ctx.node();
    r.job_stolen = ctx.stolen();
    r.job_in_frame = ctx.in_frame();
    if (c.job_node >= 0) CheckNode(call, ctx, c.job_node, "the calling job");
    absl::Status status;
    switch (c.api) {
      case Api::kInJob:
        r.used =
            c.valid ? WaitablePartition(c.partition, ctx.node()) : c.partition;
        if (c.via_fork) {
          ctx.Fork(
              [&](JobContext& child) {
                if (&child != &ctx) child_runs_.fetch_add(1);
                status = RuntimeFor(call, &child);
              },
              [](JobContext&) {});
        } else {
          status = RuntimeFor(call, &ctx);
        }
        break;
      case Api::kContext: {
        const int node = ctx.node();
        const bool cancel_possible = c.cancel_handle;
        try {
          ctx.ParallelFor(c.lo, c.hi, c.grain,
                          [&](JobContext& x, size_t b, size_t e) {
                            Chunk(call, x, b, e, node, cancel_possible);
                          });
        } catch (const std::runtime_error& e) {
          status = absl::UnknownError(e.what());
        }
        break;
      }
      case Api::kBatch:
        status = Batches(call, &ctx);
        break;
      case Api::kOutside:
        break;
    }
    {
      std::lock_guard<std::mutex> lock(r.mu);
      r.status = status;
      r.returned = true;
    }
    r.finished.store(true);
    if (!status.ok() && c.job_throws) {
      throw std::runtime_error(absl::StrCat("job-", call));
    }
    return status;
  }

  // BatchProcessor over a NodeArray of call `call`'s partition (a second
  // column alongside), from `ctx`'s job or outside.
  absl::Status Batches(int call, JobContext* ctx) {
    const CallSpec& c = plan_.calls[call];
    CallRun& r = *runs_[call];
    absl::Status status;
    if (!r.array.ok()) return absl::InternalError("no array");
    NodeArray<Item>& items = *r.array;
    auto processor = BatchProcessor<Item>::Create(items, c.grain);
    if (!processor.ok()) {
      Violation(call, absl::StrCat("Create: ", processor.status().ToString()));
      return processor.status();
    }
    size_t covered = 0;
    for (const auto& batch : processor->batches()) {
      if (batch.first != covered || batch.count == 0 || batch.count > c.grain ||
          batch.node != items.partition().HomeOf(batch.first) ||
          items.partition().HomeOf(batch.first + batch.count - 1) !=
              batch.node ||
          batch.items != &items[batch.first]) {
        Violation(call, absl::StrCat("batch of ", batch.count, " at ",
                                     batch.first, " on node ", batch.node));
      }
      covered += batch.count;
    }
    if (covered != items.size()) Violation(call, "batches miss items");
    expected_submitted_.fetch_add(processor->batches().size());
    (void)ctx;
    return processor->ProcessAll(
        *rt_, [this, call, &items](JobContext& x, absl::Span<Item> batch) {
          const size_t first = batch[0].index;
          CheckNode(call, x, items.partition().HomeOf(first), "a batch");
          CheckContext(call, x, false);
          uint64_t* mine = Allocate(call, x, first);
          for (size_t k = 0; k < batch.size(); ++k) {
            if (batch[k].index != first + k) {
              Violation(call, absl::StrCat("batch item ", k, " is item ",
                                           batch[k].index));
            }
            Visit(call, first + k);  // Throws before visiting, as planned.
            ++batch[k].visits;
          }
          if (mine != nullptr) CheckMemory(call, mine, first, "in its batch");
        });
  }

  // Runs call `call` from an outside thread (submitting a job for the calls
  // made in jobs).
  void Start(int call) {
    const CallSpec& c = plan_.calls[call];
    CallRun& r = *runs_[call];
    size_t n = 0;
    if (c.api == Api::kContext) {
      n = c.hi;
    } else if (c.valid) {
      n = c.partition.size();
    }
    r.n = n;
    r.visits.reset(new std::atomic<int>[n]);
    for (size_t i = 0; i < n; ++i) r.visits[i].store(0);
    r.counter = std::make_unique<JobCounter>();
    r.started.store(true);
    if (c.api == Api::kBatch) {
      // Columns created here, from outside: each non-empty range one job
      // and one chunk (ranges are below NodeArray's grain of 1 << 14).
      r.array = NodeArray<Item>::Create(*rt_, c.partition);
      auto column = NodeArray<float>::Create(*rt_, c.partition);
      for (int k = 0; k < 2; ++k) {
        for (const NodeRange& nr : c.partition.ranges()) {
          if (nr.empty()) continue;
          expected_submitted_.fetch_add(1);
          child_runs_.fetch_add(1);
        }
      }
      if (!r.array.ok() || !column.ok()) {
        Violation(call, "NodeArray::Create failed");
        return;
      }
      for (size_t i = 0; i < n; ++i) {
        if ((*r.array)[i].visits != 0 || (*r.array)[i].index != 0 ||
            (*column)[i] != 0) {
          Violation(call, "NodeArray::Create did not zero the items");
          break;
        }
        (*r.array)[i].index = static_cast<uint32_t>(i);
        (*column)[i] = static_cast<float>(i);
      }
      // The columns share home nodes: spans of one range.
      for (const NodeRange& nr : c.partition.ranges()) {
        auto a = r.array->span(nr.begin, nr.end);
        auto b = column->span(nr.begin, nr.end);
        for (size_t k = 0; k < a.size(); ++k) {
          if (static_cast<float>(a[k].index) != b[k]) {
            Violation(call, "the columns disagree");
            break;
          }
        }
      }
    }
    if (c.api == Api::kOutside) {
      r.used = c.partition;
      r.ran.store(true);
      r.status = RuntimeFor(call, nullptr);
      r.returned = true;
      r.finished.store(true);
      return;
    }
    if (c.api == Api::kBatch && !c.in_job) {
      r.ran.store(true);
      r.status = Batches(call, nullptr);
      r.returned = true;
      r.finished.store(true);
      return;
    }
    SubmitOptions options;
    options.with_counter(r.counter.get());
    if (c.job_node >= 0) options.on_node(c.job_node);
    r.handle = rt_->Submit(
        [this, call](JobContext& ctx) { return JobBody(call, ctx); }, options);
    expected_submitted_.fetch_add(1);
    if (c.cancel_handle) (void)r.handle.Cancel();
  }

  void Finish(int call) {
    CallRun& r = *runs_[call];
    if (r.handle.valid()) {
      (void)r.handle.Wait();
      (void)r.counter->Wait();
    }
  }

  void RunRound(int round) {
    Watchdog& dog = Watchdog::Get();
    dog.Phase("round");
    if (plan_.frame[round]) {
      absl::Status s = rt_->BeginFrame();
      if (!s.ok()) Violation(-1, absl::StrCat("BeginFrame: ", s.ToString()));
    }
    std::vector<int> mine, theirs;
    for (const CallSpec& c : plan_.calls) {
      if (c.round == round) (c.thread == 0 ? mine : theirs).push_back(c.id);
    }
    std::thread second;
    if (!theirs.empty()) {
      second = std::thread([this, theirs] {
        for (int id : theirs) Start(id);
      });
    }
    for (int id : mine) Start(id);
    dog.Phase("waiting for the round");
    if (second.joinable()) second.join();
    for (int id : mine) Finish(id);
    for (int id : mine) Check(id);
    for (int id : theirs) Check(id);
    if (plan_.frame[round]) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const FrameMemory& m : frame_memory_) {
          CheckMemory(m.call, m.p, m.at, "before EndFrame");
        }
        frame_memory_.clear();
      }
      dog.Phase("EndFrame");
      absl::Status s = rt_->EndFrame();
      (void)s;
      ++frames_;
    }
    // NodeArrays go before the next round (their memory is the runtime's).
    for (int id : mine) runs_[id]->array = absl::UnknownError("freed");
    for (int id : theirs) runs_[id]->array = absl::UnknownError("freed");
  }

  // Checks call `call`'s outcome (after it finished).
  void Check(int call) {
    const CallSpec& c = plan_.calls[call];
    CallRun& r = *runs_[call];
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.handle.valid()) {
      const absl::Status hs = r.handle.status();
      if (!r.ran.load()) {
        ++tally.never_ran;
        if (!absl::IsCancelled(hs) || !c.cancel_handle) {
          Violation(call,
                    absl::StrCat("the calling job never ran: ", hs.ToString()));
        }
        return;
      }
      if (!r.returned) {
        Violation(call, "the call never returned");
        return;
      }
      if (r.status.ok() || !c.job_throws
              ? !hs.ok()
              : !absl::IsUnknown(hs) ||
                    !absl::StrContains(hs.message(),
                                       absl::StrCat("job-", call))) {
        Violation(call,
                  absl::StrCat("the calling job ended with ", hs.ToString(),
                               ", its call with ", r.status.ToString()));
      }
      if (hs.ok() && r.handle.value() != r.status) {
        Violation(call, "the job's value is not the call's status");
      }
      if (r.job_in_frame != plan_.frame[c.round]) {
        Violation(call, "the calling job's in_frame() is wrong");
      }
    }
    if (!r.returned) {
      Violation(call, "the call never returned");
      return;
    }
    const absl::Status& s = r.status;
    if (!c.valid && c.api != Api::kContext) {
      ++tally.invalid;
      if (!absl::IsInvalidArgument(s) ||
          !absl::StrContains(s.message(), "NodePartition")) {
        Violation(call,
                  absl::StrCat("an invalid partition gave ", s.ToString()));
      }
      for (size_t i = 0; i < r.n; ++i) {
        if (r.visits[i].load() != 0) Violation(call, "visited an item");
      }
      return;
    }
    const bool cancelled = r.cancel_fired.load() || c.cancel_handle;
    tally.calls[static_cast<int>(c.api)].fetch_add(1);
    tally.ok += s.ok();
    tally.threw += absl::IsUnknown(s);
    tally.cancelled += absl::IsCancelled(s);
    tally.cancel_fired += r.cancel_fired.load();
    tally.fork += c.via_fork;
    const size_t lo = c.api == Api::kContext ? c.lo : 0;
    if (s.ok()) {
      if (!r.thrown.empty()) {
        Violation(call, absl::StrCat("OK although ", r.thrown.size(),
                                     " item(s) threw"));
      }
    } else if (absl::IsUnknown(s)) {
      bool named = false;
      for (const std::string& t : r.thrown) {
        named |= c.api == Api::kContext ? s.message() == t
                                        : absl::StrContains(s.message(), t);
      }
      if (!named) {
        Violation(call, absl::StrCat(s.ToString(), " names none of {",
                                     absl::StrJoin(r.thrown, ","), "}"));
      }
    } else if (absl::IsCancelled(s)) {
      if (!cancelled || c.api != Api::kInJob ||
          !absl::StrContains(s.message(), "calling job")) {
        Violation(call, absl::StrCat(s.ToString(), " with no cancellation"));
      }
    } else {
      Violation(call, absl::StrCat("returned ", s.ToString()));
    }
    if (c.api == Api::kBatch) {
      // Every batch runs (ProcessAll cancels nothing): all items visited,
      // but those of a batch that threw (from its throwing item on).
      for (size_t i = 0; i < r.n; ++i) {
        const int v = r.visits[i].load();
        if (v > 1 || (v == 0 && r.thrown.empty())) {
          Violation(call, absl::StrCat("item ", i, " visited ", v, " times"));
          break;
        }
        if (r.array.ok() && (*r.array)[i].visits != static_cast<uint32_t>(v)) {
          Violation(call, "an item's own count disagrees");
          break;
        }
      }
      return;
    }
    for (size_t i = lo; i < r.n; ++i) {
      const int v = r.visits[i].load();
      if (v > 1 || (v == 0 && s.ok())) {
        Violation(call, absl::StrCat("item ", i, " visited ", v,
                                     " times; status ", s.ToString()));
        break;
      }
    }
    for (size_t i = 0; i < lo && i < r.n; ++i) {
      if (r.visits[i].load() != 0) Violation(call, "visited an item < begin");
    }
  }

  void CheckStats() {
    const RuntimeStats stats = rt_->stats();
    if (std::getenv("PARALLEL_MODEL_VERBOSE") != nullptr) {
      std::fprintf(stderr, "  %s", stats.ToText().c_str());
    }
    if (stats.jobs_submitted !=
        stats.jobs_completed + stats.jobs_failed + stats.jobs_cancelled) {
      Violation(-1, absl::StrCat("stats: submitted ", stats.jobs_submitted,
                                 " != completed ", stats.jobs_completed,
                                 " + failed ", stats.jobs_failed,
                                 " + cancelled ", stats.jobs_cancelled));
    }
    if (stats.jobs_submitted != expected_submitted_.load() ||
        stats.jobs_refused != 0) {
      Violation(-1, absl::StrCat("stats: submitted ", stats.jobs_submitted,
                                 " (refused ", stats.jobs_refused,
                                 "); the model ", expected_submitted_.load()));
    }
    uint64_t run = 0, stolen = 0, node_submitted = 0;
    for (const NodeStats& ns : stats.nodes) {
      node_submitted += ns.jobs_submitted;
      for (const WorkerStats& w : ns.worker_stats) {
        run += w.jobs_run;
        stolen += w.jobs_stolen;
      }
    }
    if (run != stats.jobs_completed + stats.jobs_failed + child_runs_.load()) {
      Violation(-1, absl::StrCat("stats: the slots ran ", run,
                                 "; completed + failed + child runs = ",
                                 stats.jobs_completed, " + ", stats.jobs_failed,
                                 " + ", child_runs_.load()));
    }
    if (Strict() && stolen != 0) Violation(-1, "stats: stolen under kStrict");
    if (node_submitted != stats.jobs_submitted) {
      Violation(-1, "stats: the nodes' submitted do not add up");
    }
    if (stats.frames != static_cast<uint64_t>(frames_)) {
      Violation(
          -1, absl::StrCat("stats: ", stats.frames, " frames, not ", frames_));
    }
  }

  const Plan& plan_;
  Runtime* const rt_;
  std::vector<std::unique_ptr<CallRun>> runs_;
  std::atomic<uint64_t> expected_submitted_{0};
  std::atomic<uint64_t> child_runs_{0};  // Chunks and fork children.
  int frames_ = 0;
  struct FrameMemory {
    int call;
    size_t at;
    const uint64_t* p;
  };
  std::mutex mu_;
  std::vector<FrameMemory> frame_memory_;
  std::vector<std::string> violations_;
};

TEST(ParallelModelTest, RandomProgramsMatchTheModel) {
  Watchdog::Get().Configure("parallel_model_test", "PARALLEL_MODEL",
                            kSanitized ? 120 : 60);
  const std::vector<uint64_t> seeds =
      model_harness::Seeds("PARALLEL_MODEL", kIterations, 0xDA7A0000);
  ASSERT_FALSE(seeds.empty());
  model_harness::RunPrograms<Iteration>(
      "PARALLEL_MODEL", seeds, BuildPlan, [](Iteration&) {}, [](uint64_t) {});
  std::printf(
      "%zu programs; calls: %llu outside, %llu in jobs, %llu ctx.ParallelFor, "
      "%llu BatchProcessor (%llu via a fork child); OK %llu, Unknown %llu, "
      "Cancelled %llu, InvalidArgument %llu; %llu cancellations from a "
      "body, %llu calling jobs cancelled before they ran; %llu chunks "
      "(%llu stolen, %llu on a helping outside thread); %llu frame words "
      "checked before EndFrame\n",
      seeds.size(), (unsigned long long)tally.calls[0].load(),
      (unsigned long long)tally.calls[1].load(),
      (unsigned long long)tally.calls[2].load(),
      (unsigned long long)tally.calls[3].load(),
      (unsigned long long)tally.fork.load(),
      (unsigned long long)tally.ok.load(),
      (unsigned long long)tally.threw.load(),
      (unsigned long long)tally.cancelled.load(),
      (unsigned long long)tally.invalid.load(),
      (unsigned long long)tally.cancel_fired.load(),
      (unsigned long long)tally.never_ran.load(),
      (unsigned long long)tally.chunks.load(),
      (unsigned long long)tally.stolen.load(),
      (unsigned long long)tally.helped.load(),
      (unsigned long long)tally.frame_words.load());
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
