// Topology discovery and injection through hwloc (see topology.h).
#include "numa/topology.h"

#include <hwloc.h>
#include <hwloc/distances.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace framealloc {
namespace numa {
namespace {

constexpr uint64_t kLocalDistance = 10;
constexpr uint64_t kRemoteDistance = 20;

std::vector<int> BitmapToVector(hwloc_const_bitmap_t set) {
  std::vector<int> out;
  if (set == nullptr) return out;
  // hwloc answers in ints: an index past 2^31 comes back negative (and
  // hwloc_bitmap_next restarts from 0 after -2). Load refuses such
  // topologies before this runs; stop at any negative answer regardless.
  for (int i = hwloc_bitmap_first(set); i >= 0 && i <= Topology::kMaxPuIndex;
       i = hwloc_bitmap_next(set, i)) {
    out.push_back(i);
  }
  return out;
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 20)) return absl::StrCat(bytes >> 20, " MiB");
  if (bytes >= (uint64_t{1} << 10)) return absl::StrCat(bytes >> 10, " KiB");
  return absl::StrCat(bytes, " B");
}

}  // namespace

absl::string_view TopologySourceName(TopologySource source) {
  switch (source) {
    case TopologySource::kDiscovered:
      return "discovered";
    case TopologySource::kSynthetic:
      return "synthetic";
    case TopologySource::kXml:
      return "xml";
  }
  return "unknown";
}

Topology::Topology(hwloc_topology_t topology, TopologySource source,
                   std::string origin)
    : topology_(topology), source_(source), origin_(std::move(origin)) {}

Topology::~Topology() { hwloc_topology_destroy(topology_); }

absl::StatusOr<std::unique_ptr<Topology>> Topology::Discover() {
  hwloc_topology_t topology;
  if (hwloc_topology_init(&topology) != 0) {
    return absl::InternalError(absl::StrCat(
        "Topology::Discover: hwloc_topology_init failed: ", strerror(errno)));
  }
  if (hwloc_topology_load(topology) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topology);
    return absl::InternalError(absl::StrCat(
        "Topology::Discover: hwloc_topology_load failed: ", strerror(err)));
  }
  return Load(topology, TopologySource::kDiscovered, "");
}

absl::StatusOr<std::unique_ptr<Topology>> Topology::FromSynthetic(
    absl::string_view description) {
  const std::string text(description);
  hwloc_topology_t topology;
  if (hwloc_topology_init(&topology) != 0) {
    return absl::InternalError(
        "Topology::FromSynthetic: hwloc_topology_init "
        "failed");
  }
  if (text.empty() || hwloc_topology_set_synthetic(topology, text.c_str()) ||
      hwloc_topology_load(topology) != 0) {
    hwloc_topology_destroy(topology);
    return absl::InvalidArgumentError(
        absl::StrCat("Topology::FromSynthetic: hwloc rejected the synthetic "
                     "description \"",
                     text, "\""));
  }
  return Load(topology, TopologySource::kSynthetic, text);
}

absl::StatusOr<std::unique_ptr<Topology>> Topology::FromXml(
    absl::string_view path) {
  const std::string file(path);
  hwloc_topology_t topology;
  if (hwloc_topology_init(&topology) != 0) {
    return absl::InternalError("Topology::FromXml: hwloc_topology_init failed");
  }
  errno = 0;
  if (file.empty() || hwloc_topology_set_xml(topology, file.c_str()) != 0 ||
      hwloc_topology_load(topology) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topology);
    return absl::InvalidArgumentError(absl::StrCat(
        "Topology::FromXml: cannot load the XML topology at path \"", file,
        "\"",
        file.empty() ? ": the path is empty"
        : err != 0   ? absl::StrCat(": ", strerror(err))
                     : " (not a valid hwloc XML topology)"));
  }
  return Load(topology, TopologySource::kXml, file);
}

