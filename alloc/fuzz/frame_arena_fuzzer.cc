// libFuzzer target: two FrameArenas sharing one ChunkCache over a source
// that fails on demand, driven by a sequence of operations and checked
// against fuzz_model.h's reference model.
//
// For: finding inputs that make an arena hand out overlapping or misaligned
// memory, lose the contents of a live block, run the wrong number of
// destructors at a reset or rewind, return null for a request it should
// serve, or misreport (or abort on) an invalid request or a failed source.
// Operations: allocate (Try and never-null, sizes 0 B to 255 KiB, alignments
// 1 to 8 KiB), objects with destructors, invalid requests (bad alignment,
// sizes past any block, n * size overflow), marks and ArenaScopes with
// rewinds in and out of order, resets with and without open marks, source
// faults (a window of failing calls, or a dry source) and their end. Not
// for: pools or SmartAlloc (their own fuzzers) or timing.
//
// Build and run: see docs/reliability.md (`--config=fuzz`).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "alloc/chunk_cache.h"
#include "alloc/frame_arena.h"
#include "alloc/fuzz/fuzz_model.h"
#include "alloc/internal/test_util.h"

namespace framealloc {
namespace fuzz_internal {
namespace {

// An object with a destructor, counted; its bytes carry the model's pattern
// (neither constructor nor destructor touches them).
struct Tracked {
  Tracked() { ++constructed; }
  ~Tracked() { ++destroyed; }
  unsigned char bytes[40];
  static inline uint64_t constructed = 0;
  static inline uint64_t destroyed = 0;
};

constexpr int kPlainBlock = 0;
constexpr int kTrackedObject = 1;

// An open mark of one arena: a plain mark or an ArenaScope, and the first
// seed registered after it.
struct OpenMark {
  ArenaMark mark;
  std::unique_ptr<ArenaScope> scope;
  uint64_t first_seed;
};

struct ArenaState {
  std::unique_ptr<FrameArena> arena;
  std::vector<OpenMark> marks;
  uint64_t nulls = 0;  // Try* nulls the model expects in failed_allocations.
  ArenaMark stale;     // A mark already rewound (for the stale-mark check).
};

class Driver {
 public:
  Driver(FuzzInput* in) : in_(in) {
    const uint8_t a = in_->Byte();
    const uint8_t b = in_->Byte();
    FrameArenaOptions options;
    options.initial_chunk_size = size_t{1024} << (a % 4);
    options.max_chunk_size = options.initial_chunk_size << ((a >> 2) % 4);
    options.chunk_alignment = size_t{16} << ((a >> 4) % 9);
    options.retain_bytes = (b % 4) * 2 * options.initial_chunk_size;
    ChunkCacheOptions cache_options;
    cache_options.max_cached_bytes = (b & 4) ? 0 : size_t{1} << 20;
    cache_options.trim_window_epochs = (b >> 3) % 3 * 2;
    cache_ = std::make_unique<ChunkCache>(&source_, cache_options);
    for (ArenaState& s : arenas_) {
      s.arena = std::make_unique<FrameArena>(cache_.get(), options);
    }
  }

  void Run() {
    for (int steps = 0; !in_->done() && steps < 4096; ++steps) Step();
    Finish();
  }

 private:
  // Blocks the model holds for arena `i`.
  template <typename Pred>
  size_t RemoveFromArena(int i, Pred pred) {
    const FrameArena* arena = arenas_[i].arena.get();
    size_t tracked = 0;
    live_.RemoveIf([&](const LiveBlock& b) {
      if (b.owner != arena || !pred(b)) return false;
      if (b.kind == kTrackedObject) ++tracked;
      return true;
    });
    return tracked;
  }

