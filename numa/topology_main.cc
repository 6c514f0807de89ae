// `bazel run //numa:topology`: prints the NUMA topology as framealloc sees
// it (nodes, PUs, local memory, distances, what binding is supported) and,
// on this machine, the node the tool runs on.
//
// For: checking a machine before trusting NUMA numbers, and looking at a
// synthetic or XML topology used by tests:
//   bazel run //numa:topology
//   bazel run //numa:topology -- --synthetic="pack:2 [numa] core:4 pu:1"
//   bazel run //numa:topology -- --xml=/path/to/topology.xml
// Not for: scripting (the output is for people; use numa::Topology).
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "numa/topology.h"

ABSL_FLAG(std::string, synthetic, "",
          "An hwloc synthetic description to show instead of this machine, "
          "e.g. \"pack:2 [numa] core:4 pu:1\".");
ABSL_FLAG(std::string, xml, "",
          "An hwloc XML topology file to show instead of this machine.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Prints the NUMA topology framealloc sees: this machine's, or "
      "--synthetic / --xml.");
  absl::ParseCommandLine(argc, argv);
  const std::string synthetic = absl::GetFlag(FLAGS_synthetic);
  const std::string xml = absl::GetFlag(FLAGS_xml);
  if (!synthetic.empty() && !xml.empty()) {
    std::fprintf(stderr, "topology: give --synthetic or --xml, not both\n");
    return 2;
  }
  using framealloc::numa::Topology;
  absl::StatusOr<std::unique_ptr<Topology>> topology =
      !synthetic.empty() ? Topology::FromSynthetic(synthetic)
      : !xml.empty()     ? Topology::FromXml(xml)
                         : Topology::Discover();
  if (!topology.ok()) {
    std::fprintf(stderr, "topology: %s\n",
                 std::string(topology.status().ToString()).c_str());
    return 1;
  }
  std::fputs((*topology)->ToString().c_str(), stdout);
  absl::StatusOr<int> node = (*topology)->CurrentNode();
  if (node.ok()) {
    std::printf("this thread runs on node %d\n", *node);
  } else {
    std::printf("current node: unknown (%s)\n",
                std::string(node.status().message()).c_str());
  }
  return 0;
}
