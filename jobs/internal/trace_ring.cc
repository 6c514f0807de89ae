// Chrome trace event export of the workers' job timelines.
#include "jobs/internal/trace_ring.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "alloc/internal/json.h"

namespace framealloc {
namespace jobs {
namespace jobs_internal {

void WriteChromeTrace(std::ostream& out, const std::vector<TraceTrack>& tracks,
                      uint64_t origin_ticks, double seconds_per_tick) {
  const double us_per_tick = seconds_per_tick * 1e6;
  std::string buffer = "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[";
  bool first = true;
  auto separator = [&] {
    if (!first) buffer += ",\n";
    first = false;
  };
  std::set<int> nodes;
  for (const TraceTrack& t : tracks) {
    if (nodes.insert(t.node).second) {
      separator();
      absl::StrAppendFormat(
          &buffer,
          "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":%d,"
          "\"args\":{\"name\":\"node %d\"}}",
          t.node, t.node);
    }
    separator();
    absl::StrAppendFormat(&buffer,
                          "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%d,"
                          "\"tid\":%d,\"args\":{\"name\":\"%s\"}}",
                          t.node, t.worker,
                          t.outside ? std::string("outside thread (helping)")
                                    : absl::StrCat("worker ", t.worker));
  }
  for (const TraceTrack& t : tracks) {
    t.ring->ForEach([&](const TraceEvent& e) {
      separator();
      const double ts =
          static_cast<double>(static_cast<int64_t>(e.start - origin_ticks)) *
          us_per_tick;
      const double dur = static_cast<double>(e.end - e.start) * us_per_tick;
      buffer += "{\"ph\":\"X\",\"name\":";
      std::string name =
          e.name != nullptr ? e.name : (e.id != 0 ? "job" : "child");
      alloc_internal::AppendJsonString(&buffer, name);
      absl::StrAppendFormat(&buffer,
                            ",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,"
                            "\"args\":{\"id\":%d,\"stolen\":%s,\"inline\":%s}}",
                            t.node, t.worker, ts, dur, e.id,
                            (e.flags & kTraceStolen) ? "true" : "false",
                            (e.flags & kTraceInline) ? "true" : "false");
    });
    if (buffer.size() > (1 << 20)) {
      out << buffer;
      buffer.clear();
    }
  }
  buffer += "]}\n";
  out << buffer;
}

}  // namespace jobs_internal
}  // namespace jobs
}  // namespace framealloc
