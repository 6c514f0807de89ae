// NumaAlloc: routing and per-node statistics (see numa_alloc.h).
#include "numa/numa_alloc.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"

namespace framealloc {
namespace numa {

absl::StatusOr<std::unique_ptr<NumaAlloc>> NumaAlloc::Create(
    const Topology* topology, NumaAllocOptions options) {
  if (topology == nullptr) {
    return absl::InvalidArgumentError("NumaAlloc::Create: topology is null");
  }
  if (options.config.source != nullptr) {
    return absl::InvalidArgumentError(
        "NumaAlloc::Create: NumaAllocOptions.config.source must be null; "
        "each node's NodeMemorySource is its source");
  }
  if (absl::Status s = options.config.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NumaAlloc::Create: NumaAllocOptions.config: ", s.message()));
  }
  CurrentNodeFn current = std::move(options.current_node);
  if (!current) {
    current = [topology] { return topology->CurrentNode(); };
  }
  std::unique_ptr<NumaAlloc> result(
      new NumaAlloc(topology, std::move(current)));
  for (int k = 0; k < topology->num_nodes(); ++k) {
    absl::StatusOr<std::unique_ptr<NodeMemorySource>> source =
        NodeMemorySource::Create(topology, k, options.policy);
    if (!source.ok()) return source.status();
    AllocConfig config = options.config;
    config.set_source(source->get());
    absl::StatusOr<std::unique_ptr<SmartAlloc>> alloc =
        SmartAlloc::Create(std::move(config));
    if (!alloc.ok()) return alloc.status();
    result->nodes_.push_back(Node{*std::move(source), *std::move(alloc),
                                  std::make_unique<Counters>()});
  }
  return result;
}

NumaAlloc::NumaAlloc(const Topology* topology, CurrentNodeFn current_node)
    : topology_(topology), current_node_(std::move(current_node)) {}

NumaAlloc::~NumaAlloc() {
  // Each SmartAlloc hands its memory back to its source: destroy them first.
  for (Node& n : nodes_) n.alloc.reset();
}

int NumaAlloc::CallerNode() const {
  absl::StatusOr<int> node = current_node_();
  if (!node.ok() || *node < 0 || *node >= num_nodes()) return -1;
  return *node;
}

int NumaAlloc::local_node() const {
  const int node = CallerNode();
  return node < 0 ? 0 : node;
}

SmartAlloc& NumaAlloc::local() {
  const int node = CallerNode();
  if (node < 0) {
    nodes_[0].counters->fallback_routes.fetch_add(1, std::memory_order_relaxed);
    return *nodes_[0].alloc;
  }
  nodes_[node].counters->local_routes.fetch_add(1, std::memory_order_relaxed);
  return *nodes_[node].alloc;
}

absl::StatusOr<SmartAlloc*> NumaAlloc::on_node(int k) {
  if (k < 0 || k >= num_nodes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NumaAlloc::on_node: node ", k, " is outside [0, ", num_nodes(), ")"));
  }
  return nodes_[k].alloc.get();
}

void NumaAlloc::BadNode(int k, absl::string_view where) const {
  ReportFatalError({ErrorKind::kInvalidArgument, where,
                    absl::StrCat("node ", k, " is outside [0, ", num_nodes(),
                                 ") of this ", num_nodes(), "-node NumaAlloc"),
                    0, 0,
                    absl::InvalidArgumentError(absl::StrCat("node ", k))});
}

void NumaAlloc::BadFree(int k) const {
  ReportErrorAndContinue(
      {ErrorKind::kMisuse, "NumaAlloc::free_on_node",
       absl::StrCat("node ", k, " is outside [0, ", num_nodes(), ") of this ",
                    num_nodes(), "-node NumaAlloc; the object is left alone"),
       0, 0, absl::InvalidArgumentError(absl::StrCat("node ", k))});
}

SmartAlloc& NumaAlloc::node(int k) {
  if (k < 0 || k >= num_nodes()) [[unlikely]] {
    BadNode(k, "NumaAlloc::node");
  }
  return *nodes_[k].alloc;
}

SmartAlloc& NumaAlloc::CountedNode(int k) {
  if (k < 0 || k >= num_nodes()) [[unlikely]] {
    BadNode(k, "NumaAlloc::allocate_on_node");
  }
  Counters& c = *nodes_[k].counters;
  c.allocations.fetch_add(1, std::memory_order_relaxed);
  const int caller = CallerNode();
  if (caller < 0) {
    c.unknown_caller_allocations.fetch_add(1, std::memory_order_relaxed);
  } else if (caller != k) {
    c.remote_allocations.fetch_add(1, std::memory_order_relaxed);
  }
  return *nodes_[k].alloc;
}

NumaAllocStats NumaAlloc::stats() const {
  NumaAllocStats out;
  for (int k = 0; k < num_nodes(); ++k) {
    const Node& n = nodes_[k];
    NumaNodeStats s;
    s.node = k;
    s.local_routes = n.counters->local_routes.load(std::memory_order_relaxed);
    s.fallback_routes =
        n.counters->fallback_routes.load(std::memory_order_relaxed);
    s.allocations = n.counters->allocations.load(std::memory_order_relaxed);
    s.remote_allocations =
        n.counters->remote_allocations.load(std::memory_order_relaxed);
    s.unknown_caller_allocations =
        n.counters->unknown_caller_allocations.load(std::memory_order_relaxed);
    s.binding = n.source->node_stats();
    s.source = n.source->stats();
    s.alloc = n.alloc->stats();
    out.fallback_routes += s.fallback_routes;
    out.remote_allocations += s.remote_allocations;
    out.nodes.push_back(std::move(s));
  }
  return out;
}

}  // namespace numa
}  // namespace framealloc
