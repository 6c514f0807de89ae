// The simulation suite: framealloc's main job.
//
//   ./bazelw run -c opt //benchmarks:simulation
//
// Runs every registered scenario (benchmarks/scenarios.cc) in every variant
// at equal parallelism, with the same seed: heap and frame arena on one
// thread; the job runtime on all its workers with heap temporaries and with
// per-worker frame arenas; the runtime-arena variant once more on one worker
// per node (the scaling baseline); and the two heap variants once more in
// //benchmarks:simulation_mimalloc (the same sources linked with mimalloc,
// which replaces malloc for its whole process), launched by this program as
// a child that writes its runs as JSON. Every run has a fresh process of its
// own (--isolate, the default): this program starts itself once per run, so
// what one run leaves behind (the size of the malloc heap, glibc's adaptive
// trim and mmap thresholds, chunk caches, a runtime's threads) cannot change
// the next run's figures, and a scenario measures the same alone as in the
// whole suite. With --rounds=N every run's frames are measured in N parts,
// the runs taking turns (forward, then backward), so that the host's slow
// and fast phases fall on every run alike. For each scenario it prints a table
// (frame time median and p99, heap and arena allocations and bytes, page
// faults per frame), the ratios between runs at equal parallelism, the STREAM
// triad on arrays of the scenario's streaming-pass size at one thread and at
// the runtime's worker count with the pass as a percentage of it, and checks
// that every run ended in the same StateHash. Then it writes a JSON file and
// an SVG plot (frame time and memory per frame).
//
// Exit status: 0; 1 for bad flags or a failed run; 2 if some scenario's runs
// did not reach the same state.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "benchmarks/report.h"
#include "benchmarks/scenarios.h"
#include "benchmarks/suite.h"
#include "jobs/config.h"
#include "numa/topology.h"

ABSL_FLAG(std::string, scenario, "all",
          "Scenarios to run, comma-separated (particles, physics, ecs, "
          "render; those registered; each runs once), or 'all' (alone or "
          "in the list: every one).");
ABSL_FLAG(int64_t, size, 0,
          "Element count for every selected scenario (particles, bodies, "
          "entities, draw items); 0: each scenario's default.");
ABSL_FLAG(int, frames, 0,
          "Measured frames per run; 0: as many as the first run of each "
          "scenario fits in --budget seconds, then the same for all runs.");
ABSL_FLAG(int, warmup, 2, "Unmeasured frames before the measured ones.");
ABSL_FLAG(double, budget, 1.0,
          "Seconds of measured frames for the first run of each scenario "
          "when --frames=0.");
ABSL_FLAG(int, workers, 0,
          "Workers of the runtime variants (split over the nodes as evenly "
          "as possible: at least one and at most 256 per node); 0: one per "
          "processing unit.");
ABSL_FLAG(std::string, topology, "",
          "Synthetic hwloc topology for the runtime variants, e.g. "
          "'pack:2 [numa] core:1 pu:1' (2 logical nodes; nothing is bound); "
          "empty: this machine.");
ABSL_FLAG(uint64_t, seed, 42, "Random seed of every scenario's initial state.");
ABSL_FLAG(std::string, json, "simulation.json",
          "Where to write the JSON results (relative to the directory "
          "bazel run was started from); empty: do not write.");
ABSL_FLAG(std::string, svg, "simulation.svg",
          "Where to write the SVG plot (relative as --json); empty: do not "
          "write.");
ABSL_FLAG(std::string, variants,
          "heap,arena,runtime-heap,runtime-arena,runtime-arena-1w,mimalloc",
          "Runs, comma-separated: heap, arena, runtime-heap, runtime-arena, "
          "runtime-arena-1w (runtime-arena on one worker per node), mimalloc "
          "(heap and runtime-heap in the mimalloc binary).");
ABSL_FLAG(int, triad_repetitions, 10,
          "Repetitions of each STREAM triad; 0: no triad.");
