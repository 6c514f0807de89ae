// Maps memory poisoning onto AddressSanitizer when the build has it.
//
// For: arenas and caches that hand memory out and take it back without
// malloc/free, so that ASan still reports a use after release. Not for:
// general leak or race annotations. Without ASan every macro compiles to
// nothing, so hot paths pay nothing in normal builds.
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
#else
#define FRAMEALLOC_HAS_ASAN 0
#define FRAMEALLOC_POISON(p, n) ((void)(p), (void)(n))
#define FRAMEALLOC_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif  // ALLOC_INTERNAL_SANITIZER_H_
