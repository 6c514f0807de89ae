// libFuzzer target: one SmartAlloc over a source that fails on demand,
// driven by a sequence of operations on the calling thread and a helper
// thread, checked against fuzz_model.h's reference model.
//
// For: finding inputs that make SmartAlloc hand out overlapping or
// misaligned memory, lose a live block's contents (frame memory before its
// frames in flight are over, pool and heap memory before its free), release
// frame memory too early, lose or duplicate a pool block freed on another
// thread, miscount (statistics and the global budget against the model), or
// abort where a try_* call must return null or a never-null call must report.
// The configuration (frames in flight, chunk sizes, pool batch and caches,
// debug aids, a global budget) comes from the input's first bytes.
// Operations: frame_allocate / try_frame_allocate, pool_allocate /
// try_pool_allocate (8 B to past 4 KiB, so the heap fallback too),
// pool_deallocate on this thread and on the helper, pool blocks allocated on
// the helper and freed here, try_heap_alloc / heap_free, invalid requests,
// begin_frame / end_frame, scoped arenas, marks and ArenaScopes on the frame
// arena, source faults and their end, release_empty_pool_pages (after
// flush_thread_pool_cache or not), statistics.
// Not for: budgets per tag, tracing or the STL adapters.
//
// Build and run: see docs/reliability.md (`--config=fuzz`).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "alloc/fuzz/fuzz_model.h"
#include "alloc/internal/test_util.h"
#include "alloc/smart_alloc.h"

namespace framealloc {
namespace fuzz_internal {
namespace {

constexpr int kFrame = 0;
constexpr int kPool = 1;  // pool_allocate (or its heap fallback).
constexpr int kHeap = 2;  // heap_alloc.
constexpr int kScoped = 3;

struct OpenMark {
  ArenaMark mark;
  std::unique_ptr<ArenaScope> scope;
  uint64_t first_seed;
};

class Driver {
 public:
  explicit Driver(FuzzInput* in) : in_(in) {
    const uint8_t a = in_->Byte();
    const uint8_t b = in_->Byte();
    const uint8_t c = in_->Byte();
    frames_in_flight_ = 1 + a % 3;
    AllocConfig config;
    config.set_source(&source_).set_frames_in_flight(frames_in_flight_);
    const size_t initial = size_t{1024} << ((a >> 2) % 3);
    config.arena = FrameArenaOptions()
                       .set_initial_chunk_size(initial)
                       .set_max_chunk_size(initial << ((a >> 4) % 3))
                       .set_retain_bytes((b % 3) * 2 * initial);
    config.pool =
        PoolOptions()
            .set_page_size(size_t{16} << 10)
            .set_batch(1 + (b >> 2) % 16)
            .set_cache_bytes((b >> 6) == 0 ? 0 : size_t{512} << (b >> 6))
            .set_transfer_batches(c % 5);
    config.cache = ChunkCacheOptions()
                       .set_max_cached_bytes((c & 8) ? 0 : size_t{1} << 20)
                       .set_trim_window_epochs((c >> 4) % 3);
    config.debug = DebugOptions()
                       .set_fill_patterns((c >> 6) & 1)
                       .set_canaries((c >> 7) & 1)
                       .set_track_allocations(((c >> 6) & 3) == 3);
    if (a & 0x40) {
      budget_ = size_t{64} << 10 << ((a >> 7) * 4);
      config.set_global_budget(budget_);
    }
    alloc_ = SmartAlloc::Create(config).value();
  }

  void Run() {
    for (int steps = 0; !in_->done() && steps < 4096; ++steps) Step();
    Finish();
  }

 private:
  SmartAlloc& a() { return *alloc_; }