absl::StatusOr<std::unique_ptr<Topology>> Topology::Load(
    hwloc_topology_t topology, TopologySource source, std::string origin) {
  std::unique_ptr<Topology> result(
      new Topology(topology, source, std::move(origin)));
  // Only a discovered topology is this machine's. hwloc also answers yes
  // for a synthetic or XML one when HWLOC_THISSYSTEM=1 is set (as for TBB's
  // own binding), and binding to such a topology's nodes would act on the
  // real machine with another machine's numbers.
  result->is_this_system_ = source == TopologySource::kDiscovered &&
                            hwloc_topology_is_thissystem(topology) != 0;
  // PU numbers beyond kMaxPuIndex, or past what hwloc's ints hold, and an
  // infinite set, are refused before anything sizes a table by them
  // (hwloc_bitmap_last is -1 for an infinite set, negative past 2^31).
  hwloc_const_bitmap_t all = hwloc_topology_get_topology_cpuset(topology);
  const int last = all != nullptr ? hwloc_bitmap_last(all) : -1;
  if (all != nullptr &&
      ((last < 0 && !hwloc_bitmap_iszero(all)) || last > kMaxPuIndex)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Topology: the ", TopologySourceName(source), " topology \"",
        result->origin_, "\" has a PU numbered above ", kMaxPuIndex,
        last > kMaxPuIndex ? absl::StrCat(" (", last, ")") : std::string(),
        ": no machine numbers its CPUs so"));
  }
  result->ReadNodes();
  if (result->nodes_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Topology: the ", TopologySourceName(source),
                     " topology \"", result->origin_, "\" has no NUMA node"));
  }
  result->ReadDistances();
  result->ReadSupport();
  return result;
}

void Topology::ReadNodes() {
  pus_ = BitmapToVector(hwloc_topology_get_topology_cpuset(topology_));
  const int max_pu = pus_.empty() ? -1 : pus_.back();
  node_of_pu_.assign(static_cast<size_t>(max_pu + 1), -1);
  const int n = hwloc_get_nbobjs_by_type(topology_, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t obj = hwloc_get_obj_by_type(topology_, HWLOC_OBJ_NUMANODE, i);
    NumaNode node;
    node.index = i;
    node.os_index = obj->os_index;
    node.pus = BitmapToVector(obj->cpuset);
    node.local_memory =
        obj->attr != nullptr ? obj->attr->numanode.local_memory : 0;
    for (int pu : node.pus) {
      // A PU shared by several nodes (unusual) belongs to the first.
      if (pu <= max_pu && node_of_pu_[pu] == -1) node_of_pu_[pu] = i;
    }
    nodes_.push_back(std::move(node));
  }
}

void Topology::ReadDistances() {
  const size_t n = nodes_.size();
  distances_.assign(n * n, kRemoteDistance);
  for (size_t i = 0; i < n; ++i) distances_[i * n + i] = kLocalDistance;
  distances_are_default_ = true;

  unsigned count = 1;
  hwloc_distances_s* matrix = nullptr;
  if (hwloc_distances_get_by_type(topology_, HWLOC_OBJ_NUMANODE, &count,
                                  &matrix, HWLOC_DISTANCES_KIND_MEANS_LATENCY,
                                  0) != 0 ||
      count == 0 || matrix == nullptr) {
    return;
  }
  // Only a matrix covering every node replaces the default.
  if (matrix->nbobjs == n) {
    std::vector<uint64_t> values(n * n, 0);
    bool complete = true;
    for (unsigned i = 0; i < matrix->nbobjs && complete; ++i) {
      const unsigned from = matrix->objs[i]->logical_index;
      for (unsigned j = 0; j < matrix->nbobjs; ++j) {
        const unsigned to = matrix->objs[j]->logical_index;
        if (from >= n || to >= n) {
          complete = false;
          break;
        }
        values[from * n + to] = matrix->values[i * matrix->nbobjs + j];
      }
    }
    if (complete) {
      distances_ = std::move(values);
      distances_are_default_ = false;
    }
  }
  hwloc_distances_release(topology_, matrix);
}

