#include "jobs/internal/soak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "alloc/internal/soak.h"

namespace framealloc {
namespace jobs {
namespace jobs_internal {
namespace {

// What one chunk allocated from its worker's frame arena this frame.
struct Manifest {
  uint64_t frame = 0;
  size_t chunk = 0;
  size_t count = 0;
  unsigned char** blocks = nullptr;  // On the same arena.
  size_t* sizes = nullptr;
};

// A pool block kept across frames: its owner frees it a few frames later,
// from whichever worker runs the freeing job.
struct PoolBlock {
  SmartAlloc* owner = nullptr;  // The node's SmartAlloc it came from.
  void* p = nullptr;
  size_t size = 0;
  uint64_t seed = 0;
};

constexpr uint64_t kPoolLifetime = 4;  // Frames a pool block lives.
constexpr size_t kPoolBlocksPerChunk = 2;
constexpr size_t kOversize = size_t{192} << 10;

uint64_t Seed(uint64_t frame, size_t chunk, size_t i) {
  uint64_t h = frame * 0x9E3779B97F4A7C15ull ^
               (chunk + 1) * 0xC2B2AE3D27D4EB4Full ^
               (i + 7) * 0x165667B19E3779F9ull;
  h ^= h >> 31;
  return h * 0xFF51AFD7ED558CCDull;
}

// Writes one 64-bit word per cache line, plus the last word: enough to
// catch overlapping or reused blocks, cheap enough for millions of frames.
void Fill(unsigned char* p, size_t size, uint64_t seed) {
  for (size_t off = 0; off + 8 <= size; off += 64) {
    const uint64_t v = seed + off;
    std::memcpy(p + off, &v, 8);
  }
  const uint64_t last = ~seed;
  std::memcpy(p + size - 8, &last, 8);
}

bool Check(const unsigned char* p, size_t size, uint64_t seed) {
  for (size_t off = 0; off + 8 <= size; off += 64) {
    uint64_t v;
    std::memcpy(&v, p + off, 8);
    if (v != seed + off) return false;
  }
  uint64_t last;
  std::memcpy(&last, p + size - 8, 8);
  return last == ~seed;
}

// 16 B to 8 KiB, varying with frame, chunk and index; the mix repeats
// every 960 frames.
size_t BlockSize(uint64_t frame, size_t chunk, size_t i) {
  return size_t{16} << ((frame % 960 + chunk * 3 + i) % 10);
}

}  // namespace

absl::StatusOr<RuntimeSoakResult> SoakRuntimeFrames(Runtime& rt,
                                                    uint64_t frames,
                                                    uint64_t warmup,
                                                    size_t chunks) {
  if (frames == 0 || warmup >= frames || chunks == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SoakRuntimeFrames: need 0 <= warmup < frames and "
                     "chunks > 0, got frames=",
                     frames, " warmup=", warmup, " chunks=", chunks));
  }
  RuntimeSoakResult r;
  const auto start = std::chrono::steady_clock::now();
  const NodePartition part = rt.Partition(chunks);
  std::vector<Manifest*> manifests(chunks);
  // ring[f % kPoolLifetime]: the blocks frame f allocated.
  std::vector<std::vector<PoolBlock>> ring(
      kPoolLifetime, std::vector<PoolBlock>(chunks * kPoolBlocksPerChunk));
  std::atomic<uint64_t> corrupted{0}, allocations{0}, bytes{0}, pool{0};
  uint64_t jobs = 0;

