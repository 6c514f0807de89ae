// A randomized, model-checked stress test of jobs::Runtime.
//
// Each iteration builds, from a seed, a random program and runs it on a
// runtime with a random Config (1 or 2 synthetic nodes, 1-2 workers each,
// kStrict or kWhenIdle stealing, kSleep or kHelp outside waits):
//   - 1-3 rounds, each inside a frame or not; the last one ends with
//     Shutdown(kFinish or kCancel), sometimes while external threads are
//     still submitting, sometimes with its frame still open;
//   - per round, a DAG of jobs submitted with Submit (handles) and Spawn
//     (counters) from the main thread and 0-3 external threads at once,
//     each with a random affinity (a node, any, or a node that does not
//     exist), random predecessors among earlier jobs (of this round or
//     finished ones of earlier rounds), maybe a counter;
//   - each job records where and how often it ran, checks what it may see
//     (its predecessors finished successfully, its node, its frame), and
//     then: submits continuations (some after() each other, some counted in
//     its own counter), cancels other jobs or its counter, allocates from
//     ctx.arena() and checks the memory, spawns children and waits for them
//     (a local counter, or their handles), forks, spins, publishes frame
//     memory for its successors, and returns a value or throws;
//   - the submitting threads cancel handles and counters and wait on
//     handles at random moments.
// Every outcome is then checked against what jobs/runtime.h promises
// (CheckModel): final states, values, exceptions, cancellation causes,
// counters, frames, statistics (per worker slot), Shutdown. A watchdog
// aborts a hung iteration (after Watchdog::seconds()), printing its seed.
//
// Seeds: a fixed list of kIterations; RUNTIME_MODEL_SEEDS=a,b,c runs those
// instead (RUNTIME_MODEL_REPEAT=n times over); RUNTIME_MODEL_ITERATIONS=n
// and RUNTIME_MODEL_FIRST_SEED=s make the list n long from s (to explore);
// RUNTIME_MODEL_HANG_SECONDS=t sets the watchdog; RUNTIME_MODEL_VERBOSE=1
// prints each program's shape and stats.
// A failure prints its seed and the program's shape; a hang or crash, its
// seed (and, for a hang, the jobs left unfinished).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
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
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace jobs {
namespace {

using model_harness::TopologyOf;
using model_harness::Watchdog;

using model_harness::kSanitized;

constexpr int kIterations = kSanitized ? 500 : 1500;
constexpr int kMinJobs = 20;
constexpr int kMaxJobs = 200;
constexpr int kMaxNodes = 2;
constexpr int kMaxSlots = 3;  // 2 workers + the outside slot (kHelp).

// The seed running now, for a crash (plain builds: the sanitizers report
// crashes themselves): a fatal signal prints it, then goes on to the handler
// that was there before.
std::atomic<uint64_t> crash_seed{0};
struct sigaction previous_actions[NSIG];

void OnFatalSignal(int sig, siginfo_t* info, void* context) {
  char text[96] = "runtime_model_test: fatal signal in seed ";
  size_t n = std::strlen(text);
  char digits[24];
  size_t d = 0;
  uint64_t seed = crash_seed.load(std::memory_order_relaxed);
  do {
    digits[d++] = static_cast<char>('0' + seed % 10);
    seed /= 10;
  } while (seed != 0);
  while (d > 0) text[n++] = digits[--d];
  text[n++] = '\n';
  (void)!write(STDERR_FILENO, text, n);
  const struct sigaction& previous = previous_actions[sig];
  if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction) {
    previous.sa_sigaction(sig, info, context);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

void PrintSeedOnCrash() {
  static bool installed = false;  // Once: the handlers chain to the old.
  if (kSanitized || installed) return;
  installed = true;
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) {
    struct sigaction action = {};
    action.sa_sigaction = &OnFatalSignal;
    action.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    sigaction(sig, &action, &previous_actions[sig]);
  }
}

// ---- The program ----------------------------------------------------------

enum class Kind {
  kTop,           // Submitted by a script (the main or an external thread).
  kContinuation,  // Submitted by its parent job, not waited for there.
  kLocalCounter,  // Submitted by its parent with a counter it then waits on.
  kLocalHandle,   // Submitted by its parent, whose handle it then waits on.
};

struct JobSpec {
  int round = 0;
  int owner = 0;  // The script that submits it (its root's, for children).
  int parent = -1;
  int root = 0;  // The top-level job it descends from (itself if top).
  Kind kind = Kind::kTop;
  int depth = 0;
  bool submit = true;  // Submit (a handle) or Spawn.
  int node = -1;       // -1: any; >= the number of nodes: does not exist.
  std::vector<int> preds;
  int counter = -1;  // A shared counter; local children use their parent's.
  bool throws = false;
  int spin_us = 0;
  int arena_words = 0;
  bool publish_arena = false;  // For successors of the same frame.
  int fork = 0;                // Functions given to ctx.Fork (0: none).
  std::vector<int> children;   // Continuations, in submission order.
  std::vector<int> local;      // Children it waits for.
  // Waits on its children's handles from the last submitted to the first
  // (a later one may be declared after an earlier one that has not run).
  bool wait_last_first = false;
  // kLocalCounter children: only the last is counted; the job waits on the
  // counter, then on the others' handles (the counter's wait must run
  // the uncounted ones of its node that the last one comes after).
  bool count_last_only = false;
  std::vector<int> cancels;  // Top-level jobs it cancels.
  bool cancel_counter = false;
  std::vector<int> needs;  // Top-level: jobs its subtree names (published
                           // before it is submitted).
};

struct Action {
  enum Type { kSubmit, kCancelJob, kCancelCounter, kWaitJob, kPause };
  Type type;
  int target;
};

struct RoundPlan {
  bool frame = false;
  bool last = false;
  int externals = 0;
  std::vector<std::vector<Action>> scripts;  // [0]: main; [1..]: externals.
  std::vector<int> counters;
  // The last round.
  ShutdownMode mode = ShutdownMode::kFinish;
  bool shutdown_early = false;   // While the external threads still run.
  bool end_frame_first = false;  // Else Shutdown ends the frame.
};

struct Plan {
  uint64_t seed = 0;
  int nodes = 1;
  std::vector<int> workers;
  StealPolicy stealing = StealPolicy::kStrict;
  OutsideWaitPolicy outside = OutsideWaitPolicy::kSleep;
  std::vector<JobSpec> jobs;
  // Per counter (of one round): its script, and the JobCounter object it
  // uses (objects are reused by later rounds, after Reset()).
  std::vector<int> counter_owner;
  std::vector<int> counter_object;
  int counter_objects = 0;
  std::vector<RoundPlan> rounds;

  std::string Describe() const {
    std::string out = absl::StrCat(
        "seed ", seed, ": ", nodes, " node(s), workers {",
        absl::StrJoin(workers, ","), "}, ", StealPolicyName(stealing),
        ", outside wait ", OutsideWaitPolicyName(outside), ", ", jobs.size(),
        " jobs, ", counter_owner.size(), " counters (", counter_objects,
        " objects); rounds:");
    for (const RoundPlan& r : rounds) {
      absl::StrAppend(&out, " [", r.frame ? "frame" : "no frame", ", ",
                      r.externals, " external thread(s)");
      if (r.last) {
        absl::StrAppend(&out, ", Shutdown(",
                        r.mode == ShutdownMode::kFinish ? "kFinish" : "kCancel",
                        ")", r.shutdown_early ? " while submitting" : "",
                        r.frame ? (r.end_frame_first ? ", frame ended first"
                                                     : ", frame left open")
                                : "");
      }
      absl::StrAppend(&out, "]");
    }
    return out;
  }
};

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  int Uniform(int lo, int hi) {  // [lo, hi]
    return std::uniform_int_distribution<int>(lo, hi)(engine_);
  }
  bool Chance(double p) {
    return std::uniform_real_distribution<double>(0, 1)(engine_) < p;
  }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(Uniform(0, static_cast<int>(v.size()) - 1))];
  }

 private:
  std::mt19937_64 engine_;
};

