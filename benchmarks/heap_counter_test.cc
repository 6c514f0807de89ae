// The counting operator new of //benchmarks:heap_counter keeps operator
// new's contract: aligned blocks of the size asked for, counted; and a
// request it cannot serve fails (std::bad_alloc, or nullptr for the nothrow
// forms), never a smaller block. Not for: the counts of the suite's runs
// (arena_steady_state_test and the suite's own tests use them).
#include "benchmarks/heap_counter.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "gtest/gtest.h"

namespace framealloc::sim {
namespace {

// Keeps the compiler from folding or eliding a call to operator new whose
// result is only compared and freed.
void* Escape(void* p) {
  asm volatile("" : "+r"(p) : : "memory");
  return p;
}

TEST(HeapCounterTest, AnAlignedRequestIsAlignedAndCounted) {
  const HeapCounts before = ReadHeapCounts();
  void* p = Escape(::operator new (100, std::align_val_t{64}));
  const HeapCounts used = ReadHeapCounts() - before;
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  std::memset(p, 1, 100);
  ::operator delete (p, std::align_val_t{64});
  EXPECT_EQ(used.allocations, 1u);
  EXPECT_EQ(used.bytes, 100u);
}

// Regression (review): the size was rounded up to the alignment with
// (size + alignment - 1), which wraps near SIZE_MAX: a request of about
// 2^64 bytes got a 64-byte block.
TEST(HeapCounterTest, AHugeAlignedRequestFailsInsteadOfWrapping) {
  for (const size_t alignment : {size_t{64}, size_t{4096}}) {
    const std::align_val_t al{alignment};
    for (const size_t size : {SIZE_MAX, SIZE_MAX - 8, SIZE_MAX - alignment + 2,
                              SIZE_MAX - alignment + 1}) {
      SCOPED_TRACE(testing::Message()
                   << "size " << size << " alignment " << alignment);
      for (const bool array : {false, true}) {
        void* p = nullptr;
        bool threw = false;
        try {
          p = Escape(array ? ::operator new[](size, al)
                           : ::operator new(size, al));
        } catch (const std::bad_alloc&) {
          threw = true;
        }
        EXPECT_TRUE(threw) << (array ? "new[]" : "new");
        EXPECT_EQ(p, nullptr);
        if (p != nullptr) ::operator delete(p, al);
      }
      void* q = Escape(::operator new(size, al, std::nothrow));
      EXPECT_EQ(q, nullptr);
      if (q != nullptr) ::operator delete(q, al);
      void* r = Escape(::operator new[](size, al, std::nothrow));
      EXPECT_EQ(r, nullptr);
      if (r != nullptr) ::operator delete[](r, al);
    }
  }
}

}  // namespace
}  // namespace framealloc::sim
