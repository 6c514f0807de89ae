// Thread binding through hwloc (see binding.h).
#include "numa/binding.h"

#include <hwloc.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "alloc/error.h"

namespace framealloc {
namespace numa {
namespace {

// The one check every call makes before touching the thread.
absl::Status CheckCanBind(const Topology& topology, absl::string_view where) {
  if (!topology.is_this_system()) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": the ", TopologySourceName(topology.source()), " topology \"",
        topology.origin(),
        "\" is not this system; binding a thread to it would do nothing"));
  }
  if (!topology.support().thread_binding) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": this system does not support thread binding"));
  }
  return absl::OkStatus();
}

// An hwloc bitmap freed at scope exit.
class Bitmap {
 public:
  Bitmap() : set_(hwloc_bitmap_alloc()) {}
  ~Bitmap() { hwloc_bitmap_free(set_); }
  Bitmap(const Bitmap&) = delete;
  Bitmap& operator=(const Bitmap&) = delete;
  hwloc_bitmap_t get() const { return set_; }

 private:
  hwloc_bitmap_t set_;
};

absl::Status CheckPus(const Topology& topology, absl::Span<const int> pus,
                      absl::string_view where) {
  if (pus.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the set of pus is empty"));
  }
  for (int pu : pus) {
    if (!topology.NodeOfPu(pu).ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": pu ", pu, " is not a PU of this topology"));
    }
  }
  return absl::OkStatus();
}

// A kernel CPU set of `count` CPUs (glibc's dynamically sized cpu_set_t),
// zeroed, freed at scope exit; null data() if it could not be allocated.
class CpuSet {
 public:
  explicit CpuSet(size_t count)
      : set_(CPU_ALLOC(count)), bytes_(CPU_ALLOC_SIZE(count)) {
    if (set_ != nullptr) CPU_ZERO_S(bytes_, set_);
  }
  ~CpuSet() {
    if (set_ != nullptr) CPU_FREE(set_);
  }
  CpuSet(const CpuSet&) = delete;
  CpuSet& operator=(const CpuSet&) = delete;
  cpu_set_t* data() const { return set_; }
  size_t bytes() const { return bytes_; }

 private:
  cpu_set_t* const set_;
  const size_t bytes_;
};

absl::Status NoMemoryForCpuSet(absl::string_view where, size_t count) {
  return absl::ResourceExhaustedError(
      absl::StrCat(where, ": no memory for a cpu set of ", count));
}

// Binds the calling thread to `cpus` (kernel CPU numbers, which are hwloc's
// OS indexes) with sched_setaffinity, needing no topology: what a restore
// gives back is the kernel's own earlier answer.
absl::Status SetAffinity(absl::Span<const int> cpus, absl::string_view where) {
  if (cpus.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the set of cpus is empty"));
  }
  const auto [lowest, highest] = std::minmax_element(cpus.begin(), cpus.end());
  if (*lowest < 0 || *highest > Topology::kMaxPuIndex) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": cpu ", *lowest < 0 ? *lowest : *highest, " is out of range"));
  }
  const size_t count = static_cast<size_t>(*highest) + 1;
  CpuSet set(count);
  if (set.data() == nullptr) return NoMemoryForCpuSet(where, count);
  for (int cpu : cpus)
    CPU_SET_S(static_cast<size_t>(cpu), set.bytes(), set.data());
  if (sched_setaffinity(0, set.bytes(), set.data()) != 0) {
    const int err = errno;
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": the system refused to bind the thread to [",
                     absl::StrJoin(cpus, ","), "]: ", strerror(err)));
  }
  return absl::OkStatus();
}

// The calling thread's CPUs as the kernel holds them (sched_getaffinity),
// whatever a topology lists: hwloc sizes its answer by the topology's CPU
// numbers, so with a topology that lacks the machine's highest CPUs (one
// given through HWLOC_SYNTHETIC) it drops them.
absl::StatusOr<std::vector<int>> KernelAffinity(absl::string_view where) {
  // The kernel refuses (EINVAL) a mask smaller than its CPU numbers.
  for (size_t count = 1024; count <= size_t{Topology::kMaxPuIndex} + 1;
       count *= 2) {
    CpuSet set(count);
    if (set.data() == nullptr) return NoMemoryForCpuSet(where, count);
    if (sched_getaffinity(0, set.bytes(), set.data()) == 0) {
      std::vector<int> cpus;
      for (size_t cpu = 0; cpu < count; ++cpu) {
        if (CPU_ISSET_S(cpu, set.bytes(), set.data())) {
          cpus.push_back(static_cast<int>(cpu));
        }
      }
      return cpus;
    }
    if (errno != EINVAL) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": sched_getaffinity failed: ", strerror(errno)));
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      where, ": the kernel numbers CPUs above ", Topology::kMaxPuIndex));
}

}  // namespace

absl::StatusOr<std::vector<int>> GetThreadAffinity() {
  return KernelAffinity("GetThreadAffinity");
}

