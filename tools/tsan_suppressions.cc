// ThreadSanitizer suppressions for uninstrumented system libraries.
//
// For: test binaries that run oneTBB under TSan. libtbb from Debian is not
// built with -fsanitize=thread, so TSan cannot see its synchronization and
// reports false races inside it. Not for: any report in framealloc's own
// code; fix those.

extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:libtbb.so.12\n"
         "race:tbb::detail::\n";
}
