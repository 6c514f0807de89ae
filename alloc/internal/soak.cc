// The stress and soak workloads (see soak.h).
#include "alloc/internal/soak.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace framealloc {
namespace alloc_internal {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

size_t Reserved(SmartAlloc& alloc) {
  return alloc.chunk_cache().source()->stats().bytes_outstanding;
}

// Raises `target` to `value`.
void RaiseTo(std::atomic<size_t>& target, size_t value) {
  size_t seen = target.load(std::memory_order_relaxed);
  while (value > seen && !target.compare_exchange_weak(
                             seen, value, std::memory_order_relaxed)) {
  }
}

// A block written with `tag` at both ends (cheap enough for millions of
// frames; the fuzzers check every byte).
struct Tagged {
  unsigned char* data;
  size_t size;
  unsigned char tag;
};
void Write(const Tagged& t) {
  std::memset(t.data, t.tag, std::min<size_t>(t.size, 64));
  t.data[t.size - 1] = t.tag;
}
bool Intact(const Tagged& t) {
  for (size_t i = 0; i < std::min<size_t>(t.size, 64); ++i) {
    if (t.data[i] != t.tag) return false;
  }
  return t.data[t.size - 1] == t.tag;
}

}  // namespace

size_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (read != 2) return 0;
  return static_cast<size_t>(resident) *
         static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

FrameSoakResult SoakFrames(SmartAlloc& alloc, int threads, uint64_t frames,
                           uint64_t warmup) {
  std::atomic<uint64_t> allocations{0}, corrupted{0};
  std::atomic<size_t> reserved_warmup_max{0}, reserved_after_max{0};
  std::atomic<size_t> rss_after_warmup{0}, rss_after_max{0};
  // Threads past their warm-up: the run is warm once all are (a thread that
  // started late must not reach its peak after the others' warm-up).
  std::atomic<int> warmed{0};
  const auto start = std::chrono::steady_clock::now();
  auto body = [&](int index) {
    std::deque<Tagged> kept;  // Pool blocks kept for 8 frames.
    std::vector<Tagged> frame_blocks;
    uint64_t local_allocations = 0, local_corrupted = 0;
    for (uint64_t f = 0; f < frames; ++f) {
      alloc.begin_frame();
      frame_blocks.clear();
      const int n = 16 + static_cast<int>((f * 7 + index) % 48);
      for (int i = 0; i < n; ++i) {
        const size_t size = size_t{16} << ((f + i) % 10);  // 16 B .. 8 KiB.
        frame_blocks.push_back(
            {static_cast<unsigned char*>(alloc.frame_allocate(size, 16)), size,
             static_cast<unsigned char>(f + i)});
        Write(frame_blocks.back());
      }
      if (f % 64 == 63) {  // An oversize block of its own.
        frame_blocks.push_back(
            {static_cast<unsigned char*>(alloc.frame_allocate(192 << 10)),
             192 << 10, static_cast<unsigned char>(f)});
        Write(frame_blocks.back());
      }
      for (size_t size : {32, 256}) {
        kept.push_back({static_cast<unsigned char*>(alloc.pool_allocate(size)),
                        size, static_cast<unsigned char>(f ^ size)});
        Write(kept.back());
      }
      while (kept.size() > 16) {
        if (!Intact(kept.front())) ++local_corrupted;
        alloc.pool_deallocate(kept.front().data, kept.front().size);
        kept.pop_front();
      }
      for (const Tagged& t : frame_blocks) {
        if (!Intact(t)) ++local_corrupted;
      }
      local_allocations += frame_blocks.size() + 2;
      alloc.end_frame();
      if (f + 1 == warmup) warmed.fetch_add(1);
      if (index == 0) {
        // The source's counter every frame (one load); resident memory
        // (a /proc read) every 256 frames and once the run is warm.
        const size_t reserved = Reserved(alloc);
        if (warmed.load() < threads) {
          RaiseTo(reserved_warmup_max, reserved);
        } else {
          RaiseTo(reserved_after_max, reserved);
          const bool first = rss_after_warmup.load() == 0;
          if (first || f % 256 == 0 || f + 1 == frames) {
            const size_t rss = ResidentBytes();
            if (first) rss_after_warmup.store(rss);
            RaiseTo(rss_after_max, rss);
          }
        }
      }
    }
    for (const Tagged& t : kept) {
      if (!Intact(t)) ++local_corrupted;
      alloc.pool_deallocate(t.data, t.size);
    }
    allocations.fetch_add(local_allocations, std::memory_order_relaxed);
    corrupted.fetch_add(local_corrupted, std::memory_order_relaxed);
  };
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) pool.emplace_back(body, i);
  for (std::thread& t : pool) t.join();
  FrameSoakResult r;
  r.frames = frames * static_cast<uint64_t>(threads);
  r.allocations = allocations.load();
  r.corrupted = corrupted.load();
  r.reserved_warmup_max = reserved_warmup_max.load();
  r.reserved_after_max = reserved_after_max.load();
  r.reserved_end = Reserved(alloc);
  r.rss_after_warmup = rss_after_warmup.load();
  r.rss_after_max = rss_after_max.load();
  r.rss_end = ResidentBytes();
  r.seconds = SecondsSince(start);
  return r;
}