class PlanBuilder {
 public:
  explicit PlanBuilder(uint64_t seed) : rng_(seed) { plan_.seed = seed; }

  Plan Build() {
    plan_.nodes = rng_.Chance(0.5) ? 1 : 2;
    for (int k = 0; k < plan_.nodes; ++k) {
      plan_.workers.push_back(rng_.Uniform(1, 2));
    }
    plan_.stealing =
        rng_.Chance(0.5) ? StealPolicy::kStrict : StealPolicy::kWhenIdle;
    plan_.outside =
        rng_.Chance(0.5) ? OutsideWaitPolicy::kSleep : OutsideWaitPolicy::kHelp;
    const int rounds = rng_.Uniform(1, 3);
    const int budget = rng_.Uniform(kMinJobs, kMaxJobs);
    for (int r = 0; r < rounds; ++r) {
      BuildRound(r, r + 1 == rounds, std::max(4, budget * 2 / 3 / rounds));
    }
    return std::move(plan_);
  }

 private:
  void BuildRound(int r, bool last, int top_jobs) {
    RoundPlan round;
    round.last = last;
    round.frame = rng_.Chance(0.5);
    round.externals = rng_.Chance(0.15) ? 0 : rng_.Uniform(1, 3);
    const int threads = 1 + round.externals;
    round.scripts.resize(threads);
    std::vector<std::vector<int>> own_counters(threads);
    std::vector<int> free_objects;  // Used by earlier rounds only.
    for (int o = 0; o < plan_.counter_objects; ++o) free_objects.push_back(o);
    for (int t = 0; t < threads; ++t) {
      for (int i = rng_.Uniform(0, 2); i > 0; --i) {
        own_counters[t].push_back(static_cast<int>(plan_.counter_owner.size()));
        round.counters.push_back(static_cast<int>(plan_.counter_owner.size()));
        plan_.counter_owner.push_back(t);
        if (!free_objects.empty() && rng_.Chance(0.5)) {
          const int at =
              rng_.Uniform(0, static_cast<int>(free_objects.size()) - 1);
          plan_.counter_object.push_back(free_objects[at]);
          free_objects.erase(free_objects.begin() + at);
        } else {
          plan_.counter_object.push_back(plan_.counter_objects++);
        }
      }
    }
    if (last) {
      round.mode =
          rng_.Chance(0.5) ? ShutdownMode::kFinish : ShutdownMode::kCancel;
      round.shutdown_early = round.externals > 0 && rng_.Chance(0.5);
      round.end_frame_first = round.frame && rng_.Chance(0.3);
    }
    round_frame_ = round.frame;
    round_last_ = last;
    for (int i = 0; i < top_jobs; ++i) {
      const int t = rng_.Uniform(0, threads - 1);
      const int id = MakeJob(r, t, -1, -1, Kind::kTop, 0, own_counters[t]);
      round.scripts[t].push_back({Action::kSubmit, id});
      // Actions naming earlier jobs only (see Iteration::WaitPublished).
      if (!candidates_.empty() && rng_.Chance(0.06)) {
        round.scripts[t].push_back({Action::kCancelJob, RecentCandidate()});
      }
      if (!own_counters[t].empty() && rng_.Chance(0.03)) {
        round.scripts[t].push_back(
            {Action::kCancelCounter, rng_.Pick(own_counters[t])});
      }
      if (!candidates_.empty() && rng_.Chance(0.08)) {
        round.scripts[t].push_back({Action::kWaitJob, RecentCandidate()});
      }
      if (t > 0 && rng_.Chance(last ? 0.1 : 0.03)) {
        round.scripts[t].push_back({Action::kPause, rng_.Uniform(20, 400)});
      }
      if (plan_.jobs[id].submit) candidates_.push_back(id);
    }
    plan_.rounds.push_back(std::move(round));
  }

  int RecentCandidate() {
    const int n = static_cast<int>(candidates_.size());
    return candidates_[rng_.Uniform(std::max(0, n - 40), n - 1)];
  }

  int PickSpinUs() {
    static constexpr int kSpins[] = {0, 0, 0, 0, 2, 10, 40, 150};
    return kSpins[rng_.Uniform(0, 7)];
  }

  // Appends a job (and its subtree) to the plan; returns its id.
  int MakeJob(int r, int owner, int parent, int root, Kind kind, int depth,
              const std::vector<int>& own_counters) {
    const int id = static_cast<int>(plan_.jobs.size());
    plan_.jobs.emplace_back();
    JobSpec s;
    s.round = r;
    s.owner = owner;
    s.parent = parent;
    s.root = kind == Kind::kTop ? id : root;
    s.kind = kind;
    s.depth = depth;
    const bool local =
        kind == Kind::kLocalCounter || kind == Kind::kLocalHandle;
    s.submit = kind == Kind::kLocalHandle || rng_.Chance(0.65);
    if (local && plan_.nodes > 1 && plan_.stealing == StealPolicy::kStrict &&
        plan_.jobs[parent].node == 0 && rng_.Chance(0.35)) {
      // A child that a job of node 0 waits for, on node 1: chains of them
      // leave the parent's node and come back (a wait inside a job runs
      // the ones of its node that another node made ready). Only from node
      // 0 to node 1, so that no two workers wait on each other's nodes (a
      // bounded pool's deadlock, docs/jobs.md).
      s.node = 1;
    } else if (local && plan_.nodes > 1 &&
               plan_.stealing == StealPolicy::kWhenIdle && rng_.Chance(0.35)) {
      // Under kWhenIdle, on either node: a job that waits runs the jobs it
      // waits for that no worker has taken, whatever their node (as
      // stolen), so that waits between the nodes in both directions finish
      // (RuntimeStealTest.JobsWaitingOnEachOthersNodes*).
      s.node = rng_.Uniform(0, plan_.nodes - 1);
    } else if (local || rng_.Chance(0.3)) {
      s.node = -1;
    } else if (rng_.Chance(0.03)) {
      s.node = plan_.nodes + 1;  // Refused: no such node.
    } else {
      s.node = rng_.Uniform(0, plan_.nodes - 1);
    }
    if (kind == Kind::kTop) {
      if (!candidates_.empty() && rng_.Chance(0.45)) {
        for (int n = rng_.Uniform(1, 3); n > 0; --n) {
          const int p = RecentCandidate();
          if (std::find(s.preds.begin(), s.preds.end(), p) == s.preds.end()) {
            s.preds.push_back(p);
          }
        }
      }
      if (!own_counters.empty() && rng_.Chance(0.6)) {
        s.counter = rng_.Pick(own_counters);
      }
    } else if (kind == Kind::kContinuation) {
      const JobSpec& up = plan_.jobs[parent];
      for (int p : up.preds) {
        if (rng_.Chance(0.3)) s.preds.push_back(p);
      }
      for (int sibling : up.children) {
        if (plan_.jobs[sibling].submit && rng_.Chance(0.4)) {
          s.preds.push_back(sibling);
        }
      }
      if (up.counter >= 0 && rng_.Chance(0.7)) s.counter = up.counter;
    } else if (local) {
      // Declared after earlier children of the same wait: the parent's wait
      // must run them in its region, and the declared ones once ready,
      // also on a node of one worker.
      for (int sibling : plan_.jobs[parent].local) {
        if (plan_.jobs[sibling].submit && rng_.Chance(0.3)) {
          s.preds.push_back(sibling);
        }
      }
    }
    // A Spawn outside frames and before the last round needs a counter: the
    // round's end waits for every job through its handle or counter.
    if (!s.submit && s.counter < 0 && !local && !round_frame_ && !round_last_) {
      s.submit = true;
    }
    s.throws = rng_.Chance(0.08);
    s.spin_us = PickSpinUs();
    s.arena_words = rng_.Chance(0.4) ? rng_.Uniform(1, 300) : 0;
    s.publish_arena = s.submit && s.arena_words > 0 && round_frame_;
    s.fork = rng_.Chance(0.06) ? rng_.Uniform(2, 3) : 0;
    if (!local && !candidates_.empty() && rng_.Chance(0.05)) {
      s.cancels.push_back(RecentCandidate());
    }
    s.cancel_counter = !local && s.counter >= 0 && rng_.Chance(0.03);
    plan_.jobs[id] = s;
    if (depth < 2 && !local) {
      if (rng_.Chance(0.2)) {
        for (int n = rng_.Uniform(1, 2); n > 0; --n) {
          const int child = MakeJob(r, owner, id, s.root, Kind::kContinuation,
                                    depth + 1, own_counters);
          plan_.jobs[id].children.push_back(child);
        }
      }
      if (rng_.Chance(0.12)) {
        const Kind mode =
            rng_.Chance(0.5) ? Kind::kLocalCounter : Kind::kLocalHandle;
        for (int n = rng_.Uniform(1, 3); n > 0; --n) {
          const int child =
              MakeJob(r, owner, id, s.root, mode, depth + 1, own_counters);
          plan_.jobs[id].local.push_back(child);
        }
        plan_.jobs[id].wait_last_first = rng_.Chance(0.5);
        if (mode == Kind::kLocalCounter && rng_.Chance(0.4)) {
          plan_.jobs[id].count_last_only = true;
          for (int c : plan_.jobs[id].local) plan_.jobs[c].submit = true;
        }
      }
    }
    if (kind == Kind::kTop) {
      // Everything the subtree names that a script publishes.
      std::set<int> needs;
      for (int j = id; j < static_cast<int>(plan_.jobs.size()); ++j) {
        const JobSpec& d = plan_.jobs[j];
        for (int p : d.preds) {
          if (plan_.jobs[p].kind == Kind::kTop) needs.insert(p);
        }
        for (int c : d.cancels) needs.insert(c);
      }
      plan_.jobs[id].needs.assign(needs.begin(), needs.end());
    }
    return id;
  }

