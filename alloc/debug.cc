// Debug aids (see debug.h).
#include "alloc/debug.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <tuple>

#include "absl/debugging/stacktrace.h"
#include "absl/debugging/symbolize.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "alloc/internal/json.h"

namespace framealloc {
namespace {

using alloc_internal::MutexLock;

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::Status DebugOptions::Validate() const {
  if (stack_depth < 0 || stack_depth > CallStack::kMaxDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("DebugOptions.stack_depth = ", stack_depth,
                     " is outside [0, ", CallStack::kMaxDepth, "]"));
  }
  if (profile_sites && stack_depth == 0) {
    return absl::InvalidArgumentError(
        "DebugOptions.profile_sites needs stack_depth > 0 (sites are call "
        "stacks)");
  }
  return absl::OkStatus();
}

CallStack CallStack::Capture(int depth, int skip) {
  CallStack stack;
  depth = std::clamp(depth, 0, kMaxDepth);
  // +1: skip this function too.
  stack.depth =
      depth == 0 ? 0 : absl::GetStackTrace(stack.frames, depth, skip + 1);
  return stack;
}

uint64_t CallStack::Hash() const {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the addresses.
  for (int i = 0; i < depth; ++i) {
    hash = (hash ^ reinterpret_cast<uintptr_t>(frames[i])) * 1099511628211ull;
  }
  return hash == 0 ? 1 : hash;  // 0 means "no site".
}

std::string CallStack::Symbolized() const {
  std::string out;
  char name[1024];
  for (int i = 0; i < depth; ++i) {
    // Return addresses point after the call: look up the byte before.
    const void* pc = static_cast<const char*>(frames[i]) - 1;
    const char* symbol =
        absl::Symbolize(pc, name, sizeof(name)) ? name : "(unknown)";
    absl::StrAppend(&out, "  #", i, " ", absl::StrFormat("%p", frames[i]), " ",
                    symbol, "\n");
  }
  return out;
}

absl::string_view AllocKindName(AllocKind kind) {
  switch (kind) {
    case AllocKind::kFrame:
      return "frame";
    case AllocKind::kPool:
      return "pool";
    case AllocKind::kHeap:
      return "heap";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// AllocationTracker

uint64_t AllocationTracker::InternSiteLocked(const CallStack& stack) {
  if (stack.depth == 0) return 0;
  const uint64_t hash = stack.Hash();
  Site& site = sites_[hash];
  if (site.stack.depth == 0) site.stack = stack;
  return hash;
}

bool AllocationTracker::Add(const void* p, AllocationRecord record,
                            const CallStack* stack) {
  MutexLock lock(&mu_);
  if (stack != nullptr) record.site = InternSiteLocked(*stack);
  return live_.emplace(p, record).second;
}

absl::StatusOr<AllocationRecord> AllocationTracker::Remove(const void* p) {
  MutexLock lock(&mu_);
  auto it = live_.find(p);
  if (it == live_.end()) {
    return absl::NotFoundError("not a live allocation");
  }
  AllocationRecord record = it->second;
  live_.erase(it);
  return record;
}

absl::StatusOr<AllocationRecord> AllocationTracker::Remove(const void* p,
                                                           AllocKind kind) {
  MutexLock lock(&mu_);
  auto it = live_.find(p);
  if (it == live_.end()) {
    return absl::NotFoundError("not a live allocation");
  }
  const AllocationRecord record = it->second;
  if (record.kind != kind) {
    return absl::FailedPreconditionError(
        absl::StrCat("a live ", AllocKindName(record.kind), " allocation of ",
                     record.size, " bytes"));
  }
  live_.erase(it);
  return record;
}

absl::StatusOr<AllocationRecord> AllocationTracker::Find(const void* p) const {
  MutexLock lock(&mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return absl::NotFoundError("not a live allocation");
  return it->second;
}

uint64_t AllocationTracker::InternSite(const CallStack& stack) {
  MutexLock lock(&mu_);
  return InternSiteLocked(stack);
}

void AllocationTracker::CountSite(const CallStack& stack, TagId tag,
                                  size_t bytes) {
  MutexLock lock(&mu_);
  const uint64_t hash = InternSiteLocked(stack);
  if (hash == 0) return;
  Site& site = sites_[hash];
  ++site.count;
  site.bytes += bytes;
  auto& [count, total] = site.tags[tag];
  ++count;
  total += bytes;
}

std::vector<LeakGroup> AllocationTracker::Leaks(uint64_t current_frame,
                                                uint64_t min_age) const {
  // Grouped by (site, kind, tag).
  absl::flat_hash_map<std::tuple<uint64_t, int, TagId>, LeakGroup> groups;
  MutexLock lock(&mu_);
  for (const auto& [p, r] : live_) {
    // Younger than min_age (written so that a huge min_age cannot wrap).
    if (r.frame > current_frame || current_frame - r.frame < min_age) continue;
    LeakGroup& g = groups[{r.site, static_cast<int>(r.kind), r.tag}];
    if (g.count == 0) {
      g.site = r.site;
      g.kind = r.kind;
      g.tag = r.tag;
      g.oldest_frame = r.frame;
      if (auto s = sites_.find(r.site); s != sites_.end()) {
        g.stack = s->second.stack.Symbolized();
      }
    }
    ++g.count;
    g.bytes += r.size;
    g.oldest_frame = std::min(g.oldest_frame, r.frame);
  }
  std::vector<LeakGroup> out;
  out.reserve(groups.size());
  for (auto& [key, group] : groups) out.push_back(std::move(group));
  std::sort(out.begin(), out.end(), [](const LeakGroup& a, const LeakGroup& b) {
    return a.bytes != b.bytes ? a.bytes > b.bytes : a.site < b.site;
  });
  return out;
}

std::vector<SiteStats> AllocationTracker::HottestSites(size_t n) const {
  std::vector<SiteStats> out;
  MutexLock lock(&mu_);
  for (const auto& [hash, site] : sites_) {
    if (site.count == 0) continue;
    SiteStats s;
    s.site = hash;
    s.count = site.count;
    s.bytes = site.bytes;
    for (const auto& [tag, counts] : site.tags) {
      s.tags.push_back({tag, counts.first, counts.second});
    }
    std::sort(s.tags.begin(), s.tags.end(),
              [](const SiteStats::PerTag& a, const SiteStats::PerTag& b) {
                return a.count > b.count;
              });
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const SiteStats& a, const SiteStats& b) {
    return a.count != b.count ? a.count > b.count : a.bytes > b.bytes;
  });
  if (out.size() > n) out.resize(n);
  for (SiteStats& s : out) s.stack = sites_.at(s.site).stack.Symbolized();
  return out;
}

std::string AllocationTracker::SiteStack(uint64_t site) const {
  MutexLock lock(&mu_);
  auto it = sites_.find(site);
  return it == sites_.end() ? "" : it->second.stack.Symbolized();
}

size_t AllocationTracker::live() const {
  MutexLock lock(&mu_);
  return live_.size();
}

// ---------------------------------------------------------------------------
// FrameTracer

FrameTracer::~FrameTracer() { Stop().IgnoreError(); }

absl::Status FrameTracer::Start(const std::string& path, uint64_t first_frame,
                                uint64_t frame_count) {
  if (frame_count < 1) {
    return absl::InvalidArgumentError("FrameTracer::Start: frame_count < 1");
  }
  MutexLock lock(&mu_);
  if (file_ != nullptr) {
    return absl::FailedPreconditionError(
        "FrameTracer::Start: already recording; Stop() first");
  }
  file_ = std::fopen(path.c_str(), "w");
  if (file_ == nullptr) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("FrameTracer::Start: ", "cannot open ", path));
  }
  written_ = 0;
  write_failed_ = false;
  start_nanos_ = NowNanos();
  first_.store(first_frame, std::memory_order_relaxed);
  // Saturated: a window reaching past the last frame number records to it.
  const uint64_t end = frame_count > UINT64_MAX - first_frame
                           ? UINT64_MAX
                           : first_frame + frame_count;
  end_.store(end, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status FrameTracer::Stop() {
  MutexLock lock(&mu_);
  end_.store(0, std::memory_order_relaxed);
  if (file_ == nullptr) return absl::OkStatus();
  const bool close_failed = std::fclose(file_) != 0;
  file_ = nullptr;
  if (write_failed_ || close_failed) {
    return absl::DataLossError("FrameTracer: writing the trace failed");
  }
  return absl::OkStatus();
}

bool FrameTracer::Wants(uint64_t frame) const {
  return frame >= first_.load(std::memory_order_relaxed) &&
         frame < end_.load(std::memory_order_relaxed);
}

void FrameTracer::Record(const TraceEvent& e, const TagRegistry& tags) {
  const char* op = e.op == TraceEvent::Op::kAlloc  ? "alloc"
                   : e.op == TraceEvent::Op::kFree ? "free"
                                                   : "frame_end";
  std::string tag;
  alloc_internal::AppendJsonString(&tag, tags.Path(e.tag));
  MutexLock lock(&mu_);
  if (file_ == nullptr) return;
  const int n = std::fprintf(
      file_,
      "{\"op\":\"%s\",\"kind\":\"%s\",\"frame\":%llu,\"thread\":%llu,"
      "\"tag\":%s,\"size\":%zu,\"address\":\"%p\",\"ns\":%lld}\n",
      op, std::string(AllocKindName(e.kind)).c_str(),
      static_cast<unsigned long long>(e.frame),
      static_cast<unsigned long long>(e.thread), tag.c_str(), e.size, e.address,
      static_cast<long long>(NowNanos() - start_nanos_));
  if (n < 0) write_failed_ = true;
  ++written_;
}

uint64_t FrameTracer::events_written() const {
  MutexLock lock(&mu_);
  return written_;
}

}  // namespace framealloc
