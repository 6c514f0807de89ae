// Node-bound blocks through hwloc (see node_memory_source.h).
#include "numa/node_memory_source.h"

#include <hwloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"

namespace framealloc {
namespace numa {
namespace {

size_t RoundUp(size_t value, size_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

// Why `topology` can never bind memory, or "" when it may.
std::string BindingUnavailableReason(const Topology& topology) {
  if (!topology.is_this_system()) {
    return absl::StrCat("the ", TopologySourceName(topology.source()),
                        " topology \"", topology.origin(),
                        "\" is not this system, so nothing can be bound");
  }
  if (!topology.support().memory_binding) {
    return "this system does not support memory binding";
  }
  return "";
}

// Bytes a user allocation bound to kernel node `os_node` can get now
// without the OOM killer, from /proc/zoneinfo: over the node's zones, free
// pages plus the file pages reclaim would free, less the zone's "high"
// watermark and its largest lowmem protection (a small zone such as DMA
// keeps its pages from allocations that could go higher, which user pages
// can). Slab is not counted: the kernel reclaims it too slowly to save a
// fault. -1 when the kernel does not say (no /proc/zoneinfo, or no such
// node in it).
int64_t NodeAvailableBytes(unsigned os_node, size_t page_size) {
  std::FILE* f = std::fopen("/proc/zoneinfo", "r");
  if (f == nullptr) return -1;
  bool found = false;
  bool in_node = false;
  uint64_t total = 0;  // Pages.
  // The zone being read.
  uint64_t free_pages = 0, file = 0, high = 0, protection = 0;
  auto end_zone = [&] {
    if (in_node) {
      const uint64_t have = free_pages + file;
      const uint64_t keep = high + protection;
      if (have > keep) total += have - keep;
    }
    free_pages = file = high = protection = 0;
  };
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned node = 0;
    unsigned long long v = 0;  // NOLINT(runtime/int): sscanf's %llu.
    if (std::sscanf(line, "Node %u, zone", &node) == 1) {
      end_zone();
      in_node = node == os_node;
      found = found || in_node;
    } else if (!in_node) {
      continue;
    } else if (std::sscanf(line, " pages free %llu", &v) == 1) {
      free_pages = v;
    } else if (std::sscanf(line, " high %llu", &v) == 1) {
      high = v;
    } else if (std::sscanf(line, " nr_zone_inactive_file %llu", &v) == 1 ||
               std::sscanf(line, " nr_zone_active_file %llu", &v) == 1) {
      file += v;
    } else if (const char* open = std::strstr(line, "protection: (")) {
      for (const char* p = open + 13; *p != '\0' && *p != ')';) {
        char* next = nullptr;
        const uint64_t x = std::strtoull(p, &next, 10);
        if (next == p) break;
        if (x > protection) protection = x;
        p = next;
        while (*p == ',' || *p == ' ') ++p;
      }
    }
  }
  end_zone();
  std::fclose(f);
  return found ? static_cast<int64_t>(total * page_size) : -1;
}

}  // namespace

absl::string_view MemoryPolicyName(MemoryPolicy policy) {
  switch (policy) {
    case MemoryPolicy::kNone:
      return "none";
    case MemoryPolicy::kAdvisory:
      return "advisory";
    case MemoryPolicy::kStrict:
      return "strict";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<NodeMemorySource>> NodeMemorySource::Create(
    const Topology* topology, int node, MemoryPolicy policy) {
  if (topology == nullptr) {
    return absl::InvalidArgumentError(
        "NodeMemorySource::Create: topology is null");
  }
  if (absl::Status s = topology->CheckNode(node); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("NodeMemorySource::Create: ", s.message()));
  }
  std::string reason = policy == MemoryPolicy::kNone
                           ? std::string()
                           : BindingUnavailableReason(*topology);
  if (policy == MemoryPolicy::kStrict && !reason.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("NodeMemorySource::Create: strict binding to node ", node,
                     " is impossible: ", reason));
  }
  return std::unique_ptr<NodeMemorySource>(
      new NodeMemorySource(topology, node, policy, std::move(reason)));
}

NodeMemorySource::NodeMemorySource(const Topology* topology, int node,
                                   MemoryPolicy policy,
                                   std::string unavailable_reason)
    : topology_(topology),
      node_(node),
      policy_(policy),
      unavailable_reason_(std::move(unavailable_reason)),
      name_(absl::StrCat("node", node, "/", MemoryPolicyName(policy))),
      page_size_(static_cast<size_t>(sysconf(_SC_PAGESIZE))),
      nodeset_(hwloc_bitmap_dup(topology->hwloc_node(node)->nodeset)) {}

int64_t NodeMemorySource::AvailableBytes() const {
  if (!topology_->is_this_system()) return -1;
  return NodeAvailableBytes(topology_->node(node_).os_index, page_size_);
}

NodeMemorySource::~NodeMemorySource() { hwloc_bitmap_free(nodeset_); }

NodeMemorySourceStats NodeMemorySource::node_stats() const {
  NodeMemorySourceStats s;
  s.bound_blocks = bound_.load(std::memory_order_relaxed);
  s.unbound_blocks = unbound_.load(std::memory_order_relaxed);
  s.fallback_blocks = fallbacks_.load(std::memory_order_relaxed);
  alloc_internal::MutexLock lock(&mu_);
  s.last_fallback_reason = last_fallback_reason_;
  return s;
}

void NodeMemorySource::RecordFallback(std::string reason) {
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  alloc_internal::MutexLock lock(&mu_);
  last_fallback_reason_ = std::move(reason);
}

absl::StatusOr<void*> NodeMemorySource::Reserve(size_t length) {
  // Not hwloc_alloc: on a topology that is not this system it is
  // posix_memalign (and hwloc_free is free()), whose ends cannot be
  // unmapped. On this system it is this same mmap (and hwloc_free munmap).
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) return p;
  const int err = errno;
  if (policy_ == MemoryPolicy::kStrict) {
    std::string message =
        absl::StrCat(name_, " source: strict binding of ", length,
                     " bytes to node ", node_, " failed: ", strerror(err));
    if (err == ENOMEM) return absl::ResourceExhaustedError(message);
    return absl::FailedPreconditionError(message);
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      name_, " source: allocating ", length, " bytes failed: ", strerror(err)));
}

