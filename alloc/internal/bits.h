// Bit and overflow helpers shared by the allocators in alloc/.
//
// For: alignment arithmetic and overflow-checked size computations on hot
// paths (all constexpr, all inline). Not for: anything users call; the
// public headers wrap these with their own contracts.
#ifndef ALLOC_INTERNAL_BITS_H_
#define ALLOC_INTERNAL_BITS_H_

#include <cstddef>
#include <cstdint>

namespace framealloc {

// Minimal mode (--config=minimal, -DFRAMEALLOC_MINIMAL): statistics and
// checks compiled out entirely, to measure what the bookkeeping costs.
#if defined(FRAMEALLOC_MINIMAL)
inline constexpr bool kMinimalBuild = true;
#else
inline constexpr bool kMinimalBuild = false;
#endif

namespace alloc_internal {

// True for 1, 2, 4, ...; false for 0 and every non-power.
constexpr bool IsPowerOfTwo(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

// Bytes to add to `address` to reach the next multiple of `alignment`.
// REQUIRES: IsPowerOfTwo(alignment). Never overflows.
constexpr size_t AlignmentPadding(uintptr_t address, size_t alignment) {
  return static_cast<size_t>(0 - address) & (alignment - 1);
}

// Rounds `x` up to a multiple of `alignment`; returns false on overflow.
// REQUIRES: IsPowerOfTwo(alignment).
constexpr bool AlignUp(size_t x, size_t alignment, size_t* out) {
  const size_t padded = x + (alignment - 1);
  if (padded < x) return false;
  *out = padded & ~(alignment - 1);
  return true;
}

// `a * b`, or false when the product does not fit in size_t.
constexpr bool CheckedMul(size_t a, size_t b, size_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// Smallest power of two >= x (x = 0 gives 1). REQUIRES: x <= 2^63.
constexpr size_t NextPowerOfTwo(size_t x) {
  return x <= 1 ? 1 : size_t{1} << (64 - __builtin_clzll(x - 1));
}

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_BITS_H_