  void Step() {
    const int i = in_->Byte() & 1;
    ArenaState& s = arenas_[i];
    FrameArena& arena = *s.arena;
    uint8_t op = in_->Byte() % 16;
    if (!live_.HasRoom() && (op <= 3 || op == 6 || op == 13)) op = 11;
    FUZZ_TRACE("arena %d op %d (%zu live)", i, op, live_.size());
    switch (op) {
      case 0:
      case 1:
      case 2: {  // TryAllocate a valid request.
        const size_t size = in_->Size(10);
        const size_t alignment = in_->Alignment(13);
        void* p = arena.TryAllocate(size, alignment);
        if (p == nullptr) {
          FUZZ_CHECK(source_.armed(),
                     "TryAllocate(%zu, %zu) failed with no "
                     "fault armed",
                     size, alignment);
          ++s.nulls;
        } else {
          live_.Add(p, size, alignment, &arena, kPlainBlock);
        }
        break;
      }
      case 3: {  // Allocate (never null) a valid request.
        const size_t size = in_->Size(10);
        const size_t alignment = in_->Alignment(13);
        const bool armed = source_.armed();
        if (armed) handler_.ArmThrow();
        try {
          void* p = arena.Allocate(size, alignment);
          handler_.Disarm();
          live_.Add(p, size, alignment, &arena, kPlainBlock);
        } catch (const FatalReport& r) {
          FUZZ_CHECK(armed && r.kind == ErrorKind::kOutOfMemory,
                     "Allocate reported kind %d", static_cast<int>(r.kind));
          ++expected_reports_;
        }
        break;
      }
      case 4: {  // An invalid request: null from Try, fatal from Allocate.
        const BadRequest bad = PickBadRequest(in_->Byte());
        FUZZ_CHECK(arena.TryAllocate(bad.size, bad.alignment) == nullptr,
                   "TryAllocate(%zu, %zu) succeeded", bad.size, bad.alignment);
        ++s.nulls;
        handler_.ArmThrow();
        bool threw = false;
        try {
          arena.Allocate(bad.size, bad.alignment);
        } catch (const FatalReport& r) {
          threw = r.kind == ErrorKind::kInvalidArgument;
        }
        handler_.Disarm();
        FUZZ_CHECK(threw,
                   "Allocate(%zu, %zu) did not report an invalid "
                   "argument",
                   bad.size, bad.alignment);
        ++expected_reports_;
        live_.CheckAll();  // Nothing lost.
        break;
      }
      case 5: {  // count * size overflows.
        const size_t count = (SIZE_MAX >> (in_->Byte() % 8)) / 2 + 1;
        FUZZ_CHECK(arena.TryAllocateN(count, 4, 8) == nullptr,
                   "TryAllocateN(%zu, 4) succeeded", count);
        ++s.nulls;
        FUZZ_CHECK(arena.TryAllocateArray<uint64_t>(count) == nullptr,
                   "TryAllocateArray(%zu) succeeded", count);
        ++s.nulls;
        break;
      }
      case 6: {  // An object whose destructor must run once.
        Tracked* t = arena.TryCreate<Tracked>();
        if (t == nullptr) {
          FUZZ_CHECK(source_.armed(), "TryCreate failed with no fault armed");
          ++s.nulls;
        } else {
          live_.Add(t, sizeof(Tracked), alignof(Tracked), &arena,
                    kTrackedObject);
        }
        break;
      }
      case 7: {  // A mark or a scope.
        if (s.marks.size() >= 12) break;
        OpenMark m;
        m.first_seed = live_.next_seed();
        if (in_->Byte() & 1) {
          m.scope = std::make_unique<ArenaScope>(&arena);
        } else {
          m.mark = arena.Mark();
        }
        s.marks.push_back(std::move(m));
        break;
      }
      case 8:
      case 9: {  // Rewind the newest mark (or close or rewind its scope).
        if (s.marks.empty()) break;
        OpenMark& m = s.marks.back();
        const uint64_t first = m.first_seed;
        // Checked while their memory is still held.
        const size_t tracked = RemoveFromArena(
            i, [&](const LiveBlock& b) { return b.seed >= first; });
        const uint64_t destroyed = Tracked::destroyed;
        bool keep_open = false;
        if (m.scope != nullptr) {
          if (in_->Byte() & 1) {
            FUZZ_CHECK(m.scope->Rewind().ok(), "ArenaScope::Rewind failed");
            keep_open = true;
            m.first_seed = live_.next_seed();
          } else {
            m.scope.reset();
          }
        } else {
          const absl::Status st = arena.Rewind(m.mark);
          FUZZ_CHECK(st.ok(), "Rewind of the newest mark: %s",
                     std::string(st.message()).c_str());
          s.stale = m.mark;
        }
        FUZZ_CHECK(
            Tracked::destroyed - destroyed == tracked,
            "rewind ran %llu destructors for %zu objects",
            static_cast<unsigned long long>(Tracked::destroyed - destroyed),
            tracked);
        if (!keep_open) s.marks.pop_back();
        break;
      }
      case 10: {  // Out-of-order and stale rewinds change nothing.
        const uint64_t destroyed = Tracked::destroyed;
        const size_t open = arena.open_marks();
        if (s.marks.size() >= 2 && s.marks.front().scope == nullptr) {
          FUZZ_CHECK(arena.Rewind(s.marks.front().mark).code() ==
                         absl::StatusCode::kFailedPrecondition,
                     "an out-of-order rewind was accepted");
        }
        FUZZ_CHECK(arena.Rewind(s.stale).code() ==
                       absl::StatusCode::kFailedPrecondition,
                   "a stale or unset mark was accepted");
        FUZZ_CHECK(arena.Rewind(arenas_[1 - i].stale).code() ==
                       absl::StatusCode::kFailedPrecondition,
                   "another arena's mark was accepted");
        FUZZ_CHECK(
            Tracked::destroyed == destroyed && arena.open_marks() == open,
            "a refused rewind changed the arena");
        live_.CheckAll();
        break;
      }
      case 11: {  // Reset, with open marks or after closing them.
        const bool misuse = !s.marks.empty() && (in_->Byte() % 4 == 0);
        if (!misuse) CloseMarks(i);
        const size_t tracked =
            RemoveFromArena(i, [](const LiveBlock&) { return true; });
        const uint64_t destroyed = Tracked::destroyed;
        const size_t reports = handler_.reports();
        arena.Reset();
        FUZZ_CHECK(
            Tracked::destroyed - destroyed == tracked,
            "reset ran %llu destructors for %zu objects",
            static_cast<unsigned long long>(Tracked::destroyed - destroyed),
            tracked);
        FUZZ_CHECK(arena.open_marks() == 0, "marks survived a reset");
        if (misuse) {
          FUZZ_CHECK(handler_.reports() == reports + 1,
                     "a reset with open marks was not reported");
          ++expected_reports_;
          // Scopes whose marks the reset discarded report at their close.
          for (OpenMark& m : s.marks) {
            if (m.scope != nullptr) ++expected_reports_;
          }
          while (!s.marks.empty()) s.marks.pop_back();  // Newest first.
        }
        break;
      }
      case 12: {  // Arm a fault window, or run the source dry.
        const uint8_t n = in_->Byte();
        source_.FailNext(n % 8 == 7 ? -1 : 1 + n % 4);
        break;
      }
      case 13: {  // The fault ends: the arena serves again.
        source_.StopFailing();
        const size_t size = in_->Size(10);
        void* p = arena.TryAllocate(size, 16);
        FUZZ_CHECK(p != nullptr,
                   "TryAllocate(%zu) failed after the fault "
                   "window",
                   size);
        live_.Add(p, size, 16, &arena, kPlainBlock);
        break;
      }
      case 14: {  // Owns() knows every live block of the arena.
        void* p = live_.Pick(in_->U16(), [&](const LiveBlock& b) {
          return b.owner == &arena && b.size != 0;
        });
        if (p != nullptr) {
          FUZZ_CHECK(arena.Owns(p), "arena does not own live block %p", p);
          FUZZ_CHECK(!arenas_[1 - i].arena->Owns(p),
                     "the other arena claims block %p", p);
        }
        break;
      }
      default: {  // Full check, and the failure count.
        live_.CheckAll();
        FUZZ_CHECK(
            arena.stats().failed_allocations == s.nulls,
            "failed_allocations %llu, expected %llu",
            static_cast<unsigned long long>(arena.stats().failed_allocations),
            static_cast<unsigned long long>(s.nulls));
        break;
      }
    }
  }