  // Bytes a budget counts for the model's live blocks, plus the frame bytes
  // charged until their frame's memory goes (a rewind does not refund).
  size_t Charged() const {
    size_t sum = 0;
    for (const auto& [frame, bytes] : frame_charges_) sum += bytes;
    return sum + pool_heap_bytes_;
  }
  // Whether a budget may refuse `size` more bytes now.
  bool BudgetMayRefuse(size_t size) const {
    return budget_ != 0 && Charged() + size > budget_;
  }
  // A null from a try_* call is correct only when the source is failing or
  // a budget refuses.
  // `armed`: whether a source fault could have hit the call (read right
  // after it).
  void ExpectNullAllowed(const char* what, size_t size, size_t alignment,
                         bool armed) {
    FUZZ_CHECK(armed || BudgetMayRefuse(size),
               "%s(%zu, %zu) returned null with no fault armed and budget "
               "room (%zu of %zu charged)",
               what, size, alignment, Charged(), budget_);
  }

  size_t PoolSize() {
    const uint8_t pick = in_->Byte();
    if (pick < 200) return in_->U16() % 4097;
    return 4096 + in_->U16();  // The heap fallback.
  }

  void AddFrame(void* p, size_t size, size_t alignment) {
    live_.Add(p, size, alignment, &a().frame_arena(), kFrame, frame_);
    frame_charges_[frame_] += size;
    ++frame_allocations_;
  }
  void AddPool(void* p, size_t size, size_t alignment) {
    live_.Add(p, size, alignment, nullptr, kPool);
    pool_heap_bytes_ += size;
    ++pool_heap_allocations_;
  }
  void FreePool(void* p) {
    const LiveBlock b = live_.Remove(p);
    pool_heap_bytes_ -= b.size;
    ++pool_heap_frees_;
  }

  // Blocks of the current frame arena registered since `first`.
  void DropSince(uint64_t first) {
    const void* arena = &a().frame_arena();
    live_.RemoveIf([&](const LiveBlock& b) {
      return b.kind == kFrame && b.owner == arena && b.seed >= first;
    });
  }
  void CloseMarks() {
    while (!marks_.empty()) {
      OpenMark& m = marks_.back();
      DropSince(m.first_seed);  // Checked while the memory is still held.
      if (m.scope != nullptr) {
        m.scope.reset();
      } else {
        FUZZ_CHECK(a().frame_arena().Rewind(m.mark).ok(), "rewind failed");
      }
      marks_.pop_back();
    }
  }

