// Test topologies for numa/ that hwloc's synthetic syntax cannot express.
//
// For: tests only (testonly). An asymmetric two-node machine (node 0: one
// PU and 1 GB; node 1: three PUs and 3 GB) with a latency matrix (10/21),
// written as hwloc XML; and two one-PU packages whose second PU and CPU
// set are chosen by the test (a PU the process may not use, or one the
// machine lacks). Synthetic descriptions repeat every level the same
// number of times, so asymmetric core counts need XML.
// Not for: production code.
#ifndef NUMA_INTERNAL_TEST_TOPOLOGIES_H_
#define NUMA_INTERNAL_TEST_TOPOLOGIES_H_

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_replace.h"

namespace framealloc {
namespace numa_internal {

inline constexpr char kAsymmetricXml[] =
    R"(<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="0x0000000f" complete_cpuset="0x0000000f" allowed_cpuset="0x0000000f" nodeset="0x00000003" complete_nodeset="0x00000003" allowed_nodeset="0x00000003" gp_index="1">
    <object type="Package" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="2">
      <object type="NUMANode" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="3" local_memory="1000000000"/>
      <object type="Core" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="4">
        <object type="PU" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="5"/>
      </object>
    </object>
    <object type="Package" os_index="1" cpuset="0x0000000e" complete_cpuset="0x0000000e" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="6">
      <object type="NUMANode" os_index="1" cpuset="0x0000000e" complete_cpuset="0x0000000e" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="7" local_memory="3000000000"/>
      <object type="Core" os_index="1" cpuset="0x00000002" complete_cpuset="0x00000002" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="8">
        <object type="PU" os_index="1" cpuset="0x00000002" complete_cpuset="0x00000002" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="9"/>
      </object>
      <object type="Core" os_index="2" cpuset="0x00000004" complete_cpuset="0x00000004" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="10">
        <object type="PU" os_index="2" cpuset="0x00000004" complete_cpuset="0x00000004" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="11"/>
      </object>
      <object type="Core" os_index="3" cpuset="0x00000008" complete_cpuset="0x00000008" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="12">
        <object type="PU" os_index="3" cpuset="0x00000008" complete_cpuset="0x00000008" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="13"/>
      </object>
    </object>
  </object>
  <distances2 type="NUMANode" nbobjs="2" kind="5" indexing="os">
    <indexes length="4">0 1 </indexes>
    <u64values length="12">10 21 21 10 </u64values>
  </distances2>
</topology>
)";

// Writes kAsymmetricXml under $TEST_TMPDIR (or /tmp) and returns its path.
inline std::string WriteAsymmetricXml() {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path =
      std::string(dir != nullptr ? dir : "/tmp") + "/asymmetric_topology.xml";
  std::ofstream(path) << kAsymmetricXml;
  return path;
}

// Two packages of one PU each, in hwloc's XML: PU 0 on node 0 and PU
// `second_pu` on node 1, written as hwloc bitmaps (`cpuset`, ...), and the
// PUs the process may use (`allowed`).
inline std::string TwoPackagesXml(const char* second_pu_index,
                                  const char* second, const char* both,
                                  const char* allowed) {
  std::string xml = R"(<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="BOTH" complete_cpuset="BOTH" allowed_cpuset="ALLOWED" nodeset="0x00000003" complete_nodeset="0x00000003" allowed_nodeset="0x00000003" gp_index="1">
    <object type="Package" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="2">
      <object type="NUMANode" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="3" local_memory="1073741824"/>
      <object type="Core" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="4">
        <object type="PU" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="5"/>
      </object>
    </object>
    <object type="Package" os_index="1" cpuset="SECOND" complete_cpuset="SECOND" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="6">
      <object type="NUMANode" os_index="1" cpuset="SECOND" complete_cpuset="SECOND" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="7" local_memory="1073741824"/>
      <object type="Core" os_index="1" cpuset="SECOND" complete_cpuset="SECOND" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="8">
        <object type="PU" os_index="INDEX" cpuset="SECOND" complete_cpuset="SECOND" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="9"/>
      </object>
    </object>
  </object>
</topology>
)";
  return absl::StrReplaceAll(xml, {{"BOTH", both},
                                   {"ALLOWED", allowed},
                                   {"SECOND", second},
                                   {"INDEX", second_pu_index}});
}

}  // namespace numa_internal
}  // namespace framealloc

#endif  // NUMA_INTERNAL_TEST_TOPOLOGIES_H_
