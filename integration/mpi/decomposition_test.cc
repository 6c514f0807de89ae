// Tests of the slab decomposition's pieces, without MPI: the domain and its
// slabs, the initial state, halo selection, migration packing, and the
// force kernel's independence from array order, chunking and decomposition.
#include "integration/mpi/decomposition.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/memory_source.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace mpi {
namespace {

Domain MakeDomain(double lx, double ly, double cutoff, int ranks) {
  absl::StatusOr<Domain> d = Domain::Create(
      DomainConfig().set_box(lx, ly).set_cutoff(cutoff).set_ranks(ranks));
  EXPECT_TRUE(d.ok()) << d.status();
  return *d;
}

uint64_t Bits(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

TEST(DomainTest, RejectsBadConfigNamingTheField) {
  struct Case {
    DomainConfig config;
    const char* field;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Case cases[] = {
      {DomainConfig().set_box(0, 10), "box"},
      {DomainConfig().set_box(10, -1), "box"},
      {DomainConfig().set_box(nan, 10), "box"},
      {DomainConfig().set_cutoff(0), "cutoff"},
      {DomainConfig().set_cutoff(std::numeric_limits<double>::infinity()),
       "cutoff"},
      {DomainConfig().set_dt(-0.1), "dt"},
      {DomainConfig().set_stiffness(nan), "stiffness"},
      {DomainConfig().set_ranks(0), "ranks"},
      {DomainConfig().set_box(10, 0.5).set_cutoff(1), "cutoff"},
      {DomainConfig().set_box(3.5, 10).set_cutoff(1).set_ranks(4), "ranks"},
      // Regression (review): 632455 x 632455 cells were accepted, and the
      // first frame aborted asking the arena for 1.6 TB.
      {DomainConfig().set_box(10, 10).set_cutoff(1e-5), "cutoff"},
      {DomainConfig().set_box(1e6, 1e6).set_cutoff(1), "box"},
      // Regression (review): squares underflowing to 0 (cutoff^2 == 0: no
      // force ever) or overflowing to infinity were accepted.
      {DomainConfig().set_box(1e-199, 1e-199).set_cutoff(1e-200), "cutoff"},
      {DomainConfig().set_box(10, 10).set_cutoff(1e-101), "cutoff"},
      {DomainConfig().set_box(1e200, 1e200).set_cutoff(1e199), "cutoff"},
      {DomainConfig().set_box(1e101, 1e101).set_cutoff(1e100), "box"},
      {DomainConfig().set_box(1e-99, 1e-101).set_cutoff(1e-100), "box"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Domain> d = Domain::Create(c.config);
    ASSERT_FALSE(d.ok()) << c.field;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(d.status().message().find(c.field), absl::string_view::npos)
        << d.status();
  }
}

TEST(DomainTest, AcceptsLengthsAtTheEdgesOfTheRange) {
  EXPECT_TRUE(
      Domain::Create(
          DomainConfig().set_box(1e-99, 1e-99).set_cutoff(Domain::kMinLength))
          .ok());
  EXPECT_TRUE(
      Domain::Create(
          DomainConfig().set_box(Domain::kMaxLength, 1e99).set_cutoff(1e98))
          .ok());
}

TEST(DomainTest, RangeErrorNamesTheValue) {
  const absl::StatusOr<Domain> d =
      Domain::Create(DomainConfig().set_box(1e-199, 1e-199).set_cutoff(1e-200));
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("cutoff must be in [1e-100, 1e+100], "
                                      "got 1e-200"),
            absl::string_view::npos)
      << d.status();
}

TEST(DomainTest, CellsAreAtLeastOneCutoffWide) {
  const Domain d = MakeDomain(10.5, 7.9, 1.0, 2);
  EXPECT_EQ(d.nx(), 10);
  EXPECT_EQ(d.ny(), 7);
  EXPECT_GE(d.lx() / d.nx(), 1.0);
  EXPECT_GE(d.ly() / d.ny(), 1.0);
}

// Regression (review): nx = floor(lx / cutoff) can round up: 11.7 / 1.3
// gave 9 cells of 1.2999999999999998, narrower than the cutoff.
TEST(DomainTest, CellsAreAtLeastOneCutoffWideAfterRounding) {
  struct Case {
    double length, cutoff;
  };
  for (const Case& c : {Case{11.7, 1.3}, Case{13.6, 0.1}, Case{23.4, 1.3},
                        Case{20.0, 1.0}, Case{1.0, 0.1}}) {
    const Domain d = MakeDomain(c.length, c.length, c.cutoff, 1);
    EXPECT_GE(d.lx() / d.nx(), c.cutoff) << c.length << " / " << c.cutoff;
    EXPECT_GE(d.ly() / d.ny(), c.cutoff) << c.length << " / " << c.cutoff;
    // Cells two apart are a cutoff apart: the first coordinate of each
    // column is at least a cutoff past the last one of two columns before.
    std::vector<double> first(d.nx(), HUGE_VAL), last(d.nx(), -HUGE_VAL);
    for (int k = 0; k <= 20000; ++k) {
      const double x = c.length * k / 20000;
      const int col = d.Column(x);
      first[col] = std::min(first[col], x);
      last[col] = std::max(last[col], x);
    }
    for (int col = 2; col < d.nx(); ++col) {
      EXPECT_GE(first[col] - last[col - 2], c.cutoff) << col;
    }
  }
  // Exact multiples keep their cells.
  EXPECT_EQ(MakeDomain(20, 20, 1.0, 1).nx(), 20);
}

TEST(DomainTest, EveryRankOwnsContiguousColumnsAndOwnerAgrees) {
  for (int nx : {1, 3, 4, 7, 10, 128}) {
    for (int ranks = 1; ranks <= std::min(nx, 9); ++ranks) {
      const Domain d = MakeDomain(nx, 5, 1.0, ranks);
      ASSERT_EQ(d.nx(), nx);
      EXPECT_EQ(d.ColumnBegin(0), 0);
      EXPECT_EQ(d.ColumnBegin(ranks), nx);
      for (int r = 0; r < ranks; ++r) {
        ASSERT_LT(d.ColumnBegin(r), d.ColumnBegin(r + 1))
            << "rank " << r << " of " << ranks << " has no column";
        for (int c = d.ColumnBegin(r); c < d.ColumnBegin(r + 1); ++c) {
          EXPECT_EQ(d.OwnerOfColumn(c), r) << "nx " << nx << " column " << c;
        }
      }
    }
  }
}

TEST(DomainTest, CoordinatesOutsideTheBoxGoToEdgeCells) {
  const Domain d = MakeDomain(8, 4, 1.0, 2);
  EXPECT_EQ(d.Column(-0.5), 0);
  EXPECT_EQ(d.Column(8.0), 7);
  EXPECT_EQ(d.Column(100.0), 7);
  EXPECT_EQ(d.Column(std::numeric_limits<double>::quiet_NaN()), 0);
  EXPECT_EQ(d.Column(3.99), 3);
  EXPECT_EQ(d.Column(4.0), 4);
  EXPECT_EQ(d.Row(3.5), 3);
  EXPECT_EQ(d.OwnerOf(3.99), 0);
  EXPECT_EQ(d.OwnerOf(4.0), 1);
}

TEST(InitialParticlesTest, RanksPartitionTheSameState) {
  const uint64_t n = 2000;
  const Domain one = MakeDomain(20, 20, 1.0, 1);
  const Domain three = MakeDomain(20, 20, 1.0, 3);
  const LocalParticles all = InitialParticles(one, 7, n, 0);
  ASSERT_EQ(all.size(), n);
  std::map<uint64_t, Migrant> seen;
  for (int r = 0; r < 3; ++r) {
    const LocalParticles mine = InitialParticles(three, 7, n, r);
    EXPECT_GT(mine.size(), n / 5) << "rank " << r;
    for (size_t i = 0; i < mine.size(); ++i) {
      EXPECT_EQ(three.OwnerOf(mine.x[i]), r);
      EXPECT_TRUE(seen.emplace(mine.id[i], mine.Get(i)).second)
          << "particle " << mine.id[i] << " on two ranks";
    }
  }
  ASSERT_EQ(seen.size(), n);
  for (size_t i = 0; i < all.size(); ++i) {
    const Migrant& m = seen.at(all.id[i]);
    EXPECT_EQ(Bits(m.x), Bits(all.x[i]));
    EXPECT_EQ(Bits(m.vy), Bits(all.vy[i]));
    EXPECT_GE(all.x[i], 0.0);
    EXPECT_LT(all.x[i], 20.0);
    EXPECT_GE(all.vx[i], -0.5);
    EXPECT_LT(all.vx[i], 0.5);
  }
}

TEST(InitialParticlesTest, SeedChangesTheState) {
  const Domain d = MakeDomain(20, 20, 1.0, 1);
  const Migrant a = InitialParticle(d, 1, 5);
  const Migrant b = InitialParticle(d, 2, 5);
  const Migrant a2 = InitialParticle(d, 1, 5);
  EXPECT_NE(Bits(a.x), Bits(b.x));
  EXPECT_EQ(Bits(a.x), Bits(a2.x));
  EXPECT_EQ(Bits(a.vy), Bits(a2.vy));
}

// Particles at chosen x (y = 0.5 + index, velocity = index).
LocalParticles AtX(const std::vector<double>& xs) {
  LocalParticles p;
  for (size_t i = 0; i < xs.size(); ++i) {
    p.Append({100 + i, xs[i], 0.5 + i, double(i), -double(i)});
  }
  return p;
}

TEST(HaloTest, PacksExactlyTheColumnInArrayOrder) {
  const Domain d = MakeDomain(8, 8, 1.0, 2);
  const LocalParticles p = AtX({3.5, 0.2, 3.0, 2.99, 3.999, 4.0});
  ASSERT_EQ(CountInColumn(p, d, 3), 3u);
  std::vector<HaloParticle> halo(3);
  PackHalo(p, d, 3, std::span<HaloParticle>(halo));
  EXPECT_EQ(halo[0].id, 100u);
  EXPECT_EQ(halo[1].id, 102u);
  EXPECT_EQ(halo[2].id, 104u);
  EXPECT_EQ(halo[2].x, 3.999);
  EXPECT_EQ(halo[2].y, 4.5);
  EXPECT_EQ(CountInColumn(p, d, 0), 1u);
  EXPECT_EQ(CountInColumn(p, d, 7), 0u);
}

TEST(MigrationTest, PacksRemovesAndAppendsKeepingOrder) {
  const Domain d = MakeDomain(12, 4, 1.0, 3);  // Slabs [0,4) [4,8) [8,12).
  LocalParticles p = AtX({4.5, 3.9, 7.0, 8.1, 5.0, 2.0, 9.0});
  ASSERT_TRUE(CheckDestinations(p, d, 1).ok());
  ASSERT_EQ(CountOwnedBy(p, d, 0), 2u);
  ASSERT_EQ(CountOwnedBy(p, d, 2), 2u);
  std::vector<Migrant> left(2), right(2);
  PackMigrants(p, d, 0, std::span<Migrant>(left));
  PackMigrants(p, d, 2, std::span<Migrant>(right));
  EXPECT_EQ(left[0].id, 101u);
  EXPECT_EQ(left[1].id, 105u);
  EXPECT_EQ(left[1].vx, 5.0);
  EXPECT_EQ(right[0].id, 103u);
  EXPECT_EQ(right[1].id, 106u);
  EXPECT_EQ(RemoveLeavers(p, d, 1), 4u);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p.id, (std::vector<uint64_t>{100, 102, 104}));
  EXPECT_EQ(p.vy, (std::vector<double>{-0.0, -2.0, -4.0}));
  const Migrant arrivals[] = {{7, 4.2, 1, 2, 3}, {9, 7.9, 1, 2, 3}};
  AppendArrivals(p, arrivals);
  EXPECT_EQ(p.id, (std::vector<uint64_t>{100, 102, 104, 7, 9}));
  EXPECT_EQ(p.x.back(), 7.9);
}

TEST(MigrationTest, AParticleJumpingOverASlabIsOutOfRange) {
  const Domain d = MakeDomain(12, 4, 1.0, 3);
  const LocalParticles p = AtX({1.0, 9.5});
  const absl::Status s = CheckDestinations(p, d, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("particle 101"), absl::string_view::npos) << s;
  EXPECT_TRUE(CheckDestinations(p, d, 1).ok());
}

class ForceTest : public ::testing::Test {
 protected:
  ForceTest() : cache_(&SystemMemorySource::Default()), arena_(&cache_) {}

  // Forces on every particle of `view` (all treated as owned), by id,
  // computed in chunks of `chunk`.
  std::map<uint64_t, std::pair<double, double>> Forces(
      const Domain& d, const PositionsView& view, size_t owned, int rank,
      size_t chunk) {
    const NeighbourGrid grid = BuildGrid(d, view, rank, arena_);
    std::vector<double> fx(owned, -1), fy(owned, -1);
    for (size_t b = 0; b < owned; b += chunk) {
      ComputeForces(d, view, grid, b, std::min(owned, b + chunk), arena_,
                    fx.data(), fy.data());
    }
    std::map<uint64_t, std::pair<double, double>> out;
    for (size_t i = 0; i < owned; ++i) out[view.id[i]] = {fx[i], fy[i]};
    arena_.Reset();
    return out;
  }

  ChunkCache cache_;
  FrameArena arena_;
};

TEST_F(ForceTest, PairForceIsTheSoftRepulsionAndVanishesAtTheCutoff) {
  const Domain d =
      Domain::Create(
          DomainConfig().set_box(4, 4).set_cutoff(1.0).set_stiffness(25.0))
          .value();
  const uint64_t ids[] = {1, 2, 3};
  const double xs[] = {1.0, 1.5, 3.0};  // 3 is 1.5 from 2: no force.
  const double ys[] = {2.0, 2.0, 2.0};
  const auto f = Forces(d, {ids, xs, ys, 3}, 3, 0, 3);
  EXPECT_DOUBLE_EQ(f.at(1).first, -12.5);  // 25 * (1 - 0.5), pushed left.
  EXPECT_DOUBLE_EQ(f.at(2).first, 12.5);
  EXPECT_EQ(f.at(1).second, 0.0);
  EXPECT_EQ(f.at(3).first, 0.0);
  EXPECT_EQ(f.at(3).second, 0.0);
}

// Regression (review): with cells narrower than the cutoff (11.7 / 1.3
// gave 9 columns of 1.2999999999999998) the 3 x 3 stencil missed this
// pair, 1.2999999999999998 apart, two columns apart.
TEST_F(ForceTest, PairJustInsideTheCutoffIsFoundWhateverTheRounding) {
  const Domain d = MakeDomain(11.7, 11.7, 1.3, 1);
  const uint64_t ids[] = {1, 2};
  const double xs[] = {5.199999999999999, 6.499999999999999};
  const double ys[] = {5.0, 5.0};
  ASSERT_LT(xs[1] - xs[0], 1.3);
  const auto f = Forces(d, {ids, xs, ys, 2}, 2, 0, 2);
  EXPECT_LT(f.at(1).first, 0.0);  // Pushed left, however slightly.
  EXPECT_GT(f.at(2).first, 0.0);
}

// Random particles, dense enough for ~10 neighbours each.
LocalParticles RandomParticles(const Domain& d, size_t n, uint64_t seed) {
  return InitialParticles(d, seed, n, 0);
}

TEST_F(ForceTest, SumIsIndependentOfArrayOrderAndChunking) {
  const Domain d = MakeDomain(12, 12, 1.0, 1);
  const LocalParticles p = RandomParticles(d, 500, 3);
  const PositionsView in_order{p.id.data(), p.x.data(), p.y.data(), p.size()};
  const auto reference = Forces(d, in_order, p.size(), 0, p.size());

  std::vector<size_t> perm(p.size());
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
  std::mt19937_64 rng(11);
  for (int round = 0; round < 3; ++round) {
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<uint64_t> ids(p.size());
    std::vector<double> xs(p.size()), ys(p.size());
    for (size_t i = 0; i < perm.size(); ++i) {
      ids[i] = p.id[perm[i]];
      xs[i] = p.x[perm[i]];
      ys[i] = p.y[perm[i]];
    }
    const auto shuffled =
        Forces(d, {ids.data(), xs.data(), ys.data(), ids.size()}, ids.size(), 0,
               7 + round * 50);
    ASSERT_EQ(shuffled.size(), reference.size());
    size_t nonzero = 0;
    for (const auto& [id, f] : reference) {
      EXPECT_EQ(Bits(shuffled.at(id).first), Bits(f.first)) << id;
      EXPECT_EQ(Bits(shuffled.at(id).second), Bits(f.second)) << id;
      nonzero += f.first != 0;
    }
    EXPECT_GT(nonzero, p.size() / 2);  // The test exercises real sums.
  }
}

// The decomposition in one process: each rank's own particles plus the
// halo its neighbours would send give bitwise the whole box's forces.
TEST_F(ForceTest, SlabsWithTheirHalosGiveTheWholeBoxForces) {
  constexpr int kRanks = 3;
  const Domain whole = MakeDomain(9, 6, 1.0, 1);
  const Domain split = MakeDomain(9, 6, 1.0, kRanks);
  const LocalParticles all = RandomParticles(whole, 400, 5);
  const auto reference =
      Forces(whole, {all.id.data(), all.x.data(), all.y.data(), all.size()},
             all.size(), 0, 64);
  std::vector<LocalParticles> ranks;
  for (int r = 0; r < kRanks; ++r) {
    // Reverse id order: a different array order than the whole box's.
    LocalParticles mine = InitialParticles(split, 5, 400, r);
    std::reverse(mine.id.begin(), mine.id.end());
    std::reverse(mine.x.begin(), mine.x.end());
    std::reverse(mine.y.begin(), mine.y.end());
    ranks.push_back(std::move(mine));
  }
  size_t checked = 0;
  size_t halo_total = 0;
  for (int r = 0; r < kRanks; ++r) {
    const LocalParticles& mine = ranks[r];
    std::vector<uint64_t> ids(mine.id);
    std::vector<double> xs(mine.x), ys(mine.y);
    auto add_halo = [&](int from, int column) {
      std::vector<HaloParticle> halo(CountInColumn(ranks[from], split, column));
      PackHalo(ranks[from], split, column, std::span<HaloParticle>(halo));
      halo_total += halo.size();
      for (const HaloParticle& h : halo) {
        ids.push_back(h.id);
        xs.push_back(h.x);
        ys.push_back(h.y);
      }
    };
    if (r > 0) add_halo(r - 1, split.ColumnBegin(r) - 1);
    if (r + 1 < kRanks) add_halo(r + 1, split.ColumnBegin(r + 1));
    const auto forces =
        Forces(split, {ids.data(), xs.data(), ys.data(), ids.size()},
               mine.size(), r, 33);
    for (const auto& [id, f] : forces) {
      EXPECT_EQ(Bits(f.first), Bits(reference.at(id).first)) << id;
      EXPECT_EQ(Bits(f.second), Bits(reference.at(id).second)) << id;
      ++checked;
    }
  }
  EXPECT_EQ(checked, all.size());
  EXPECT_GT(halo_total, 0u);
}

TEST(IntegrateTest, StepsAndReflectsAtTheWalls) {
  const Domain d =
      Domain::Create(DomainConfig().set_box(10, 10).set_cutoff(1).set_dt(0.5))
          .value();
  LocalParticles p;
  p.Append({0, 5.0, 5.0, 1.0, 0.0});   // Free: x += (1 + 2 * 0.5) * 0.5.
  p.Append({1, 0.1, 9.9, -1.0, 1.0});  // Through the left and top walls.
  const double fx[] = {2.0, 0.0};
  const double fy[] = {0.0, 0.0};
  Integrate(d, 0, 2, p, fx, fy);
  EXPECT_DOUBLE_EQ(p.vx[0], 2.0);
  EXPECT_DOUBLE_EQ(p.x[0], 6.0);
  EXPECT_DOUBLE_EQ(p.x[1], 0.4);
  EXPECT_DOUBLE_EQ(p.vx[1], 1.0);
  EXPECT_DOUBLE_EQ(p.y[1], 9.6);
  EXPECT_DOUBLE_EQ(p.vy[1], -1.0);
}

// Regression (review): a step longer than the box left particles outside
// it (Integrate reflects once), and 1 or 2 ranks ran on with them.
TEST(IntegrateTest, CheckInBoxNamesAParticleTheStepLeftOutside) {
  const Domain d =
      Domain::Create(DomainConfig().set_box(10, 10).set_cutoff(1).set_dt(0.5))
          .value();
  LocalParticles p;
  p.Append({0, 5.0, 5.0, 0.0, 0.0});
  p.Append({7, 1.0, 5.0, -30.0, 0.0});  // 15 to the left: -14, reflected 14.
  const double fx[] = {0.0, 0.0};
  const double fy[] = {0.0, 0.0};
  ASSERT_TRUE(CheckInBox(p, d).ok());
  Integrate(d, 0, 2, p, fx, fy);
  ASSERT_GT(p.x[1], 10.0);
  const absl::Status s = CheckInBox(p, d);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("particle 7 at (14, 5)"), absl::string_view::npos)
      << s;
  EXPECT_NE(s.message().find("lower --dt or --stiffness"),
            absl::string_view::npos)
      << s;
}

TEST(IntegrateTest, CheckInBoxRejectsNonFiniteStateAndAcceptsTheWalls) {
  const Domain d = MakeDomain(10, 10, 1.0, 1);
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Migrant bad[] = {
      {3, nan, 5.0, 0.0, 0.0}, {3, 5.0, nan, 0.0, 0.0},
      {3, inf, 5.0, 0.0, 0.0}, {3, 5.0, -0.5, 0.0, 0.0},
      {3, 5.0, 5.0, inf, 0.0}, {3, 5.0, 5.0, 0.0, nan},
  };
  for (const Migrant& m : bad) {
    LocalParticles p;
    p.Append({0, 1.0, 1.0, 0.0, 0.0});
    p.Append(m);
    const absl::Status s = CheckInBox(p, d);
    EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange)
        << m.x << " " << m.y << " " << m.vx << " " << m.vy;
    EXPECT_NE(s.message().find("particle 3"), absl::string_view::npos) << s;
  }
  LocalParticles walls;
  walls.Append({0, 0.0, 0.0, 1.0, -1.0});
  walls.Append({1, 10.0, 10.0, 0.0, 0.0});
  EXPECT_TRUE(CheckInBox(walls, d).ok());
}

TEST(StatsTest, SumsCountEnergyAndMomentum) {
  LocalParticles p;
  p.Append({0, 1, 1, 3.0, 4.0});
  p.Append({1, 1, 1, -1.0, 0.0});
  const Stats s = LocalStats(p);
  EXPECT_EQ(s.count, 2.0);
  EXPECT_DOUBLE_EQ(s.kinetic, 12.5 + 0.5);
  EXPECT_DOUBLE_EQ(s.px, 2.0);
  EXPECT_DOUBLE_EQ(s.py, 4.0);
}

TEST(HashStateTest, ChangesWithAnyBit) {
  std::vector<Migrant> a = {{0, 1, 2, 3, 4}, {1, 5, 6, 7, 8}};
  const uint64_t h = HashState(a);
  EXPECT_EQ(h, HashState(a));
  a[1].vy = std::nextafter(a[1].vy, 9.0);
  EXPECT_NE(h, HashState(a));
}

}  // namespace
}  // namespace mpi
}  // namespace framealloc
