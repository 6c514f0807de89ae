// A MemorySource whose blocks live on one NUMA node.
//
// For: the chunks and pages of a SmartAlloc that serves one node
// (NumaAlloc), or any large block that should sit next to the threads that
// use it; and placement verification: PageNodes() asks the kernel where the
// pages of a block really are. Not for: small objects (every call here is a
// system call), nor moving memory that already exists.
//
// Policies (MemoryPolicy):
//   kNone      plain anonymous memory; pages land on first touch.
//   kAdvisory  prefer the node (hwloc HWLOC_MEMBIND_BIND without STRICT,
//              which Linux turns into MPOL_PREFERRED: pages spill to other
//              nodes when the node is full). Where the binding cannot be
//              applied (a synthetic or XML topology, no memory binding on
//              this system, a container forbidding mbind) the block is
//              plain first-touch memory; where the node has less memory
//              available than the block (AvailableBytes()), the block is
//              bound but its pages beyond the node's room will spill. Both
//              are counted as fallbacks with their reason (node_stats());
//              never a silent lie.
//   kStrict    the node or nothing (HWLOC_MEMBIND_BIND | STRICT, Linux
//              MPOL_BIND): Create fails with FailedPrecondition where the
//              machine cannot bind; Allocate returns ResourceExhausted when
//              the block is larger than the node's AvailableBytes(), and an
//              allocation the kernel refuses returns its Status. The pages
//              of a strict block are committed by Allocate
//              (MADV_POPULATE_WRITE), so the next check sees them. Why:
//              Linux enforces MPOL_BIND at page-fault time, and a fault on
//              a full node calls the OOM killer (checked on a real 2-node
//              kernel: the process dies at its first write). Residual
//              risk: threads or processes filling the node between the
//              check and the commit.
//
// Blocks are whole pages of anonymous mmap memory. An alignment above a
// page is met by reserving `alignment - page` more bytes, unbound and not
// committed, and unmapping both ends before the policy is applied: the
// padding is never bound, committed, nor counted against the node's room,
// and nothing of it stays mapped. Deallocate unmaps exactly the block.
//
// Thread-safe: Allocate, Deallocate, PageNodes and stats may be called from
// any thread concurrently. Out of memory: Allocate returns ResourceExhausted
// (the base class counts it); nothing here aborts.
#ifndef NUMA_NODE_MEMORY_SOURCE_H_
#define NUMA_NODE_MEMORY_SOURCE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/internal/mutex.h"
#include "alloc/memory_source.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {

// How a NodeMemorySource binds its blocks: none (first touch), advisory
// (prefer the node) or strict (the node or nothing); see the file comment.
enum class MemoryPolicy { kNone, kAdvisory, kStrict };

// "none", "advisory" or "strict".
absl::string_view MemoryPolicyName(MemoryPolicy policy);

// What a NodeMemorySource did, beyond the base class's MemorySourceStats.
struct NodeMemorySourceStats {
  uint64_t bound_blocks = 0;    // Blocks the kernel accepted a binding for.
  uint64_t unbound_blocks = 0;  // kNone blocks (first touch by design).
  // kAdvisory blocks not (entirely) on the node: the binding could not be
  // applied, or the node had less memory available than the block, so
  // pages beyond its room spill to other nodes.
  uint64_t fallback_blocks = 0;
  // Why the last fallback happened ("" if none did).
  std::string last_fallback_reason;
};

// A MemorySource whose blocks are bound to one NUMA node under a
// MemoryPolicy (see the file comment). Thread-safe.
class NodeMemorySource final : public MemorySource {
 public:
  // A source for node `node` (logical index) of `topology`, which is not
  // owned and must outlive the source. Errors: InvalidArgument naming the
  // node if it is out of range; FailedPrecondition for kStrict where the
  // topology is not this system or the system cannot bind memory.
  static absl::StatusOr<std::unique_ptr<NodeMemorySource>> Create(
      const Topology* topology, int node, MemoryPolicy policy);
  ~NodeMemorySource() override;

