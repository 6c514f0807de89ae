// mpi_particles: the particle simulation decomposed into slabs across MPI
// ranks, one NUMA-aware job runtime per rank.
//
// For: running the decomposition of integration/mpi/decomposition.h under
// mpirun (directly, or through //integration/mpi:launch), checking that
// any rank count reaches the very same final state, and measuring strong
// and weak scaling. Not for: use as a library (the reusable pieces are in
// decomposition.h).
//
// Each rank, each frame:
//   1. halo: the particles of its first and last column go to its left and
//      right neighbours, theirs come back (counts, then data; nonblocking
//      sends and receives); send and receive buffers, the positions the
//      force kernel reads and the cell grid are frame memory of the rank's
//      SmartAlloc (the runtime's, on the rank's NUMA node), released at
//      the end of the frame;
//   2. forces and integration: Runtime::ParallelFor over the rank's
//      particles, each chunk's neighbour lists in its worker's frame arena;
//   3. migration: particles that left the slab go to the neighbour that
//      owns them now;
//   4. an MPI_Allreduce of the global statistics (particle count, kinetic
//      energy, momentum) and of an error flag, printed every
//      --report_every frames.
// At the end rank 0 gathers every particle, sorts them by id, prints a
// hash of the state and writes it to --output. Only the main thread calls
// MPI (MPI_THREAD_FUNNELED).
//
// Errors: bad flags are reported by rank 0 (every rank sees the same flags
// and exits with status 1); a particle a step left outside the box or made
// infinite (too large --dt or --stiffness), one that jumps over a slab, a
// failed job or lost particles are reported by the rank that sees them,
// and every rank stops after that frame with status 1.
#include <mpi.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "alloc/frame_arena.h"
#include "alloc/smart_alloc.h"
#include "integration/mpi/decomposition.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

ABSL_FLAG(int64_t, particles, 40000,
          "Particles in all (per rank with --weak).");
ABSL_FLAG(int, frames, 100, "Frames to simulate.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the initial state.");
ABSL_FLAG(int, workers, 0,
          "Workers of each rank's job runtime; 0: the cores this process may "
          "use divided by the ranks on this host, at least 1.");
ABSL_FLAG(double, cutoff, 1.0, "Interaction radius (and minimum cell side).");
ABSL_FLAG(double, box, 0,
          "Height of the box, and its width (ranks * box with --weak); 0: "
          "sqrt(--particles / 2.5), about 8 neighbours per particle.");
ABSL_FLAG(double, dt, 0.01, "Time step.");
ABSL_FLAG(double, stiffness, 25.0, "Strength of the soft repulsion.");
ABSL_FLAG(std::string, output, "",
          "File rank 0 writes the final state to (text: one particle per "
          "line, id then x, y, vx, vy as hexadecimal floats); empty: none.");
ABSL_FLAG(bool, weak, false,
          "Weak scaling: --particles per rank, box ranks * box wide.");
ABSL_FLAG(int, report_every, 0,
          "Print the global statistics every N frames (0: never).");