  // Closes arena i's marks and scopes, newest first, as a correct caller.
  void CloseMarks(int i) {
    ArenaState& s = arenas_[i];
    while (!s.marks.empty()) {
      OpenMark& m = s.marks.back();
      const uint64_t first = m.first_seed;
      RemoveFromArena(i, [&](const LiveBlock& b) { return b.seed >= first; });
      if (m.scope != nullptr) {
        m.scope.reset();
      } else {
        FUZZ_CHECK(s.arena->Rewind(m.mark).ok(), "closing rewind failed");
      }
      s.marks.pop_back();
    }
  }

  void Finish() {
    source_.StopFailing();
    live_.CheckAll();
    for (int i = 0; i < 2; ++i) {
      CloseMarks(i);
      const uint64_t destroyed = Tracked::destroyed;
      const size_t tracked =
          RemoveFromArena(i, [](const LiveBlock&) { return true; });
      arenas_[i].arena.reset();  // Runs the remaining destructors.
      FUZZ_CHECK(
          Tracked::destroyed - destroyed == tracked,
          "destroying the arena ran %llu destructors for %zu objects",
          static_cast<unsigned long long>(Tracked::destroyed - destroyed),
          tracked);
    }
    FUZZ_CHECK(live_.size() == 0, "%zu blocks left", live_.size());
    FUZZ_CHECK(cache_->stats().in_use_blocks == 0,
               "%zu blocks still acquired from the cache",
               cache_->stats().in_use_blocks);
    cache_.reset();
    FUZZ_CHECK(source_.stats().bytes_outstanding == 0,
               "%zu bytes never returned to the source",
               source_.stats().bytes_outstanding);
    FUZZ_CHECK(handler_.reports() == expected_reports_,
               "%zu error reports, expected %zu; last: %s", handler_.reports(),
               expected_reports_, handler_.last_message().c_str());
    FUZZ_CHECK(Tracked::constructed == Tracked::destroyed,
               "%llu objects constructed, %llu destroyed",
               static_cast<unsigned long long>(Tracked::constructed),
               static_cast<unsigned long long>(Tracked::destroyed));
  }

  FuzzInput* const in_;
  ReportHandler handler_;
  size_t expected_reports_ = 0;
  alloc_internal::FailingSource source_;
  std::unique_ptr<ChunkCache> cache_;
  ArenaState arenas_[2];
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
