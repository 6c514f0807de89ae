// The aggregation (SAX over nlohmann/json into request memory) and the
// particle simulation behind the server's allocating endpoints.
#include "integration/server/endpoints.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory_resource>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "alloc/internal/json.h"
#include "nlohmann/json.hpp"

namespace framealloc {
namespace server {

void AppendJsonString(std::string* out, absl::string_view s) {
  alloc_internal::AppendJsonString(out, s);
}

void AppendJsonNumber(std::string* out, double v) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  char buffer[32];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), v);
  out->append(buffer, ec == std::errc() ? end : buffer);
}

bool IsPlainDecimal(absl::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return c >= '0' && c <= '9';
  });
}

namespace {

// ---------------------------------------------------------------------------
// POST /aggregate

struct Group {
  uint64_t count = 0;
  double sum = 0;
  double min = 0;
  double max = 0;
};

// Not absl::flat_hash_map: its rehash sets the new capacity before it
// allocates the new table, so an allocation refused by the request's
// budget (a throw) left the map claiming a table it does not have, and its
// destructor read past the old one (abseil/abseil-cpp#1581; ASan in
// EndpointsTest.AggregateRefusedAtAnyPointFailsCleanly). std::unordered_map
// allocates a node or a bucket array before it changes anything.
using GroupMap = std::pmr::unordered_map<std::string_view, Group>;

// Receives nlohmann's SAX events and aggregates as they come. Callbacks
// return false to stop the parse: on a bad element (error_) or when the
// request's memory refuses (budget_exceeded_). Allocation failures surface
// here as BudgetExceeded from the pmr containers and are caught at once,
// so no exception crosses the parser.
class AggregateSax {
 public:
  using json = nlohmann::json;

  explicit AggregateSax(RequestArena& request)
      : request_(request),
        values_(request.resource()),
        groups_(request.resource()),
        pending_key_(request.resource()) {}