namespace framealloc {
namespace mpi {
namespace {

constexpr int kTagCount = 1;
constexpr int kTagData = 2;

// The largest problem: its whole state gathered on rank 0 still fits one
// MPI message (int byte counts and displacements).
constexpr int64_t kMaxParticles = int64_t{1} << 24;
static_assert(kMaxParticles * sizeof(Migrant) <
                  static_cast<uint64_t>(std::numeric_limits<int>::max()),
              "the gathered state must fit one message");

struct Options {
  int64_t particles_total = 0;
  int frames = 0;
  uint64_t seed = 0;
  int workers = 0;
  bool weak = false;
  int report_every = 0;
  std::string output;
  DomainConfig domain;
};

// The flags, checked. Every rank computes the same answer.
absl::StatusOr<Options> ReadFlags(int ranks) {
  Options o;
  const int64_t particles = absl::GetFlag(FLAGS_particles);
  o.weak = absl::GetFlag(FLAGS_weak);
  // particles <= 2^24 first: then particles * ranks cannot overflow.
  if (particles < 1 || particles > kMaxParticles ||
      (o.weak ? particles * ranks : particles) > kMaxParticles) {
    return absl::InvalidArgumentError(
        absl::StrCat("--particles must be in [1, 2^24] (in all, ", ranks,
                     " ranks with --weak), got ", particles));
  }
  o.particles_total = o.weak ? particles * ranks : particles;
  o.frames = absl::GetFlag(FLAGS_frames);
  if (o.frames < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--frames must be >= 0, got ", o.frames));
  }
  o.workers = absl::GetFlag(FLAGS_workers);
  if (o.workers < 0 || o.workers > jobs::kMaxWorkersPerNode) {
    return absl::InvalidArgumentError(absl::StrCat("--workers must be in [0, ",
                                                   jobs::kMaxWorkersPerNode,
                                                   "], got ", o.workers));
  }
  o.report_every = absl::GetFlag(FLAGS_report_every);
  if (o.report_every < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--report_every must be >= 0, got ", o.report_every));
  }
  o.seed = absl::GetFlag(FLAGS_seed);
  o.output = absl::GetFlag(FLAGS_output);
  // The default density: 2.5 particles per unit area, about 8 within the
  // unit cutoff; --particles is per rank with --weak, and so is the box.
  constexpr double kDefaultDensity = 2.5;
  double box = absl::GetFlag(FLAGS_box);
  if (box == 0) {
    box = std::sqrt(static_cast<double>(particles) / kDefaultDensity);
  }
  if (!std::isfinite(box) || box <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--box must be finite and positive (or 0), got ", box));
  }
  o.domain.set_box(o.weak ? box * ranks : box, box)
      .set_cutoff(absl::GetFlag(FLAGS_cutoff))
      .set_dt(absl::GetFlag(FLAGS_dt))
      .set_stiffness(absl::GetFlag(FLAGS_stiffness))
      .set_ranks(ranks);
  absl::StatusOr<Domain> domain = Domain::Create(o.domain);
  if (!domain.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--box/--cutoff/--dt/--stiffness: ", domain.status().message()));
  }
  return o;
}

// CPUs this process may run on (its affinity mask), at least 1.
int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// Whether `ok` holds on every rank (a collective: every rank calls it).
bool AllRanksOk(bool ok) {
  int mine = ok ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  return all != 0;
}

// CPU time of this process so far (all its threads).
double ProcessCpuSeconds() {
  timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) +
         1e-9 * static_cast<double>(ts.tv_nsec);
}

// A message count as MPI's int, or an error if it does not fit.
absl::StatusOr<int> MessageBytes(size_t count, size_t size) {
  if (count > static_cast<size_t>(std::numeric_limits<int>::max()) / size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        count, " items of ", size, " bytes do not fit one MPI message"));
  }
  return static_cast<int>(count * size);
}

