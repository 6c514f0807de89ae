// NumaAlloc: one SmartAlloc per NUMA node, each drawing its memory from
// that node.
//
// For: programs whose threads work on NUMA nodes (pinned workers, a job
// runtime) and want their frame arenas, pools and chunks on the node they
// run on: local() answers the SmartAlloc of the calling thread's node,
// on_node(k) and allocate_on_node<T>(k, ...) reach a given node's. Each
// node's SmartAlloc has its own NodeMemorySource (policy: none, advisory,
// strict), chunk cache, pools, budgets and statistics.
// Not for: placing memory that exists already, or pinning threads (use
// numa/binding.h: local() follows the thread, it does not move it).
//
// Routing: local() asks the current-node function (by default
// Topology::CurrentNode(), the PU the thread last ran on) on every call. An
// unbound thread may migrate right after the answer, so pin threads that
// care. When the node is unknown (a synthetic or XML topology, a machine
// that cannot tell) local() answers node 0 and counts a fallback. Tests of
// multi-node routing on a one-node machine inject the current-node function
// (NumaAllocOptions::set_current_node).
//
// Thread safety: every method may be called from any thread. Errors:
// Create returns a Status (InvalidArgument for a bad configuration,
// FailedPrecondition for a strict policy where nothing can be bound);
// on_node(k) returns InvalidArgument for a bad k; node(k) and
// allocate_on_node with a bad k are fatal errors (ReportFatalError,
// ErrorKind::kInvalidArgument), as is running out of memory in
// allocate_on_node (SmartAlloc::pool_alloc never returns null). Pool
// objects larger than 4 KiB come from SmartAlloc's tracked heap, which is
// not node-bound.
#ifndef NUMA_NUMA_ALLOC_H_
#define NUMA_NUMA_ALLOC_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "alloc/memory_source.h"
#include "alloc/smart_alloc.h"
#include "numa/node_memory_source.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {

// Answers the logical node the calling thread runs on, or an error when it
// cannot tell. Called concurrently from any thread.
using CurrentNodeFn = std::function<absl::StatusOr<int>()>;

// How NumaAlloc::Create builds its nodes: the memory policy, each node's
// SmartAlloc configuration, and the current-node function.
struct NumaAllocOptions {
  // How each node's memory source binds its blocks.
  MemoryPolicy policy = MemoryPolicy::kAdvisory;
  // The configuration of every node's SmartAlloc. Its `source` must be
  // null: each node's NodeMemorySource takes its place (a `backend`, if
  // any, is shared by every node and asked first).
  AllocConfig config;
  // Which node the calling thread runs on; empty: Topology::CurrentNode().
  CurrentNodeFn current_node;

  NumaAllocOptions& set_policy(MemoryPolicy p) {
    policy = p;
    return *this;
  }
  NumaAllocOptions& set_config(AllocConfig c) {
    config = std::move(c);
    return *this;
  }
  NumaAllocOptions& set_current_node(CurrentNodeFn f) {
    current_node = std::move(f);
    return *this;
  }
};

// Counters of one node. Each is exact once the threads are quiescent.
struct NumaNodeStats {
  int node = 0;
  // local() calls answered with this node because the caller runs on it.
  uint64_t local_routes = 0;
  // local() calls answered with this node (always node 0) because the
  // caller's node was unknown.
  uint64_t fallback_routes = 0;
  // allocate_on_node calls served by this node...
  uint64_t allocations = 0;
  // ...of which for threads running on another node...
  uint64_t remote_allocations = 0;
  // ...and for threads whose node was unknown.
  uint64_t unknown_caller_allocations = 0;
  NodeMemorySourceStats binding;  // Bound, unbound and fallback blocks.
  MemorySourceStats source;       // Block traffic of the node's source.
  AllocStats alloc;               // The node's SmartAlloc.
};

