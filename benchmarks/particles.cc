// The particle frame (see particles.h), written once for both policies.
#include "benchmarks/particles.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

namespace framealloc {
namespace sim {

Params Params::ForCount(size_t particles) {
  Params p;
  // About eight neighbours: n * pi * r^2 = 8 in a unit box.
  const double r =
      std::sqrt(8.0 / (3.14159265358979 * std::max<size_t>(particles, 16)));
  p.grid = std::max(1, static_cast<int>(1.0 / r));
  p.radius = 1.0f / static_cast<float>(p.grid);
  return p;
}

Particles MakeParticles(size_t n, uint64_t seed) {
  Particles p;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> pos(0.0f, 1.0f);
  std::uniform_real_distribution<float> vel(-0.2f, 0.2f);
  p.x.resize(n);
  p.y.resize(n);
  p.vx.resize(n);
  p.vy.resize(n);
  for (size_t i = 0; i < n; ++i) {
    p.x[i] = pos(rng);
    p.y[i] = pos(rng);
    p.vx[i] = vel(rng);
    p.vy[i] = vel(rng);
  }
  return p;
}

namespace {

struct Contact {
  uint32_t a, b;
  float nx, ny, push;
};

int CellOf(float v, int grid) {
  return std::clamp(static_cast<int>(v * static_cast<float>(grid)), 0,
                    grid - 1);
}

}  // namespace

void Integrate(Particles& particles, const Params& params, const float* fx,
               const float* fy) {
  const size_t n = particles.size();
  for (size_t i = 0; i < n; ++i) {
    float vx = particles.vx[i] + fx[i] * params.dt;
    float vy = particles.vy[i] + (fy[i] + params.gravity) * params.dt;
    float x = particles.x[i] + vx * params.dt;
    float y = particles.y[i] + vy * params.dt;
    if (x < 0.0f) {
      x = -x;
      vx = -vx;
    }
    if (x > 1.0f) {
      x = 2.0f - x;
      vx = -vx;
    }
    if (y < 0.0f) {
      y = -y;
      vy = -vy;
    }
    if (y > 1.0f) {
      y = 2.0f - y;
      vy = -vy;
    }
    particles.x[i] = x;
    particles.y[i] = y;
    particles.vx[i] = vx;
    particles.vy[i] = vy;
  }
}

template <typename Policy>
FrameCounts Step(Particles& particles, const Params& params,
                 const Policy& policy) {
  using U32s =
      std::vector<uint32_t, typename Policy::template Allocator<uint32_t>>;
  using Floats = std::vector<float, typename Policy::template Allocator<float>>;
  using Contacts =
      std::vector<Contact, typename Policy::template Allocator<Contact>>;
  using Cells = std::vector<U32s, typename Policy::template Allocator<U32s>>;

  const size_t n = particles.size();
  const int grid = params.grid;
  const float r = params.radius;
  const float r2 = r * r;
  FrameCounts counts;

  // 1. The neighbour grid: one growing list of particle indices per cell.
  Cells cells(static_cast<size_t>(grid) * grid,
              U32s(policy.template allocator<uint32_t>()),
              policy.template allocator<U32s>());
  for (uint32_t i = 0; i < n; ++i) {
    const int cx = CellOf(particles.x[i], grid);
    const int cy = CellOf(particles.y[i], grid);
    cells[static_cast<size_t>(cy) * grid + cx].push_back(i);
  }

  // 2. Neighbour lists, one per particle, and the contacts they produce.
  Contacts contacts(policy.template allocator<Contact>());
  contacts.reserve(n * 2);
  for (uint32_t i = 0; i < n; ++i) {
    const float xi = particles.x[i];
    const float yi = particles.y[i];
    const int cx = CellOf(xi, grid);
    const int cy = CellOf(yi, grid);
    U32s neighbours(policy.template allocator<uint32_t>());
    for (int dy = -1; dy <= 1; ++dy) {
      const int y = cy + dy;
      if (y < 0 || y >= grid) continue;
      for (int dx = -1; dx <= 1; ++dx) {
        const int x = cx + dx;
        if (x < 0 || x >= grid) continue;
        for (uint32_t j : cells[static_cast<size_t>(y) * grid + x]) {
          if (j <= i) continue;  // Each pair once.
          const float ddx = particles.x[j] - xi;
          const float ddy = particles.y[j] - yi;
          if (ddx * ddx + ddy * ddy < r2) neighbours.push_back(j);
        }
      }
    }
    counts.neighbour_entries += neighbours.size();
    for (uint32_t j : neighbours) {
      const float ddx = particles.x[j] - xi;
      const float ddy = particles.y[j] - yi;
      const float d = std::sqrt(ddx * ddx + ddy * ddy) + 1e-9f;
      contacts.push_back({i, j, ddx / d, ddy / d, r - d});
    }
  }
  counts.contacts = contacts.size();

  // 3. Forces from contacts (a frame temporary each), then integration.
  Floats fx(n, 0.0f, policy.template allocator<float>());
  Floats fy(n, 0.0f, policy.template allocator<float>());
  for (const Contact& c : contacts) {
    const float f = params.stiffness * c.push;
    fx[c.a] -= f * c.nx;
    fy[c.a] -= f * c.ny;
    fx[c.b] += f * c.nx;
    fy[c.b] += f * c.ny;
  }
  const auto integrate_start = std::chrono::steady_clock::now();
  Integrate(particles, params, fx.data(), fy.data());
  const std::chrono::duration<double> integrate_time =
      std::chrono::steady_clock::now() - integrate_start;
  counts.integrate_seconds = integrate_time.count();
  return counts;
}

template FrameCounts Step<HeapPolicy>(Particles&, const Params&,
                                      const HeapPolicy&);
template FrameCounts Step<ArenaPolicy>(Particles&, const Params&,
                                       const ArenaPolicy&);

uint64_t Checksum(const Particles& particles) {
  // FNV-1a over the bits of every float.
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&hash](const std::vector<float>& values) {
    for (float v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      hash = (hash ^ bits) * 1099511628211ull;
    }
  };
  mix(particles.x);
  mix(particles.y);
  mix(particles.vx);
  mix(particles.vy);
  return hash;
}

}  // namespace sim
}  // namespace framealloc
