// What a serial PhysicsWorld::Step does when something throws inside it: an
// out-of-memory report from the frame arena whose error handler throws (a
// user callback, alloc/error.h), or std::bad_alloc from the heap (this
// binary's operator new fails the call chosen by the test). The step must
// return a Status, as it does on the runtime where the jobs layer catches,
// free what the frame held (LeakSanitizer checks under --config=asan), and
// leave the world able to step again.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "alloc/memory_source.h"
#include "gtest/gtest.h"
#include "integration/physics/physics_world.h"

namespace {

// The operator new call that fails: counts down on every (non-aligned)
// throwing operator new; the one that takes it to 0 throws std::bad_alloc.
// Negative: none fails. Single-threaded use only (serial steps).
std::atomic<int64_t> g_fail_countdown{-1};
std::atomic<int64_t> g_news{0};

void* Allocate(size_t size) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  const int64_t left = g_fail_countdown.load(std::memory_order_relaxed);
  if (left > 0) {
    g_fail_countdown.store(left - 1, std::memory_order_relaxed);
    if (left == 1) throw std::bad_alloc();
  }
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

// Every non-aligned form, so that ASan sees malloc/free pairs throughout
// (the aligned forms stay the sanitizer's, paired with each other).
void* operator new(size_t size) { return Allocate(size); }
void* operator new[](size_t size) { return Allocate(size); }
void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return std::malloc(size == 0 ? 1 : size);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}

namespace framealloc {
namespace integration {
namespace {

PhysicsConfig SmallWorld() {
  return PhysicsConfig().set_bodies(300).set_slabs(2).set_seed(5);
}

void ThrowingHandler(const ErrorReport& report, void*) {
  throw std::runtime_error(report.message);
}

// Steps `w` once, turning an exception that leaves Step into a test failure
// (with its text) rather than a crash.
absl::Status StepCatching(PhysicsWorld& w, const StepOptions& options) {
  try {
    return w.Step(options);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "PhysicsWorld::Step threw: " << e.what();
  } catch (...) {
    ADD_FAILURE() << "PhysicsWorld::Step threw a non-std exception";
  }
  return absl::InternalError("threw");
}

// The frame arena's source refuses every chunk, and the error handler
// throws from the arena's out-of-memory report: Step returns Unknown with
// the report's text, and the next step (with memory) computes what a world
// that never failed computes.
TEST(PhysicsExceptionTest, AThrowingErrorHandlerInASerialArenaStepIsAStatus) {
  auto reference = PhysicsWorld::Create(SmallWorld());
  ASSERT_TRUE(reference.ok());
  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  ASSERT_TRUE((*reference)->Step(StepOptions::Arena(&arena)).ok());
  arena.Reset();

  auto world = PhysicsWorld::Create(SmallWorld());
  ASSERT_TRUE(world.ok());
  {
    alloc_internal::FailingSource dry;
    dry.FailNext(-1);
    ChunkCache dry_cache(&dry);
    FrameArena dry_arena(&dry_cache);
    ScopedErrorHandler throwing(&ThrowingHandler, nullptr);
    const absl::Status failed =
        StepCatching(**world, StepOptions::Arena(&dry_arena));
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnknown) << failed;
    EXPECT_NE(failed.message().find("failing source"), std::string::npos)
        << failed;
    dry_arena.Reset();
  }
  const absl::Status next = StepCatching(**world, StepOptions::Arena(&arena));
  EXPECT_TRUE(next.ok()) << next;
  arena.Reset();
  EXPECT_EQ((*world)->StateHash(), (*reference)->StateHash());
}

// std::bad_alloc at any one heap allocation of a serial heap step: Step
// returns Unknown, the frame's blocks, slabs and manifolds are freed (no
// leak under LeakSanitizer), and the next step computes what a world that
// never failed computes.
TEST(PhysicsExceptionTest, BadAllocAnywhereInASerialHeapStepIsAStatus) {
  auto reference = PhysicsWorld::Create(SmallWorld());
  ASSERT_TRUE(reference.ok());
  const int64_t before = g_news.load();
  ASSERT_TRUE((*reference)->Step(StepOptions::Heap()).ok());
  const int64_t news = g_news.load() - before;
  ASSERT_GT(news, 100);  // Every manifold is an object of its own.

  for (int64_t k = 1; k <= news; ++k) {
    SCOPED_TRACE(testing::Message()
                 << "operator new call " << k << " of " << news << " fails");
    auto world = PhysicsWorld::Create(SmallWorld());
    ASSERT_TRUE(world.ok());
    g_fail_countdown.store(k);
    const absl::Status failed = StepCatching(**world, StepOptions::Heap());
    const bool injected = g_fail_countdown.load() == 0;
    g_fail_countdown.store(-1);
    ASSERT_TRUE(injected);
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnknown) << failed;
    const absl::Status next = StepCatching(**world, StepOptions::Heap());
    EXPECT_TRUE(next.ok()) << next;
    EXPECT_EQ((*world)->StateHash(), (*reference)->StateHash());
  }
}

}  // namespace
}  // namespace integration
}  // namespace framealloc
