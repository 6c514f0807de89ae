// Calling user code (an error handler, an event callback) from library code
// that must finish what it is doing: an exception it throws is dropped.
#ifndef ALLOC_INTERNAL_NO_UNWIND_H_
#define ALLOC_INTERNAL_NO_UNWIND_H_

#include <cstdio>
#include <string_view>
#include <utility>

namespace framealloc::alloc_internal {

// Calls `fn()`. If it throws, says so on stderr, naming `what` (the user
// code called) and `where` (the library call it was called from), and
// returns as if it had not.
template <typename F>
void CallDroppingExceptions(std::string_view what, std::string_view where,
                            F&& fn) noexcept {
#if defined(__cpp_exceptions)
  try {
    std::forward<F>(fn)();
  } catch (...) {
    std::fprintf(stderr,
                 "framealloc: %.*s threw in %.*s, which cannot unwind; the "
                 "exception is dropped\n",
                 static_cast<int>(what.size()), what.data(),
                 static_cast<int>(where.size()), where.data());
  }
#else
  std::forward<F>(fn)();
#endif
}

}  // namespace framealloc::alloc_internal

#endif  // ALLOC_INTERNAL_NO_UNWIND_H_