// Sends `to_left` to rank `left` and `to_right` to rank `right` (either
// may be MPI_PROC_NULL) and receives what they send back, into memory from
// `arena`: counts first, then the items as bytes. A side too large for one
// message is sent empty (the neighbour still gets its count, so nobody
// waits) and reported as ResourceExhausted; what arrives always fits, since
// every sender checks the same limit.
template <typename T>
absl::Status ExchangeWithNeighbours(int left, int right,
                                    std::span<const T> to_left,
                                    std::span<const T> to_right,
                                    FrameArena& arena, std::span<T>* from_left,
                                    std::span<T>* from_right) {
  absl::Status status;
  for (std::span<const T>* side : {&to_left, &to_right}) {
    absl::StatusOr<int> bytes = MessageBytes(side->size(), sizeof(T));
    if (!bytes.ok()) {
      status = bytes.status();
      *side = {};
    }
  }
  uint64_t send_counts[2] = {to_left.size(), to_right.size()};
  uint64_t recv_counts[2] = {0, 0};
  MPI_Request requests[4];
  MPI_Irecv(&recv_counts[0], 1, MPI_UINT64_T, left, kTagCount, MPI_COMM_WORLD,
            &requests[0]);
  MPI_Irecv(&recv_counts[1], 1, MPI_UINT64_T, right, kTagCount, MPI_COMM_WORLD,
            &requests[1]);
  MPI_Isend(&send_counts[0], 1, MPI_UINT64_T, left, kTagCount, MPI_COMM_WORLD,
            &requests[2]);
  MPI_Isend(&send_counts[1], 1, MPI_UINT64_T, right, kTagCount, MPI_COMM_WORLD,
            &requests[3]);
  MPI_Waitall(4, requests, MPI_STATUSES_IGNORE);

  *from_left =
      std::span<T>(arena.AllocateArray<T>(recv_counts[0]), recv_counts[0]);
  *from_right =
      std::span<T>(arena.AllocateArray<T>(recv_counts[1]), recv_counts[1]);
  MPI_Irecv(from_left->data(), static_cast<int>(from_left->size_bytes()),
            MPI_BYTE, left, kTagData, MPI_COMM_WORLD, &requests[0]);
  MPI_Irecv(from_right->data(), static_cast<int>(from_right->size_bytes()),
            MPI_BYTE, right, kTagData, MPI_COMM_WORLD, &requests[1]);
  MPI_Isend(to_left.data(), static_cast<int>(to_left.size_bytes()), MPI_BYTE,
            left, kTagData, MPI_COMM_WORLD, &requests[2]);
  MPI_Isend(to_right.data(), static_cast<int>(to_right.size_bytes()), MPI_BYTE,
            right, kTagData, MPI_COMM_WORLD, &requests[3]);
  MPI_Waitall(4, requests, MPI_STATUSES_IGNORE);
  return status;
}

// Wall time of each phase of the frame loop on one rank.
struct PhaseTimes {
  double halo = 0;       // Packing, exchanging, building the force input.
  double grid = 0;       // The cell grid.
  double compute = 0;    // Forces and integration on the runtime.
  double migration = 0;  // Checking, packing, exchanging, compacting.
  double reduce = 0;     // The statistics' Allreduce (and waiting for it).
};

struct Totals {
  uint64_t halo_received = 0;
  uint64_t migrated = 0;
};

// The file WriteState writes before renaming it over `path`.
std::string TemporaryPath(const std::string& path) {
  return absl::StrCat(path, ".tmp.", getpid());
}

// Opens TemporaryPath(path) for writing, or InvalidArgument naming it.
absl::StatusOr<std::FILE*> OpenTemporary(const std::string& path) {
  const std::string temporary = TemporaryPath(path);
  std::FILE* f = std::fopen(temporary.c_str(), "w");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--output: cannot open ", temporary, ": ", std::strerror(errno)));
  }
  return f;
}

// Whether WriteState will be able to create its file: checked by rank 0
// before the frames run, so that a bad --output (a missing directory, no
// permission) is refused up front, not after the whole simulation. Leaves
// nothing behind.
absl::Status CheckOutputWritable(const std::string& path) {
  absl::StatusOr<std::FILE*> f = OpenTemporary(path);
  if (!f.ok()) return f.status();
  std::fclose(*f);
  std::remove(TemporaryPath(path).c_str());
  return absl::OkStatus();
}