ABSL_FLAG(bool, progress, true, "Show a progress bar on stderr.");
ABSL_FLAG(std::string, mimalloc_binary, "",
          "The mimalloc build of this program; empty: simulation_mimalloc "
          "next to this binary or in its runfiles.");
ABSL_FLAG(std::string, trace, "",
          "If set, a Chrome trace (Perfetto, chrome://tracing) of the jobs of "
          "each runtime run's measured frames, written to "
          "<trace>-<scenario>-<run>.json; empty: none.");
ABSL_FLAG(bool, isolate, true,
          "Run every variant in a fresh process of this program (a child "
          "that reports its run as JSON), so that no run inherits another's "
          "heap, malloc thresholds, caches or threads; false: all runs in "
          "this process, one after another.");
ABSL_FLAG(std::string, child_json, "",
          "Internal (a child run): run --variants of one --scenario in this "
          "process, write the runs here as JSON, print no report.");
ABSL_FLAG(std::string, child_progress, "",
          "Internal (a child run): the label of its progress line.");
ABSL_FLAG(int, child_min_frames, 0,
          "Internal (a child run): the fewest measured frames in budget "
          "mode; 0: the default.");
ABSL_FLAG(int, child_max_frames, 0,
          "Internal (a child run): the most measured frames in budget mode; "
          "0: the default.");
ABSL_FLAG(int, rounds, 1,
          "Measure every run in this many parts, the runs taking turns "
          "(forward, then backward, ...), each part a fresh process with "
          "--isolate; the frames of a run are split over its rounds. Steadier "
          "ratios on a host with slow and fast phases; but every round starts "
          "from the seed, so more rounds measure earlier frames.");

namespace framealloc::sim {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::vector<ScenarioInfo> scenarios;
  size_t size = 0;
  int frames = 0;
  int warmup = 0;
  double budget = 0;
  int workers = 0;
  std::string topology;
  uint64_t seed = 0;
  std::vector<RunKind> kinds;
  bool mimalloc = false;
  int triad_repetitions = 0;
  bool progress = true;
  std::string trace;  // Prefix of the trace files; empty: none.
  bool isolate = true;
  std::string child_json;
  std::string child_progress;
  int child_min_frames = 0;
  int child_max_frames = 0;
  int rounds = 1;
};

