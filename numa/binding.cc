// Thread binding through hwloc (see binding.h).
#include "numa/binding.h"

#include <hwloc.h>

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

}  // namespace

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
  for (int i = hwloc_bitmap_first(set.get()); i != -1;
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

ScopedThreadBinding::ScopedThreadBinding(const Topology* topology,
                                         std::vector<int> previous)
    : topology_(topology),
      previous_(std::move(previous)),
      thread_(std::this_thread::get_id()) {}

ScopedThreadBinding::ScopedThreadBinding(ScopedThreadBinding&& other) noexcept
    : topology_(std::exchange(other.topology_, nullptr)),
      previous_(std::move(other.previous_)),
      thread_(other.thread_) {}

absl::StatusOr<ScopedThreadBinding> ScopedThreadBinding::Bind(
    const Topology& topology, std::vector<int> pus) {
  absl::StatusOr<std::vector<int>> previous = GetThreadBinding(topology);
  if (!previous.ok()) return previous.status();
  if (absl::Status s = SetThreadBinding(topology, pus); !s.ok()) return s;
  return ScopedThreadBinding(&topology, *std::move(previous));
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
  if (topology_ == nullptr) return absl::OkStatus();
  if (std::this_thread::get_id() != thread_) {
    return absl::FailedPreconditionError(
        "ScopedThreadBinding::Restore: called on another thread than the "
        "one it bound");
  }
  absl::Status s = SetThreadBinding(*topology_, previous_);
  topology_ = nullptr;
  return s;
}

// A destructor cannot unwind: the report goes through ReportErrorAndContinue,
// which drops an exception the handler throws (alloc/error.h), where
// ReportError let it reach this noexcept destructor and std::terminate.
ScopedThreadBinding::~ScopedThreadBinding() {
  if (topology_ == nullptr) return;
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
