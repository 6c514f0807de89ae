// A program with two deliberate memory bugs for memcheck to find when the
// library is built with --config=valgrind: a read of frame memory after the
// frame ended, and a read of a pool block after it was freed. Run by
// //alloc:valgrind_test under valgrind; not a tool for users.
#include <cstdio>

#include "alloc/smart_alloc.h"

int main() {
  framealloc::SmartAlloc alloc;
  int* frame_value = alloc.frame_alloc<int>(42);
  alloc.end_frame();
  // Bug 1: the frame is over.
  std::printf("frame value after its frame: %d\n", *frame_value);

  int64_t* pooled = alloc.pool_alloc<int64_t>(7);
  alloc.pool_free(pooled);
  // Bug 2: the block is back in the pool.
  std::printf("pool value after free: %lld\n", static_cast<long long>(*pooled));
  return 0;
}