// NumaAlloc::stats(): one entry per node, in node order, and the routing
// counters summed over the nodes.
struct NumaAllocStats {
  std::vector<NumaNodeStats> nodes;
  // Sums over nodes.
  uint64_t fallback_routes = 0;
  uint64_t remote_allocations = 0;
};

// One SmartAlloc per NUMA node of a Topology, each over its node's memory
// (see the file comment). Thread-safe.
class NumaAlloc {
 public:
  // One SmartAlloc per node of `topology` (not owned; must outlive this).
  static absl::StatusOr<std::unique_ptr<NumaAlloc>> Create(
      const Topology* topology, NumaAllocOptions options = {});
  // REQUIRES: no thread uses the instance any more.
  ~NumaAlloc();
  NumaAlloc(const NumaAlloc&) = delete;
  NumaAlloc& operator=(const NumaAlloc&) = delete;

  const Topology& topology() const { return *topology_; }
  int num_nodes() const { return static_cast<int>(nodes_.size()); }

  // The SmartAlloc of the node the calling thread runs on; node 0's when
  // the node is unknown (counted as a fallback).
  SmartAlloc& local();
  // The node local() would route the calling thread to, without counting.
  int local_node() const;

  // Node k's SmartAlloc, or InvalidArgument naming k.
  absl::StatusOr<SmartAlloc*> on_node(int k);
  // Node k's SmartAlloc; a bad k is a fatal error (kInvalidArgument).
  SmartAlloc& node(int k);
  // Node k's memory source (placement checks: PageNodes, node_stats).
  // REQUIRES: 0 <= k < num_nodes().
  const NodeMemorySource& source(int k) const { return *nodes_[k].source; }
  // The same, to allocate large node-bound blocks directly (arrays homed
  // on a node: jobs/parallel.h NodeArray). Thread-safe.
  NodeMemorySource& mutable_source(int k) { return *nodes_[k].source; }

  // A T from node k's pools (SmartAlloc::pool_alloc), counted for node k
  // as remote when the caller runs on another node. Never null; a bad k or
  // exhausted memory is a fatal error. Free with free_on_node(k, p).
  template <typename T, typename... Args>
  T* allocate_on_node(int k, Args&&... args) {
    return CountedNode(k).template pool_alloc<T>(std::forward<Args>(args)...);
  }
  // Destroys and frees a T from allocate_on_node(k, ...); from any thread.
  // A bad k is a misuse reported through ReportErrorAndContinue (as every
  // bad free: a release never unwinds), and `p` is left alone (leaked).
  template <typename T>
  void free_on_node(int k, T* p) {
    if (k < 0 || k >= num_nodes()) [[unlikely]] {
      BadFree(k);
      return;
    }
    nodes_[k].alloc->pool_free(p);
  }

  NumaAllocStats stats() const;

 private:
  // Relaxed atomics: counters only; nothing is published through them.
  struct alignas(64) Counters {
    std::atomic<uint64_t> local_routes{0};
    std::atomic<uint64_t> fallback_routes{0};
    std::atomic<uint64_t> allocations{0};
    std::atomic<uint64_t> remote_allocations{0};
    std::atomic<uint64_t> unknown_caller_allocations{0};
  };
  struct Node {
    std::unique_ptr<NodeMemorySource> source;
    std::unique_ptr<SmartAlloc> alloc;  // Draws from `source`.
    std::unique_ptr<Counters> counters;
  };

  NumaAlloc(const Topology* topology, CurrentNodeFn current_node);
  // The caller's node, or -1 when unknown (or out of range).
  int CallerNode() const;
  // node(k), counting an allocation and whether the caller is remote.
  SmartAlloc& CountedNode(int k);
  [[noreturn]] void BadNode(int k, absl::string_view where) const;
  // free_on_node's report of a bad k (a misuse; returns).
  void BadFree(int k) const;

  const Topology* const topology_;
  const CurrentNodeFn current_node_;
  std::vector<Node> nodes_;
};

}  // namespace numa
}  // namespace framealloc

#endif  // NUMA_NUMA_ALLOC_H_
