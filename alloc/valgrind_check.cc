// Workloads for memcheck when the library is built with --config=valgrind,
// run by //alloc:valgrind_test under valgrind; not a tool for users.
//
// With no argument: two deliberate memory bugs for memcheck to find, a read
// of frame memory after the frame ended and a read of a pool block after it
// was freed. With `clean`: frames, pools and the heap with every debug aid
// on (fill patterns, canaries, tracking) and no bug, for which memcheck
// must report nothing: the library's own writes into memory it has
// released (the released fill, say) must be invisible to it.
#include <cstdio>
#include <cstring>
#include <span>
#include <string>

#include "alloc/smart_alloc.h"

namespace {

int Bugs() {
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

int Clean() {
  framealloc::SmartAlloc alloc(
      framealloc::AllocConfig().set_frames_in_flight(2).set_debug(
          framealloc::DebugOptions()
              .set_fill_patterns(true)
              .set_canaries(true)
              .set_track_allocations(true)));
  size_t sum = 0;
  for (int frame = 0; frame < 8; ++frame) {
    alloc.begin_frame();
    std::span<int> ints = alloc.frame_array<int>(100);
    for (int& i : ints) i = frame;
    std::string* s = alloc.frame_alloc<std::string>(64, 'x');
    void* raw = alloc.frame_allocate(3000, 64);
    std::memset(raw, 1, 3000);
    int64_t* pooled = alloc.pool_alloc<int64_t>(frame);
    void* heap = alloc.heap_alloc(5000, 32);
    std::memset(heap, 2, 5000);
    sum += static_cast<size_t>(ints[99]) + s->size() +
           static_cast<size_t>(*pooled);
    alloc.pool_free(pooled);
    alloc.heap_free(heap);
    alloc.end_frame();  // Checks the canaries, fills the released memory.
  }
  std::printf("clean run: %zu\n", sum);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "clean") == 0) return Clean();
  return Bugs();
}
