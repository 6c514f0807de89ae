// The slab decomposition's pieces (see decomposition.h).
#include "integration/mpi/decomposition.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace framealloc {
namespace mpi {

namespace {

bool PositiveFinite(double v) { return std::isfinite(v) && v > 0; }

// Cell c of a side of `n` cells of width `width` (length / n, rounded) is
// [c * width, (c + 1) * width), both products rounded: the boundaries
// CellIndex maps by. The force kernel looks only at the neighbouring
// cells, so particles two cells apart must be at least `cutoff` apart: for
// x_j in cell c + 2 and x_i in cell c, x_j - x_i > (c + 2) * width -
// (c + 1) * width (that subtraction is exact: Sterbenz), and if that gap is
// at least `cutoff`, so is the rounded dx the kernel computes (rounding is
// monotone), and so d^2 >= cutoff^2: no pair is missed.
bool CellsWideEnough(double length, int n, double cutoff) {
  const double width = length / n;
  if (!(width >= cutoff)) return false;
  // Each rounded product is within half an ulp of 2 * length of the exact
  // one: a margin of one such ulp covers every gap at once.
  const double ulp = std::nextafter(2 * length, HUGE_VAL) - 2 * length;
  if (width - cutoff >= ulp) return true;
  // Nearly exact multiples (20 / 1): check the gaps themselves. A grid too
  // large to check is refused by Domain::Create anyway.
  if (n > Domain::kMaxCells) return true;
  for (int c = 0; c + 2 <= n; ++c) {
    if ((c + 2) * width - (c + 1) * width < cutoff) return false;
  }
  return true;
}

// A cell count along one side: the most cells whose boundaries keep cells
// two apart at least `cutoff` apart (see CellsWideEnough). floor(length /
// cutoff) alone can round up (11.7 / 1.3 gives 9 cells of
// 1.2999999999999998).
int CellsAlong(double length, double cutoff) {
  const double most = std::floor(length / cutoff);
  if (most >= double{1 << 30}) return 1 << 30;
  int n = static_cast<int>(most);
  while (n > 1 && !CellsWideEnough(length, n, cutoff)) --n;
  return std::max(n, 1);
}

// Index of the cell containing `v` on a side of `n` cells of width `width`
// (boundaries c * width, see CellsWideEnough), `per_unit` = n / length for
// the first guess; outside coordinates (and NaN) go to the nearest edge
// cell.
int CellIndex(double v, double per_unit, double width, int n) {
  const double guess = std::floor(v * per_unit);
  if (!(guess >= 0)) return 0;
  if (guess >= n) return n - 1;
  int c = static_cast<int>(guess);
  // The guess is off by at most a cell where v is within rounding of a
  // boundary; the boundaries decide.
  while (c > 0 && v < c * width) --c;
  while (c + 1 < n && v >= (c + 1) * width) ++c;
  return c;
}

// SplitMix64: the initial state's generator, one stream per particle.
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A double uniform in [0, 1) from the top 53 bits.
double Unit(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// A neighbour candidate: sorted by id before the forces are summed.
struct Neighbour {
  uint64_t id;
  uint32_t index;  // Its slot in the grid's cell-ordered copies.
};

}  // namespace

absl::StatusOr<Domain> Domain::Create(const DomainConfig& config) {
  if (!PositiveFinite(config.lx) || !PositiveFinite(config.ly)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "box must be finite and positive, got ", config.lx, " x ", config.ly));
  }
  if (!PositiveFinite(config.cutoff)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cutoff must be finite and positive, got ", config.cutoff));
  }
  // The kernel compares squared distances with cutoff^2; beyond this range
  // a square underflows to 0 or overflows to infinity and forces silently
  // vanish (cutoff 1e-200) or the box arithmetic breaks.
  if (config.cutoff < kMinLength || config.cutoff > kMaxLength) {
    return absl::InvalidArgumentError(absl::StrCat("cutoff must be in [",
                                                   kMinLength, ", ", kMaxLength,
                                                   "], got ", config.cutoff));
  }
  if (config.lx < kMinLength || config.lx > kMaxLength ||
      config.ly < kMinLength || config.ly > kMaxLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("box must be in [", kMinLength, ", ", kMaxLength,
                     "] in each direction, got ", config.lx, " x ", config.ly));
  }
  if (!PositiveFinite(config.dt)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dt must be finite and positive, got ", config.dt));
  }
  if (!std::isfinite(config.stiffness) || config.stiffness < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stiffness must be finite and >= 0, got ", config.stiffness));
  }
  if (config.ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ranks must be >= 1, got ", config.ranks));
  }
  if (config.lx < config.cutoff || config.ly < config.cutoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "box (", config.lx, " x ", config.ly, ") must be at least one cutoff (",
        config.cutoff, ") in each direction"));
  }
  const int nx = CellsAlong(config.lx, config.cutoff);
  const int ny = CellsAlong(config.ly, config.cutoff);
  // Every frame each rank builds a grid of its columns (plus two ghost
  // columns) times ny cells, 4 bytes each, on frame memory: bounded up
  // front, or a tiny cutoff in a large box asks the arena for terabytes.
  if (static_cast<double>(nx) * static_cast<double>(ny) > kMaxCells) {
    return absl::InvalidArgumentError(absl::StrCat(
        "box ", config.lx, " x ", config.ly, " at cutoff ", config.cutoff,
        " makes a grid of ", nx, " x ", ny, " cells, more than ", kMaxCells,
        ": raise the cutoff or shrink the box"));
  }
  if (nx < config.ranks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "box width ", config.lx, " holds ", nx, " columns of cutoff ",
        config.cutoff, ", fewer than the ", config.ranks,
        " ranks (each rank needs a column): widen the box or use fewer ranks"));
  }
  return Domain(config);
}

