// The NUMA topology of a machine as framealloc sees it, through hwloc.
//
// For: the one source of truth about NUMA nodes: which processing units
// (PUs) and how much local memory each node has, how far apart nodes are
// (the distance matrix), which node the calling thread runs on, and what
// this machine lets us bind (threads, memory, page-location queries), so a
// caller can tell a real binding from a no-op. A topology is discovered from
// the running machine, or injected (a synthetic description or an XML file)
// so multi-node logic can be tested on a one-node machine.
// Not for: binding anything (numa/binding.h, numa/node_memory_source.h) or
// scheduling; and never a per-allocation call except CurrentNode().
//
// Node numbers: every API of numa/ names a node by its logical index
// 0..num_nodes()-1 (hwloc's logical index of the NUMANode object); the
// kernel's number is NumaNode::os_index. PUs are named by their OS index
// (the CPU number of sched_setaffinity and /proc/cpuinfo).
//
// Injected topologies describe another machine: is_this_system() is false,
// support() reports nothing bindable, and every call that would act on the
// running machine (CurrentNode, binding, page queries) returns
// FailedPrecondition instead of a meaningless answer.
#ifndef NUMA_TOPOLOGY_H_
#define NUMA_TOPOLOGY_H_

#include <hwloc.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace framealloc {
namespace numa {

// One NUMA node.
struct NumaNode {
  int index = 0;              // Logical index, 0..num_nodes()-1.
  unsigned os_index = 0;      // The kernel's node number.
  std::vector<int> pus;       // OS indexes of its PUs, ascending.
  uint64_t local_memory = 0;  // Bytes of local memory (0 if unknown).
};

// What the running machine lets us do, as hwloc reports it. All false on a
// topology that is not this system (hwloc then installs no-op hooks, and a
// "successful" binding call would be a lie).
struct BindingSupport {
  bool thread_binding = false;    // Bind the calling thread to PUs.
  bool memory_binding = false;    // Allocate memory bound to a node.
  bool page_location = false;     // Ask which node holds a page.
  bool current_location = false;  // Ask which PU the thread last ran on.
};

// Where a topology came from.
enum class TopologySource { kDiscovered, kSynthetic, kXml };

// An immutable NUMA topology. Thread-safe: every method is const and may be
// called from any thread concurrently (hwloc allows concurrent read-only
// use of a loaded topology, binding and allocation calls included).
// Creation fails with a Status; nothing here aborts.
class Topology {
 public:
  // The highest PU OS index a topology may have (Linux's CPU numbers stay
  // far below: NR_CPUS is at most 8192). A topology with a PU beyond it
  // (hwloc loads "pu:2(indexes=0,2000000000)") is refused with
  // InvalidArgument: the PU lookup table would take gigabytes, and indexes
  // past 2^31 do not fit hwloc's int answers.
  static constexpr int kMaxPuIndex = (1 << 20) - 1;

  // The running machine. hwloc honours HWLOC_SYNTHETIC / HWLOC_XMLFILE in
  // the environment; is_this_system() then says whether it may bind.
  // Errors: Internal if hwloc cannot load a topology.
  static absl::StatusOr<std::unique_ptr<Topology>> Discover();

  // A machine described by hwloc's synthetic syntax, for example
  // "pack:2 [numa(memory=1GB)] core:4 pu:1" (2 nodes, 4 PUs each) or
  // "pack:2 numa:1 core:4 pu:2". A description without a NUMA level has one
  // node. Synthetic topologies have no distance matrix (see
  // distances_are_default()). Errors: InvalidArgument naming the
  // description if hwloc rejects it, or if a PU's index exceeds
  // kMaxPuIndex (so for every way of creating a topology).
  static absl::StatusOr<std::unique_ptr<Topology>> FromSynthetic(
      absl::string_view description);

  // A machine exported by `lstopo --of xml` (or built by hand; asymmetric
  // machines and distance matrices can be described this way).
  // Errors: InvalidArgument naming the path if it cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<Topology>> FromXml(
      absl::string_view path);

  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  const std::vector<NumaNode>& nodes() const { return nodes_; }
  // REQUIRES: 0 <= index < num_nodes().
  const NumaNode& node(int index) const { return nodes_[index]; }
  // Checks `index`: InvalidArgument naming it when out of range.
  absl::Status CheckNode(int index) const;

  // Every PU of the machine (OS indexes, ascending).
  const std::vector<int>& pus() const { return pus_; }
  // The logical node holding PU `pu` (an OS index). InvalidArgument if no
  // node holds it.
  absl::StatusOr<int> NodeOfPu(int pu) const;

  // The relative distance from node `from` to node `to` (10 = local, as in
  // ACPI SLIT). REQUIRES: both are valid node indexes.
  uint64_t distance(int from, int to) const {
    return distances_[static_cast<size_t>(from) * nodes_.size() + to];
  }
  // True when hwloc had no latency matrix for the nodes (synthetic
  // topologies, some virtual machines) and distance() answers the default:
  // 10 on the diagonal, 20 elsewhere.
  bool distances_are_default() const { return distances_are_default_; }

  // The logical node of the PU the calling thread last ran on (it may have
  // moved since; bind the thread for a stable answer). Errors:
  // FailedPrecondition on a topology that is not this system (a synthetic
  // machine has no "current node"; callers that want a default use node 0
  // themselves, as NumaAlloc does) or when the machine cannot report the
  // location; Internal if the PU is in no node.
  absl::StatusOr<int> CurrentNode() const;

  // True when this topology describes the running machine, so binding acts.
  bool is_this_system() const { return is_this_system_; }
  const BindingSupport& support() const { return support_; }
  TopologySource source() const { return source_; }
  // The synthetic description or XML path; "" when discovered.
  const std::string& origin() const { return origin_; }

  // A human-readable report: nodes with PUs and memory, the distance
  // matrix, and the binding support (what //numa:topology prints).
  std::string ToString() const;

  // The hwloc topology, for numa's binding code and for callers that need
  // hwloc directly. Owned by this object; treat it as read-only.
  hwloc_topology_t hwloc() const { return topology_; }
  // The hwloc NUMANode object of node `index`. REQUIRES: a valid index.
  hwloc_obj_t hwloc_node(int index) const;

 private:
  Topology(hwloc_topology_t topology, TopologySource source,
           std::string origin);
  static absl::StatusOr<std::unique_ptr<Topology>> Load(
      hwloc_topology_t topology, TopologySource source, std::string origin);
  void ReadNodes();
  void ReadDistances();
  void ReadSupport();

  hwloc_topology_t topology_;
  TopologySource source_;
  std::string origin_;
  bool is_this_system_ = false;
  BindingSupport support_;
  std::vector<NumaNode> nodes_;
  std::vector<int> pus_;
  // Logical node of each PU, indexed by OS index; -1 where none.
  std::vector<int> node_of_pu_;
  // num_nodes() x num_nodes(), row-major.
  std::vector<uint64_t> distances_;
  bool distances_are_default_ = true;
};

// "discovered", "synthetic" or "xml".
absl::string_view TopologySourceName(TopologySource source);

}  // namespace numa
}  // namespace framealloc

#endif  // NUMA_TOPOLOGY_H_
