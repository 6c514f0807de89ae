// The particle simulation of //integration/mpi:mpi_particles, cut into the
// pieces a slab decomposition needs, none of which calls MPI.
//
// For: the per-rank program (which adds the MPI exchanges between these
// steps) and its unit tests (which check each piece without mpirun). The
// model: 2-D particles in a walled box [0, lx] x [0, ly], a soft repulsion
// F = stiffness * (1 - d / cutoff) between any two particles closer than
// `cutoff`, symplectic Euler steps, walls that reflect. The box is cut
// into columns of cells at least `cutoff` wide; rank r owns the columns
// [ColumnBegin(r), ColumnBegin(r + 1)) and every particle whose column is
// among them. Each frame a rank receives its neighbours' particles of the
// columns next to its own (the halo), computes the forces on its own
// particles, integrates them, and hands the particles that left its
// columns to their new owner (migration).
// Not for: physics beyond that model (no 3-D, no periodic images), or
// decompositions other than slabs along x.
//
// Determinism: the force on a particle is the sum over its neighbours in
// the order of their global ids, and every step after it is per particle,
// so a particle's state after N frames depends on the seed, the domain and
// N only: never on the number of ranks, the order of particles in a rank's
// arrays or the number of workers. The program's test checks the bits.
//
// Thread safety: Domain is immutable; the free functions touch only what
// they are given (ComputeForces and Integrate may run concurrently on
// disjoint index ranges of the same data).
// Errors: Domain::Create returns InvalidArgument naming the bad field;
// CheckInBox returns OutOfRange for a particle a step left outside the box
// (or made infinite); CheckDestinations returns OutOfRange for a particle
// that moved further than one slab in a frame.
//
// Example (one rank, no MPI; the program adds the exchanges):
//   auto domain = mpi::Domain::Create(mpi::DomainConfig()...).value();
//   mpi::LocalParticles mine = mpi::InitialParticles(domain, seed, n, rank);
//   // halo: PackHalo(mine, domain, column, span) for each neighbour ...
//   mpi::NeighbourGrid grid = mpi::BuildGrid(domain, all, rank, arena);
//   mpi::ComputeForces(domain, all, grid, 0, mine.size(), arena, fx, fy);
//   mpi::Integrate(domain, 0, mine.size(), mine, fx, fy);
#ifndef INTEGRATION_MPI_DECOMPOSITION_H_
#define INTEGRATION_MPI_DECOMPOSITION_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/frame_arena.h"

namespace framealloc {
namespace mpi {

// The problem: box, interaction and time step, and the number of ranks
// the box is cut for. Fluent setters; Domain::Create validates.
struct DomainConfig {
  double lx = 128.0;  // Box width (the decomposed direction).
  double ly = 128.0;  // Box height.
  double cutoff = 1.0;
  double stiffness = 25.0;
  double dt = 0.01;
  int ranks = 1;

  DomainConfig& set_box(double x, double y) {
    lx = x;
    ly = y;
    return *this;
  }
  DomainConfig& set_cutoff(double c) {
    cutoff = c;
    return *this;
  }
  DomainConfig& set_stiffness(double k) {
    stiffness = k;
    return *this;
  }
  DomainConfig& set_dt(double t) {
    dt = t;
    return *this;
  }
  DomainConfig& set_ranks(int r) {
    ranks = r;
    return *this;
  }
};

// The box cut into a grid of cells (nx columns, ny rows, each side at
// least `cutoff`, with boundaries placed so that rounding never brings two
// cells that are not neighbours within `cutoff` of each other) and the
// columns cut into one slab per rank.
class Domain {
 public:
  // InvalidArgument naming the field: sizes must be finite and positive,
  // the box sides and the cutoff in [kMinLength, kMaxLength] (their
  // squares stay normal doubles), the box at least one cutoff in each
  // direction, at most kMaxCells cells
  // in all, and wide enough to give every rank a column (nx >= ranks).
  static absl::StatusOr<Domain> Create(const DomainConfig& config);
  // The largest grid (nx * ny): each frame a rank's grid takes 4 bytes per
  // cell of its columns, on frame memory.
  static constexpr double kMaxCells = double{1 << 26};
  // The range of box sides and cutoff: squares (and sums of two) of
  // lengths in it neither underflow nor overflow.
  static constexpr double kMinLength = 1e-100;
  static constexpr double kMaxLength = 1e100;

  const DomainConfig& config() const { return config_; }
  double lx() const { return config_.lx; }
  double ly() const { return config_.ly; }
  int ranks() const { return config_.ranks; }
  int nx() const { return nx_; }
  int ny() const { return ny_; }

  // The column (0..nx-1) and row (0..ny-1) of a coordinate; coordinates
  // outside the box map to the nearest edge cell.
  int Column(double x) const;
  int Row(double y) const;
  // First column of rank r's slab; ColumnBegin(ranks()) == nx().
  // REQUIRES: 0 <= r <= ranks().
  int ColumnBegin(int r) const;
  // The rank owning column c. REQUIRES: 0 <= c < nx().
  int OwnerOfColumn(int c) const;
  int OwnerOf(double x) const { return OwnerOfColumn(Column(x)); }

 private:
  explicit Domain(const DomainConfig& config);
  DomainConfig config_;
  int nx_ = 1;
  int ny_ = 1;
  double columns_per_unit_ = 1;  // nx / lx, the same on every rank.
  double rows_per_unit_ = 1;
  // lx / nx and ly / ny: cell c spans [c * width, (c + 1) * width), and
  // cells two apart are at least a cutoff apart (checked when nx, ny are
  // chosen).
  double column_width_ = 1;
  double row_height_ = 1;
};

// A particle as a halo entry: what a neighbour needs to compute forces.
struct HaloParticle {
  uint64_t id;
  double x, y;
};
// A particle moving to another rank: all of its state.
struct Migrant {
  uint64_t id;
  double x, y, vx, vy;
};
static_assert(sizeof(HaloParticle) == 24 && sizeof(Migrant) == 40,
              "sent as bytes: no padding");

// The particles a rank owns, as a structure of arrays (kept across frames).
struct LocalParticles {
  std::vector<uint64_t> id;
  std::vector<double> x, y, vx, vy;