  for (uint64_t frame = 0; frame < frames; ++frame) {
    if (frame == warmup) {
      r.rss_after_warmup = alloc_internal::ResidentBytes();
      r.rss_after_max = r.rss_after_warmup;
    } else if (frame > warmup && frame % 256 == 0) {
      r.rss_after_max =
          std::max(r.rss_after_max, alloc_internal::ResidentBytes());
    }
    if (absl::Status s = rt.BeginFrame(); !s.ok()) return s;
    std::vector<PoolBlock>& fresh = ring[frame % kPoolLifetime];
    // 1. Every chunk fills frame memory and allocates pool blocks.
    absl::Status filled =
        rt.ParallelFor(part, 1, [&](JobContext& ctx, size_t b, size_t e) {
          for (size_t c = b; c < e; ++c) {
            FrameArena& arena = ctx.arena();
            auto* m = arena.Create<Manifest>();
            m->frame = frame;
            m->chunk = c;
            m->count = 1 + (frame * 7 + c * 13) % 8;
            const bool oversize = frame % 64 == 0 && c == 0;
            m->blocks = arena.AllocateArray<unsigned char*>(m->count + 1);
            m->sizes = arena.AllocateArray<size_t>(m->count + 1);
            uint64_t taken = 0;
            for (size_t i = 0; i < m->count; ++i) {
              m->sizes[i] = BlockSize(frame, c, i);
              m->blocks[i] =
                  static_cast<unsigned char*>(arena.Allocate(m->sizes[i], 16));
              Fill(m->blocks[i], m->sizes[i], Seed(frame, c, i));
              taken += m->sizes[i];
            }
            if (oversize) {
              m->sizes[m->count] = kOversize;
              m->blocks[m->count] =
                  static_cast<unsigned char*>(arena.Allocate(kOversize, 64));
              Fill(m->blocks[m->count], kOversize, Seed(frame, c, m->count));
              taken += kOversize;
              ++m->count;
            }
            for (size_t j = 0; j < kPoolBlocksPerChunk; ++j) {
              PoolBlock& block = fresh[c * kPoolBlocksPerChunk + j];
              block.size = size_t{24} << ((frame + c + j) % 7);  // 24 B-1.5 KiB
              block.seed = Seed(frame, c, 100 + j);
              block.owner = &ctx.alloc();
              block.p = block.owner->pool_allocate(block.size, 8);
              Fill(static_cast<unsigned char*>(block.p), block.size,
                   block.seed);
            }
            manifests[c] = m;
            allocations.fetch_add(m->count + 3, std::memory_order_relaxed);
            bytes.fetch_add(taken, std::memory_order_relaxed);
            pool.fetch_add(kPoolBlocksPerChunk, std::memory_order_relaxed);
          }
        });
    if (!filled.ok()) return filled;
    jobs += chunks;
    // 2. Later jobs of the frame, one per node, read every chunk's frame
    // memory back (written on other workers, and other nodes).
    std::vector<JobHandle<void>> checks;
    for (int node = 0; node < rt.num_nodes(); ++node) {
      checks.push_back(rt.Submit(
          [&, node] {
            for (size_t c = 0; c < chunks; ++c) {
              if (static_cast<int>(c % rt.num_nodes()) != node) continue;
              const Manifest* m = manifests[c];
              bool ok = m->frame == frame && m->chunk == c;
              for (size_t i = 0; ok && i < m->count; ++i) {
                ok = Check(m->blocks[i], m->sizes[i], Seed(frame, c, i));
              }
              if (!ok) corrupted.fetch_add(1, std::memory_order_relaxed);
            }
          },
          SubmitOptions().on_node(node).named("soak check")));
    }
    // 3. A job frees the pool blocks allocated kPoolLifetime - 1 frames ago
    // (wherever it runs: cross-thread frees, to the SmartAlloc of the node
    // that allocated each), checking them first.
    if (frame + 1 >= kPoolLifetime) {
      std::vector<PoolBlock>& old = ring[(frame + 1) % kPoolLifetime];
      checks.push_back(rt.Submit(
          [&old, &corrupted] {
            for (PoolBlock& block : old) {
              if (!Check(static_cast<unsigned char*>(block.p), block.size,
                         block.seed)) {
                corrupted.fetch_add(1, std::memory_order_relaxed);
              }
              block.owner->pool_deallocate(block.p, block.size, 8);
              block.p = nullptr;
            }
          },
          SubmitOptions().on(Affinity::Any()).named("soak pool free")));
    }
    jobs += checks.size();
    for (auto& h : checks) {
      if (absl::Status s = h.Wait(); !s.ok()) return s;
    }
    if (absl::Status s = rt.EndFrame(); !s.ok()) return s;
  }
  // What the last frames kept.
  for (auto& slot : ring) {
    for (PoolBlock& block : slot) {
      if (block.p == nullptr) continue;
      if (!Check(static_cast<unsigned char*>(block.p), block.size,
                 block.seed)) {
        corrupted.fetch_add(1, std::memory_order_relaxed);
      }
      block.owner->pool_deallocate(block.p, block.size, 8);
      block.p = nullptr;
    }
  }
  r.rss_end = alloc_internal::ResidentBytes();
  r.rss_after_max = std::max(r.rss_after_max, r.rss_end);
  r.frames = frames;
  r.jobs = jobs;
  r.frame_allocations = allocations.load();
  r.frame_bytes = bytes.load();
  r.pool_blocks = pool.load();
  r.corrupted = corrupted.load();
  const RuntimeStats stats = rt.stats();
  r.failed_jobs = stats.jobs_failed + stats.jobs_cancelled;
  for (const FrameTiming& t : rt.frame_history()) {
    r.max_frame_bytes = std::max<uint64_t>(r.max_frame_bytes, t.arena_bytes);
  }
  r.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return r;
}

}  // namespace jobs_internal
}  // namespace jobs
}  // namespace framealloc