absl::StatusOr<Flags> ReadFlags() {
  Flags f;
  absl::StatusOr<std::vector<ScenarioInfo>> scenarios =
      FindScenarios(absl::GetFlag(FLAGS_scenario));
  if (!scenarios.ok()) return scenarios.status();
  f.scenarios = *std::move(scenarios);
  if (f.scenarios.empty()) {
    // "--scenario=," names none: nothing would run, and the outputs of an
    // earlier run would be overwritten with empty ones.
    return absl::InvalidArgumentError(absl::StrCat(
        "--scenario names no scenario: '", absl::GetFlag(FLAGS_scenario), "'"));
  }
  const int64_t size = absl::GetFlag(FLAGS_size);
  if (size < 0 || size > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--size must be in [0, 2^32], got ", size));
  }
  f.size = static_cast<size_t>(size);
  f.frames = absl::GetFlag(FLAGS_frames);
  if (f.frames < 0 || f.frames > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--frames must be in [0, 100000], got ", f.frames));
  }
  f.warmup = absl::GetFlag(FLAGS_warmup);
  if (f.warmup < 0 || f.warmup > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup must be in [0, 100000], got ", f.warmup));
  }
  f.budget = absl::GetFlag(FLAGS_budget);
  if (!(f.budget > 0) || f.budget > 3600) {
    return absl::InvalidArgumentError(
        absl::StrCat("--budget must be in (0, 3600] seconds, got ", f.budget));
  }
  f.workers = absl::GetFlag(FLAGS_workers);
  if (f.workers < 0 || f.workers > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers must be in [0, 4096], got ", f.workers));
  }
  f.topology = absl::GetFlag(FLAGS_topology);
  f.seed = absl::GetFlag(FLAGS_seed);
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_variants), ',',
                                            absl::SkipWhitespace())) {
    if (v == "mimalloc") {
      if (f.mimalloc) {
        return absl::InvalidArgumentError("--variants names mimalloc twice");
      }
      f.mimalloc = true;
      continue;
    }
    absl::StatusOr<RunKind> kind = ParseRunKind(v);
    if (!kind.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--variants: ", kind.status().message(), " or mimalloc"));
    }
    if (std::find(f.kinds.begin(), f.kinds.end(), *kind) != f.kinds.end()) {
      // Two rows of one name: the ratios would read the first only.
      return absl::InvalidArgumentError(
          absl::StrCat("--variants names ", v, " twice"));
    }
    f.kinds.push_back(*kind);
  }
  if (f.kinds.empty() && !f.mimalloc) {
    return absl::InvalidArgumentError("--variants names no run");
  }
  f.triad_repetitions = absl::GetFlag(FLAGS_triad_repetitions);
  if (f.triad_repetitions < 0 || f.triad_repetitions > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--triad_repetitions must be in [0, 10000], got ",
                     f.triad_repetitions));
  }
  f.progress = absl::GetFlag(FLAGS_progress);
  f.trace = absl::GetFlag(FLAGS_trace);
  f.isolate = absl::GetFlag(FLAGS_isolate);
  f.child_json = absl::GetFlag(FLAGS_child_json);
  f.child_progress = absl::GetFlag(FLAGS_child_progress);
  f.child_min_frames = absl::GetFlag(FLAGS_child_min_frames);
  if (f.child_min_frames < 0 || f.child_min_frames > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--child_min_frames must be in [0, 100000], got ", f.child_min_frames));
  }
  f.child_max_frames = absl::GetFlag(FLAGS_child_max_frames);
  if (f.child_max_frames < 0 || f.child_max_frames > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--child_max_frames must be in [0, 100000], got ", f.child_max_frames));
  }
  f.rounds = absl::GetFlag(FLAGS_rounds);
  if (f.rounds < 1 || f.rounds > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rounds must be in [1, 100], got ", f.rounds));
  }
  if (f.frames % f.rounds != 0) {
    // Every round measures the same number of frames: --frames rounded up
    // to a multiple of --rounds (said here, and it is what the header, the
    // table and the JSON then report).
    const int rounded = (f.frames / f.rounds + 1) * f.rounds;
    std::fprintf(stderr,
                 "simulation: --frames=%d rounded up to %d, a multiple of "
                 "--rounds=%d\n",
                 f.frames, rounded, f.rounds);
    f.frames = rounded;
  }
  if (!f.child_progress.empty() && f.child_json.empty()) {
    return absl::InvalidArgumentError(
        "--child_progress is for child runs (with --child_json)");
  }
  if (!f.child_json.empty()) {
    if (f.scenarios.size() != 1 || f.mimalloc) {
      return absl::InvalidArgumentError(
          "--child_json needs one --scenario and no mimalloc variant");
    }
    f.isolate = false;  // A child runs its variants itself.
  }
  return f;
}

// A path relative to the directory `bazel run` was started from.
std::string OutputPath(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  const char* dir = std::getenv("BUILD_WORKING_DIRECTORY");
  if (dir == nullptr || *dir == '\0') return path;
  return absl::StrCat(dir, "/", path);
}

// The progress bar: redrawn in place on a terminal, one line per run
// otherwise.
class Progress {
 public:
  Progress(bool enabled, std::string prefix)
      : enabled_(enabled),
        tty_(isatty(STDERR_FILENO) == 1),
        prefix_(std::move(prefix)),
        start_(Clock::now()) {}