void Topology::ReadSupport() {
  support_ = BindingSupport();
  // On a topology that is not this system hwloc installs no-op hooks; the
  // support flags could still claim abilities that would act on a machine
  // that is not there. Report nothing.
  if (!is_this_system_) return;
  const hwloc_topology_support* s = hwloc_topology_get_support(topology_);
  if (s == nullptr) return;
  if (s->cpubind != nullptr) {
    support_.thread_binding = s->cpubind->set_thisthread_cpubind &&
                              s->cpubind->get_thisthread_cpubind;
    support_.current_location =
        s->cpubind->get_thisthread_last_cpu_location != 0;
  }
  if (s->membind != nullptr) {
    support_.memory_binding =
        (s->membind->alloc_membind || s->membind->set_area_membind) &&
        s->membind->bind_membind;
    support_.page_location = s->membind->get_area_memlocation != 0;
  }
}

absl::Status Topology::CheckNode(int index) const {
  if (index < 0 || index >= num_nodes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("node ", index, " is outside [0, ", num_nodes(),
                     ") of this ", num_nodes(), "-node topology"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Topology::NodeOfPu(int pu) const {
  if (pu < 0 || static_cast<size_t>(pu) >= node_of_pu_.size() ||
      node_of_pu_[pu] == -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pu ", pu, " belongs to no NUMA node of this topology"));
  }
  return node_of_pu_[pu];
}

absl::StatusOr<int> Topology::CurrentNode() const {
  if (!is_this_system_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Topology::CurrentNode: the ", TopologySourceName(source_),
                     " topology \"", origin_,
                     "\" is not this system; no thread runs on its nodes"));
  }
  if (!support_.current_location) {
    return absl::FailedPreconditionError(
        "Topology::CurrentNode: this system cannot report the PU a thread "
        "last ran on");
  }
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (set == nullptr) {
    return absl::ResourceExhaustedError(
        "Topology::CurrentNode: cannot allocate a cpuset");
  }
  const int rc =
      hwloc_get_last_cpu_location(topology_, set, HWLOC_CPUBIND_THREAD);
  const int err = errno;
  const int pu = hwloc_bitmap_first(set);
  hwloc_bitmap_free(set);
  if (rc != 0 || pu < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("Topology::CurrentNode: hwloc_get_last_cpu_location "
                     "failed: ",
                     strerror(err)));
  }
  absl::StatusOr<int> node = NodeOfPu(pu);
  if (!node.ok()) {
    return absl::InternalError(absl::StrCat(
        "Topology::CurrentNode: the thread runs on ", node.status().message()));
  }
  return node;
}

hwloc_obj_t Topology::hwloc_node(int index) const {
  return hwloc_get_obj_by_type(topology_, HWLOC_OBJ_NUMANODE,
                               static_cast<unsigned>(index));
}

std::string Topology::ToString() const {
  std::string out = absl::StrCat(
      "topology: ", TopologySourceName(source_),
      origin_.empty() ? "" : absl::StrCat(" \"", origin_, "\""),
      is_this_system_ ? " (this system)" : " (not this system)", "\n",
      num_nodes(), " NUMA node(s), ", pus_.size(), " PU(s)\n");
  for (const NumaNode& node : nodes_) {
    absl::StrAppend(&out, "  node ", node.index, " (os ", node.os_index,
                    "): ", node.pus.size(), " PU(s) [",
                    absl::StrJoin(node.pus, ","), "], ",
                    FormatBytes(node.local_memory), " local memory\n");
  }
  absl::StrAppend(&out, "distances",
                  distances_are_default_
                      ? " (default: hwloc reported no matrix)"
                      : " (from hwloc)",
                  ":\n");
  for (int i = 0; i < num_nodes(); ++i) {
    absl::StrAppend(&out, "  ");
    for (int j = 0; j < num_nodes(); ++j) {
      absl::StrAppend(&out, j == 0 ? "" : " ", distance(i, j));
    }
    absl::StrAppend(&out, "\n");
  }
  auto yes_no = [](bool b) { return b ? "yes" : "no"; };
  absl::StrAppend(
      &out, "binding support",
      is_this_system_ ? "" : " (none: not this system)", ":\n",
      "  thread binding:      ", yes_no(support_.thread_binding), "\n",
      "  memory binding:      ", yes_no(support_.memory_binding), "\n",
      "  page location query: ", yes_no(support_.page_location), "\n",
      "  current PU query:    ", yes_no(support_.current_location), "\n");
  return out;
}

}  // namespace numa
}  // namespace framealloc