  void Step() {
    const uint8_t raw = in_->Byte();
    uint8_t op = raw % 20;
    if (!live_.HasRoom()) op = (op & 1) ? 7 : 12;  // Free or end a frame.
    FUZZ_TRACE("op %d (%zu live, frame %llu)", op, live_.size(),
               static_cast<unsigned long long>(frame_));
    switch (op) {
      case 0:
      case 1: {
        const size_t size = in_->Size(10);
        const size_t alignment = in_->Alignment(12);
        void* p = a().try_frame_allocate(size, alignment);
        if (p == nullptr) {
          ExpectNullAllowed("try_frame_allocate", size, alignment,
                            source_.armed());
        } else {
          AddFrame(p, size, alignment);
        }
        break;
      }
      case 2: {
        const size_t size = in_->Size(10);
        const size_t alignment = in_->Alignment(12);
        const bool may_fail = source_.armed() || BudgetMayRefuse(size);
        if (may_fail) handler_.ArmThrow();
        try {
          void* p = a().frame_allocate(size, alignment);
          handler_.Disarm();
          AddFrame(p, size, alignment);
        } catch (const FatalReport& r) {
          FUZZ_CHECK(may_fail, "frame_allocate reported kind %d",
                     static_cast<int>(r.kind));
          ++expected_reports_;
        }
        break;
      }
      case 3: {  // Invalid requests: null from try_*, a report otherwise.
        const BadRequest bad = PickBadRequest(in_->Byte());
        FUZZ_CHECK(a().try_frame_allocate(bad.size, bad.alignment) == nullptr,
                   "try_frame_allocate(%zu, %zu) succeeded", bad.size,
                   bad.alignment);
        FUZZ_CHECK(a().try_pool_allocate(bad.size, bad.alignment) == nullptr,
                   "try_pool_allocate(%zu, %zu) succeeded", bad.size,
                   bad.alignment);
        FUZZ_CHECK(a().try_heap_alloc(bad.size, bad.alignment) == nullptr,
                   "try_heap_alloc(%zu, %zu) succeeded", bad.size,
                   bad.alignment);
        for (int which = 0; which < 2; ++which) {
          handler_.ArmThrow();
          bool threw = false;
          try {
            if (which == 0) {
              a().frame_allocate(bad.size, bad.alignment);
            } else {
              a().pool_allocate(bad.size, bad.alignment);
            }
          } catch (const FatalReport& r) {
            // Never a budget refusal, whatever the budgets: the request is
            // checked before anything is charged.
            threw = r.kind == ErrorKind::kInvalidArgument;
          }
          handler_.Disarm();
          FUZZ_CHECK(threw,
                     "never-null call %d with (%zu, %zu) did not "
                     "report an invalid argument",
                     which, bad.size, bad.alignment);
          ++expected_reports_;
        }
        live_.CheckAll();
        break;
      }
      case 4:
      case 5: {
        const size_t size = PoolSize();
        const size_t alignment = in_->Alignment(7);
        void* p = a().try_pool_allocate(size, alignment);
        if (p == nullptr) {
          ExpectNullAllowed("try_pool_allocate", size, alignment,
                            source_.armed());
        } else {
          AddPool(p, size, alignment);
        }
        break;
      }
      case 6: {
        const size_t size = PoolSize();
        const size_t alignment = in_->Alignment(7);
        const bool may_fail = source_.armed() || BudgetMayRefuse(size);
        if (may_fail) handler_.ArmThrow();
        try {
          void* p = a().pool_allocate(size, alignment);
          handler_.Disarm();
          AddPool(p, size, alignment);
        } catch (const FatalReport& r) {
          FUZZ_CHECK(may_fail, "pool_allocate reported kind %d",
                     static_cast<int>(r.kind));
          ++expected_reports_;
        }
        break;
      }
      case 7: {  // Free a pool block here.
        void* p = live_.Pick(
            in_->U16(), [](const LiveBlock& b) { return b.kind == kPool; });
        if (p == nullptr) break;
        const LiveBlock b = live_.Get(p);
        FreePool(p);
        a().pool_deallocate(p, b.size, b.alignment);
        break;
      }
      case 8: {  // Free up to 8 pool blocks on the helper thread.
        const int n = 1 + in_->Byte() % 8;
        std::vector<LiveBlock> blocks;
        std::vector<void*> ptrs;
        for (int k = 0; k < n; ++k) {
          void* p = live_.Pick(
              in_->U16(), [](const LiveBlock& b) { return b.kind == kPool; });
          if (p == nullptr) break;
          blocks.push_back(live_.Get(p));
          ptrs.push_back(p);
          FreePool(p);
        }
        SmartAlloc* alloc = alloc_.get();
        HelperThread::Get().Run([&] {
          for (size_t k = 0; k < ptrs.size(); ++k) {
            alloc->pool_deallocate(ptrs[k], blocks[k].size,
                                   blocks[k].alignment);
          }
        });
        break;
      }
      case 9: {  // The helper allocates; the blocks come here.
        const int n = 1 + in_->Byte() % 8;
        const size_t size = PoolSize();
        const size_t alignment = in_->Alignment(7);
        std::vector<std::pair<void*, bool>> got;
        SmartAlloc* alloc = alloc_.get();
        HelperThread::Get().Run([&] {
          for (int k = 0; k < n; ++k) {
            void* p = alloc->try_pool_allocate(size, alignment);
            got.emplace_back(p, source_.armed());
          }
        });
        for (auto [p, armed] : got) {
          if (p == nullptr) {
            ExpectNullAllowed("helper try_pool_allocate", size, alignment,
                              armed);
          } else {
            AddPool(p, size, alignment);
          }
        }
        break;
      }
      case 10: {
        const size_t size = in_->Size(10);
        const size_t alignment = in_->Alignment(12);
        void* p = a().try_heap_alloc(size, alignment);
        if (p == nullptr) {
          ExpectNullAllowed("try_heap_alloc", size, alignment, source_.armed());
        } else {
          live_.Add(p, size, alignment, nullptr, kHeap);
          pool_heap_bytes_ += size;
          ++pool_heap_allocations_;
        }
        break;
      }
      case 11: {  // heap_free, here or on the helper.
        void* p = live_.Pick(
            in_->U16(), [](const LiveBlock& b) { return b.kind == kHeap; });
        if (p == nullptr) break;
        FreePool(p);
        if (in_->Byte() & 1) {
          SmartAlloc* alloc = alloc_.get();
          HelperThread::Get().Run([&] { alloc->heap_free(p); });
        } else {
          a().heap_free(p);
        }
        break;
      }
      case 12:
      case 13: {  // End the frame: frame N - frames_in_flight + 1 goes.
        CloseMarks();
        if (in_->Byte() & 1) a().begin_frame();
        const uint64_t dying = frame_ + 1 - frames_in_flight_;
        if (frame_ + 1 >= static_cast<uint64_t>(frames_in_flight_)) {
          live_.RemoveIf([&](const LiveBlock& b) {
            return b.kind == kFrame && b.frame == dying;
          });
          frame_charges_.erase(dying);
        }
        a().end_frame();
        ++frame_;
        live_.CheckAll();  // Younger frames, pools, heap: all intact.
        break;
      }
      case 14: {  // Scoped arenas: open, allocate, close.
        const uint8_t what = in_->Byte() % 4;
        if (what == 0 && scoped_.size() < 3) {
          scoped_.push_back(a().new_scoped_arena());
        } else if (what == 3 && !scoped_.empty()) {
          const size_t k = in_->Byte() % scoped_.size();
          const FrameArena* arena = scoped_[k].get();
          live_.RemoveIf([&](const LiveBlock& b) {
            return b.kind == kScoped && b.owner == arena;
          });
          scoped_.erase(scoped_.begin() + static_cast<ptrdiff_t>(k));
        } else if (!scoped_.empty()) {
          FrameArena& arena = *scoped_[in_->Byte() % scoped_.size()];
          const size_t size = in_->Size(10);
          const size_t alignment = in_->Alignment(12);
          void* p = arena.TryAllocate(size, alignment);
          if (p == nullptr) {
            FUZZ_CHECK(source_.armed(), "scoped TryAllocate(%zu, %zu) failed",
                       size, alignment);
          } else {
            live_.Add(p, size, alignment, &arena, kScoped);
          }
        }
        break;
      }
      case 15: {  // A mark or scope on the frame arena, or a rewind.
        if ((in_->Byte() & 1) && marks_.size() < 8) {
          OpenMark m;
          m.first_seed = live_.next_seed();
          if (in_->Byte() & 1) {
            m.scope = std::make_unique<ArenaScope>(&a().frame_arena());
          } else {
            m.mark = a().frame_arena().Mark();
          }
          marks_.push_back(std::move(m));
        } else if (!marks_.empty()) {
          OpenMark& m = marks_.back();
          DropSince(m.first_seed);
          if (m.scope != nullptr) {
            m.scope.reset();
          } else {
            FUZZ_CHECK(a().frame_arena().Rewind(m.mark).ok(), "rewind failed");
          }
          marks_.pop_back();
        }
        break;
      }
      case 16: {  // Faults.
        const uint8_t n = in_->Byte();
        if (n & 0x80) {
          source_.StopFailing();
          void* p = a().try_pool_allocate(8);
          if (p == nullptr) {
            ExpectNullAllowed("try_pool_allocate after the fault", 8, 8, false);
          } else {
            AddPool(p, 8, alignof(std::max_align_t));
          }
        } else {
          source_.FailNext(n % 8 == 7 ? -1 : 1 + n % 4);
        }
        break;
      }
      case 17:
        // Every other time after giving back this thread's cached blocks
        // (and its raised limits): then the pages they held may go too. (The
        // op byte's quotient decides, so no byte of the input shifts.)
        if ((raw / 20) & 1) a().flush_thread_pool_cache();
        a().release_empty_pool_pages();
        live_.CheckAll();
        break;
      default:
        CheckStats();
        break;
    }
  }

