// ThreadSanitizer suppressions for uninstrumented system libraries.
//
// For: test binaries that run oneTBB under TSan. libtbb from Debian is not
// built with -fsanitize=thread, so TSan cannot see its synchronization and
// reports false races inside it. Not for: any report in framealloc's own
// code; fix those.

extern "C" const char* __tsan_default_suppressions() {
  // race_top: only reports whose racing access is itself inside oneTBB
  // (its headers or the library); a race in a job body, which TBB merely
  // calls, is still reported.
  return "called_from_lib:libtbb.so.12\n"
         "race_top:/usr/include/oneapi/tbb/\n"
         "race_top:libtbb.so.12\n"
         // The auto partitioner's steal detection (no user code below it).
         "race:tbb::detail::d1::dynamic_grainsize_mode\n"
         // ...and its tree and wait nodes, constructed in memory TBB's
         // small-object pool hands from thread to thread inside libtbb.
         "race:tbb::detail::d1::node::node\n"
         "race:tbb::detail::d1::tree_node::tree_node\n"
         "race:tbb::detail::d1::wait_node::wait_node\n"
         // ...and the fold of finished tree nodes, whose reference counts
         // it reads through std::atomic (libstdc++'s frame is on top), again
         // in nodes TBB's pool recycles; no user code below it.
         "race:tbb::detail::d1::fold_tree\n";
}
