"""Compiler flags for framealloc's own code.

Every cc_* target in this repository takes its copts from here, so warnings
are errors on our code only; system libraries come from /usr/include as
system headers, so their warnings never reach us.
"""

FRAMEALLOC_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wnon-virtual-dtor",
    "-Wno-sign-compare",
    "-Wno-unused-parameter",
]

# Tests and benchmarks: same warnings; gtest/benchmark macros need no extras.
FRAMEALLOC_TEST_COPTS = FRAMEALLOC_COPTS