  bool null() { return Scalar("null"); }
  bool boolean(bool) { return Scalar("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    return Number(static_cast<double>(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    return Number(static_cast<double>(v));
  }
  bool number_float(json::number_float_t v, const json::string_t&) {
    return Number(v);
  }
  bool string(json::string_t& s) {
    if (depth_ == 2 && field_ == Field::kKey) {
      try {
        pending_key_.assign(s.data(), s.size());
      } catch (const BudgetExceeded&) {
        return OutOfBudget();
      }
      has_key_ = true;
      return true;
    }
    return Scalar("a string");
  }
  bool binary(json::binary_t&) { return Scalar("binary data"); }

  bool start_object(size_t) {
    if (depth_ == 1) {
      depth_ = 2;
      has_key_ = false;
      has_value_ = false;
      field_ = Field::kOther;
      return true;
    }
    return StartContainer("an object");
  }
  bool key(json::string_t& k) {
    if (depth_ == 2) {
      field_ = k == "value" ? Field::kValue
               : k == "key" ? Field::kKey
                            : Field::kOther;
    }
    return true;
  }
  bool end_object() {
    if (depth_ > 2) {
      --depth_;
      return true;
    }
    depth_ = 1;
    if (!has_value_) {
      return Fail(absl::StrCat("element ", element_,
                               ": an object needs a numeric \"value\""));
    }
    return Add(value_, has_key_);
  }
  bool start_array(size_t) {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    return StartContainer("an array");
  }
  bool end_array() {
    --depth_;
    return true;
  }
  bool parse_error(size_t, const std::string&,
                   const nlohmann::detail::exception& ex) {
    if (error_.ok()) {
      // nlohmann quotes the last token read: keep a long one short.
      absl::string_view what = ex.what();
      error_ = absl::InvalidArgumentError(
          absl::StrCat("malformed JSON: ", what.substr(0, 240),
                       what.size() > 240 ? "..." : ""));
    }
    return false;
  }

  // The outcome once the parse is over.
  absl::StatusOr<std::string> Finish(bool parsed) {
    if (budget_exceeded_) {
      return request_.BudgetError(
          absl::StrCat("aggregating element ", element_));
    }
    if (!error_.ok()) return error_;
    if (!parsed) return absl::InvalidArgumentError("malformed JSON");
    if (values_.empty()) {
      return absl::InvalidArgumentError(
          "the array is empty: nothing to aggregate");
    }
    try {
      return Report();
    } catch (const BudgetExceeded&) {
      return request_.BudgetError("sorting the values");
    }
  }

 private:
  enum class Field { kValue, kKey, kOther };

  bool Fail(std::string message) {
    error_ = absl::InvalidArgumentError(std::move(message));
    return false;
  }
  bool OutOfBudget() {
    budget_exceeded_ = true;
    return false;
  }
  static constexpr const char* kShape =
      "the body must be a JSON array of numbers or {\"key\": <string>, "
      "\"value\": <number>} objects";

  bool Scalar(const char* what) {
    switch (depth_) {
      case 0:
        return Fail(kShape);
      case 1:
        return Fail(absl::StrCat("element ", element_,
                                 ": expected a number or an object, got ",
                                 what));
      case 2:
        if (field_ == Field::kValue) {
          return Fail(absl::StrCat("element ", element_,
                                   ": \"value\" must be a number, got ", what));
        }
        if (field_ == Field::kKey) {
          return Fail(absl::StrCat("element ", element_,
                                   ": \"key\" must be a string, got ", what));
        }
        return true;  // Another field: ignored.
      default:
        return true;  // Inside an ignored field.
    }
  }
  bool StartContainer(const char* what) {
    if (depth_ == 2 && field_ != Field::kOther) return Scalar(what);
    if (depth_ < 2) return Scalar(what);
    ++depth_;  // An ignored field's value: skipped as a whole.
    return true;
  }
  bool Number(double v) {
    if (depth_ == 1) return Add(v, /*keyed=*/false);
    if (depth_ == 2 && field_ == Field::kValue) {
      value_ = v;
      has_value_ = true;
      return true;
    }
    if (depth_ == 2 && field_ == Field::kKey) return Scalar("a number");
    if (depth_ == 0) return Fail(kShape);
    return true;
  }
  bool Add(double v, bool keyed) {
    if (!std::isfinite(v)) {
      return Fail(absl::StrCat("element ", element_,
                               ": the value is out of range of a double"));
    }
    try {
      values_.push_back(v);
      if (keyed) {
        auto it = groups_.find(std::string_view(pending_key_));
        if (it == groups_.end()) {
          // The key's text is copied once, when its group is created.
          char* text = static_cast<char*>(
              request_.TryAllocate(pending_key_.size() + 1, 1));
          if (text == nullptr) return OutOfBudget();
          std::memcpy(text, pending_key_.data(), pending_key_.size());
          it = groups_
                   .emplace(std::string_view(text, pending_key_.size()),
                            Group{0, 0, v, v})
                   .first;
        }
        Group& g = it->second;
        ++g.count;
        g.sum += v;
        g.min = std::min(g.min, v);
        g.max = std::max(g.max, v);
      }
    } catch (const BudgetExceeded&) {
      return OutOfBudget();
    }
    ++element_;
    return true;
  }

  std::string Report() {
    std::sort(values_.begin(), values_.end());
    double sum = 0;
    for (double v : values_) sum += v;
    const size_t n = values_.size();
    const auto percentile = [&](double p) {
      // Nearest rank: the smallest value with at least p% at or below it.
      size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * n));
      return values_[std::clamp<size_t>(rank, 1, n) - 1];
    };
    std::string out;
    absl::StrAppend(&out, "{\"count\":", n, ",\"sum\":");
    AppendJsonNumber(&out, sum);
    out.append(",\"mean\":");
    AppendJsonNumber(&out, sum / static_cast<double>(n));
    out.append(",\"min\":");
    AppendJsonNumber(&out, values_.front());
    out.append(",\"max\":");
    AppendJsonNumber(&out, values_.back());
    for (int p : {50, 90, 99}) {
      absl::StrAppend(&out, ",\"p", p, "\":");
      AppendJsonNumber(&out, percentile(p));
    }
    out.append(",\"groups\":[");
    std::pmr::vector<const GroupMap::value_type*> sorted(request_.resource());
    sorted.reserve(groups_.size());
    for (const auto& entry : groups_) sorted.push_back(&entry);
    std::sort(sorted.begin(), sorted.end(),
              [](const auto* a, const auto* b) { return a->first < b->first; });
    for (size_t i = 0; i < sorted.size(); ++i) {
      const Group& g = sorted[i]->second;
      if (i > 0) out.push_back(',');
      out.append("{\"key\":");
      const std::string_view key = sorted[i]->first;
      AppendJsonString(&out, absl::string_view(key.data(), key.size()));
      absl::StrAppend(&out, ",\"count\":", g.count, ",\"sum\":");
      AppendJsonNumber(&out, g.sum);
      out.append(",\"mean\":");
      AppendJsonNumber(&out, g.sum / static_cast<double>(g.count));
      out.append(",\"min\":");
      AppendJsonNumber(&out, g.min);
      out.append(",\"max\":");
      AppendJsonNumber(&out, g.max);
      out.push_back('}');
    }
    absl::StrAppend(&out, "],\"request_peak_bytes\":", request_.peak_bytes(),
                    "}");
    return out;
  }