  void Update(int done, int total) {
    if (!enabled_ || !tty_) return;
    const double s =
        std::chrono::duration<double>(Clock::now() - start_).count();
    constexpr int kWidth = 30;
    if (total > 0) {
      const int filled = kWidth * done / total;
      std::fprintf(stderr, "\r%-44s [%s%s] %d/%d frames %5.1f s",
                   prefix_.c_str(), std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, '.').c_str(), done, total, s);
    } else {
      std::fprintf(stderr, "\r%-44s [%s] %d frames %5.1f s", prefix_.c_str(),
                   std::string(kWidth, '~').c_str(), done, s);
    }
    std::fflush(stderr);
  }
  void Done(int frames) {
    if (!enabled_) return;
    const double s =
        std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "%s%-44s done: %d measured frames, %.1f s%s\n",
                 tty_ ? "\r" : "", prefix_.c_str(), frames, s,
                 tty_ ? "                              " : "");
  }

 private:
  bool enabled_;
  bool tty_;
  std::string prefix_;
  Clock::time_point start_;
};

bool IsExecutable(const std::string& path) {
  return !path.empty() && access(path.c_str(), X_OK) == 0;
}

// The mimalloc build of this program, or "" if none is found.
std::string FindMimallocBinary(const char* argv0) {
  const std::string flag = absl::GetFlag(FLAGS_mimalloc_binary);
  if (!flag.empty()) return IsExecutable(flag) ? flag : "";
  std::vector<std::string> candidates;
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len > 0) {
    self[len] = '\0';
    std::string dir(self);
    dir = dir.substr(0, dir.rfind('/'));
    candidates.push_back(dir + "/simulation_mimalloc");
  }
  if (const char* runfiles = std::getenv("RUNFILES_DIR")) {
    candidates.push_back(
        absl::StrCat(runfiles, "/framealloc/benchmarks/simulation_mimalloc"));
  }
  candidates.push_back(absl::StrCat(
      argv0, ".runfiles/framealloc/benchmarks/simulation_mimalloc"));
  std::string a0(argv0);
  if (a0.find('/') != std::string::npos) {
    candidates.push_back(a0.substr(0, a0.rfind('/')) + "/simulation_mimalloc");
  }
  for (const std::string& c : candidates) {
    if (IsExecutable(c)) return c;
  }
  return "";
}

// This program's own executable: /proc/self/exe, or argv[0] when that
// cannot be read or names a file since replaced (a rebuild during the run);
// "" if neither is usable.
std::string SelfBinary(const char* argv0) {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self));
  if (len > 0 && len < static_cast<ssize_t>(sizeof(self))) {
    const std::string path(self, static_cast<size_t>(len));
    if (!absl::EndsWith(path, " (deleted)") && IsExecutable(path)) {
      return path;
    }
  }
  const std::string a0(argv0 == nullptr ? "" : argv0);
  if (a0.find('/') != std::string::npos && IsExecutable(a0)) return a0;
  return "";
}

// What a child process runs: `kinds` of one scenario, `frames` measured
// frames (0: --budget seconds' worth), with `progress` as its progress
// label and, if not empty, a trace of its runtime runs under `trace`.
struct ChildRequest {
  std::vector<RunKind> kinds;
  int frames = 0;
  double budget = 1.0;  // Seconds, when frames == 0.
  int min_frames = 5;   // At least, when frames == 0.
  int max_frames = 0;   // At most, when frames == 0 (0: the child's own).
  std::string progress;
  std::string trace;
};

