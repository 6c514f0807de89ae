// Node-homed arrays and the batch processor: structure-of-arrays data split
// by NUMA node, processed where it lives.
//
// For: large per-item data (particles, bodies, entities) that a Runtime
// processes every frame. A NodeArray<T> holds n items split by a
// NodePartition into one contiguous segment per range (one per node for
// Runtime::Partition; a partition may give a node several ranges), each
// segment in memory from its node's NodeMemorySource and first touched by
// a job on that node; several NodeArrays with one partition form a
// structure-of-arrays whose columns share home nodes. Runtime::ParallelFor
// over the same partition, or a BatchProcessor over one array, runs every
// item's work on its home node.
// Not for: small or short-lived data (use JobContext::arena()), or types
// that need constructors and destructors (items are value-initialized
// memory: trivially copyable, trivially destructible types only).
//
// Lifetimes: a NodeArray must not outlive its Runtime (it gives its
// memory back to the runtime's node sources), nor a BatchProcessor its
// NodeArray (it keeps pointers into it).
// Thread safety: a NodeArray is a plain container (jobs may write disjoint
// items concurrently). Errors: Create returns InvalidArgument for a
// partition that does not fit the runtime, ResourceExhausted when a node's
// memory is refused; ProcessAll returns the first job failure.
#ifndef JOBS_PARALLEL_H_
#define JOBS_PARALLEL_H_

#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "alloc/memory_source.h"
#include "jobs/runtime.h"
#include "numa/node_memory_source.h"

namespace framealloc {
namespace jobs {

// A column of trivially copyable T split by home node (a NodePartition):
// each node's segment from that node's memory, zero-filled by a job there
// (see the file comment). span(b, e) reaches items within one segment.
template <typename T>
class NodeArray {
  static_assert(std::is_trivially_copyable_v<T> &&
                    std::is_trivially_destructible_v<T>,
                "NodeArray holds plain data: trivially copyable and "
                "destructible types");

 public:
  // Items [0, partition.size()) homed as `partition` says, zero-filled by
  // a job on each node (so first-touch pages land there too).
  static absl::StatusOr<NodeArray> Create(Runtime& runtime,
                                          NodePartition partition) {
    if (absl::Status s = partition.Check(runtime.num_nodes()); !s.ok()) {
      // Overlapping ranges would zero (and later hand out) items past a
      // node's block.
      return absl::InvalidArgumentError(
          absl::StrCat("NodeArray: ", s.message()));
    }
    NodeArray array(&runtime, std::move(partition));
    for (const NodeRange& r : array.partition_.ranges()) {
      Segment segment{r, {}};
      if (!r.empty()) {
        if (r.size() > SIZE_MAX / sizeof(T)) {
          return absl::InvalidArgumentError(
              absl::StrCat("NodeArray: ", r.size(), " items of ", sizeof(T),
                           " bytes overflow"));
        }
        auto block = runtime.memory().mutable_source(r.node).Allocate(
            r.size() * sizeof(T), std::max<size_t>(alignof(T), 64));
        if (!block.ok()) return block.status();
        segment.block = *block;
      }
      array.segments_.push_back(segment);
    }
    absl::Status touched =
        runtime.ParallelFor(array.partition_, size_t{1} << 14,
                            [&array](JobContext&, size_t begin, size_t end) {
                              std::memset(static_cast<void*>(&array[begin]), 0,
                                          (end - begin) * sizeof(T));
                            });
    if (!touched.ok()) return touched;
    return array;
  }

  NodeArray(NodeArray&& other) noexcept
      : runtime_(other.runtime_),
        partition_(std::move(other.partition_)),
        segments_(std::move(other.segments_)) {
    other.segments_.clear();
  }
  NodeArray& operator=(NodeArray&& other) noexcept {
    if (this != &other) {
      Free();
      runtime_ = other.runtime_;
      partition_ = std::move(other.partition_);
      segments_ = std::move(other.segments_);
      other.segments_.clear();
    }
    return *this;
  }
  NodeArray(const NodeArray&) = delete;
  NodeArray& operator=(const NodeArray&) = delete;
  ~NodeArray() { Free(); }

  size_t size() const { return partition_.size(); }
  const NodePartition& partition() const { return partition_; }

  // Item i. REQUIRES: i < size() (fatal otherwise, like NodePartition).
  T& operator[](size_t i) { return *Locate(i); }
  const T& operator[](size_t i) const { return *Locate(i); }