  absl::string_view name() const override { return name_; }
  int node() const { return node_; }
  MemoryPolicy policy() const { return policy_; }
  const Topology& topology() const { return *topology_; }
  // Why this source can never bind ("" when it can try): set for kAdvisory
  // on a topology that is not this system or without memory binding.
  const std::string& binding_unavailable_reason() const {
    return unavailable_reason_;
  }

  NodeMemorySourceStats node_stats() const;

  // Bytes the node could hand out now to memory bound to it: over its
  // zones, free pages and reclaimable file pages, less what the kernel
  // keeps back (each zone's high watermark and lowmem protection); read
  // from /proc/zoneinfo on every call (kStrict and kAdvisory call it once
  // per block). -1 where the kernel does not say (a topology that is not
  // this system, no /proc/zoneinfo). A snapshot: other threads and
  // processes change it at any time.
  int64_t AvailableBytes() const;

  // PageNodes(topology(), block) (below).
  absl::StatusOr<std::vector<int>> PageNodes(const Block& block) const;

 protected:
  absl::StatusOr<Block> DoAllocate(size_t size, size_t alignment) override;
  bool DoDeallocate(const Block& block) override;

 private:
  NodeMemorySource(const Topology* topology, int node, MemoryPolicy policy,
                   std::string unavailable_reason);
  // kStrict: ResourceExhausted if the node has less room than `length`.
  absl::Status CheckStrictRoom(size_t length) const;
  // `length` bytes (a multiple of the page size) of plain anonymous memory,
  // neither bound nor committed, to be trimmed to an alignment.
  absl::StatusOr<void*> Reserve(size_t length);
  // Applies the policy to the block [p, p + length) (whole pages of a
  // reservation): kStrict binds and commits; kAdvisory binds or records
  // the fallback; every policy counts the block (bound, unbound or
  // fallback). On error the range is the caller's to unmap.
  absl::Status ApplyPolicy(void* p, size_t length);
  void RecordFallback(std::string reason);

  const Topology* const topology_;
  const int node_;
  const MemoryPolicy policy_;
  const std::string unavailable_reason_;
  const std::string name_;
  const size_t page_size_;
  hwloc_nodeset_t nodeset_;  // Owned; only read after construction.

  // Relaxed: counters; nothing is published through them.
  std::atomic<uint64_t> bound_{0};
  std::atomic<uint64_t> unbound_{0};
  std::atomic<uint64_t> fallbacks_{0};

  mutable alloc_internal::Mutex mu_;
  std::string last_fallback_reason_ ABSL_GUARDED_BY(mu_);
};

// The most pages one PageNodes call looks up: 2^20 (4 GiB of 4 KiB pages;
// a 4 MiB result, and about a second of system calls). Larger ranges are
// refused, not truncated: ask for them in parts.
inline constexpr size_t kPageNodesMaxPages = size_t{1} << 20;

// The logical node of every page of `block` (any memory: a block of any
// source, or {pointer, size} of an object), in address order. -1 means the
// kernel placed no page there: either the page is mapped but not resident
// yet (not touched: first-touch placement has not happened, so touch pages
// before asking), or the address is not mapped at all (hwloc reports both
// the same way; move_pages(2) answers -ENOENT and -EFAULT and hwloc drops
// the difference). Uses hwloc_get_area_memlocation (move_pages(2) on
// Linux), one query per page. Errors: FailedPrecondition on a topology that
// is not this system (hwloc would answer garbage) or without page-location
// support; InvalidArgument for an empty block, a block whose end wraps
// around the address space, or one spanning more than kPageNodesMaxPages
// pages; ResourceExhausted if the result cannot be allocated. Never
// throws.
absl::StatusOr<std::vector<int>> PageNodes(const Topology& topology,
                                           const Block& block);

}  // namespace numa
}  // namespace framealloc

#endif  // NUMA_NODE_MEMORY_SOURCE_H_