absl::Status NodeMemorySource::CheckStrictRoom(size_t length) const {
  // The kernel enforces MPOL_BIND at page-fault time, where a full node
  // means the OOM killer (checked in a 2-node qemu guest: the process is
  // killed at its first write), so the node's room is checked before
  // anything is mapped, and ApplyPolicy commits the pages at once so that
  // the next check sees them.
  if (const int64_t available = AvailableBytes();
      available >= 0 && length > static_cast<uint64_t>(available)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        name_, " source: strict binding of ", length, " bytes to node ", node_,
        " refused: the node has ", available,
        " bytes available (free and reclaimable file pages, less the "
        "kernel's reserve)"));
  }
  return absl::OkStatus();
}

absl::Status NodeMemorySource::ApplyPolicy(void* p, size_t length) {
  hwloc_topology_t topo = topology_->hwloc();
  if (policy_ == MemoryPolicy::kStrict) {
    // What hwloc_alloc_membind(BIND, STRICT) does after its own mmap on
    // Linux: mbind(MPOL_BIND) of the range.
    if (hwloc_set_area_membind(
            topo, p, length, nodeset_, HWLOC_MEMBIND_BIND,
            HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT) != 0) {
      const int err = errno;
      std::string message =
          absl::StrCat(name_, " source: strict binding of ", length,
                       " bytes to node ", node_, " failed: ", strerror(err));
      if (err == ENOMEM) return absl::ResourceExhaustedError(message);
      return absl::FailedPreconditionError(message);
    }
#ifdef MADV_POPULATE_WRITE
    // Linux 5.14+; EINVAL on older kernels, which leave the pages to first
    // touch (and CheckStrictRoom blind to blocks not yet touched).
    if (madvise(p, length, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) {
      const int err = errno;
      return absl::ResourceExhaustedError(
          absl::StrCat(name_, " source: committing ", length, " bytes on node ",
                       node_, " failed: ", strerror(err)));
    }
#endif
    bound_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  if (policy_ == MemoryPolicy::kNone) {
    unbound_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  // kAdvisory binds the area itself (hwloc_alloc_membind without STRICT
  // would hide a refused binding) and sees the kernel's answer. Every
  // fallback leaves a usable block.
  if (!unavailable_reason_.empty()) {
    RecordFallback(unavailable_reason_);
    return absl::OkStatus();
  }
  if (hwloc_set_area_membind(topo, p, length, nodeset_, HWLOC_MEMBIND_BIND,
                             HWLOC_MEMBIND_BYNODESET) != 0) {
    RecordFallback(absl::StrCat("binding ", length, " bytes to node ", node_,
                                " was refused: ", strerror(errno)));
    return absl::OkStatus();
  }
  // Bound, but the node cannot hold it all: the pages beyond its room will
  // spill to other nodes (MPOL_PREFERRED). Said, not hidden.
  if (const int64_t available = AvailableBytes();
      available >= 0 && length > static_cast<uint64_t>(available)) {
    RecordFallback(absl::StrCat(
        "node ", node_, " has ", available, " bytes available, less than the ",
        length, " asked: the pages beyond it spill to other nodes"));
    return absl::OkStatus();
  }
  bound_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<Block> NodeMemorySource::DoAllocate(size_t size,
                                                   size_t alignment) {
  const size_t length = RoundUp(size, page_size_);
  if (policy_ == MemoryPolicy::kStrict) {
    if (absl::Status room = CheckStrictRoom(length); !room.ok()) return room;
  }
  // Alignments above a page: reserve `alignment - page` more (mmap returns
  // page-aligned addresses, so an aligned `length` fits), then unmap the
  // head before the aligned address and the tail after `length`. Nothing
  // is bound or committed yet, so the padding never costs the node a page.
  // (A munmap refused at the process's vm.max_map_count leaves that piece
  // reserved: address space only, never bound nor committed.)
  const size_t slack = alignment > page_size_ ? alignment - page_size_ : 0;
  absl::StatusOr<void*> reserved = Reserve(length + slack);
  if (!reserved.ok()) return reserved.status();
  char* data = static_cast<char*>(*reserved);
  if (slack != 0) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(data);
    const size_t head = RoundUp(start, alignment) - start;
    if (head != 0) munmap(data, head);
    const size_t tail = slack - head;
    if (tail != 0) munmap(data + head + length, tail);
    data += head;
  }
  if (absl::Status applied = ApplyPolicy(data, length); !applied.ok()) {
    munmap(data, length);
    return applied;
  }
  return Block{data, length, alignment};
}

bool NodeMemorySource::DoDeallocate(const Block& block) {
  // A block is all that stayed mapped of its reservation (DoAllocate
  // unmapped any padding), so it goes back as it is: no lookup. A block whose
  // address is not aligned as it claims, or whose size is not whole pages,
  // cannot be one of ours: reported and left alone rather than unmapping a
  // neighbour. (A well-formed block from elsewhere cannot be told apart: the
  // REQUIRES of Deallocate.)
  const size_t aligned_to =
      block.alignment > page_size_ ? block.alignment : page_size_;
  const uintptr_t address = reinterpret_cast<uintptr_t>(block.data);
  std::string problem;
  if (address % aligned_to != 0 || block.size % page_size_ != 0) {
    problem =
        absl::StrCat("is not ", aligned_to,
                     "-aligned whole pages, so it was not allocated here");
  } else if (munmap(block.data, block.size) != 0) {
    problem = absl::StrCat("could not be unmapped: ", strerror(errno),
                           " (was the block from this source?)");
  }
  if (!problem.empty()) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "NodeMemorySource::Deallocate",
         absl::StrCat(name_, " source: block of ", block.size, " bytes at 0x",
                      absl::Hex(address), " ", problem),
         block.size, block.alignment, absl::OkStatus()});
    return false;
  }
  return true;
}