Domain::Domain(const DomainConfig& config) : config_(config) {
  nx_ = CellsAlong(config.lx, config.cutoff);
  ny_ = CellsAlong(config.ly, config.cutoff);
  columns_per_unit_ = nx_ / config.lx;
  rows_per_unit_ = ny_ / config.ly;
  column_width_ = config.lx / nx_;
  row_height_ = config.ly / ny_;
}

int Domain::Column(double x) const {
  return CellIndex(x, columns_per_unit_, column_width_, nx_);
}

int Domain::Row(double y) const {
  return CellIndex(y, rows_per_unit_, row_height_, ny_);
}

int Domain::ColumnBegin(int r) const {
  return static_cast<int>(static_cast<int64_t>(r) * nx_ / config_.ranks);
}

int Domain::OwnerOfColumn(int c) const {
  int r = static_cast<int>(static_cast<int64_t>(c) * config_.ranks / nx_);
  while (r + 1 < config_.ranks && ColumnBegin(r + 1) <= c) ++r;
  while (r > 0 && ColumnBegin(r) > c) --r;
  return r;
}

void LocalParticles::Append(const Migrant& m) {
  id.push_back(m.id);
  x.push_back(m.x);
  y.push_back(m.y);
  vx.push_back(m.vx);
  vy.push_back(m.vy);
}

Migrant InitialParticle(const Domain& domain, uint64_t seed, uint64_t id) {
  uint64_t state = seed;
  state = SplitMix64(state) ^ id;
  Migrant m;
  m.id = id;
  m.x = Unit(SplitMix64(state)) * domain.lx();
  m.y = Unit(SplitMix64(state)) * domain.ly();
  m.vx = Unit(SplitMix64(state)) - 0.5;
  m.vy = Unit(SplitMix64(state)) - 0.5;
  return m;
}

LocalParticles InitialParticles(const Domain& domain, uint64_t seed, uint64_t n,
                                int rank) {
  LocalParticles mine;
  const size_t expect = static_cast<size_t>(n / domain.ranks() + 16);
  mine.id.reserve(expect);
  mine.x.reserve(expect);
  mine.y.reserve(expect);
  mine.vx.reserve(expect);
  mine.vy.reserve(expect);
  for (uint64_t id = 0; id < n; ++id) {
    const Migrant m = InitialParticle(domain, seed, id);
    if (domain.OwnerOf(m.x) == rank) mine.Append(m);
  }
  return mine;
}

size_t CountInColumn(const LocalParticles& particles, const Domain& domain,
                     int column) {
  size_t count = 0;
  for (double x : particles.x) count += domain.Column(x) == column;
  return count;
}

void PackHalo(const LocalParticles& particles, const Domain& domain, int column,
              std::span<HaloParticle> out) {
  size_t k = 0;
  for (size_t i = 0; i < particles.size(); ++i) {
    if (domain.Column(particles.x[i]) != column) continue;
    assert(k < out.size());
    out[k++] = {particles.id[i], particles.x[i], particles.y[i]};
  }
  assert(k == out.size());
}