// Writes the sorted state as text (hex floats: exact bits, diffable), to a
// temporary file renamed over `path` once complete: a failed write leaves
// no truncated state behind.
absl::Status WriteState(const std::string& path, const Options& o,
                        const Domain& domain, std::span<const Migrant> state) {
  const std::string temporary = TemporaryPath(path);
  absl::StatusOr<std::FILE*> opened = OpenTemporary(path);
  if (!opened.ok()) return opened.status();
  std::FILE* f = *opened;
  std::fprintf(
      f,
      "# mpi_particles final state: particles=%" PRId64 " seed=%" PRIu64
      " frames=%d box=%a x %a cutoff=%a dt=%a "
      "stiffness=%a\n# id x y vx vy\n",
      o.particles_total, o.seed, o.frames, domain.lx(), domain.ly(),
      domain.config().cutoff, domain.config().dt, domain.config().stiffness);
  for (const Migrant& m : state) {
    std::fprintf(f, "%" PRIu64 " %a %a %a %a\n", m.id, m.x, m.y, m.vx, m.vy);
  }
  const bool write_failed = std::ferror(f) != 0;
  if (std::fclose(f) != 0 || write_failed) {
    const int err = errno;
    std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat("--output: writing ", path,
                                            " failed: ", std::strerror(err)));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat(
        "--output: cannot move the state to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

// Gathers every rank's particles on rank 0, sorted by id; checks that ids
// are exactly 0..N-1. Other ranks get an empty vector.
absl::StatusOr<std::vector<Migrant>> GatherState(const LocalParticles& mine,
                                                 int rank, int ranks,
                                                 int64_t total) {
  std::vector<Migrant> local(mine.size());
  for (size_t i = 0; i < mine.size(); ++i) local[i] = mine.Get(i);
  // Fits an int: at most kMaxParticles particles in all.
  int my_bytes = static_cast<int>(local.size() * sizeof(Migrant));
  std::vector<int> bytes(ranks, 0);
  MPI_Gather(&my_bytes, 1, MPI_INT, bytes.data(), 1, MPI_INT, 0,
             MPI_COMM_WORLD);
  std::vector<int> displs(ranks, 0);
  std::vector<Migrant> all;
  if (rank == 0) {
    int64_t sum = 0;
    for (int r = 0; r < ranks; ++r) {
      displs[r] = static_cast<int>(sum);
      sum += bytes[r];
    }
    all.resize(static_cast<size_t>(sum) / sizeof(Migrant));
  }
  MPI_Gatherv(local.data(), my_bytes, MPI_BYTE, all.data(), bytes.data(),
              displs.data(), MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rank != 0) return all;
  std::sort(all.begin(), all.end(),
            [](const Migrant& a, const Migrant& b) { return a.id < b.id; });
  if (static_cast<int64_t>(all.size()) != total) {
    return absl::InternalError(
        absl::StrCat("gathered ", all.size(), " particles, expected ", total));
  }
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].id != i) {
      return absl::InternalError(
          absl::StrCat("particle ", i, " lost or duplicated in the gather"));
    }
  }
  return all;
}