absl::StatusOr<std::vector<int>> PageNodes(const Topology& topology,
                                           const Block& block) {
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (!topology.is_this_system()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PageNodes: the ", TopologySourceName(topology.source()),
        " topology \"", topology.origin(),
        "\" is not this system; page locations would be meaningless"));
  }
  if (!topology.support().page_location) {
    return absl::FailedPreconditionError(
        "PageNodes: this system cannot report where pages "
        "are");
  }
  if (block.empty() || block.size == 0) {
    return absl::InvalidArgumentError("PageNodes: the block is empty");
  }
  // Checked before anything is reserved: a range that wraps the address
  // space, or one of more than kPageNodesMaxPages pages, would make the
  // reserve below throw std::bad_alloc (or the loop run for hours).
  const uintptr_t data = reinterpret_cast<uintptr_t>(block.data);
  uintptr_t end;
  if (__builtin_add_overflow(data, block.size, &end)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PageNodes: the block of ", block.size, " bytes at 0x",
                     absl::Hex(data), " wraps around the address space"));
  }
  const uintptr_t first = data & ~(page_size - 1);
  // Neither the page count nor the walk below may wrap: a block in the last
  // page of the address space has end - first + page_size past 2^64, and
  // a page address stepped past it wraps to 0 (the walk never ended).
  const uintptr_t span = end - first;  // first <= data <= end.
  const size_t pages = span / page_size + (span % page_size != 0 ? 1 : 0);
  if (pages > kPageNodesMaxPages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PageNodes: the block of ", block.size, " bytes spans ", pages,
        " pages, more than the ", kPageNodesMaxPages,
        " one call looks up (kPageNodesMaxPages); ask for it in parts"));
  }
  hwloc_topology_t topo = topology.hwloc();
  std::vector<int> nodes;
  try {
    nodes.reserve(pages);  // push_back below never reallocates.
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "PageNodes: no memory for the result of ", pages, " pages"));
  }
  hwloc_nodeset_t set = hwloc_bitmap_alloc();
  if (set == nullptr) {
    return absl::ResourceExhaustedError(
        "PageNodes: hwloc could not allocate a bitmap");
  }
  for (size_t i = 0; i < pages; ++i) {
    const uintptr_t page = first + i * page_size;  // i < pages: no wrap.
    if (hwloc_get_area_memlocation(topo, reinterpret_cast<void*>(page),
                                   page_size, set,
                                   HWLOC_MEMBIND_BYNODESET) != 0) {
      const int err = errno;
      hwloc_bitmap_free(set);
      return absl::FailedPreconditionError(
          absl::StrCat("PageNodes: "
                       "hwloc_get_area_memlocation failed: ",
                       strerror(err)));
    }
    const int os_node = hwloc_bitmap_first(set);
    int logical = -1;
    if (os_node >= 0) {
      hwloc_obj_t obj = hwloc_get_numanode_obj_by_os_index(
          topo, static_cast<unsigned>(os_node));
      if (obj != nullptr) logical = static_cast<int>(obj->logical_index);
    }
    nodes.push_back(logical);
  }
  hwloc_bitmap_free(set);
  return nodes;
}

absl::StatusOr<std::vector<int>> NodeMemorySource::PageNodes(
    const Block& block) const {
  return numa::PageNodes(*topology_, block);
}

}  // namespace numa
}  // namespace framealloc