// Runs `binary` (this program or its mimalloc build) as a child for one
// scenario and returns its runs, labelled by the child (RunKindName).
absl::StatusOr<std::vector<VariantRun>> RunChild(const std::string& binary,
                                                 const Flags& flags,
                                                 const ScenarioInfo& info,
                                                 size_t size,
                                                 const ChildRequest& request) {
  std::vector<std::string> kind_names;
  for (RunKind k : request.kinds) kind_names.push_back(RunKindName(k));
  const char* tmp = std::getenv("TMPDIR");
  std::string path_text =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                   "/framealloc_simulation_XXXXXX");
  char* path = path_text.data();
  const int fd = mkstemp(path);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("mkstemp failed for the child JSON in ", path_text));
  }
  close(fd);
  std::vector<std::string> args = {
      binary,
      absl::StrCat("--child_json=", path),
      absl::StrCat("--scenario=", info.name),
      absl::StrCat("--size=", size),
      absl::StrCat("--frames=", request.frames),
      absl::StrFormat("--budget=%.9g", request.budget),
      absl::StrCat("--child_min_frames=", request.min_frames),
      absl::StrCat("--child_max_frames=", request.max_frames),
      absl::StrCat("--warmup=", flags.warmup),
      absl::StrCat("--seed=", flags.seed),
      absl::StrCat("--workers=", flags.workers),
      absl::StrCat("--topology=", flags.topology),
      absl::StrCat("--variants=", absl::StrJoin(kind_names, ",")),
      absl::StrCat("--progress=", flags.progress ? "true" : "false"),
      absl::StrCat("--child_progress=", request.progress),
      absl::StrCat("--trace=", request.trace),
  };
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  std::fflush(stdout);
  std::fflush(stderr);
  if (posix_spawn(&pid, binary.c_str(), nullptr, nullptr, argv.data(),
                  environ) != 0) {
    std::remove(path);
    return absl::InternalError(absl::StrCat("cannot start ", binary));
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    std::remove(path);
    return absl::InternalError(
        absl::StrCat(binary, " failed (wait status ", status, ")"));
  }
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(path);
  const nlohmann::json doc =
      nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("runs") || !doc["runs"].is_array()) {
    return absl::InternalError("the child's JSON has no 'runs' array");
  }
  std::vector<VariantRun> runs;
  for (const nlohmann::json& j : doc["runs"]) {
    absl::StatusOr<VariantRun> run = RunFromJson(j);
    if (!run.ok()) return run.status();
    runs.push_back(*std::move(run));
  }
  return runs;
}

// Writes `text` to a temporary file next to `path`, then renames it over
// `path`: a failed write (a full disk, a file size limit) leaves the
// previous file whole, not a truncated one.
absl::Status WriteFile(const std::string& path, const std::string& text) {
  const std::string temporary = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
      std::remove(temporary.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", path));
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(temporary.c_str());
    return absl::InternalError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "simulation: %s\n", s.ToString().c_str());
  return 1;
}

