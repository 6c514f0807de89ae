// Binding the calling thread to a NUMA node or to one processing unit.
//
// For: pinning a thread (a worker, a benchmark, a test) so that it runs on
// the PUs of one node, or on one PU, and putting its previous binding back
// afterwards (ScopedThreadBinding). Every call acts on the calling thread
// only. Not for: memory placement (numa/node_memory_source.h) or choosing
// which node a thread should use (the caller's policy).
//
// Failure: on a topology that is not this system (synthetic, XML) or on a
// machine that cannot bind threads, every call returns FailedPrecondition
// and binds nothing: never a silent success. A kernel refusal (a container
// forbidding sched_setaffinity, PUs outside the allowed cpuset) is returned
// as FailedPrecondition with the errno text. Bad node or PU numbers are
// InvalidArgument naming them.
#ifndef NUMA_BINDING_H_
#define NUMA_BINDING_H_

#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "numa/topology.h"

namespace framealloc {
namespace numa {

// The PUs (OS indexes, ascending) the calling thread may run on.
absl::StatusOr<std::vector<int>> GetThreadBinding(const Topology& topology);

// Binds the calling thread to `pus` (OS indexes). REQUIRES: non-empty, each
// a PU of `topology` (InvalidArgument naming the first bad one otherwise).
absl::Status SetThreadBinding(const Topology& topology,
                              absl::Span<const int> pus);

// The CPUs the kernel lets the calling thread run on (sched_getaffinity),
// ascending, whatever a topology lists: GetThreadBinding answers through
// hwloc, which sizes its answer by the topology's CPU numbers and so drops
// CPUs above a (synthetic, HWLOC_THISSYSTEM=1) topology's highest. For
// saving a binding to give back later (SetThreadAffinity). Linux only.
absl::StatusOr<std::vector<int>> GetThreadAffinity();

// Gives the calling thread the CPU set `cpus` (kernel numbers, as
// GetThreadAffinity returned them) with sched_setaffinity: no topology, no
// check against one. Errors: InvalidArgument for an empty set or a CPU
// outside [0, Topology::kMaxPuIndex]; FailedPrecondition with the errno
// text when the kernel refuses.
absl::Status SetThreadAffinity(absl::Span<const int> cpus);

// Binds the calling thread to every PU of node `node` (logical index).
absl::Status BindThreadToNode(const Topology& topology, int node);

// Binds the calling thread to the single PU `pu` (OS index).
absl::Status BindThreadToPu(const Topology& topology, int pu);

// Binds the calling thread for the lifetime of the object and restores the
// binding it had before. Create it with ToNode or ToPu on the thread to
// bind; it must be restored (destroyed, or Restore()d) on that same thread.
// It keeps no reference to the topology (which may go first), and it
// restores the previous binding as the kernel reported it (sched_setaffinity
// on the calling thread), CPUs that the topology does not list included.
// Movable; a moved-from object restores nothing. Not thread-safe (it
// belongs to one thread, like the binding it changes). A restore that fails
// in the destructor (the kernel refuses, or the object is destroyed on
// another thread than the one it bound) is reported through
// ReportErrorAndContinue (alloc/error.h, ErrorKind::kMisuse) and leaves the
// binding as it is: an exception the handler throws is dropped, never
// propagated out of the destructor; the default handler, as for every
// report, prints and aborts, so a host that may destroy a binding elsewhere
// installs a handler or calls Restore() and checks its Status.
class ScopedThreadBinding {
 public:
  static absl::StatusOr<ScopedThreadBinding> ToNode(const Topology& topology,
                                                    int node);
  static absl::StatusOr<ScopedThreadBinding> ToPu(const Topology& topology,
                                                  int pu);

  ScopedThreadBinding(ScopedThreadBinding&& other) noexcept;
  ScopedThreadBinding& operator=(ScopedThreadBinding&& other) = delete;
  ScopedThreadBinding(const ScopedThreadBinding&) = delete;
  ScopedThreadBinding& operator=(const ScopedThreadBinding&) = delete;
  ~ScopedThreadBinding();

  // The binding in force before this object bound the thread: the CPUs
  // the kernel let it run on (sched_getaffinity), ascending.
  const std::vector<int>& previous() const { return previous_; }

  // Restores the previous binding now; later calls (and the destructor) do
  // nothing. FailedPrecondition when called on another thread than the one
  // bound, or when the kernel refuses.
  absl::Status Restore();

 private:
  explicit ScopedThreadBinding(std::vector<int> previous);
  static absl::StatusOr<ScopedThreadBinding> Bind(const Topology& topology,
                                                  std::vector<int> pus);

  bool bound_;  // False once restored or moved from.
  std::vector<int> previous_;
  std::thread::id thread_;
};

}  // namespace numa
}  // namespace framealloc

#endif  // NUMA_BINDING_H_