  Rng rng_;
  Plan plan_;
  std::vector<int> candidates_;  // Top-level Submit jobs, in id order.
  bool round_frame_ = false;
  bool round_last_ = false;
};

// ---- Running it -----------------------------------------------------------

int64_t Expected(int id) { return int64_t{id} * 1000003 + 17; }
uint64_t Pattern(int id, int i) {
  return (uint64_t(id) << 32) ^ (uint64_t(i) * 0x9E3779B97F4A7C15ull);
}

// What happened to one job, as the job and its submitter saw it.
struct JobRun {
  std::atomic<int> runs{0};
  std::atomic<bool> returned{false};  // Its body returned (did not throw).
  std::atomic<bool> exited{false};    // Its body returned or threw.
  std::atomic<int> node{-1};
  std::atomic<int> worker{-1};
  std::atomic<bool> stolen{false};
  std::atomic<bool> in_frame{false};
  std::atomic<bool> saw_cancel{false};  // cancel_requested() was true.
  std::atomic<uint64_t> job_id{0};
  std::atomic<int> cancel_calls{0};
  std::atomic<int> cancel_true{0};
  std::atomic<int> cancel_false{0};
  std::atomic<const uint64_t*> arena{nullptr};
  std::atomic<bool> published{false};
  // Written before `published` (release), by the thread that submits it.
  JobHandle<int64_t> handle;
  absl::Status spawn_status;
  bool from_job = false;
  int home = -1;  // The node it must run on (stealing aside); -1: unknown.
  bool shutdown_started_after = false;  // Shutdown had begun once submitted.
  bool shutdown_returned_before = false;
};

class Iteration;
int64_t Body(Iteration& it, int id, JobContext& ctx);

// The thread that runs jobs in a worker slot now, and their nesting.
struct SlotUse {
  std::mutex mu;
  std::thread::id thread;
  int depth = 0;
};

// One job's outcome, for the model.
enum class Outcome { kNotSubmitted, kRefused, kOk, kThrew, kCancelled };

class Iteration {
 public:
  Iteration(const Plan& plan, Runtime* rt)
      : plan_(plan),
        rt_(rt),
        runs_(new JobRun[plan.jobs.size()]),
        counter_cancelled_(new std::atomic<bool>[plan.counter_owner.size()]) {
    for (int o = 0; o < plan.counter_objects; ++o) {
      counters_.push_back(std::make_unique<JobCounter>());
    }
    for (size_t c = 0; c < plan.counter_owner.size(); ++c) {
      counter_cancelled_[c].store(false);
    }
    counter_waits_.resize(plan.counter_owner.size());
  }

  void Run() {
    for (size_t r = 0; r < plan_.rounds.size(); ++r) {
      RunRound(static_cast<int>(r));
    }
  }

  // Checks every outcome against the model (after Run).
  void CheckModel();

  std::vector<std::string> violations() {
    std::lock_guard<std::mutex> lock(mu_);
    return violations_;
  }

  // For the watchdog: the jobs submitted and not finished, the counters
  // with jobs pending (read while the program may still run: atomics and
  // published handles only).
  static void Dump(void* self) {
    auto& it = *static_cast<Iteration*>(self);
    for (size_t i = 0; i < it.plan_.jobs.size(); ++i) {
      const JobSpec& s = it.plan_.jobs[i];
      const JobRun& r = it.runs_[i];
      if (!r.published.load(std::memory_order_acquire)) continue;
      const bool finished =
          s.submit ? r.handle.done() : r.runs.load() > 0 && r.exited.load();
      if (finished) continue;
      if (!s.submit && r.runs.load() == 0) continue;  // Cancelled, maybe.
      std::string preds;
      for (int p : s.preds) {
        absl::StrAppend(&preds, " ", p,
                        it.runs_[p].handle.done() ? "(done)" : "(pending)");
      }
      std::fprintf(stderr,
                   "  job %zu (round %d, %s, kind %d, node %d, counter %d, "
                   "parent %d, preds:%s): runs %d, exited %d\n",
                   i, s.round, s.submit ? "Submit" : "Spawn",
                   static_cast<int>(s.kind), s.node, s.counter, s.parent,
                   preds.c_str(), r.runs.load(), r.exited.load());
    }
    for (size_t c = 0; c < it.counters_.size(); ++c) {
      if (it.counters_[c]->pending() != 0) {
        std::fprintf(stderr, "  counter object %zu: %lld pending\n", c,
                     static_cast<long long>(it.counters_[c]->pending()));
      }
    }
  }

  // A worker slot's user (for Body's SlotGuard).
  SlotUse* slot_use(int node, int worker) { return &slot_use_[node][worker]; }

  // Handles refer to the runtime's records: dropped before it goes.
  void DropHandles() {
    for (size_t i = 0; i < plan_.jobs.size(); ++i) runs_[i].handle = {};
  }

 private:
  friend int64_t Body(Iteration& it, int id, JobContext& ctx);

  void Violation(int id, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (violations_.size() < 40) {
      violations_.push_back(id >= 0 ? absl::StrCat("job ", id, ": ", what)
                                    : what);
    }
  }

  void WaitPublished(int id) {
    while (!runs_[id].published.load(std::memory_order_acquire)) {
      std::this_thread::yield();
    }
  }

