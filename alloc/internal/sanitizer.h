// Maps memory poisoning onto AddressSanitizer or Valgrind's memcheck.
//
// For: arenas, pools and caches that hand memory out and take it back
// without malloc/free, so that ASan (--config=asan) or memcheck
// (--config=valgrind, client requests) still report a use after release.
// Not for: general leak or race annotations. In other builds every macro
// compiles to nothing, so hot paths pay nothing.
#ifndef ALLOC_INTERNAL_SANITIZER_H_
#define ALLOC_INTERNAL_SANITIZER_H_

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define FRAMEALLOC_HAS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FRAMEALLOC_HAS_ASAN 1
#endif
#endif

#if defined(FRAMEALLOC_HAS_ASAN)
#include <sanitizer/asan_interface.h>
// Marks [p, p + n) unaddressable: a later access is an ASan report.
#define FRAMEALLOC_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
// Marks [p, p + n) addressable again.
#define FRAMEALLOC_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#elif defined(FRAMEALLOC_VALGRIND)
#define FRAMEALLOC_HAS_ASAN 0
#include <valgrind/memcheck.h>
// Memcheck: released memory is unaddressable; memory handed out again is
// addressable and keeps its contents' definedness (DEFINED, not UNDEFINED:
// pools read their free-list links through these macros).
#define FRAMEALLOC_POISON(p, n) ((void)VALGRIND_MAKE_MEM_NOACCESS((p), (n)))
#define FRAMEALLOC_UNPOISON(p, n) ((void)VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#else
#define FRAMEALLOC_HAS_ASAN 0
#define FRAMEALLOC_POISON(p, n) ((void)(p), (void)(n))
#define FRAMEALLOC_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif  // ALLOC_INTERNAL_SANITIZER_H_