  // The statistics against the model: nothing lost, nothing counted twice.
  void CheckStats() {
    live_.CheckAll();
    const AllocStats s = a().stats();
    FUZZ_CHECK(s.frame.allocations == frame_allocations_,
               "%llu frame allocations counted, %llu made",
               static_cast<unsigned long long>(s.frame.allocations),
               static_cast<unsigned long long>(frame_allocations_));
    const uint64_t allocs = s.pool.allocations + s.heap.allocations;
    const uint64_t frees = s.pool.frees + s.heap.frees;
    FUZZ_CHECK(allocs == pool_heap_allocations_ && frees == pool_heap_frees_,
               "pool+heap: %llu allocations and %llu frees counted, %llu and "
               "%llu made",
               static_cast<unsigned long long>(allocs),
               static_cast<unsigned long long>(frees),
               static_cast<unsigned long long>(pool_heap_allocations_),
               static_cast<unsigned long long>(pool_heap_frees_));
    const int64_t live = s.pool.live_bytes() + s.heap.live_bytes();
    FUZZ_CHECK(live == static_cast<int64_t>(pool_heap_bytes_),
               "%lld live pool+heap bytes counted, %zu in the model",
               static_cast<long long>(live), pool_heap_bytes_);
    if (budget_ != 0) {
      FUZZ_CHECK(s.global_budget_used == Charged(),
                 "global budget uses %zu bytes, the model %zu",
                 s.global_budget_used, Charged());
    }
  }