  // Submits job `id`: from a script (parent null) or from its parent's body;
  // `local`: the parent's counter for kLocalCounter children.
  void SubmitJob(int id, JobContext* parent, JobCounter* local) {
    const JobSpec& s = plan_.jobs[id];
    JobRun& r = runs_[id];
    SubmitOptions options;
    if (s.node >= 0) options.on_node(s.node);
    for (int p : s.preds) {
      WaitPublished(p);
      options.after(runs_[p].handle);
    }
    JobCounter* counter = local != nullptr ? local
                          : s.counter >= 0 ? Counter(s.counter)
                                           : nullptr;
    if (counter != nullptr) options.with_counter(counter);
    r.from_job = parent != nullptr;
    r.home = s.node >= 0 && s.node < plan_.nodes ? s.node
             : s.node < 0 && parent != nullptr   ? parent->node()
                                                 : -1;
    r.shutdown_returned_before = shutdown_returned_.load();
    Iteration* self = this;
    if (s.submit) {
      r.handle = rt_->Submit(
          [self, id](JobContext& ctx) { return Body(*self, id, ctx); },
          options);
    } else {
      r.spawn_status = rt_->Spawn(
          [self, id](JobContext& ctx) { (void)Body(*self, id, ctx); }, options);
    }
    r.shutdown_started_after = shutdown_started_.load();
    r.published.store(true, std::memory_order_release);
  }

  void CancelJob(int id) {
    WaitPublished(id);
    JobRun& r = runs_[id];
    r.cancel_calls.fetch_add(1);
    JobHandle<int64_t> h = r.handle;
    if (h.Cancel()) {
      r.cancel_true.fetch_add(1);
    } else {
      r.cancel_false.fetch_add(1);
    }
  }

  void CancelCounter(int c) {
    counter_cancelled_[c].store(true);
    Counter(c)->Cancel();
  }