NeighbourGrid BuildGrid(const Domain& domain, const PositionsView& all,
                        int rank, FrameArena& arena) {
  NeighbourGrid grid;
  grid.col_begin = std::max(domain.ColumnBegin(rank) - 1, 0);
  grid.col_end = std::min(domain.ColumnBegin(rank + 1) + 1, domain.nx());
  grid.rows = domain.ny();
  const size_t cells =
      static_cast<size_t>(grid.col_end - grid.col_begin) * grid.rows;
  grid.start =
      std::span<uint32_t>(arena.AllocateArray<uint32_t>(cells + 1), cells + 1);
  grid.items =
      std::span<uint32_t>(arena.AllocateArray<uint32_t>(all.size), all.size);
  grid.cell =
      std::span<uint32_t>(arena.AllocateArray<uint32_t>(all.size), all.size);
  std::fill(grid.start.begin(), grid.start.end(), 0u);
  // Counting sort: cells of one column are contiguous (column-major).
  for (size_t i = 0; i < all.size; ++i) {
    const int col = domain.Column(all.x[i]);
    assert(col >= grid.col_begin && col < grid.col_end);
    const size_t c = static_cast<size_t>(col - grid.col_begin) * grid.rows +
                     static_cast<size_t>(domain.Row(all.y[i]));
    grid.cell[i] = static_cast<uint32_t>(c);
    ++grid.start[c + 1];
  }
  for (size_t c = 0; c < cells; ++c) grid.start[c + 1] += grid.start[c];
  // Fill: `start[c]` runs ahead as a cursor, then is moved back.
  for (size_t i = 0; i < all.size; ++i) {
    grid.items[grid.start[grid.cell[i]]++] = static_cast<uint32_t>(i);
  }
  for (size_t c = cells; c > 0; --c) grid.start[c] = grid.start[c - 1];
  grid.start[0] = 0;
  grid.id =
      std::span<uint64_t>(arena.AllocateArray<uint64_t>(all.size), all.size);
  grid.x = std::span<double>(arena.AllocateArray<double>(all.size), all.size);
  grid.y = std::span<double>(arena.AllocateArray<double>(all.size), all.size);
  for (size_t s = 0; s < all.size; ++s) {
    const uint32_t i = grid.items[s];
    grid.id[s] = all.id[i];
    grid.x[s] = all.x[i];
    grid.y[s] = all.y[i];
  }
  return grid;
}

void ComputeForces(const Domain& domain, const PositionsView& all,
                   const NeighbourGrid& grid, size_t begin, size_t end,
                   FrameArena& scratch, double* fx, double* fy) {
  const double cutoff = domain.config().cutoff;
  const double r2 = cutoff * cutoff;
  const double inv_cutoff = 1.0 / cutoff;
  const double k = domain.config().stiffness;
  const int cols = grid.col_end - grid.col_begin;
  const int rows = grid.rows;
  size_t capacity = 64;
  Neighbour* list = scratch.AllocateArray<Neighbour>(capacity);
  for (size_t i = begin; i < end; ++i) {
    const double xi = all.x[i];
    const double yi = all.y[i];
    const int col = static_cast<int>(grid.cell[i] / rows);
    const int row = static_cast<int>(grid.cell[i] % rows);
    size_t count = 0;
    const int r_lo = std::max(row - 1, 0);
    const int r_hi = std::min(row + 1, rows - 1);
    for (int c = std::max(col - 1, 0); c <= std::min(col + 1, cols - 1); ++c) {
      // Rows r_lo..r_hi of column c: one contiguous run of slots.
      const size_t first = static_cast<size_t>(c) * rows;
      const uint32_t run_end = grid.start[first + r_hi + 1];
      for (uint32_t s = grid.start[first + r_lo]; s < run_end; ++s) {
        const double dx = xi - grid.x[s];
        const double dy = yi - grid.y[s];
        const double d2 = dx * dx + dy * dy;
        // d2 > 0 leaves out the particle itself (and exact overlaps,
        // which have no direction) alike in every decomposition.
        if (d2 >= r2 || !(d2 > 0)) continue;
        if (count == capacity) {
          // Frame memory: the old list is dropped with the frame.
          Neighbour* bigger = scratch.AllocateArray<Neighbour>(capacity * 2);
          std::memcpy(bigger, list, capacity * sizeof(Neighbour));
          list = bigger;
          capacity *= 2;
        }
        list[count++] = {grid.id[s], s};
      }
    }
    // The order of the sum is the order of the ids: the same on every
    // rank count, array order and worker count.
    // Insertion sort: a handful of neighbours, nearly never more than 32.
    if (count <= 32) {
      for (size_t a = 1; a < count; ++a) {
        const Neighbour v = list[a];
        size_t b = a;
        for (; b > 0 && list[b - 1].id > v.id; --b) list[b] = list[b - 1];
        list[b] = v;
      }
    } else {
      std::sort(list, list + count, [](const Neighbour& a, const Neighbour& b) {
        return a.id < b.id;
      });
    }
    double sx = 0;
    double sy = 0;
    for (size_t n = 0; n < count; ++n) {
      const uint32_t j = list[n].index;  // A slot of the grid.
      const double dx = xi - grid.x[j];
      const double dy = yi - grid.y[j];
      const double d = std::sqrt(dx * dx + dy * dy);
      // k * (1 - d / cutoff) along the unit vector (dx, dy) / d.
      const double s = k * (1.0 / d - inv_cutoff);
      sx += s * dx;
      sy += s * dy;
    }
    fx[i] = sx;
    fy[i] = sy;
  }
}