  RequestArena& request_;
  std::pmr::vector<double> values_;
  GroupMap groups_;
  std::pmr::string pending_key_;  // The current element's "key".
  int depth_ = 0;  // 1: the top array; 2: an element object; more: skipped.
  size_t element_ = 0;  // Index of the element being read.
  Field field_ = Field::kOther;
  bool has_key_ = false;
  bool has_value_ = false;
  double value_ = 0;
  bool budget_exceeded_ = false;
  absl::Status error_;
};

// ---------------------------------------------------------------------------
// GET /simulate

// splitmix64: a small, fast, well-mixed generator; deterministic per seed.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

absl::Status ParseInt(const std::string& name, const std::string& text,
                      int64_t lo, int64_t hi, int64_t* out) {
  if (!IsPlainDecimal(text) || !absl::SimpleAtoi(text, out) || *out < lo ||
      *out > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("query parameter '", name, "' must be an integer in ", lo,
                     "..", hi, ", got '", text, "'"));
  }
  return absl::OkStatus();
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Undoes the query's form encoding: %XX is the byte XX, '+' a space. False
// for a '%' not followed by two hex digits.
bool PercentDecode(absl::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out->push_back(' ');
    } else if (in[i] != '%') {
      out->push_back(in[i]);
    } else {
      const int hi = i + 1 < in.size() ? HexDigit(in[i + 1]) : -1;
      const int lo = i + 2 < in.size() ? HexDigit(in[i + 2]) : -1;
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> Aggregate(absl::string_view body,
                                      RequestArena& request) {
  AggregateSax sax(request);
  const bool parsed = nlohmann::json::sax_parse(body.begin(), body.end(), &sax);
  return sax.Finish(parsed);
}

absl::StatusOr<SimulateParams> SimulateParams::FromQuery(
    absl::string_view raw_query) {
  // Split here, not by cpp-httplib: it splits a segment on every '=' and
  // keeps the last piece, so "particles=abc=20" arrived as 20.
  std::vector<std::pair<std::string, std::string>> query;
  if (!raw_query.empty()) {
    for (absl::string_view segment : absl::StrSplit(raw_query, '&')) {
      const size_t eq = segment.find('=');
      std::string name, value;
      if (!PercentDecode(segment.substr(0, eq), &name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("query parameter '", segment.substr(0, eq),
                         "' is not well-formed percent-encoding"));
      }
      if (name.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("a query parameter without a name ('", segment, "')"));
      }
      if (eq != absl::string_view::npos &&
          !PercentDecode(segment.substr(eq + 1), &value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("query parameter '", name, "' has a value ('",
                         segment.substr(eq + 1),
                         "') that is not well-formed percent-encoding"));
      }
      query.emplace_back(std::move(name), std::move(value));
    }
  }
  SimulateParams p;
  bool have_particles = false;
  for (auto it = query.begin(); it != query.end(); ++it) {
    const std::string& name = it->first;
    if (std::count_if(query.begin(), query.end(),
                      [&name](const auto& q) { return q.first == name; }) > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("query parameter '", name, "' is repeated"));
    }
    if (name == "particles") {
      absl::Status s =
          ParseInt(name, it->second, 1, kMaxParticles, &p.particles);
      if (!s.ok()) return s;
      have_particles = true;
    } else if (name == "steps") {
      absl::Status s = ParseInt(name, it->second, 1, kMaxSteps, &p.steps);
      if (!s.ok()) return s;
    } else if (name == "seed") {
      if (!IsPlainDecimal(it->second) ||
          !absl::SimpleAtoi(it->second, &p.seed)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query parameter 'seed' must be an unsigned 64-bit integer, got '",
            it->second, "'"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown query parameter '", name,
                       "' (simulate takes particles, steps and seed)"));
    }
  }
  if (!have_particles) {
    return absl::InvalidArgumentError(
        "query parameter 'particles' is required (1..1000000)");
  }
  if (p.particles * p.steps > kMaxWork) {
    return absl::InvalidArgumentError(
        absl::StrCat("particles * steps = ", p.particles * p.steps, " exceeds ",
                     kMaxWork, ": ask for fewer particles or steps"));
  }
  return p;
}