  void WaitCounter(int c) {
    absl::Status s = Counter(c)->Wait();
    std::string exception_text;
    std::exception_ptr e = Counter(c)->exception();
    if (e != nullptr) {
      try {
        std::rethrow_exception(e);
      } catch (const std::runtime_error& error) {
        exception_text = error.what();
      } catch (...) {
        exception_text = "(another type)";
      }
    }
    if (Counter(c)->pending() != 0) {
      Violation(-1, absl::StrCat("counter ", c, ": Wait returned with ",
                                 Counter(c)->pending(), " jobs pending"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    counter_waits_[c].push_back(
        {std::move(s), std::move(exception_text), std::move(e)});
  }

  void RunScript(int round, int t) {
    const RoundPlan& rp = plan_.rounds[round];
    for (const Action& a : rp.scripts[t]) {
      switch (a.type) {
        case Action::kSubmit:
          for (int need : plan_.jobs[a.target].needs) WaitPublished(need);
          SubmitJob(a.target, nullptr, nullptr);
          break;
        case Action::kCancelJob:
          CancelJob(a.target);
          break;
        case Action::kCancelCounter:
          CancelCounter(a.target);
          break;
        case Action::kWaitJob: {
          WaitPublished(a.target);
          JobHandle<int64_t> h = runs_[a.target].handle;
          absl::Status s = h.Wait();
          if (!h.done()) Violation(a.target, "Wait() returned before done()");
          std::lock_guard<std::mutex> lock(mu_);
          waits_.push_back({a.target, s.code()});
          break;
        }
        case Action::kPause:
          std::this_thread::sleep_for(std::chrono::microseconds(a.target));
          break;
      }
    }
    // An external thread waits for its own counters once it has submitted
    // everything (the main thread waits for all of them at the round's end).
    if (t > 0 && !rp.last) {
      for (int c : rp.counters) {
        if (plan_.counter_owner[c] == t) WaitCounter(c);
      }
    }
  }

  void RunRound(int round);
  void CheckFrameTiming(int round, const absl::Status& status);
  Outcome OutcomeOf(int id) const;
  std::optional<bool> ExpectedInFrame(int id) const;

  // The JobCounter object of counter `c`.
  JobCounter* Counter(int c) const {
    return counters_[plan_.counter_object[c]].get();
  }

  const Plan& plan_;
  Runtime* const rt_;
  std::unique_ptr<JobRun[]> runs_;
  std::vector<std::unique_ptr<JobCounter>> counters_;  // The objects.
  std::unique_ptr<std::atomic<bool>[]> counter_cancelled_;
  std::atomic<bool> shutdown_started_{false};
  std::atomic<bool> shutdown_cancel_{false};
  std::atomic<bool> shutdown_returned_{false};
  // Body executions per worker slot (jobs and fork children), and stolen
  // jobs: RuntimeStats must agree.
  std::atomic<uint64_t> slot_runs_[kMaxNodes][kMaxSlots] = {};
  std::atomic<uint64_t> slot_stolen_[kMaxNodes][kMaxSlots] = {};
  // The thread in each slot now: a slot (its arenas) belongs to one thread
  // at a time.
  SlotUse slot_use_[kMaxNodes][kMaxSlots];

  std::mutex mu_;
  std::vector<std::string> violations_;
  struct CounterWait {
    absl::Status status;
    std::string exception;  // What exception() holds ("" for none).
    // Kept to the end of the program (after Shutdown, which leaves no
    // record held by the runtime), so that this thread drops the last
    // reference to the exception. exception_ptr counts its references
    // inside libstdc++, which TSan does not see: the last one dropped by a
    // worker (a record freed after a counter's Reset()) looked to TSan like
    // a race between the exception's destruction there and the what() read
    // above (1 run in 20 under TSan). Not the runtime's code.
    std::exception_ptr keep;
  };
  std::vector<std::vector<CounterWait>> counter_waits_;
  std::vector<std::pair<int, absl::StatusCode>> waits_;
  std::vector<std::pair<int, absl::Status>> local_statuses_;  // Per parent.
  struct FrameResult {
    int round;
    absl::Status status;
    FrameTiming timing;
  };
  std::vector<FrameResult> frames_;
  int frames_ended_ = 0;
};

// The body of every job of the program.
int64_t Body(Iteration& it, int id, JobContext& ctx) {
  const Plan& plan = it.plan_;
  const JobSpec& s = plan.jobs[id];
  JobRun& r = it.runs_[id];
  if (r.runs.fetch_add(1) != 0) it.Violation(id, "ran twice");
  if (it.shutdown_returned_.load()) {
    it.Violation(id, "ran after Shutdown returned");
  }
  struct Exit {
    JobRun& r;
    ~Exit() { r.exited.store(true, std::memory_order_release); }
  } exit_guard{r};
  const int node = ctx.node();
  const int worker = ctx.worker();
  r.node = node;
  r.worker = worker;
  r.stolen = ctx.stolen();
  r.in_frame = ctx.in_frame();
  r.job_id = ctx.job_id();
  Runtime& rt = ctx.runtime();
  if (&rt != it.rt_) it.Violation(id, "ctx.runtime() is another runtime");

  auto count_slot = [&it, &rt, id](const JobContext& c, bool top) {
    const int n = c.node();
    const int w = c.worker();
    if (n < 0 || n >= rt.num_nodes() || w < 0 || w >= rt.slots(n)) {
      it.Violation(id, absl::StrCat("ran on node ", n, " worker ", w,
                                    ", outside the runtime's slots"));
      return;
    }
    if (w == rt.workers(n) && it.plan_.outside != OutsideWaitPolicy::kHelp) {
      it.Violation(id, "ran in the outside slot under kSleep");
    }
    it.slot_runs_[n][w].fetch_add(1);
    if (top && c.stolen()) it.slot_stolen_[n][w].fetch_add(1);
  };
  count_slot(ctx, true);
  // Enters (and, on the way out, leaves) the job's slot.
  class SlotGuard {
   public:
    SlotGuard(Iteration& iteration, int job, const JobContext& c)
        : use_(c.node() >= 0 && c.node() < kMaxNodes && c.worker() >= 0 &&
                       c.worker() < kMaxSlots
                   ? iteration.slot_use(c.node(), c.worker())
                   : nullptr) {
      if (use_ == nullptr) return;
      std::lock_guard<std::mutex> lock(use_->mu);
      if (use_->depth > 0 && use_->thread != std::this_thread::get_id()) {
        iteration.Violation(
            job, absl::StrCat("node ", c.node(), " slot ", c.worker(),
                              " is another thread's now"));
      }
      use_->thread = std::this_thread::get_id();
      ++use_->depth;
    }
    ~SlotGuard() {
      if (use_ == nullptr) return;
      std::lock_guard<std::mutex> lock(use_->mu);
      --use_->depth;
    }

   private:
    SlotUse* const use_;
  };
  SlotGuard slot_guard(it, id, ctx);

  // Affinity: what runtime.h (Affinity, StealPolicy) promises.
  if (r.home >= 0) {
    if (plan.stealing == StealPolicy::kStrict || plan.nodes == 1) {
      if (node != r.home) {
        it.Violation(
            id, absl::StrCat("ran on node ", node, ", not its node ", r.home,
                             " (", StealPolicyName(plan.stealing), ")"));
      }
      if (ctx.stolen()) it.Violation(id, "stolen() with nothing to steal from");
    } else if ((node != r.home) != ctx.stolen()) {
      it.Violation(
          id, absl::StrCat("stolen() is ", ctx.stolen(), " running on node ",
                           node, " for node ", r.home));
    }
  } else if (ctx.stolen() &&
             (plan.stealing == StealPolicy::kStrict || plan.nodes == 1)) {
    it.Violation(id, "stolen() under strict affinity");
  }
  if (const std::optional<bool> frame = it.ExpectedInFrame(id);
      frame.has_value() && *frame != ctx.in_frame()) {
    it.Violation(id, absl::StrCat("in_frame() is ", ctx.in_frame(),
                                  ", expected ", *frame));
  }

  // Every predecessor finished successfully before this started.
  for (int p : s.preds) {
    const JobRun& pr = it.runs_[p];
    if (!pr.returned.load(std::memory_order_acquire)) {
      it.Violation(id,
                   absl::StrCat("started before predecessor ", p, " returned"));
    }
    if (!pr.handle.done() || !pr.handle.status().ok()) {
      it.Violation(id, absl::StrCat("started while predecessor ", p,
                                    " is not done with OK: ",
                                    pr.handle.status().ToString()));
    }
  }

  for (int t : s.cancels) it.CancelJob(t);
  if (s.cancel_counter) it.CancelCounter(s.counter);
  for (int c : s.children) it.SubmitJob(c, &ctx, nullptr);

  uint64_t* mine = nullptr;
  if (s.arena_words > 0) {
    mine = ctx.arena().AllocateArray<uint64_t>(s.arena_words);
    for (int i = 0; i < s.arena_words; ++i) mine[i] = Pattern(id, i);
  }

  if (!s.local.empty()) {
    const bool by_handle = plan.jobs[s.local[0]].kind == Kind::kLocalHandle;
    JobCounter local;
    for (int c : s.local) {
      const bool counted =
          !by_handle && (!s.count_last_only || c == s.local.back());
      it.SubmitJob(c, &ctx, counted ? &local : nullptr);
    }
    absl::Status status;
    if (by_handle) {
      std::vector<int> order = s.local;
      if (s.wait_last_first) std::reverse(order.begin(), order.end());
      for (int c : order) {
        absl::Status one = it.runs_[c].handle.Wait();
        if (!it.runs_[c].handle.done()) {
          it.Violation(c, "Wait() inside a job returned before done()");
        }
        if (status.ok()) status = one;
      }
    } else {
      status = local.Wait();
      if (local.pending() != 0) {
        it.Violation(id, "a local counter's Wait returned with jobs pending");
      }
      if (s.count_last_only) {
        for (int c : s.local) {
          if (c == s.local.back()) continue;
          (void)it.runs_[c].handle.Wait();
          if (!it.runs_[c].handle.done()) {
            it.Violation(c, "Wait() inside a job returned before done()");
          }
        }
      }
    }
    std::lock_guard<std::mutex> lock(it.mu_);
    it.local_statuses_.push_back({id, std::move(status)});
  }

  if (s.fork > 0) {
    std::atomic<int> forked{0};
    auto f = [&](JobContext& c) {
      forked.fetch_add(1);
      if (c.node() != node) {
        it.Violation(id, absl::StrCat("a fork child ran on node ", c.node()));
      }
      // The last function runs with the caller's own context: not a child.
      if (&c != &ctx) {
        count_slot(c, false);
        SlotGuard child_guard(it, id, c);
      }
    };
    if (s.fork == 2) {
      ctx.Fork(f, f);
    } else {
      ctx.Fork(f, f, f);
    }
    if (forked.load() != s.fork) it.Violation(id, "a fork function was lost");
  }

  if (s.spin_us > 0) {
    const auto end =
        std::chrono::steady_clock::now() + std::chrono::microseconds(s.spin_us);
    while (std::chrono::steady_clock::now() < end) {
      if (ctx.cancel_requested()) r.saw_cancel = true;
    }
  }
  if (ctx.cancel_requested()) r.saw_cancel = true;

  if (mine != nullptr) {
    for (int i = 0; i < s.arena_words; ++i) {
      if (mine[i] != Pattern(id, i)) {
        it.Violation(id, absl::StrCat("its arena memory changed under it (",
                                      ctx.in_frame() ? "frame" : "scratch",
                                      " arena, word ", i, ")"));
        break;
      }
    }
  }
  // Frame memory of a predecessor of the same frame is still valid.
  for (int p : s.preds) {
    const JobSpec& ps = plan.jobs[p];
    if (!ps.publish_arena || ps.round != s.round || !ctx.in_frame() ||
        !it.runs_[p].in_frame.load()) {
      continue;
    }
    const uint64_t* theirs = it.runs_[p].arena.load(std::memory_order_acquire);
    if (theirs == nullptr) {
      it.Violation(id, absl::StrCat("predecessor ", p,
                                    " of its frame published no memory"));
      continue;
    }
    for (int i = 0; i < ps.arena_words; ++i) {
      if (theirs[i] != Pattern(p, i)) {
        it.Violation(id, absl::StrCat("frame memory of predecessor ", p,
                                      " changed (word ", i, ")"));
        break;
      }
    }
  }
  if (s.publish_arena && mine != nullptr && ctx.in_frame()) {
    r.arena.store(mine, std::memory_order_release);
  }

  if (s.throws) throw std::runtime_error(absl::StrCat("job-", id));
  r.returned.store(true, std::memory_order_release);
  return Expected(id);
}

std::optional<bool> Iteration::ExpectedInFrame(int id) const {
  const JobSpec& s = plan_.jobs[id];
  const RoundPlan& rp = plan_.rounds[s.round];
  if (!rp.frame) return false;
  if (!rp.last) return true;
  // The last round: the main thread's jobs (and their descendants) are
  // submitted while the frame is open; the external threads' may come after
  // its end (EndFrame, or Shutdown's).
  if (s.owner == 0) return true;
  return std::nullopt;
}

void Iteration::CheckFrameTiming(int round, const absl::Status& status) {
  const std::vector<FrameTiming> history = rt_->frame_history();
  ++frames_ended_;
  if (history.empty()) {
    Violation(-1, "frame_history() is empty after EndFrame");
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  frames_.push_back({round, status, history.back()});
}

void Iteration::RunRound(int round) {
  const RoundPlan& rp = plan_.rounds[round];
  Watchdog& dog = Watchdog::Get();
  dog.Phase(rp.last ? "last round" : "round");
  // Counter objects an earlier round used: their failure and cancellation
  // are forgotten (their jobs have all finished).
  for (int c : rp.counters) {
    if (Counter(c)->pending() != 0) {
      Violation(-1, absl::StrCat("counter ", c, " still has jobs pending"));
    } else {
      Counter(c)->Reset();
      if (Counter(c)->cancelled()) Violation(-1, "Reset() left it cancelled");
      const absl::Status s = Counter(c)->Wait();
      if (!s.ok() || Counter(c)->exception() != nullptr) {
        Violation(
            -1, absl::StrCat("counter ", c, " after Reset(): ", s.ToString()));
      }
    }
  }
  if (rp.frame) {
    absl::Status s = rt_->BeginFrame();
    if (!s.ok()) Violation(-1, absl::StrCat("BeginFrame: ", s.ToString()));
  }
  std::vector<std::thread> threads;
  for (int t = 1; t <= rp.externals; ++t) {
    threads.emplace_back([this, round, t] { RunScript(round, t); });
  }
  // While the frame is open, another thread may not begin one.
  if (rp.frame && rp.externals > 0) {
    std::thread([this] {
      absl::Status s = rt_->BeginFrame();
      if (!absl::IsFailedPrecondition(s)) {
        Violation(-1, absl::StrCat("a second BeginFrame gave ", s.ToString()));
      }
    }).join();
  }
  RunScript(round, 0);
  if (!rp.last) {
    dog.Phase("joining the external threads");
    for (auto& t : threads) t.join();
    if (rp.frame) {
      dog.Phase("EndFrame");
      absl::Status s = rt_->EndFrame();
      CheckFrameTiming(round, s);
      // Every job of the frame has finished.
      for (size_t i = 0; i < plan_.jobs.size(); ++i) {
        const JobRun& r = runs_[i];
        if (plan_.jobs[i].round != round || !r.published.load()) continue;
        if (plan_.jobs[i].submit ? !r.handle.done()
                                 : r.runs.load() > 0 && !r.exited.load()) {
          Violation(static_cast<int>(i), "not finished after EndFrame");
        }
      }
    }
    // Wait for everything through handles and counters until no job of the
    // round was published during a whole pass.
    dog.Phase("waiting for the round");
    for (;;) {
      size_t published_before = 0;
      for (size_t i = 0; i < plan_.jobs.size(); ++i) {
        published_before += runs_[i].published.load();
      }
      for (size_t i = 0; i < plan_.jobs.size(); ++i) {
        if (plan_.jobs[i].round == round && runs_[i].published.load() &&
            plan_.jobs[i].submit) {
          (void)runs_[i].handle.Wait();
        }
      }
      for (int c : rp.counters) WaitCounter(c);
      size_t published_after = 0;
      for (size_t i = 0; i < plan_.jobs.size(); ++i) {
        published_after += runs_[i].published.load();
      }
      if (published_after == published_before) break;
    }
    return;
  }

  // The last round: Shutdown, perhaps while external threads submit.
  if (!rp.shutdown_early) {
    dog.Phase("joining the external threads");
    for (auto& t : threads) t.join();
    threads.clear();
  }
  if (rp.frame && rp.end_frame_first) {
    dog.Phase("EndFrame");
    absl::Status s = rt_->EndFrame();
    CheckFrameTiming(round, s);
  }
  dog.Phase(rp.mode == ShutdownMode::kFinish ? "Shutdown(kFinish)"
                                             : "Shutdown(kCancel)");
  shutdown_started_.store(true);
  if (rp.mode == ShutdownMode::kCancel) shutdown_cancel_.store(true);
  const uint64_t frames_before = rt_->frames();
  absl::Status s = rt_->Shutdown(rp.mode);
  shutdown_returned_.store(true);
  if (rp.frame && !rp.end_frame_first) {
    if (rt_->frames() != frames_before + 1) {
      Violation(-1, "Shutdown did not end the open frame");
    }
    CheckFrameTiming(round, s);
  } else if (!s.ok()) {
    Violation(-1, absl::StrCat("Shutdown with no frame open: ", s.ToString()));
  }
  // Everything accepted so far has finished.
  auto check_final = [this](const char* when) {
    for (size_t i = 0; i < plan_.jobs.size(); ++i) {
      const JobRun& r = runs_[i];
      if (!r.published.load(std::memory_order_acquire)) continue;
      if (plan_.jobs[i].submit ? !r.handle.done()
                               : r.runs.load() > 0 && !r.exited.load()) {
        Violation(static_cast<int>(i), absl::StrCat("not finished ", when));
      }
    }
    for (size_t c = 0; c < counters_.size(); ++c) {
      if (counters_[c]->pending() != 0) {
        Violation(
            -1, absl::StrCat("counter object ", c, " has ",
                             counters_[c]->pending(), " jobs pending ", when));
      }
    }
  };
  check_final("when Shutdown returned");
  dog.Phase("joining the external threads after Shutdown");
  for (auto& t : threads) t.join();
  check_final("after Shutdown, once the external threads were joined");
  for (int c : rp.counters) WaitCounter(c);
  // Again, idempotent: OK and nothing else happens.
  absl::Status again = rt_->Shutdown(ShutdownMode::kFinish);
  if (!again.ok()) {
    Violation(-1, absl::StrCat("a second Shutdown: ", again.ToString()));
  }
}

Outcome Iteration::OutcomeOf(int id) const {
  const JobSpec& s = plan_.jobs[id];
  const JobRun& r = runs_[id];
  if (!r.published.load()) return Outcome::kNotSubmitted;
  if (s.submit) {
    const absl::Status st = r.handle.status();
    switch (st.code()) {
      case absl::StatusCode::kOk:
        return Outcome::kOk;
      case absl::StatusCode::kUnknown:
        return Outcome::kThrew;
      case absl::StatusCode::kCancelled:
        return Outcome::kCancelled;
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kFailedPrecondition:
        return Outcome::kRefused;
      default:
        return Outcome::kNotSubmitted;  // Reported by CheckModel.
    }
  }
  if (!r.spawn_status.ok()) return Outcome::kRefused;
  if (r.runs.load() == 0) return Outcome::kCancelled;
  return r.returned.load() ? Outcome::kOk : Outcome::kThrew;
}

void Iteration::CheckModel() {
  const size_t n = plan_.jobs.size();
  std::vector<Outcome> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = OutcomeOf(static_cast<int>(i));
  uint64_t accepted = 0, refused = 0, completed = 0, failed = 0, ran = 0;
  std::vector<uint64_t> node_lower(plan_.nodes, 0);
  std::set<uint64_t> ids;
  for (size_t k = 0; k < n; ++k) {
    const int id = static_cast<int>(k);
    const JobSpec& s = plan_.jobs[k];
    const JobRun& r = runs_[k];
    const int runs = r.runs.load();
    const Outcome o = out[k];
    if (runs > 1) Violation(id, absl::StrCat("ran ", runs, " times"));
    // Submitted exactly when its parent ran (children go in first thing).
    if (s.parent >= 0 &&
        r.published.load() != (runs_[s.parent].runs.load() > 0)) {
      Violation(id, absl::StrCat("published ", r.published.load(),
                                 " but its parent ran ",
                                 runs_[s.parent].runs.load(), " times"));
    }
    if (o == Outcome::kNotSubmitted) {
      if (r.published.load()) {
        Violation(id,
                  absl::StrCat("final status ", r.handle.status().ToString(),
                               " is none a job may end with"));
      }
      if (runs != 0) Violation(id, "ran without being submitted");
      continue;
    }
    if (s.submit && !r.handle.done()) {
      Violation(id, "its handle is not done at the end");
      continue;
    }
    const absl::Status status = s.submit ? r.handle.status() : r.spawn_status;
    const bool bad_node = s.node >= plan_.nodes;
    if (o == Outcome::kRefused) {
      ++refused;
      if (runs != 0) Violation(id, "ran although it was refused");
      if (bad_node) {
        if (status.code() != absl::StatusCode::kInvalidArgument) {
          Violation(id,
                    absl::StrCat("bad node refused with ", status.ToString()));
        }
      } else if (status.code() != absl::StatusCode::kFailedPrecondition ||
                 !r.shutdown_started_after) {
        Violation(id, absl::StrCat("refused before Shutdown began: ",
                                   status.ToString()));
      } else if (r.from_job &&
                 plan_.rounds.back().mode == ShutdownMode::kFinish) {
        Violation(id, "a continuation was refused during a kFinish Shutdown");
      }
      continue;
    }
    if (bad_node) {
      Violation(id, absl::StrCat("accepted for a node that does not exist: ",
                                 status.ToString()));
    }
    if (r.shutdown_returned_before && !r.from_job) {
      Violation(id, "accepted after Shutdown returned");
    }
    ++accepted;
    if (r.home >= 0) ++node_lower[r.home];
    ran += runs > 0;
    if (runs > 0) {
      const uint64_t job_id = r.job_id.load();
      if (job_id == 0 || !ids.insert(job_id).second) {
        Violation(id, absl::StrCat("job_id() ", job_id, " is not unique"));
      }
      if (s.submit && r.handle.id() != job_id) {
        Violation(id, absl::StrCat("handle id ", r.handle.id(),
                                   " != ctx.job_id() ", job_id));
      }
    }
    // Why it may not have run.
    bool pred_failed = false;
    for (int p : s.preds) pred_failed |= out[p] != Outcome::kOk;
    const bool counter_cancelled =
        s.counter >= 0 && counter_cancelled_[s.counter].load();
    const bool cause = pred_failed || r.cancel_calls.load() > 0 ||
                       counter_cancelled || shutdown_cancel_.load();
    switch (o) {
      case Outcome::kOk:
        ++completed;
        if (runs != 1 || !r.returned.load() || s.throws) {
          Violation(id, absl::StrCat("OK with runs=", runs, " returned=",
                                     r.returned.load(), " throws=", s.throws));
        } else if (s.submit && r.handle.value() != Expected(id)) {
          Violation(id, absl::StrCat("value ", r.handle.value(),
                                     " != ", Expected(id)));
        }
        break;
      case Outcome::kThrew: {
        ++failed;
        if (runs != 1 || !s.throws || !r.exited.load()) {
          Violation(id, absl::StrCat("failed with runs=", runs,
                                     " throws=", s.throws));
        }
        if (s.submit) {
          const std::string text = absl::StrCat("job-", id);
          if (!absl::StrContains(status.message(), text)) {
            Violation(id, absl::StrCat("status lacks the exception's text: ",
                                       status.ToString()));
          }
          std::exception_ptr e = r.handle.exception();
          if (e == nullptr) {
            Violation(id, "exception() is null for a job that threw");
          } else {
            try {
              std::rethrow_exception(e);
            } catch (const std::runtime_error& error) {
              if (error.what() != text) {
                Violation(id,
                          absl::StrCat("exception() is '", error.what(), "'"));
              }
            } catch (...) {
              Violation(id, "exception() has another type");
            }
          }
        }
        break;
      }
      case Outcome::kCancelled:
        if (runs != 0) {
          Violation(id, absl::StrCat("Cancelled but ran ", runs, " time(s)"));
        }
        if (!cause) {
          Violation(id, absl::StrCat(
                            "never ran, with no cause (no failed predecessor, "
                            "no Cancel, no counter Cancel, no kCancel): ",
                            status.ToString()));
        }
        break;
      default:
        break;
    }
    if (r.saw_cancel.load() && r.cancel_calls.load() == 0 &&
        !counter_cancelled && !shutdown_cancel_.load()) {
      Violation(id, "cancel_requested() with nobody asking");
    }
    if (runs > 0) {
      for (int p : s.preds) {
        if (out[p] != Outcome::kOk) {
          Violation(id, absl::StrCat("ran although predecessor ", p,
                                     " did not succeed"));
        }
      }
      if (r.cancel_true.load() > 0) {
        Violation(id, "ran although Cancel() returned true");
      }
    } else if (r.cancel_false.load() > 0) {
      // "true if it will not run, false if it already runs or ran".
      Violation(id, absl::StrCat("Cancel() returned false but it never ran: ",
                                 status.ToString()));
    }
    // In-frame expectation for jobs that ran is checked by the job.
  }

  // Handles' waits saw their final status.
  for (const auto& [id, code] : waits_) {
    if (plan_.jobs[id].submit && runs_[id].handle.status().code() != code) {
      Violation(id, absl::StrCat("Wait() gave ", absl::StatusCodeToString(code),
                                 ", its final status is ",
                                 runs_[id].handle.status().ToString()));
    }
  }

  // Local waits inside jobs.
  for (const auto& [parent, status] : local_statuses_) {
    const JobSpec& s = plan_.jobs[parent];
    const bool by_handle = plan_.jobs[s.local[0]].kind == Kind::kLocalHandle;
    if (by_handle) {
      // The first non-OK status among the children, in the order waited.
      absl::StatusCode expected = absl::StatusCode::kOk;
      std::vector<int> order = s.local;
      if (s.wait_last_first) std::reverse(order.begin(), order.end());
      for (int c : order) {
        const absl::StatusCode code = runs_[c].handle.status().code();
        if (code != absl::StatusCode::kOk) {
          expected = code;
          break;
        }
      }
      if (status.code() != expected) {
        Violation(parent, absl::StrCat("waiting on its children's handles "
                                       "gave ",
                                       status.ToString()));
      }
    } else {
      bool any_failed = false, any_threw = false, any_cancelled = false;
      for (int c : s.local) {
        if (s.count_last_only && c != s.local.back()) continue;  // Uncounted.
        any_failed |=
            out[c] == Outcome::kThrew || out[c] == Outcome::kCancelled;
        any_threw |= out[c] == Outcome::kThrew;
        any_cancelled |= out[c] == Outcome::kCancelled;
      }
      if (status.ok() == any_failed ||
          (absl::IsUnknown(status) && !any_threw) ||
          (absl::IsCancelled(status) && !any_cancelled) ||
          (!status.ok() && !absl::IsUnknown(status) &&
           !absl::IsCancelled(status))) {
        Violation(parent, absl::StrCat("its local counter gave ",
                                       status.ToString(), " (threw ", any_threw,
                                       ", cancelled ", any_cancelled, ")"));
      }
    }
  }

  // Counters: OK, or the first failure (Cancelled, or Unknown with the
  // exception), the same on every Wait.
  for (size_t c = 0; c < plan_.counter_owner.size(); ++c) {
    bool any_threw = false, any_cancelled = false;
    std::vector<std::string> threw_text;
    for (size_t k = 0; k < n; ++k) {
      if (plan_.jobs[k].counter != static_cast<int>(c)) continue;
      if (out[k] == Outcome::kThrew) {
        any_threw = true;
        threw_text.push_back(absl::StrCat("job-", k));
      }
      any_cancelled |= out[k] == Outcome::kCancelled;
    }
    const auto& waits = counter_waits_[c];
    for (size_t w = 0; w < waits.size(); ++w) {
      const absl::Status& st = waits[w].status;
      // Unknown: the message and exception() name the same thrower.
      const std::string& thrown = waits[w].exception;
      bool ok =
          st.ok() ? !any_threw && !any_cancelled && thrown.empty()
          : absl::IsUnknown(st)
              ? std::find(threw_text.begin(), threw_text.end(), thrown) !=
                        threw_text.end() &&
                    absl::StrContains(st.message(), absl::StrCat(": ", thrown))
          : absl::IsCancelled(st) ? any_cancelled && thrown.empty()
                                  : false;
      if (w > 0 && st != waits[0].status) ok = false;
      if (!ok) {
        Violation(-1, absl::StrCat("counter ", c, " Wait #", w, " gave ",
                                   st.ToString(), " (a job threw: ", any_threw,
                                   ", one was cancelled: ", any_cancelled,
                                   ", exception: '", waits[w].exception, "'",
                                   ", first Wait: ", waits[0].status.ToString(),
                                   ")"));
      }
    }
  }

  // Frames: EndFrame's status and FrameTiming against the frame's jobs.
  for (const FrameResult& f : frames_) {
    const RoundPlan& rp = plan_.rounds[f.round];
    uint64_t jobs = 0, bad = 0, sure_jobs = 0, sure_bad = 0;
    uint64_t allocations = 0, bytes = 0;  // Of the jobs that ran in it.
    for (size_t k = 0; k < n; ++k) {
      if (plan_.jobs[k].round != f.round) continue;
      if (out[k] == Outcome::kNotSubmitted || out[k] == Outcome::kRefused) {
        continue;
      }
      const bool failed_job = out[k] != Outcome::kOk;
      if (runs_[k].runs.load() > 0 && runs_[k].in_frame.load() &&
          plan_.jobs[k].arena_words > 0) {
        ++allocations;
        bytes += plan_.jobs[k].arena_words * sizeof(uint64_t);
      }
      ++jobs;
      bad += failed_job;
      if (plan_.jobs[k].owner == 0) {
        ++sure_jobs;
        sure_bad += failed_job;
      }
    }
    if (!rp.last) {
      if (f.timing.jobs != jobs || f.timing.failed_jobs != bad) {
        Violation(-1,
                  absl::StrCat("frame of round ", f.round, ": timing says ",
                               f.timing.jobs, " jobs, ", f.timing.failed_jobs,
                               " failed; the model ", jobs, " and ", bad));
      }
    } else if (f.timing.jobs < sure_jobs || f.timing.jobs > jobs ||
               f.timing.failed_jobs < sure_bad || f.timing.failed_jobs > bad) {
      Violation(-1, absl::StrCat("last frame: timing says ", f.timing.jobs,
                                 " jobs, ", f.timing.failed_jobs,
                                 " failed; the model between ", sure_jobs,
                                 " and ", jobs, ", ", sure_bad, " and ", bad));
    }
    if (f.timing.arena_allocations != allocations ||
        f.timing.arena_bytes < bytes) {
      Violation(-1,
                absl::StrCat("frame of round ", f.round, ": timing says ",
                             f.timing.arena_allocations, " arena allocations, ",
                             f.timing.arena_bytes, " bytes; its jobs made ",
                             allocations, ", ", bytes, " bytes"));
    }
    if (f.status.ok() != (f.timing.failed_jobs == 0)) {
      Violation(-1, absl::StrCat("frame of round ", f.round, " ended with ",
                                 f.status.ToString(), " and ",
                                 f.timing.failed_jobs, " failed jobs"));
    }
  }

  // Statistics, exact now that the runtime is quiescent.
  const RuntimeStats stats = rt_->stats();
  if (std::getenv("RUNTIME_MODEL_VERBOSE") != nullptr) {
    std::fprintf(stderr, "  %s", stats.ToText().c_str());
  }
  const uint64_t cancelled = accepted - ran;
  if (stats.jobs_submitted != accepted || stats.jobs_completed != completed ||
      stats.jobs_failed != failed || stats.jobs_cancelled != cancelled ||
      stats.jobs_refused != refused) {
    Violation(-1, absl::StrCat(
                      "stats: submitted ", stats.jobs_submitted, " completed ",
                      stats.jobs_completed, " failed ", stats.jobs_failed,
                      " cancelled ", stats.jobs_cancelled, " refused ",
                      stats.jobs_refused, "; the model: ", accepted, " ",
                      completed, " ", failed, " ", cancelled, " ", refused));
  }
  if (stats.jobs_submitted !=
      stats.jobs_completed + stats.jobs_failed + stats.jobs_cancelled) {
    Violation(-1, "stats: submitted != completed + failed + cancelled");
  }
  if (stats.frames != static_cast<uint64_t>(frames_ended_)) {
    Violation(-1, absl::StrCat("stats: ", stats.frames, " frames, the model ",
                               frames_ended_));
  }
  uint64_t node_sum = 0;
  for (const NodeStats& ns : stats.nodes) {
    node_sum += ns.jobs_submitted;
    if (ns.jobs_submitted < node_lower[ns.node]) {
      Violation(-1, absl::StrCat("stats: node ", ns.node, " submitted ",
                                 ns.jobs_submitted, ", at least ",
                                 node_lower[ns.node], " were for it"));
    }
    uint64_t stolen = 0;
    for (const WorkerStats& w : ns.worker_stats) {
      const uint64_t expected_runs = slot_runs_[ns.node][w.worker].load();
      const uint64_t expected_stolen = slot_stolen_[ns.node][w.worker].load();
      if (w.jobs_run != expected_runs || w.jobs_stolen != expected_stolen) {
        Violation(-1, absl::StrCat("stats: node ", ns.node, " slot ", w.worker,
                                   " ran ", w.jobs_run, " (", w.jobs_stolen,
                                   " stolen); the model ", expected_runs, " (",
                                   expected_stolen, ")"));
      }
      stolen += w.jobs_stolen;
    }
    if (ns.jobs_stolen != stolen) {
      Violation(-1, "stats: a node's jobs_stolen is not its workers' sum");
    }
  }
  if (node_sum != stats.jobs_submitted) {
    Violation(-1, "stats: the nodes' submitted do not add up");
  }
}

void RunAll(const std::vector<uint64_t>& seeds) {
  Watchdog::Get().Configure("runtime_model_test", "RUNTIME_MODEL",
                            kSanitized ? 120 : 60);
  PrintSeedOnCrash();
  model_harness::RunPrograms<Iteration>(
      "RUNTIME_MODEL", seeds,
      [](uint64_t seed) { return PlanBuilder(seed).Build(); },
      [](Iteration& it) {
        Watchdog::Get().Phase("checking");
        it.CheckModel();
      },
      [](uint64_t seed) { crash_seed.store(seed, std::memory_order_relaxed); });
  std::printf("%zu programs\n", seeds.size());
}

TEST(RuntimeModelTest, RandomProgramsMatchTheModel) {
  const std::vector<uint64_t> seeds =
      model_harness::Seeds("RUNTIME_MODEL", kIterations, 0x5EED0000);
  ASSERT_FALSE(seeds.empty());
  RunAll(seeds);
}

// Programs that hung only now and then, each run many times over.
// 22574150 (strict affinity; node 0 of two workers, node 1 of one; an
// outside thread helping) hung in about 1 run of 5 before Runtime::AwakeHold
// (a -c fastbuild --dynamic_mode=off binary; 1 of 200 as a shared one): a
// job of node 0 waited in TBB on a job declared on node 1, a thread at the
// top of node 0's arena ran the keep-awake task, the waiter fell asleep in
// TBB's wait, and node 1's arena never got its thread back (oneTBB 2021.8).
TEST(RuntimeModelTest, ProgramsThatHungNowAndThenFinishEveryTime) {
  if (model_harness::Env("RUNTIME_MODEL", "SEEDS") != nullptr) {
    GTEST_SKIP() << "RUNTIME_MODEL_SEEDS runs the first test only";
  }
  RunAll(std::vector<uint64_t>(kSanitized ? 100 : 400, 22574150));
}

}  // namespace
}  // namespace jobs
}  // namespace framealloc