ChurnResult SoakThreadChurn(SmartAlloc& alloc, int threads, int concurrent,
                            int warmup) {
  ChurnResult r;
  const auto start = std::chrono::steady_clock::now();
  auto body = [&alloc](int i) {
    alloc.begin_frame();
    auto* frame = static_cast<unsigned char*>(alloc.frame_allocate(10000));
    std::memset(frame, i & 0xff, 10000);
    void* kept = alloc.pool_allocate(64);
    alloc.pool_free(alloc.pool_alloc<int64_t>(i));
    alloc.pool_deallocate(kept, 64);
    alloc.end_frame();
  };
  for (int started = 0; started < threads;) {
    std::vector<std::thread> batch;
    const int n = std::min(concurrent, threads - started);
    for (int j = 0; j < n; ++j) batch.emplace_back(body, started + j);
    for (std::thread& t : batch) t.join();
    const bool warm = started < warmup && started + n >= warmup;
    started += n;
    if (warm) {
      r.reserved_after_warmup = Reserved(alloc);
      r.rss_after_warmup = ResidentBytes();
    }
  }
  const AllocStats stats = alloc.stats();
  r.threads = static_cast<uint64_t>(threads);
  r.exited_threads = stats.exited_threads;
  r.live_threads = stats.live_threads;
  r.reserved_end = Reserved(alloc);
  r.rss_end = ResidentBytes();
  r.seconds = SecondsSince(start);
  return r;
}

namespace {

// What a producer writes at the start of each block.
struct Header {
  uint32_t producer;
  uint32_t size;
  uint64_t sequence;
  uint64_t check;
};
static_assert(sizeof(Header) == 24, "the smallest block holds a header");

uint64_t Check(uint32_t producer, uint64_t sequence, uint32_t size) {
  uint64_t x = (uint64_t{producer} << 40) ^ sequence ^ (uint64_t{size} << 20);
  x *= 0x9E3779B97F4A7C15ull;
  return x ^ (x >> 31);
}

// A bounded multi-producer multi-consumer queue. std::mutex and a condition
// variable: alloc_internal::Mutex has no waits (mutex.h), and both are
// visible to TSan.
class Queue {
 public:
  explicit Queue(size_t capacity) : capacity_(capacity) {}
  void Push(Header* h) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_; });
    items_.push_back(h);
    not_empty_.notify_one();
  }
  // nullptr once closed and drained.
  Header* Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return nullptr;
    Header* h = items_.front();
    items_.pop_front();
    not_full_.notify_one();
    return h;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Header*> items_;
  bool closed_ = false;
};

}  // namespace

PoolSoakResult SoakPools(SmartAlloc& alloc, int pairs, uint64_t blocks) {
  const auto start = std::chrono::steady_clock::now();
  Queue queue(1024);
  const size_t total = static_cast<size_t>(pairs) * blocks;
  std::unique_ptr<std::atomic<uint8_t>[]> seen(
      new std::atomic<uint8_t>[total]());
  std::atomic<uint64_t> corrupted{0};
  std::atomic<int> producers_left{pairs};
  auto produce = [&](uint32_t producer) {
    for (uint64_t seq = 0; seq < blocks; ++seq) {
      const auto size =
          static_cast<uint32_t>(24 + (seq * 37 + producer * 11) % 2024);
      auto* h = static_cast<Header*>(alloc.pool_allocate(size));
      *h = Header{producer, size, seq, Check(producer, seq, size)};
      auto* payload = reinterpret_cast<unsigned char*>(h + 1);
      std::memset(payload, static_cast<int>(seq & 0xff), size - sizeof(Header));
      queue.Push(h);
    }
    if (producers_left.fetch_sub(1) == 1) queue.Close();
  };
  auto consume = [&] {
    uint64_t bad = 0;
    while (Header* h = queue.Pop()) {
      const Header got = *h;
      bool ok = got.producer < static_cast<uint32_t>(pairs) &&
                got.sequence < blocks && got.size >= sizeof(Header) &&
                got.check == Check(got.producer, got.sequence, got.size);
      if (ok) {
        const auto* payload = reinterpret_cast<const unsigned char*>(h + 1);
        for (size_t i = 0; i < got.size - sizeof(Header); ++i) {
          if (payload[i] != (got.sequence & 0xff)) {
            ok = false;
            break;
          }
        }
      }
      if (ok) {
        seen[got.producer * blocks + got.sequence].fetch_add(
            1, std::memory_order_relaxed);
        alloc.pool_deallocate(h, got.size);
      } else {
        ++bad;  // Its size is unknown: leaked on purpose (counted).
      }
    }
    corrupted.fetch_add(bad, std::memory_order_relaxed);
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < pairs; ++i) {
    threads.emplace_back(produce, static_cast<uint32_t>(i));
    threads.emplace_back(consume);
  }
  for (std::thread& t : threads) t.join();
  PoolSoakResult r;
  r.sent = total;
  for (size_t i = 0; i < total; ++i) {
    const uint8_t n = seen[i].load(std::memory_order_relaxed);
    if (n == 0) ++r.lost;
    if (n >= 1) ++r.received;
    if (n > 1) r.duplicated += n - 1;
  }
  r.corrupted = corrupted.load();
  const AllocStats stats = alloc.stats();
  r.pool_allocations = stats.pool.allocations;
  r.pool_frees = stats.pool.frees;
  for (const PoolClassStats& c : stats.pools.classes)
    r.blocks_out += c.blocks_out;
  r.seconds = SecondsSince(start);
  return r;
}

}  // namespace alloc_internal
}  // namespace framealloc