void Integrate(const Domain& domain, size_t begin, size_t end,
               LocalParticles& particles, const double* fx, const double* fy) {
  const double dt = domain.config().dt;
  const double lx = domain.lx();
  const double ly = domain.ly();
  for (size_t i = begin; i < end; ++i) {
    double vx = particles.vx[i] + fx[i] * dt;
    double vy = particles.vy[i] + fy[i] * dt;
    double x = particles.x[i] + vx * dt;
    double y = particles.y[i] + vy * dt;
    if (x < 0) {
      x = -x;
      vx = -vx;
    } else if (x > lx) {
      x = 2 * lx - x;
      vx = -vx;
    }
    if (y < 0) {
      y = -y;
      vy = -vy;
    } else if (y > ly) {
      y = 2 * ly - y;
      vy = -vy;
    }
    particles.x[i] = x;
    particles.y[i] = y;
    particles.vx[i] = vx;
    particles.vy[i] = vy;
  }
}

absl::Status CheckInBox(const LocalParticles& particles, const Domain& domain) {
  const double lx = domain.lx();
  const double ly = domain.ly();
  for (size_t i = 0; i < particles.size(); ++i) {
    const double x = particles.x[i];
    const double y = particles.y[i];
    const double vx = particles.vx[i];
    const double vy = particles.vy[i];
    // Written so that NaN fails every comparison and is reported.
    const bool inside = x >= 0 && x <= lx && y >= 0 && y <= ly;
    if (!inside || !std::isfinite(vx) || !std::isfinite(vy)) {
      return absl::OutOfRangeError(absl::StrCat(
          "particle ", particles.id[i], " at (", x, ", ", y,
          ") with velocity (", vx, ", ", vy, ") left the box [0, ", lx,
          "] x [0, ", ly,
          "] or became infinite in one step: lower --dt or --stiffness"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDestinations(const LocalParticles& particles,
                               const Domain& domain, int rank) {
  for (size_t i = 0; i < particles.size(); ++i) {
    const int owner = domain.OwnerOf(particles.x[i]);
    if (std::abs(owner - rank) > 1) {
      return absl::OutOfRangeError(
          absl::StrCat("particle ", particles.id[i], " at x = ", particles.x[i],
                       " moved from rank ", rank, " to rank ", owner,
                       ", further than one slab in a frame: lower --dt"));
    }
  }
  return absl::OkStatus();
}

size_t CountOwnedBy(const LocalParticles& particles, const Domain& domain,
                    int to) {
  size_t count = 0;
  for (double x : particles.x) count += domain.OwnerOf(x) == to;
  return count;
}

void PackMigrants(const LocalParticles& particles, const Domain& domain, int to,
                  std::span<Migrant> out) {
  size_t k = 0;
  for (size_t i = 0; i < particles.size(); ++i) {
    if (domain.OwnerOf(particles.x[i]) != to) continue;
    assert(k < out.size());
    out[k++] = particles.Get(i);
  }
  assert(k == out.size());
}

size_t RemoveLeavers(LocalParticles& particles, const Domain& domain,
                     int rank) {
  size_t kept = 0;
  const size_t n = particles.size();
  for (size_t i = 0; i < n; ++i) {
    if (domain.OwnerOf(particles.x[i]) != rank) continue;
    if (kept != i) {
      particles.id[kept] = particles.id[i];
      particles.x[kept] = particles.x[i];
      particles.y[kept] = particles.y[i];
      particles.vx[kept] = particles.vx[i];
      particles.vy[kept] = particles.vy[i];
    }
    ++kept;
  }
  particles.id.resize(kept);
  particles.x.resize(kept);
  particles.y.resize(kept);
  particles.vx.resize(kept);
  particles.vy.resize(kept);
  return n - kept;
}

void AppendArrivals(LocalParticles& particles,
                    std::span<const Migrant> arrivals) {
  for (const Migrant& m : arrivals) particles.Append(m);
}

Stats LocalStats(const LocalParticles& particles) {
  Stats s;
  s.count = static_cast<double>(particles.size());
  for (size_t i = 0; i < particles.size(); ++i) {
    s.kinetic += 0.5 * (particles.vx[i] * particles.vx[i] +
                        particles.vy[i] * particles.vy[i]);
    s.px += particles.vx[i];
    s.py += particles.vy[i];
  }
  return s;
}

uint64_t HashState(std::span<const Migrant> sorted_by_id) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(sorted_by_id.data());
  const size_t bytes = sorted_by_id.size_bytes();
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace mpi
}  // namespace framealloc