int Run(int rank, int ranks, int local_ranks) {
  absl::StatusOr<Options> options = ReadFlags(ranks);
  if (!options.ok()) {
    if (rank == 0) {
      std::fprintf(stderr, "mpi_particles: %s\n",
                   std::string(options.status().message()).c_str());
    }
    return 1;
  }
  const Options& o = *options;
  const Domain domain = Domain::Create(o.domain).value();

  // --output is rank 0's: it checks it can create the file now, and every
  // rank stops before the first frame if not.
  absl::Status output_ok;
  if (rank == 0 && !o.output.empty()) output_ok = CheckOutputWritable(o.output);
  if (!output_ok.ok()) {
    std::fprintf(stderr, "mpi_particles: %s\n",
                 std::string(output_ok.message()).c_str());
  }
  if (!AllRanksOk(output_ok.ok())) return 1;

  // The rank's runtime: its share of this host's cores. A rank whose
  // set-up fails says so, and every rank stops together.
  absl::StatusOr<std::unique_ptr<numa::Topology>> topology =
      numa::Topology::Discover();
  if (!topology.ok()) {
    std::fprintf(stderr, "mpi_particles: rank %d: topology: %s\n", rank,
                 topology.status().ToString().c_str());
  }
  if (!AllRanksOk(topology.ok())) return 1;
  const int workers =
      o.workers > 0 ? o.workers : std::max(1, UsableCpus() / local_ranks);
  const int nodes = (*topology)->num_nodes();
  std::vector<int> node_workers(nodes);
  for (int k = 0; k < nodes; ++k) {
    node_workers[k] = std::max(1, workers / nodes + (k < workers % nodes));
  }
  absl::StatusOr<std::unique_ptr<jobs::Runtime>> runtime =
      jobs::Runtime::Create(jobs::Config()
                                .set_topology(topology->get())
                                .set_node_workers(node_workers));
  if (!runtime.ok()) {
    std::fprintf(stderr, "mpi_particles: rank %d: runtime: %s\n", rank,
                 runtime.status().ToString().c_str());
  }
  if (!AllRanksOk(runtime.ok())) return 1;
  jobs::Runtime& rt = **runtime;
  // Frame memory of this thread, on the node it runs on.
  SmartAlloc& frame_memory = rt.memory().local();

  LocalParticles mine =
      InitialParticles(domain, o.seed, o.particles_total, rank);
  const int left = rank > 0 ? rank - 1 : MPI_PROC_NULL;
  const int right = rank + 1 < ranks ? rank + 1 : MPI_PROC_NULL;
  const int first_column = domain.ColumnBegin(rank);
  const int last_column = domain.ColumnBegin(rank + 1) - 1;

  if (rank == 0) {
    std::printf(
        "mpi_particles: %d ranks x %d workers (%s), %" PRId64
        " particles (%s), box %g x %g, cutoff %g, %d x %d cells, %d frames, "
        "seed %" PRIu64 "\n",
        ranks, rt.total_workers(), rt.pinned() ? "pinned" : "not pinned",
        o.particles_total, o.weak ? "weak: per rank x ranks" : "strong",
        domain.lx(), domain.ly(), domain.config().cutoff, domain.nx(),
        domain.ny(), o.frames, o.seed);
    std::fflush(stdout);
  }

  PhaseTimes times;
  Totals totals;
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  const double cpu_start = ProcessCpuSeconds();
  // Every rank goes through every exchange of a frame even after a local
  // failure (sending nothing), so that no neighbour waits for it; the
  // frame's Allreduce then tells every rank to stop together.
  for (int frame = 1; frame <= o.frames; ++frame) {
    frame_memory.begin_frame();
    FrameArena& arena = frame_memory.frame_arena();
    double t = MPI_Wtime();

    // 1. Halo: our edge columns to the neighbours, theirs to us.
    std::span<HaloParticle> to_left, to_right, from_left, from_right;
    if (left != MPI_PROC_NULL) {
      const size_t n = CountInColumn(mine, domain, first_column);
      to_left =
          std::span<HaloParticle>(arena.AllocateArray<HaloParticle>(n), n);
      PackHalo(mine, domain, first_column, to_left);
    }
    if (right != MPI_PROC_NULL) {
      const size_t n = CountInColumn(mine, domain, last_column);
      to_right =
          std::span<HaloParticle>(arena.AllocateArray<HaloParticle>(n), n);
      PackHalo(mine, domain, last_column, to_right);
    }
    absl::Status failure = ExchangeWithNeighbours<HaloParticle>(
        left, right, to_left, to_right, arena, &from_left, &from_right);
    totals.halo_received += from_left.size() + from_right.size();

    // The force kernel's input: our particles, then the halo.
    const size_t owned = mine.size();
    const size_t n_all = owned + from_left.size() + from_right.size();
    uint64_t* ids = arena.AllocateArray<uint64_t>(n_all);
    double* xs = arena.AllocateArray<double>(n_all);
    double* ys = arena.AllocateArray<double>(n_all);
    std::copy(mine.id.begin(), mine.id.end(), ids);
    std::copy(mine.x.begin(), mine.x.end(), xs);
    std::copy(mine.y.begin(), mine.y.end(), ys);
    size_t k = owned;
    for (auto halo : {from_left, from_right}) {
      for (const HaloParticle& h : halo) {
        ids[k] = h.id;
        xs[k] = h.x;
        ys[k] = h.y;
        ++k;
      }
    }
    const PositionsView all{ids, xs, ys, n_all};
    double now = MPI_Wtime();
    times.halo += now - t;
    t = now;

    // 2. The cell grid over our columns and the halo's.
    const NeighbourGrid grid = BuildGrid(domain, all, rank, arena);
    now = MPI_Wtime();
    times.grid += now - t;
    t = now;

    // 3. Forces and integration, in parallel on the rank's runtime. The
    // kernel reads `all` (a copy), so integrating a chunk never changes
    // what another chunk reads.
    if (failure.ok()) {
      double* fx = arena.AllocateArray<double>(owned);
      double* fy = arena.AllocateArray<double>(owned);
      failure = rt.BeginFrame();
      if (failure.ok()) {
        absl::Status ran = rt.ParallelFor(
            owned, 512, [&](jobs::JobContext& ctx, size_t begin, size_t end) {
              ComputeForces(domain, all, grid, begin, end, ctx.arena(), fx, fy);
              Integrate(domain, begin, end, mine, fx, fy);
            });
        absl::Status ended = rt.EndFrame();
        failure = ran.ok() ? ended : ran;
      }
    }
    now = MPI_Wtime();
    times.compute += now - t;
    t = now;

    // 4. Migration to the neighbours. A particle the step left outside the
    // box (or made infinite), or that jumped further than a slab, is an
    // error: the frame's Allreduce stops every rank, whatever their count.
    if (failure.ok()) failure = CheckInBox(mine, domain);
    if (failure.ok()) failure = CheckDestinations(mine, domain, rank);
    std::span<Migrant> out_left, out_right, in_left, in_right;
    if (failure.ok() && left != MPI_PROC_NULL) {
      const size_t n = CountOwnedBy(mine, domain, left);
      out_left = std::span<Migrant>(arena.AllocateArray<Migrant>(n), n);
      PackMigrants(mine, domain, left, out_left);
    }
    if (failure.ok() && right != MPI_PROC_NULL) {
      const size_t n = CountOwnedBy(mine, domain, right);
      out_right = std::span<Migrant>(arena.AllocateArray<Migrant>(n), n);
      PackMigrants(mine, domain, right, out_right);
    }
    absl::Status exchanged = ExchangeWithNeighbours<Migrant>(
        left, right, out_left, out_right, arena, &in_left, &in_right);
    if (failure.ok()) failure = exchanged;
    if (failure.ok()) {
      totals.migrated += RemoveLeavers(mine, domain, rank);
      AppendArrivals(mine, in_left);
      AppendArrivals(mine, in_right);
    }
    now = MPI_Wtime();
    times.migration += now - t;
    t = now;

    // 5. Global statistics, and whether any rank failed.
    const Stats s = LocalStats(mine);
    double local[5] = {s.count, s.kinetic, s.px, s.py,
                       failure.ok() ? 0.0 : 1.0};
    double global[5];
    MPI_Allreduce(local, global, 5, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    times.reduce += MPI_Wtime() - t;
    frame_memory.end_frame();
    if (!failure.ok()) {
      std::fprintf(stderr, "mpi_particles: rank %d, frame %d: %s\n", rank,
                   frame, failure.ToString().c_str());
    }
    if (global[4] > 0) return 1;  // Every rank stops here, together.
    if (global[0] != static_cast<double>(o.particles_total)) {
      if (rank == 0) {
        std::fprintf(stderr,
                     "mpi_particles: frame %d: %.0f particles in all, "
                     "expected %" PRId64 "\n",
                     frame, global[0], o.particles_total);
      }
      return 1;
    }
    if (rank == 0 && o.report_every > 0 && frame % o.report_every == 0) {
      std::printf(
          "frame %d: %.0f particles, kinetic energy %.6f, momentum (%.6f, "
          "%.6f)\n",
          frame, global[0], global[1], global[2], global[3]);
      std::fflush(stdout);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const double seconds = MPI_Wtime() - start;
  // CPU time of the frame loop, every thread of every rank: the work the
  // decomposition costs, whatever else the machine runs.
  const double cpu_local = ProcessCpuSeconds() - cpu_start;
  double cpu_seconds = 0;
  MPI_Reduce(&cpu_local, &cpu_seconds, 1, MPI_DOUBLE, MPI_SUM, 0,
             MPI_COMM_WORLD);

  double phase_local[5] = {times.halo, times.grid, times.compute,
                           times.migration, times.reduce};
  double phase_max[5];
  MPI_Reduce(phase_local, phase_max, 5, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  uint64_t counts_local[2] = {totals.halo_received, totals.migrated};
  uint64_t counts_sum[2];
  MPI_Reduce(counts_local, counts_sum, 2, MPI_UINT64_T, MPI_SUM, 0,
             MPI_COMM_WORLD);

  absl::StatusOr<std::vector<Migrant>> state =
      GatherState(mine, rank, ranks, o.particles_total);
  int status = 0;
  if (rank == 0) {
    if (!state.ok()) {
      std::fprintf(stderr, "mpi_particles: %s\n",
                   state.status().ToString().c_str());
      status = 1;
    } else {
      const double frames = std::max(o.frames, 1);
      const double ms = 1e3 / frames;
      std::printf(
          "time per frame: %.3f ms; slowest rank per phase: halo %.3f, grid "
          "%.3f, forces+integration %.3f, migration %.3f, allreduce %.3f "
          "ms\n",
          seconds * ms, phase_max[0] * ms, phase_max[1] * ms, phase_max[2] * ms,
          phase_max[3] * ms, phase_max[4] * ms);
      std::printf("cpu time per frame: %.3f ms (all threads of all ranks)\n",
                  cpu_seconds * ms);
      std::printf(
          "per frame: %.1f halo particles received, %.1f particles "
          "migrated (all ranks)\n",
          counts_sum[0] / frames, counts_sum[1] / frames);
      // Statistics summed in id order: the same bits for every rank count.
      LocalParticles sorted;
      for (const Migrant& m : *state) sorted.Append(m);
      const Stats s = LocalStats(sorted);
      const uint64_t hash = HashState(*state);
      std::printf(
          "final state: %zu particles, kinetic energy %.17g, momentum "
          "(%.17g, %.17g), hash 0x%016" PRIx64 "\n",
          state->size(), s.kinetic, s.px, s.py, hash);
      std::printf("RESULT ranks=%d workers=%d particles=%" PRId64
                  " frames=%d ms_per_frame=%.4f cpu_ms_per_frame=%.4f "
                  "hash=0x%016" PRIx64 "\n",
                  ranks, rt.total_workers(), o.particles_total, o.frames,
                  seconds * ms, cpu_seconds * ms, hash);
      if (!o.output.empty()) {
        absl::Status written = WriteState(o.output, o, domain, *state);
        if (!written.ok()) {
          std::fprintf(stderr, "mpi_particles: %s\n",
                       written.ToString().c_str());
          status = 1;
        }
      }
    }
    std::fflush(stdout);
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return status;
}

}  // namespace
}  // namespace mpi
}  // namespace framealloc

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0;
  int ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (provided < MPI_THREAD_FUNNELED) {
    if (rank == 0) {
      std::fprintf(stderr,
                   "mpi_particles: the MPI library gives thread level %d, "
                   "MPI_THREAD_FUNNELED is needed\n",
                   provided);
    }
    MPI_Finalize();
    return 1;
  }
  // Ranks on this host share its cores (the default --workers).
  MPI_Comm host;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL,
                      &host);
  int local_ranks = 1;
  MPI_Comm_size(host, &local_ranks);
  MPI_Comm_free(&host);

  absl::ParseCommandLine(argc, argv);
  const int status = framealloc::mpi::Run(rank, ranks, local_ranks);
  MPI_Finalize();
  return status;
}