absl::StatusOr<std::string> Simulate(const SimulateParams& params,
                                     RequestArena& request) {
  const size_t n = static_cast<size_t>(params.particles);
  // Interaction distance for about seven neighbours each at this density;
  // cells at least that wide, so a 3x3 block of cells holds every
  // neighbour.
  const double reach =
      std::min(0.25, std::sqrt(7.0 / (M_PI * static_cast<double>(n))));
  const int grid = std::clamp(static_cast<int>(1.0 / reach), 1, 1024);
  const size_t cells = static_cast<size_t>(grid) * grid;
  constexpr double kStiffness = 40.0;
  constexpr double kDt = 0.002;
  constexpr double kDamping = 0.995;

  std::span<double> x = request.TryArray<double>(n);
  std::span<double> y = request.TryArray<double>(n);
  std::span<double> vx = request.TryArray<double>(n);
  std::span<double> vy = request.TryArray<double>(n);
  // Each array is checked: a refused one may be followed by smaller ones
  // that fit, or by a chunk the source gives after refusing one.
  if (x.empty() || y.empty() || vx.empty() || vy.empty()) {
    return request.BudgetError(absl::StrCat("the state of ", n, " particles"));
  }
  SplitMix64 rng(params.seed);
  for (size_t i = 0; i < n; ++i) {
    x[i] = rng.Uniform();
    y[i] = rng.Uniform();
    vx[i] = (rng.Uniform() - 0.5) * 0.2;
    vy[i] = (rng.Uniform() - 0.5) * 0.2;
  }

  const auto cell_of = [&](size_t i) {
    const int cx = std::min(grid - 1, static_cast<int>(x[i] * grid));
    const int cy = std::min(grid - 1, static_cast<int>(y[i] * grid));
    return static_cast<uint32_t>(cy * grid + cx);
  };
  uint64_t contacts = 0;
  for (int64_t step = 0; step < params.steps; ++step) {
    RequestArena::Scope step_memory(&request);  // This step's grid, forces.
    std::span<uint32_t> cell = request.TryArray<uint32_t>(n);
    std::span<uint32_t> start = request.TryArray<uint32_t>(cells + 1);
    std::span<uint32_t> order = request.TryArray<uint32_t>(n);
    std::span<double> fx = request.TryArray<double>(n);
    std::span<double> fy = request.TryArray<double>(n);
    if (cell.empty() || start.empty() || order.empty() || fx.empty() ||
        fy.empty()) {
      return request.BudgetError(absl::StrCat(
          "step ", step, "'s grid of ", cells, " cells for ", n, " particles"));
    }
    // Counting sort of the particles by cell.
    std::fill(start.begin(), start.end(), 0u);
    for (size_t i = 0; i < n; ++i) {
      cell[i] = cell_of(i);
      ++start[cell[i] + 1];
    }
    for (size_t c = 0; c < cells; ++c) start[c + 1] += start[c];
    {
      RequestArena::Scope fill_memory(&request);
      std::span<uint32_t> next = request.TryArray<uint32_t>(cells);
      if (next.empty()) {
        return request.BudgetError(absl::StrCat("step ", step, "'s sort"));
      }
      std::copy(start.begin(), start.end() - 1, next.begin());
      for (size_t i = 0; i < n; ++i) order[next[cell[i]]++] = i;
    }
    // Repulsion between particles closer than `reach`.
    contacts = 0;
    for (size_t i = 0; i < n; ++i) {
      double fxi = 0, fyi = 0;
      const int cx = static_cast<int>(cell[i] % grid);
      const int cy = static_cast<int>(cell[i] / grid);
      for (int ny = std::max(0, cy - 1); ny <= std::min(grid - 1, cy + 1);
           ++ny) {
        for (int nx = std::max(0, cx - 1); nx <= std::min(grid - 1, cx + 1);
             ++nx) {
          const size_t c = static_cast<size_t>(ny) * grid + nx;
          for (uint32_t k = start[c]; k < start[c + 1]; ++k) {
            const uint32_t j = order[k];
            if (j == i) continue;
            const double dx = x[i] - x[j];
            const double dy = y[i] - y[j];
            const double d2 = dx * dx + dy * dy;
            if (d2 >= reach * reach || d2 == 0) continue;
            const double d = std::sqrt(d2);
            const double push = kStiffness * (reach - d) / d;
            fxi += push * dx;
            fyi += push * dy;
            if (j > i) ++contacts;
          }
        }
      }
      fx[i] = fxi;
      fy[i] = fyi;
    }
    // Integration with reflecting walls.
    for (size_t i = 0; i < n; ++i) {
      vx[i] = (vx[i] + fx[i] * kDt) * kDamping;
      vy[i] = (vy[i] + fy[i] * kDt) * kDamping;
      x[i] += vx[i] * kDt;
      y[i] += vy[i] * kDt;
      if (x[i] < 0) x[i] = -x[i], vx[i] = -vx[i];
      if (x[i] > 1) x[i] = 2 - x[i], vx[i] = -vx[i];
      if (y[i] < 0) y[i] = -y[i], vy[i] = -vy[i];
      if (y[i] > 1) y[i] = 2 - y[i], vy[i] = -vy[i];
      x[i] = std::clamp(x[i], 0.0, 1.0);
      y[i] = std::clamp(y[i], 0.0, 1.0);
    }
  }

  double energy = 0, cx = 0, cy = 0;
  bool inside = true;
  for (size_t i = 0; i < n; ++i) {
    energy += 0.5 * (vx[i] * vx[i] + vy[i] * vy[i]);
    cx += x[i];
    cy += y[i];
    inside = inside && x[i] >= 0 && x[i] <= 1 && y[i] >= 0 && y[i] <= 1;
  }
  std::string out;
  absl::StrAppend(&out, "{\"particles\":", n, ",\"steps\":", params.steps,
                  ",\"seed\":", params.seed, ",\"grid\":", grid,
                  ",\"contacts\":", contacts, ",\"kinetic_energy\":");
  AppendJsonNumber(&out, energy);
  out.append(",\"centroid\":[");
  AppendJsonNumber(&out, cx / static_cast<double>(n));
  out.push_back(',');
  AppendJsonNumber(&out, cy / static_cast<double>(n));
  absl::StrAppend(&out, "],\"inside_box\":", inside ? "true" : "false",
                  ",\"request_peak_bytes\":", request.peak_bytes(), "}");
  return out;
}

}  // namespace server
}  // namespace framealloc