int Main(const char* argv0) {
  absl::StatusOr<Flags> flags_or = ReadFlags();
  if (!flags_or.ok()) return Fail(flags_or.status());
  const Flags& flags = *flags_or;
  const bool child = !flags.child_json.empty();
  const Clock::time_point start = Clock::now();

  std::unique_ptr<numa::Topology> topology;
  {
    absl::StatusOr<std::unique_ptr<numa::Topology>> t =
        flags.topology.empty() ? numa::Topology::Discover()
                               : numa::Topology::FromSynthetic(flags.topology);
    if (!t.ok()) return Fail(t.status());
    topology = *std::move(t);
  }
  // --workers against the topology, before anything runs: the runtime
  // refused a count it cannot lay out only when the first runtime run
  // started, after the one-thread runs, without naming the flag.
  if (flags.workers > 0) {
    const int nodes = topology->num_nodes();
    const int64_t most = int64_t{nodes} * jobs::kMaxWorkersPerNode;
    if (flags.workers < nodes || flags.workers > most) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--workers must be in [", nodes, ", ", most, "] on this topology (",
          nodes, " node(s), at least one and at most ",
          jobs::kMaxWorkersPerNode, " workers each), got ", flags.workers)));
    }
  }
  std::string mimalloc_binary;
  if (flags.mimalloc && !child) {
    mimalloc_binary = FindMimallocBinary(argv0);
    if (mimalloc_binary.empty() && flags.kinds.empty()) {
      // Only mimalloc runs asked for, and none can run: as for
      // "--scenario=,", nothing would run, and the outputs of an earlier
      // run would be overwritten with empty ones. Refused before anything
      // is written.
      const std::string flag = absl::GetFlag(FLAGS_mimalloc_binary);
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--variants=", absl::GetFlag(FLAGS_variants),
          " names only the mimalloc runs, and ",
          flag.empty() ? "simulation_mimalloc was not found next to this "
                         "binary or in its runfiles (build "
                         "//benchmarks:simulation_mimalloc)"
                       : absl::StrCat("--mimalloc_binary=", flag,
                                      " is not an executable"),
          ": nothing to run")));
    }
    if (mimalloc_binary.empty()) {
      std::printf(
          "note: simulation_mimalloc not found (build "
          "//benchmarks:simulation_mimalloc or pass --mimalloc_binary): "
          "mimalloc runs skipped\n");
    }
  }
  // Every run in a process of its own: this program, started once per run.
  bool isolate = flags.isolate && !flags.kinds.empty();
  std::string self_binary;
  if (isolate) {
    self_binary = SelfBinary(argv0);
    if (self_binary.empty()) {
      std::printf(
          "note: cannot find this program's executable to start each run in "
          "a process of its own: all runs in this process\n");
      isolate = false;
    }
  }
  // Whether the runs had processes of their own (the mimalloc ones always
  // do, one per run unless --isolate=false).
  const bool isolated = flags.isolate && (isolate || flags.kinds.empty());
  if (!child) {
    std::printf(
        "framealloc simulation suite: %zu scenario(s), seed %llu, runtime "
        "topology %s (%d node(s), %zu PUs%s), %s, %s, %s\n",
        flags.scenarios.size(), static_cast<unsigned long long>(flags.seed),
        flags.topology.empty() ? "this machine"
                               : absl::StrCat("'", flags.topology, "'").c_str(),
        topology->num_nodes(), topology->pus().size(),
        topology->is_this_system() ? "" : ", synthetic: nothing bound",
        flags.frames == 0
            ? absl::StrFormat("frames: as many as the first run does in "
                              "%.1f s",
                              flags.budget)
                  .c_str()
            : absl::StrCat(flags.frames, " measured frames per run").c_str(),
        isolated ? "each run in a fresh process" : "all runs in this process",
        flags.rounds > 1
            ? absl::StrCat(flags.rounds,
                           " rounds (the runs take turns, each round a "
                           "part of every run's frames)")
                  .c_str()
            : "one round");
    std::fflush(stdout);
  }

  std::vector<ScenarioResult> results;
  nlohmann::json child_runs = nlohmann::json::array();
  bool all_equal = true;
  for (const ScenarioInfo& info : flags.scenarios) {
    ScenarioResult result;
    result.name = info.name;
    result.description = info.description;
    result.allocation_heavy = info.allocation_heavy;
    result.size = flags.size != 0 ? flags.size : info.default_size;
    result.warmup = flags.warmup;
    RunOptions options;
    options.config.seed = flags.seed;
    options.config.size = result.size;
    options.warmup = flags.warmup;
    options.frames = flags.frames;
    options.budget_seconds = flags.budget;
    options.topology = topology.get();
    options.workers = flags.workers;
    // What runs, in the order of a round: one entry per process (or per run
    // in this process without --isolate); the mimalloc heap runs last, one
    // process each (both in one without --isolate). `slots`: where each of
    // the entry's runs goes in result.runs.
    struct Planned {
      std::vector<RunKind> kinds;
      bool mimalloc = false;
      std::vector<size_t> slots;
    };
    std::vector<Planned> plan;
    for (RunKind kind : flags.kinds) plan.push_back({{kind}, false, {}});
    if (!child && !mimalloc_binary.empty()) {
      if (flags.isolate) {
        plan.push_back({{RunKind::kHeap}, true, {}});
        plan.push_back({{RunKind::kRuntimeHeap}, true, {}});
      } else {
        plan.push_back({{RunKind::kHeap, RunKind::kRuntimeHeap}, true, {}});
      }
    }
    size_t total_runs = 0;
    for (Planned& p : plan) {
      for (size_t k = 0; k < p.kinds.size(); ++k)
        p.slots.push_back(total_runs++);
    }
    result.runs.resize(total_runs);
    // Rounds: every run's frames are measured in `rounds` parts, the runs
    // taking turns (forward in even rounds, backward in odd ones), so that
    // the host's slow and fast phases fall on every run alike.
    const int rounds = child ? 1 : flags.rounds;
    int per_round = flags.frames / rounds;  // A multiple (ReadFlags).
    if (per_round == 0 && flags.kinds.empty() && !flags.isolate) {
      // Only mimalloc runs, in budget mode, both in one child: they must
      // agree on a count before either runs. (One child per run instead:
      // the first sets the count in its budget, as a run of this program
      // would.)
      per_round = std::max(1, 20 / rounds);
    }
    const int min_per_round = flags.child_min_frames > 0
                                  ? flags.child_min_frames
                                  : std::max(1, (5 + rounds - 1) / rounds);
    options.budget_seconds = flags.budget / rounds;
    options.min_frames = min_per_round;
    options.max_frames = flags.child_max_frames > 0
                             ? flags.child_max_frames
                             : std::max(min_per_round, 1000 / rounds);
    for (int round = 0; round < rounds; ++round) {
      for (size_t step = 0; step < plan.size(); ++step) {
        const size_t i = round % 2 == 0 ? step : plan.size() - 1 - step;
        const Planned& p = plan[i];
        const std::string label = absl::StrCat(p.mimalloc ? "mimalloc " : "",
                                               RunKindName(p.kinds[0]));
        std::string progress_label;
        if (child) {
          progress_label = !flags.child_progress.empty()
                               ? flags.child_progress
                               : absl::StrFormat("  %s: %s %s", info.name,
                                                 BinaryAllocatorName(),
                                                 RunKindName(p.kinds[0]));
        } else if (p.kinds.size() > 1) {
          progress_label = "";  // The child labels each of its runs.
        } else if (rounds > 1) {
          progress_label = absl::StrFormat(
              "  %s %d/%d, round %d/%d: %s", info.name, p.slots[0] + 1,
              total_runs, round + 1, rounds, label);
        } else {
          progress_label = absl::StrFormat("  %s %d/%d: %s", info.name,
                                           p.slots[0] + 1, total_runs, label);
        }
        // A trace of the last round only (each round would overwrite it).
        const bool traced = !flags.trace.empty() && round == rounds - 1;
        std::vector<VariantRun> runs;
        if (p.mimalloc || isolate) {
          ChildRequest request;
          request.kinds = p.kinds;
          request.frames = per_round;
          request.budget = options.budget_seconds;
          request.min_frames = min_per_round;
          request.max_frames = options.max_frames;
          request.progress = progress_label;
          if (!p.mimalloc && traced) request.trace = flags.trace;
          absl::StatusOr<std::vector<VariantRun>> got =
              RunChild(p.mimalloc ? mimalloc_binary : self_binary, flags, info,
                       result.size, request);
          if (!got.ok()) return Fail(got.status());
          if (got->size() != p.kinds.size()) {
            return Fail(absl::InternalError(
                absl::StrCat(info.name, " ", label, ": the child reported ",
                             got->size(), " runs, not ", p.kinds.size())));
          }
          runs = *std::move(got);
          if (p.mimalloc) {
            for (VariantRun& r : runs) {
              r.label = absl::StrCat(r.allocator, " ", r.label);
            }
          }
        } else {
          const RunKind kind = p.kinds[0];
          Progress progress(flags.progress, progress_label);
          options.progress = [&progress](int done, int total) {
            progress.Update(done, total);
          };
          options.frames = per_round;
          options.trace_path.clear();
          if (traced && UsesRuntime(VariantOf(kind))) {
            options.trace_path = OutputPath(absl::StrCat(
                flags.trace, "-", info.name, "-", RunKindName(kind), ".json"));
          }
          absl::StatusOr<VariantRun> run = RunVariant(info, kind, options);
          if (!run.ok()) {
            return Fail(absl::Status(run.status().code(),
                                     absl::StrCat(info.name, " ", label, ": ",
                                                  run.status().message())));
          }
          progress.Done(static_cast<int>(run->frames.size()));
          run->label = RunKindName(kind);
          runs.push_back(*std::move(run));
        }
        if (per_round == 0) per_round = static_cast<int>(runs[0].frames.size());
        for (size_t k = 0; k < runs.size(); ++k) {
          VariantRun& into = result.runs[p.slots[k]];
          if (round == 0) {
            into = std::move(runs[k]);
            continue;
          }
          absl::Status merged = AppendRound(&into, runs[k]);
          if (!merged.ok()) {
            return Fail(absl::Status(
                merged.code(), absl::StrCat(info.name, " round ", round + 1,
                                            ": ", merged.message())));
          }
        }
      }
    }
    result.frames = per_round * rounds;
    if (child) {
      for (const VariantRun& run : result.runs) {
        child_runs.push_back(RunToJson(run));
      }
      continue;
    }
    // The triad on the size of the scenario's streaming pass (or of its
    // working set): three arrays holding that many bytes together.
    if (flags.triad_repetitions > 0 && !result.runs.empty()) {
      size_t bytes = result.runs[0].working_set_bytes;
      for (const VariantRun& r : result.runs) {
        if (r.pass.has_value()) bytes = r.pass->footprint_bytes;
      }
      const size_t per_array = std::max(bytes / 3, size_t{1} << 20);
      absl::StatusOr<std::unique_ptr<jobs::Runtime>> rt =
          MakeRuntime(topology.get(), flags.workers, false);
      if (!rt.ok()) return Fail(rt.status());
      for (bool cold : {false, true}) {
        absl::StatusOr<TriadResult> one =
            MeasureTriad(nullptr, per_array, flags.triad_repetitions, cold);
        if (!one.ok()) return Fail(one.status());
        (cold ? result.triad_one_cold : result.triad_one) = *one;
        absl::StatusOr<TriadResult> all =
            MeasureTriad(rt->get(), per_array, flags.triad_repetitions, cold);
        if (!all.ok()) return Fail(all.status());
        (cold ? result.triad_all_cold : result.triad_all) = *all;
      }
    }
    for (const VariantRun& r : result.runs) {
      if (r.state_hash != result.runs[0].state_hash)
        result.states_equal = false;
    }
    all_equal = all_equal && result.states_equal;
    std::printf("%s", FormatScenario(result).c_str());
    std::fflush(stdout);
    results.push_back(std::move(result));
  }

  if (child) {
    const nlohmann::json doc = {{"runs", child_runs}};
    absl::Status s = WriteFile(flags.child_json, doc.dump());
    if (!s.ok()) return Fail(s);
    return 0;
  }

  nlohmann::json doc = {
      {"seed", flags.seed},
      {"topology", flags.topology.empty() ? "this machine" : flags.topology},
      {"nodes", topology->num_nodes()},
      {"pus", topology->pus().size()},
      {"workers", flags.workers},
      {"isolated", isolated},
      {"rounds", flags.rounds},
      {"seconds", std::chrono::duration<double>(Clock::now() - start).count()},
      {"scenarios", nlohmann::json::array()},
  };
  for (const ScenarioResult& r : results) {
    doc["scenarios"].push_back(ScenarioToJson(r));
  }
  const std::string json_path = OutputPath(absl::GetFlag(FLAGS_json));
  if (!json_path.empty()) {
    absl::Status s = WriteFile(json_path, doc.dump(1));
    if (!s.ok()) return Fail(s);
    std::printf("\nwrote %s\n", json_path.c_str());
  }
  const std::string svg_path = OutputPath(absl::GetFlag(FLAGS_svg));
  if (!svg_path.empty()) {
    absl::Status s = WriteFile(svg_path, RenderSvg(results));
    if (!s.ok()) return Fail(s);
    std::printf("wrote %s\n", svg_path.c_str());
  }
  std::printf("total %.1f s\n",
              std::chrono::duration<double>(Clock::now() - start).count());
  if (!all_equal) {
    std::printf("STATE MISMATCH: some runs did not reach the same state\n");
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace framealloc::sim

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The framealloc simulation suite: every scenario with heap and "
      "frame-arena temporaries, on one thread and on the job runtime, plus "
      "mimalloc; frame times, allocations, bandwidth, identical states.");
  absl::ParseCommandLine(argc, argv);
  return framealloc::sim::Main(argv[0]);
}