  size_t size() const { return id.size(); }
  void Append(const Migrant& m);
  Migrant Get(size_t i) const { return {id[i], x[i], y[i], vx[i], vy[i]}; }
};

// Particle `id` (0..n-1) of the initial state of seed `seed`: a position
// uniform in the box and a velocity uniform in [-0.5, 0.5]^2, from a hash
// of (seed, id) so that any rank can make any particle alone.
Migrant InitialParticle(const Domain& domain, uint64_t seed, uint64_t id);
// The particles of an n-particle initial state that rank `rank` owns, in
// id order.
LocalParticles InitialParticles(const Domain& domain, uint64_t seed, uint64_t n,
                                int rank);

// ---- Halo ------------------------------------------------------------------

// Particles of `particles` in column `column`.
size_t CountInColumn(const LocalParticles& particles, const Domain& domain,
                     int column);
// Writes the particles in column `column` to `out`, in array order.
// REQUIRES: out.size() == CountInColumn(particles, domain, column).
void PackHalo(const LocalParticles& particles, const Domain& domain, int column,
              std::span<HaloParticle> out);

// ---- Forces ----------------------------------------------------------------

// Positions the force kernel reads: a rank's own particles first
// (indexes 0..owned-1), then the halo's. Not owned.
struct PositionsView {
  const uint64_t* id = nullptr;
  const double* x = nullptr;
  const double* y = nullptr;
  size_t size = 0;
};

// A counting-sorted cell grid over columns [col_begin, col_end) and every
// row (cells column-major: a column's cells are contiguous): the particles
// of cell c are items[start[c] .. start[c + 1]), and the same slots of
// `id`, `x`, `y` hold copies of their ids and positions, so that the
// candidates of three neighbouring cells of one column are read as one
// contiguous run. Memory in a frame arena: valid until it is reset.
struct NeighbourGrid {
  int col_begin = 0;
  int col_end = 0;
  int rows = 0;
  std::span<uint32_t> start;  // cells + 1 entries.
  std::span<uint32_t> items;  // One per particle of the view, in cell order.
  std::span<uint32_t> cell;   // Each particle's cell (by view index).
  std::span<uint64_t> id;     // Cell order, as `items`.
  std::span<double> x;
  std::span<double> y;
};

// The grid of rank `rank`'s slab widened by one column on each side (the
// halo), over `all`, in `arena`. REQUIRES: every particle of `all` lies in
// those columns; all.size() < 2^32.
NeighbourGrid BuildGrid(const Domain& domain, const PositionsView& all,
                        int rank, FrameArena& arena);

// fx[i], fy[i] for i in [begin, end): the sum over every other particle of
// `all` within the cutoff, in the order of their ids. Scratch for the
// neighbour lists comes from `scratch` (a worker's frame arena).
// REQUIRES: the particles within the cutoff of i are all in the grid.
void ComputeForces(const Domain& domain, const PositionsView& all,
                   const NeighbourGrid& grid, size_t begin, size_t end,
                   FrameArena& scratch, double* fx, double* fy);

// One symplectic Euler step of particles [begin, end) under fx, fy;
// positions reflected at the walls.
void Integrate(const Domain& domain, size_t begin, size_t end,
               LocalParticles& particles, const double* fx, const double* fy);

// OK if every particle lies in the box ([0, lx] x [0, ly], finite) with a
// finite velocity; OutOfRange naming the first particle that does not, its
// position and velocity otherwise. Integrate reflects a particle at a wall
// once per step: a step longer than the box (too large a dt, or forces too
// large for it: stiffness) leaves it outside, or overflows to infinity or
// NaN. Run after Integrate, before anything maps particles to cells.
absl::Status CheckInBox(const LocalParticles& particles, const Domain& domain);

// ---- Migration -------------------------------------------------------------

// OK if every particle is owned by `rank` or one of its neighbours;
// OutOfRange naming the particle otherwise (it moved further than one slab
// in one frame: a smaller dt is needed).
absl::Status CheckDestinations(const LocalParticles& particles,
                               const Domain& domain, int rank);
// Particles owned by rank `to`.
size_t CountOwnedBy(const LocalParticles& particles, const Domain& domain,
                    int to);
// Writes the particles owned by rank `to`, in array order.
// REQUIRES: out.size() == CountOwnedBy(particles, domain, to).
void PackMigrants(const LocalParticles& particles, const Domain& domain, int to,
                  std::span<Migrant> out);
// Removes the particles not owned by `rank`, keeping the others' order.
// Returns how many it removed.
size_t RemoveLeavers(LocalParticles& particles, const Domain& domain, int rank);
// Appends `arrivals` in their order.
void AppendArrivals(LocalParticles& particles,
                    std::span<const Migrant> arrivals);

// ---- Statistics ------------------------------------------------------------

// Reporting figures of a set of particles (unit masses).
struct Stats {
  double count = 0;  // As a double, so one MPI_Allreduce sums everything.
  double kinetic = 0;
  double px = 0;
  double py = 0;
};
Stats LocalStats(const LocalParticles& particles);

// FNV-1a over the bytes of each migrant in order: the state's digest.
uint64_t HashState(std::span<const Migrant> sorted_by_id);

}  // namespace mpi
}  // namespace framealloc

#endif  // INTEGRATION_MPI_DECOMPOSITION_H_