  // Items [begin, end), which must lie within one node's range: the form
  // ParallelFor bodies use. REQUIRES: begin <= end, both in one range.
  absl::Span<T> span(size_t begin, size_t end) {
    if (begin == end) return {};
    return absl::Span<T>(Locate(begin), end - begin);
  }
  // Node k's segment: its first non-empty range's items (empty if it holds
  // no items). A partition that gives node k several ranges has a segment
  // for each; span() reaches every one.
  absl::Span<T> segment(int k) {
    const Segment* s = FirstSegmentOf(k);
    return s == nullptr
               ? absl::Span<T>()
               : absl::Span<T>(static_cast<T*>(s->block.data), s->range.size());
  }
  // The block behind segment(k) (numa::PageNodes checks placement); empty
  // when segment(k) is.
  Block block(int k) const {
    const Segment* s = FirstSegmentOf(k);
    return s == nullptr ? Block() : s->block;
  }

 private:
  struct Segment {
    NodeRange range;
    Block block;
  };
  NodeArray(Runtime* runtime, NodePartition partition)
      : runtime_(runtime), partition_(std::move(partition)) {}

  const Segment* FirstSegmentOf(int k) const {
    for (const Segment& s : segments_) {
      if (s.range.node == k && !s.range.empty()) return &s;
    }
    return nullptr;
  }
  T* Locate(size_t i) const {
    for (const Segment& s : segments_) {
      if (i >= s.range.begin && i < s.range.end) {
        return static_cast<T*>(s.block.data) + (i - s.range.begin);
      }
    }
    (void)partition_.HomeOf(i);  // Reports the bad index; does not return.
    return nullptr;
  }
  void Free() {
    for (Segment& s : segments_) {
      if (!s.block.empty()) {
        runtime_->memory().mutable_source(s.range.node).Deallocate(s.block);
      }
    }
    segments_.clear();
  }

  Runtime* runtime_;
  NodePartition partition_;
  std::vector<Segment> segments_;
};

// The reference guide's BatchProcessor: a NodeArray cut into batches of at
// most `batch_size` items, each inside one node's segment; ProcessAll runs
// f(ctx, span) for every batch as a job on the batch's home node.
template <typename T>
class BatchProcessor {
 public:
  struct Batch {
    int node = 0;
    size_t first = 0;  // Index of the batch's first item in the array.
    T* items = nullptr;
    size_t count = 0;
  };

  static absl::StatusOr<BatchProcessor> Create(NodeArray<T>& data,
                                               size_t batch_size) {
    if (batch_size == 0) {
      return absl::InvalidArgumentError(
          "BatchProcessor: batch_size must be at least 1");
    }
    BatchProcessor processor;
    for (const NodeRange& r : data.partition().ranges()) {
      // Stepped by the batch's own count: `first + batch_size` would wrap
      // for a batch_size near SIZE_MAX ("one batch per node").
      for (size_t first = r.begin; first < r.end;) {
        const size_t count = std::min(batch_size, r.end - first);
        processor.batches_.push_back(
            {r.node, first, data.span(first, first + count).data(), count});
        first += count;
      }
    }
    return processor;
  }

  const std::vector<Batch>& batches() const { return batches_; }

  // Runs f(JobContext&, absl::Span<T>) once per batch, on its home node
  // (StealPolicy::kWhenIdle may move a batch to an idle node: then
  // ctx.stolen()). Returns when all are done: OK or the first failure.
  // InvalidArgument, with no batch run, if a batch's node is not one of
  // `runtime`'s (another runtime than the array's, with fewer nodes); a
  // submission refused later (a shutdown begun meanwhile) cancels the
  // batches not yet started and returns the refusal.
  template <typename F>
  absl::Status ProcessAll(Runtime& runtime, F&& f, const char* name = nullptr) {
    for (const Batch& batch : batches_) {
      if (batch.node < 0 || batch.node >= runtime.num_nodes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "BatchProcessor::ProcessAll: batch at item ", batch.first,
            " is homed on node ", batch.node, ", and the runtime has ",
            runtime.num_nodes(),
            " nodes (process an array with the runtime it was made on)"));
      }
    }
    JobCounter counter;
    for (const Batch& batch : batches_) {
      absl::Status s = runtime.Spawn(
          [&f, batch](JobContext& ctx) {
            f(ctx, absl::Span<T>(batch.items, batch.count));
          },
          SubmitOptions()
              .on_node(batch.node)
              .with_counter(&counter)
              .named(name != nullptr ? name : "batch"));
      if (!s.ok()) {
        counter.Cancel();
        (void)counter.Wait();
        return s;
      }
    }
    return counter.Wait();
  }

 private:
  std::vector<Batch> batches_;
};

}  // namespace jobs
}  // namespace framealloc

#endif  // JOBS_PARALLEL_H_
