// The suite's report (see report.h).
#include "benchmarks/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace framealloc::sim {
namespace {

using nlohmann::json;

double MeanOf(const VariantRun& run, double (*get)(const FrameRecord&)) {
  if (run.frames.empty()) return 0;
  double sum = 0;
  for (const FrameRecord& f : run.frames) sum += get(f);
  return sum / static_cast<double>(run.frames.size());
}

bool ArenaCountKnown(const VariantRun& run) {
  for (const FrameRecord& f : run.frames) {
    if (f.arena_allocations < 0) return false;
  }
  return true;
}

std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// Group-separated integer, for large counts in the table.
std::string Thousands(double v) {
  const uint64_t n = static_cast<uint64_t>(std::llround(std::max(v, 0.0)));
  std::string digits = absl::StrCat(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

// JSON has no NaN or infinities (nlohmann writes them as null, which a
// reader cannot tell from a missing value): a non-finite double is written
// as the string "nan", "inf" or "-inf", which ReadDouble reads back.
json Number(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

// A double written by Number: a JSON number or one of its three strings.
// InvalidArgument naming the field and the value otherwise.
absl::StatusOr<double> ReadDouble(const json& j, const char* field) {
  if (j.is_number()) return j.get<double>();
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("run JSON: field '", field, "' is ", j.dump(),
                   ", not a number or \"nan\", \"inf\" or \"-inf\""));
}

double PassGbps(const VariantRun& run, const FrameRecord& f) {
  if (!run.pass.has_value() || f.pass_seconds <= 0) return 0;
  return static_cast<double>(run.pass->bytes_read + run.pass->bytes_written) /
         f.pass_seconds / 1e9;
}

}  // namespace

const VariantRun* ScenarioResult::Find(const std::string& label) const {
  for (const VariantRun& r : runs) {
    if (r.label == label) return &r;
  }
  return nullptr;
}

std::vector<Ratio> Ratios(const ScenarioResult& result) {
  struct Pair {
    const char* name;
    const char* faster;
    const char* slower;
  };
  const Pair pairs[] = {
      {"arena vs heap, 1 thread", "arena", "heap"},
      {"arena vs mimalloc heap, 1 thread", "arena", "mimalloc heap"},
      {"runtime-arena vs runtime-heap, all workers", "runtime-arena",
       "runtime-heap"},
      {"runtime-arena vs mimalloc runtime-heap, all workers", "runtime-arena",
       "mimalloc runtime-heap"},
      {"runtime-arena: all workers vs one worker per node", "runtime-arena",
       "runtime-arena-1w"},
  };
  std::vector<Ratio> ratios;
  for (const Pair& p : pairs) {
    const VariantRun* fast = result.Find(p.faster);
    const VariantRun* slow = result.Find(p.slower);
    if (fast == nullptr || slow == nullptr) continue;
    Ratio r;
    r.name = p.name;
    r.faster = p.faster;
    r.slower = p.slower;
    const double fm = Median(fast->FrameMs());
    const double fp = Percentile(fast->FrameMs(), 0.99);
    r.median = fm > 0 ? Median(slow->FrameMs()) / fm : 0;
    r.p99 = fp > 0 ? Percentile(slow->FrameMs(), 0.99) / fp : 0;
    ratios.push_back(r);
  }
  return ratios;
}

std::optional<ScalingBreakdown> Scaling(const ScenarioResult& result) {
  const VariantRun* all = result.Find("runtime-arena");
  const VariantRun* one = result.Find("runtime-arena-1w");
  if (all == nullptr || one == nullptr || all->frames.empty() ||
      one->frames.empty() || all->job_seconds <= 0 || one->job_seconds <= 0 ||
      all->threads < 1 || one->threads < 1) {
    return std::nullopt;
  }
  const double all_seconds =
      Mean(all->FrameMs()) / 1e3 * static_cast<double>(all->frames.size());
  const double one_seconds =
      Mean(one->FrameMs()) / 1e3 * static_cast<double>(one->frames.size());
  if (all_seconds <= 0 || one_seconds <= 0) return std::nullopt;
  ScalingBreakdown b;
  b.workers_all = all->threads;
  b.workers_one = one->threads;
  b.speedup = (one_seconds / static_cast<double>(one->frames.size())) /
              (all_seconds / static_cast<double>(all->frames.size()));
  b.busy_all = all->job_seconds / (all_seconds * all->threads);
  b.busy_one = one->job_seconds / (one_seconds * one->threads);
  b.job_time_growth =
      (all->job_seconds / static_cast<double>(all->frames.size())) /
      (one->job_seconds / static_cast<double>(one->frames.size()));
  return b;
}

std::vector<PassBandwidth> Bandwidth(const ScenarioResult& result) {
  std::vector<PassBandwidth> out;
  auto add = [&](const char* label, const std::optional<TriadResult>& triad) {
    const VariantRun* run = result.Find(label);
    if (run == nullptr || !run->pass.has_value() || !triad.has_value()) return;
    std::vector<double> rates;
    for (const FrameRecord& f : run->frames) rates.push_back(PassGbps(*run, f));
    if (rates.empty()) return;
    PassBandwidth b;
    b.run = label;
    b.cold_triad = triad->cold;
    b.threads = run->threads;
    b.median_gbps = Median(rates);
    b.best_gbps = *std::max_element(rates.begin(), rates.end());
    b.triad_median_gbps = triad->median_gbps;
    b.triad_best_gbps = triad->best_gbps;
    b.percent_of_triad =
        triad->median_gbps > 0 ? 100.0 * b.median_gbps / triad->median_gbps : 0;
    out.push_back(b);
  };
  add("arena", result.triad_one);
  add("arena", result.triad_one_cold);
  add("runtime-arena", result.triad_all);
  add("runtime-arena", result.triad_all_cold);
  return out;
}

json RunToJson(const VariantRun& run) {
  json frames = json::array();
  for (const FrameRecord& f : run.frames) {
    frames.push_back({{"ms", Number(f.ms)},
                      {"heap_allocations", f.heap_allocations},
                      {"heap_bytes", f.heap_bytes},
                      {"arena_allocations", f.arena_allocations},
                      {"arena_bytes", f.arena_bytes},
                      {"pass_seconds", Number(f.pass_seconds)},
                      {"page_faults", f.page_faults}});
  }
  const std::vector<double> ms = run.FrameMs();
  json j = {
      {"label", run.label},
      {"variant", run.variant},
      {"allocator", run.allocator},
      {"threads", run.threads},
      {"warmup", run.warmup},
      {"state_hash", Hex(run.state_hash)},
      {"working_set_bytes", run.working_set_bytes},
      {"median_ms", Number(Median(ms))},
      {"p99_ms", Number(Percentile(ms, 0.99))},
      {"mean_ms", Number(Mean(ms))},
      {"heap_allocations_per_frame", MeanOf(run,
                                            [](const FrameRecord& f) {
                                              return static_cast<double>(
                                                  f.heap_allocations);
                                            })},
      {"heap_bytes_per_frame", MeanOf(run,
                                      [](const FrameRecord& f) {
                                        return static_cast<double>(
                                            f.heap_bytes);
                                      })},
      {"job_seconds", Number(run.job_seconds)},
      {"page_faults_per_frame", MeanOf(run,
                                       [](const FrameRecord& f) {
                                         return static_cast<double>(
                                             f.page_faults);
                                       })},
      {"arena_bytes_per_frame", MeanOf(run,
                                       [](const FrameRecord& f) {
                                         return static_cast<double>(
                                             f.arena_bytes);
                                       })},
      {"frames", frames},
  };
  j["arena_allocations_per_frame"] =
      ArenaCountKnown(run)
          ? json(MeanOf(run,
                        [](const FrameRecord& f) {
                          return static_cast<double>(f.arena_allocations);
                        }))
          : json(nullptr);
  if (run.pass.has_value()) {
    j["pass"] = {{"label", run.pass->label},
                 {"bytes_read", run.pass->bytes_read},
                 {"bytes_written", run.pass->bytes_written},
                 {"footprint_bytes", run.pass->footprint_bytes}};
  }
  return j;
}

absl::StatusOr<VariantRun> RunFromJson(const json& j) {
  auto missing = [](const char* field) {
    return absl::InvalidArgumentError(
        absl::StrCat("run JSON: field '", field, "' missing or mistyped"));
  };
  if (!j.is_object()) return missing("(run object)");
  VariantRun run;
  for (const char* f : {"label", "variant", "allocator", "state_hash"}) {
    if (!j.contains(f) || !j[f].is_string()) return missing(f);
  }
  for (const char* f : {"threads", "warmup", "working_set_bytes"}) {
    if (!j.contains(f) || !j[f].is_number_integer()) return missing(f);
  }
  if (!j.contains("frames") || !j["frames"].is_array()) {
    return missing("frames");
  }
  run.label = j["label"].get<std::string>();
  run.variant = j["variant"].get<std::string>();
  run.allocator = j["allocator"].get<std::string>();
  run.threads = j["threads"].get<int>();
  run.warmup = j["warmup"].get<int>();
  run.working_set_bytes = j["working_set_bytes"].get<size_t>();
  const std::string hash = j["state_hash"].get<std::string>();
  if (hash.size() != 16 ||
      hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return missing("state_hash");
  }
  run.state_hash = std::stoull(hash, nullptr, 16);
  for (const json& f : j["frames"]) {
    if (!f.is_object()) return missing("frames[]");
    for (const char* field :
         {"heap_allocations", "heap_bytes", "arena_allocations", "arena_bytes",
          "page_faults"}) {
      if (!f.contains(field) || !f[field].is_number()) return missing(field);
    }
    for (const char* field : {"ms", "pass_seconds"}) {
      if (!f.contains(field)) return missing(field);
    }
    FrameRecord r;
    absl::StatusOr<double> ms = ReadDouble(f["ms"], "ms");
    if (!ms.ok()) return ms.status();
    r.ms = *ms;
    r.heap_allocations = f["heap_allocations"].get<uint64_t>();
    r.heap_bytes = f["heap_bytes"].get<uint64_t>();
    r.arena_allocations = f["arena_allocations"].get<int64_t>();
    r.arena_bytes = f["arena_bytes"].get<uint64_t>();
    absl::StatusOr<double> pass = ReadDouble(f["pass_seconds"], "pass_seconds");
    if (!pass.ok()) return pass.status();
    r.pass_seconds = *pass;
    r.page_faults = f["page_faults"].get<uint64_t>();
    run.frames.push_back(r);
  }
  if (j.contains("job_seconds")) {
    absl::StatusOr<double> job = ReadDouble(j["job_seconds"], "job_seconds");
    if (!job.ok()) return job.status();
    run.job_seconds = *job;
  }
  if (j.contains("pass")) {
    const json& p = j["pass"];
    const auto count = [&p](const char* key) {
      return p.contains(key) && p[key].is_number_unsigned();
    };
    if (!p.is_object() || !p.contains("label") || !p["label"].is_string() ||
        !count("bytes_read") || !count("bytes_written") ||
        !count("footprint_bytes")) {
      return missing("pass");
    }
    StreamingPassStats s;
    s.label = p["label"].get<std::string>();
    s.bytes_read = p["bytes_read"].get<size_t>();
    s.bytes_written = p["bytes_written"].get<size_t>();
    s.footprint_bytes = p["footprint_bytes"].get<size_t>();
    run.pass = s;
  }
  return run;
}

json ScenarioToJson(const ScenarioResult& r) {
  json runs = json::array();
  for (const VariantRun& run : r.runs) runs.push_back(RunToJson(run));
  json ratios = json::array();
  for (const Ratio& q : Ratios(r)) {
    ratios.push_back({{"name", q.name},
                      {"faster", q.faster},
                      {"slower", q.slower},
                      {"median", Number(q.median)},
                      {"p99", Number(q.p99)}});
  }
  json scaling = nullptr;
  if (const std::optional<ScalingBreakdown> b = Scaling(r); b.has_value()) {
    scaling = {{"speedup", Number(b->speedup)},
               {"workers_all", b->workers_all},
               {"workers_one", b->workers_one},
               {"busy_all", Number(b->busy_all)},
               {"busy_one", Number(b->busy_one)},
               {"job_time_growth", Number(b->job_time_growth)}};
  }
  json bandwidth = json::array();
  for (const PassBandwidth& b : Bandwidth(r)) {
    bandwidth.push_back({{"run", b.run},
                         {"cold_triad", b.cold_triad},
                         {"threads", b.threads},
                         {"median_gbps", Number(b.median_gbps)},
                         {"best_gbps", Number(b.best_gbps)},
                         {"triad_median_gbps", Number(b.triad_median_gbps)},
                         {"triad_best_gbps", Number(b.triad_best_gbps)},
                         {"percent_of_triad", Number(b.percent_of_triad)}});
  }
  auto triad = [](const std::optional<TriadResult>& t) {
    if (!t.has_value()) return json(nullptr);
    return json{{"threads", t->threads},
                {"cold", t->cold},
                {"bytes_per_array", t->bytes_per_array},
                {"repetitions", t->repetitions},
                {"best_gbps", Number(t->best_gbps)},
                {"median_gbps", Number(t->median_gbps)}};
  };
  return {{"name", r.name},
          {"description", r.description},
          {"allocation_heavy", r.allocation_heavy},
          {"size", r.size},
          {"warmup", r.warmup},
          {"frames", r.frames},
          {"states_equal", r.states_equal},
          {"runs", runs},
          {"ratios", ratios},
          {"scaling", scaling},
          {"triad_one_thread", triad(r.triad_one)},
          {"triad_all_workers", triad(r.triad_all)},
          {"triad_one_thread_cold", triad(r.triad_one_cold)},
          {"triad_all_workers_cold", triad(r.triad_all_cold)},
          {"bandwidth", bandwidth}};
}

std::string FormatScenario(const ScenarioResult& r) {
  std::string out = absl::StrFormat(
      "\n== %s%s: %s\n   size %s, %d measured frames per run (+%d warm-up)\n",
      r.name, r.allocation_heavy ? " (allocation-heavy)" : "", r.description,
      Thousands(static_cast<double>(r.size)), r.frames, r.warmup);
  absl::StrAppendFormat(
      &out, "%-24s %3s %10s %10s %10s %14s %12s %14s %12s %10s\n", "run", "thr",
      "median ms", "p99 ms", "mean ms", "heap allocs/f", "heap MB/f",
      "arena allocs/f", "arena MB/f", "faults/f");
  for (const VariantRun& run : r.runs) {
    const std::vector<double> ms = run.FrameMs();
    const double heap_allocs = MeanOf(run, [](const FrameRecord& f) {
      return static_cast<double>(f.heap_allocations);
    });
    const double heap_mb = MeanOf(run, [](const FrameRecord& f) {
      return static_cast<double>(f.heap_bytes) / 1e6;
    });
    const double arena_mb = MeanOf(run, [](const FrameRecord& f) {
      return static_cast<double>(f.arena_bytes) / 1e6;
    });
    const std::string arena_allocs =
        ArenaCountKnown(run) ? Thousands(MeanOf(run,
                                                [](const FrameRecord& f) {
                                                  return static_cast<double>(
                                                      f.arena_allocations);
                                                }))
                             : "n/a";
    const double faults = MeanOf(run, [](const FrameRecord& f) {
      return static_cast<double>(f.page_faults);
    });
    absl::StrAppendFormat(
        &out, "%-24s %3d %10.2f %10.2f %10.2f %14s %12.2f %14s %12.2f %10s\n",
        run.label, run.threads, Median(ms), Percentile(ms, 0.99), Mean(ms),
        Thousands(heap_allocs), heap_mb, arena_allocs, arena_mb,
        Thousands(faults));
  }
  for (const Ratio& q : Ratios(r)) {
    absl::StrAppendFormat(&out,
                          "  %-52s %6.2fx median, %6.2fx p99 (%s faster "
                          "if > 1)\n",
                          q.name, q.median, q.p99, q.faster);
  }
  if (const std::optional<ScalingBreakdown> b = Scaling(r); b.has_value()) {
    absl::StrAppendFormat(
        &out,
        "  runtime-arena scaling, mean frames: %.2fx = %d/%d workers x "
        "%.0f%%/%.0f%% busy in jobs / %.2fx job time per frame\n",
        b->speedup, b->workers_all, b->workers_one, 100 * b->busy_all,
        100 * b->busy_one, b->job_time_growth);
  }
  {
    for (const auto* t :
         {&r.triad_one, &r.triad_one_cold, &r.triad_all, &r.triad_all_cold}) {
      if (!t->has_value()) continue;
      absl::StrAppendFormat(
          &out,
          "  STREAM triad%s, %d thread(s), 3 x %.1f MiB: %.2f GB/s median, "
          "%.2f GB/s best of %d\n",
          (*t)->cold ? " (caches evicted)" : "", (*t)->threads,
          static_cast<double>((*t)->bytes_per_array) / (1 << 20),
          (*t)->median_gbps, (*t)->best_gbps, (*t)->repetitions);
    }
  }
  for (const PassBandwidth& b : Bandwidth(r)) {
    const VariantRun* run = r.Find(b.run);
    absl::StrAppendFormat(
        &out,
        "  %s in %s (%d thread(s)): %.2f GB/s median = %.1f%% of the %striad "
        "(best %.2f GB/s = %.1f%% of the best)\n",
        run->pass->label, b.run, b.threads, b.median_gbps, b.percent_of_triad,
        b.cold_triad ? "cache-evicted " : "", b.best_gbps,
        b.triad_best_gbps > 0 ? 100.0 * b.best_gbps / b.triad_best_gbps : 0.0);
  }
  if (!r.runs.empty()) {
    if (r.states_equal) {
      absl::StrAppendFormat(
          &out, "  state identical in all %d runs: StateHash %s\n",
          static_cast<int>(r.runs.size()), Hex(r.runs[0].state_hash));
    } else {
      absl::StrAppendFormat(&out, "  STATE MISMATCH:");
      for (const VariantRun& run : r.runs) {
        absl::StrAppendFormat(&out, " %s=%s", run.label, Hex(run.state_hash));
      }
      out += "\n";
    }
  }
  return out;
}

namespace {

const char* ColorOf(const std::string& label) {
  if (label == "heap") return "#d62728";
  if (label == "arena") return "#2ca02c";
  if (label == "runtime-heap") return "#ff7f0e";
  if (label == "runtime-arena") return "#1f77b4";
  if (label == "runtime-arena-1w") return "#17becf";
  if (label == "mimalloc heap") return "#9467bd";
  if (label == "mimalloc runtime-heap") return "#e377c2";
  return "#7f7f7f";
}

// A nice upper bound for an axis: 1, 2 or 5 times a power of ten.
double NiceCeil(double v) {
  if (!(v > 0)) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= v) return m * p;
  }
  return 10 * p;
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// One panel: a line per run of value(frame) against the frame index. A
// non-finite value has no point (the line joins its neighbours) and does
// not set the scale; a value below 0 is drawn at 0 (the panel's bottom).
void Panel(std::string& svg, double x0, double y0, double w, double h,
           const std::string& title, const std::string& unit,
           const std::vector<VariantRun>& runs,
           double (*value)(const FrameRecord&)) {
  double max_v = 0;
  size_t max_frames = 1;
  for (const VariantRun& run : runs) {
    max_frames = std::max(max_frames, run.frames.size());
    for (const FrameRecord& f : run.frames) {
      const double v = value(f);
      if (std::isfinite(v)) max_v = std::max(max_v, v);
    }
  }
  const double top = NiceCeil(max_v);
  absl::StrAppendFormat(&svg,
                        "<text x='%.1f' y='%.1f' font-size='13' "
                        "font-weight='bold'>%s</text>\n",
                        x0, y0 - 8, Escape(title));
  absl::StrAppendFormat(&svg,
                        "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' "
                        "fill='none' stroke='#444'/>\n",
                        x0, y0, w, h);
  for (int t = 0; t <= 4; ++t) {
    const double y = y0 + h - h * t / 4.0;
    absl::StrAppendFormat(&svg,
                          "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' "
                          "stroke='#ddd'/><text x='%.1f' y='%.1f' "
                          "font-size='10' text-anchor='end'>%g</text>\n",
                          x0, y, x0 + w, y, x0 - 4, y + 3, top * t / 4.0);
  }
  absl::StrAppendFormat(&svg,
                        "<text x='%.1f' y='%.1f' font-size='10' "
                        "text-anchor='middle'>frame (1..%d)</text>\n",
                        x0 + w / 2, y0 + h + 14, static_cast<int>(max_frames));
  absl::StrAppendFormat(&svg,
                        "<text x='%.1f' y='%.1f' font-size='10' "
                        "transform='rotate(-90 %.1f %.1f)' "
                        "text-anchor='middle'>%s</text>\n",
                        x0 - 34, y0 + h / 2, x0 - 34, y0 + h / 2, unit);
  int legend = 0;
  for (const VariantRun& run : runs) {
    if (run.frames.empty()) continue;
    std::string points;
    for (size_t i = 0; i < run.frames.size(); ++i) {
      const double v = value(run.frames[i]);
      if (!std::isfinite(v)) continue;
      const double x =
          x0 + (max_frames > 1 ? w * static_cast<double>(i) /
                                     static_cast<double>(max_frames - 1)
                               : w / 2);
      const double y = y0 + h - h * std::clamp(v / top, 0.0, 1.0);
      absl::StrAppendFormat(&points, "%.1f,%.1f ", x, y);
    }
    absl::StrAppendFormat(&svg,
                          "<polyline fill='none' stroke='%s' "
                          "stroke-width='1.5' points='%s'/>\n",
                          ColorOf(run.label), points);
    absl::StrAppendFormat(&svg,
                          "<rect x='%.1f' y='%.1f' width='10' height='3' "
                          "fill='%s'/><text x='%.1f' y='%.1f' "
                          "font-size='10'>%s</text>\n",
                          x0 + w + 8, y0 + 6 + 14 * legend, ColorOf(run.label),
                          x0 + w + 22, y0 + 10 + 14 * legend,
                          Escape(run.label));
    ++legend;
  }
}

}  // namespace

std::string RenderSvg(const std::vector<ScenarioResult>& results) {
  constexpr double kWidth = 1180, kRow = 300, kPanelW = 380, kPanelH = 210;
  const double height = 40 + kRow * static_cast<double>(results.size());
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' "
      "font-family='sans-serif'>\n<rect width='100%%' height='100%%' "
      "fill='white'/>\n<text x='20' y='24' font-size='16' "
      "font-weight='bold'>framealloc simulation suite: frame time and "
      "memory per frame</text>\n",
      kWidth, height);
  double y = 40;
  for (const ScenarioResult& r : results) {
    const std::string head = absl::StrFormat(
        "%s (size %s)", r.name, Thousands(static_cast<double>(r.size)));
    Panel(svg, 70, y + 40, kPanelW, kPanelH, head + ": frame time", "ms",
          r.runs, [](const FrameRecord& f) { return f.ms; });
    Panel(svg, 70 + kPanelW + 190, y + 40, kPanelW, kPanelH,
          head + ": memory per frame (heap + arena)", "MB", r.runs,
          [](const FrameRecord& f) {
            return static_cast<double>(f.heap_bytes + f.arena_bytes) / 1e6;
          });
    y += kRow;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace framealloc::sim