  void Finish() {
    source_.StopFailing();
    CloseMarks();
    CheckStats();
    // Checked and freed; frame and scoped blocks, checked here too, go
    // with their arenas below.
    for (auto& [p, b] : live_.TakeAll()) {
      if (b.kind == kHeap) {
        a().heap_free(p);
      } else if (b.kind == kPool) {
        a().pool_deallocate(p, b.size, b.alignment);
      } else {
        continue;
      }
      pool_heap_bytes_ -= b.size;
      ++pool_heap_frees_;
    }
    CheckStats();
    scoped_.clear();
    alloc_.reset();
    FUZZ_CHECK(source_.stats().bytes_outstanding == 0,
               "%zu bytes never returned to the source",
               source_.stats().bytes_outstanding);
    FUZZ_CHECK(handler_.reports() == expected_reports_,
               "%zu error reports, expected %zu; last: %s", handler_.reports(),
               expected_reports_, handler_.last_message().c_str());
  }

  FuzzInput* const in_;
  ReportHandler handler_;
  size_t expected_reports_ = 0;
  alloc_internal::FailingSource source_;
  std::unique_ptr<SmartAlloc> alloc_;
  int frames_in_flight_ = 1;
  size_t budget_ = 0;
  uint64_t frame_ = 0;                        // Frames this thread has ended.
  std::map<uint64_t, size_t> frame_charges_;  // Frame -> bytes charged.
  size_t pool_heap_bytes_ = 0;
  uint64_t frame_allocations_ = 0;
  uint64_t pool_heap_allocations_ = 0;
  uint64_t pool_heap_frees_ = 0;
  std::vector<std::unique_ptr<FrameArena>> scoped_;
  std::vector<OpenMark> marks_;
  LiveBlocks live_;
};

}  // namespace
}  // namespace fuzz_internal
}  // namespace framealloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  framealloc::fuzz_internal::FuzzInput in(data, size);
  framealloc::fuzz_internal::Driver driver(&in);
  driver.Run();
  return 0;
}