absl::Status SetThreadAffinity(absl::Span<const int> cpus) {
  return SetAffinity(cpus, "SetThreadAffinity");
}

absl::StatusOr<std::vector<int>> GetThreadBinding(const Topology& topology) {
  if (absl::Status s = CheckCanBind(topology, "GetThreadBinding"); !s.ok()) {
    return s;
  }
  Bitmap set;
  if (hwloc_get_cpubind(topology.hwloc(), set.get(), HWLOC_CPUBIND_THREAD) !=
      0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "GetThreadBinding: hwloc_get_cpubind failed: ", strerror(errno)));
  }
  std::vector<int> pus;
  for (int i = hwloc_bitmap_first(set.get()); i >= 0;
       i = hwloc_bitmap_next(set.get(), i)) {
    pus.push_back(i);
  }
  return pus;
}

absl::Status SetThreadBinding(const Topology& topology,
                              absl::Span<const int> pus) {
  if (absl::Status s = CheckCanBind(topology, "SetThreadBinding"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPus(topology, pus, "SetThreadBinding"); !s.ok()) {
    return s;
  }
  Bitmap set;
  for (int pu : pus) hwloc_bitmap_set(set.get(), static_cast<unsigned>(pu));
  if (hwloc_set_cpubind(topology.hwloc(), set.get(), HWLOC_CPUBIND_THREAD) !=
      0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "SetThreadBinding: the system refused to bind the thread to pus [",
        absl::StrJoin(pus, ","), "]: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status BindThreadToNode(const Topology& topology, int node) {
  if (absl::Status s = CheckCanBind(topology, "BindThreadToNode"); !s.ok()) {
    return s;
  }
  if (absl::Status s = topology.CheckNode(node); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("BindThreadToNode: ", s.message()));
  }
  if (topology.node(node).pus.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BindThreadToNode: node ", node, " has no PU (a memory-only node)"));
  }
  return SetThreadBinding(topology, topology.node(node).pus);
}

absl::Status BindThreadToPu(const Topology& topology, int pu) {
  const int pus[] = {pu};
  return SetThreadBinding(topology, pus);
}

ScopedThreadBinding::ScopedThreadBinding(std::vector<int> previous)
    : bound_(true),
      previous_(std::move(previous)),
      thread_(std::this_thread::get_id()) {}

ScopedThreadBinding::ScopedThreadBinding(ScopedThreadBinding&& other) noexcept
    : bound_(std::exchange(other.bound_, false)),
      previous_(std::move(other.previous_)),
      thread_(other.thread_) {}

absl::StatusOr<ScopedThreadBinding> ScopedThreadBinding::Bind(
    const Topology& topology, std::vector<int> pus) {
  if (absl::Status s = CheckCanBind(topology, "ScopedThreadBinding"); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::vector<int>> previous =
      KernelAffinity("ScopedThreadBinding");
  if (!previous.ok()) return previous.status();
  if (absl::Status s = SetThreadBinding(topology, pus); !s.ok()) return s;
  return ScopedThreadBinding(*std::move(previous));
}

absl::StatusOr<ScopedThreadBinding> ScopedThreadBinding::ToNode(
    const Topology& topology, int node) {
  if (absl::Status s = CheckCanBind(topology, "ScopedThreadBinding::ToNode");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = topology.CheckNode(node); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScopedThreadBinding::ToNode: ", s.message()));
  }
  if (topology.node(node).pus.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScopedThreadBinding::ToNode: node ", node,
                     " has no PU (a memory-only node)"));
  }
  return Bind(topology, topology.node(node).pus);
}

absl::StatusOr<ScopedThreadBinding> ScopedThreadBinding::ToPu(
    const Topology& topology, int pu) {
  return Bind(topology, {pu});
}

absl::Status ScopedThreadBinding::Restore() {
  if (!bound_) return absl::OkStatus();
  if (std::this_thread::get_id() != thread_) {
    return absl::FailedPreconditionError(
        "ScopedThreadBinding::Restore: called on another thread than the "
        "one it bound");
  }
  bound_ = false;
  return SetAffinity(previous_, "ScopedThreadBinding::Restore");
}

// A destructor cannot unwind: the report goes through ReportErrorAndContinue,
// which drops an exception the handler throws (alloc/error.h), where
// ReportError let it reach this noexcept destructor and std::terminate.
ScopedThreadBinding::~ScopedThreadBinding() {
  if (!bound_) return;
  absl::Status s = Restore();
  if (!s.ok()) {
    ReportErrorAndContinue({ErrorKind::kMisuse,
                            "ScopedThreadBinding::~ScopedThreadBinding",
                            absl::StrCat("the previous thread binding [",
                                         absl::StrJoin(previous_, ","),
                                         "] was not restored: ", s.message()),
                            0, 0, s});
  }
}

}  // namespace numa
}  // namespace framealloc
