// StreamingPass: an optional interface of a sim::Scenario whose frame holds
// one memory-bound pass with a known traffic, for the suite's bandwidth
// report.
//
// For: putting a scenario's streaming pass (the particle update) next to the
// STREAM triad measured in the same run. The scenario counts the bytes from
// its code (what the loop reads and writes) and times the pass itself; the
// driver finds the interface with dynamic_cast and reads it after each frame.
// Not for: passes whose traffic is not known from the code.
//
// Thread safety: read by the driver's thread between frames only.
// Errors: none (plain data).
//
// Example:
//   if (const auto* pass = dynamic_cast<const sim::StreamingPass*>(&s)) {
//     sim::StreamingPassStats p = pass->LastPass();
//     double gbps = (p.bytes_read + p.bytes_written) / p.seconds / 1e9;
//   }
#ifndef BENCHMARKS_STREAMING_PASS_H_
#define BENCHMARKS_STREAMING_PASS_H_

#include <cstddef>
#include <string>

namespace framealloc::sim {

// The last frame's streaming pass.
struct StreamingPassStats {
  std::string label;         // What the pass does, for the report.
  size_t bytes_read = 0;     // Counted from the loop, per frame.
  size_t bytes_written = 0;  // Counted from the loop, per frame.
  // Bytes of the arrays the pass touches (each counted once): the size the
  // triad is measured on.
  size_t footprint_bytes = 0;
  double seconds = 0;  // Wall time of the pass in the last frame.
};

class StreamingPass {
 public:
  virtual ~StreamingPass() = default;
  // The pass of the last Step(). seconds is 0 before the first frame.
  virtual StreamingPassStats LastPass() const = 0;
};

}  // namespace framealloc::sim

#endif  // BENCHMARKS_STREAMING_PASS_H_
