// The server's allocating endpoints as plain functions: the JSON
// aggregation and the particle simulation step, on request memory.
//
// For: the work behind POST /aggregate and GET /simulate, separated from
// HTTP so that it can be called (and tested) on any RequestArena. Every
// temporary (parsed values, groups, particle arrays, neighbour grids)
// lives in the request's arena and counts against its budget; the result
// is the response body, a std::string of its own.
// Not for: routing, status codes or statistics (server.h does those).
//
// Thread safety: each call uses only its arguments; calls on different
// RequestArenas may run concurrently.
// Errors: InvalidArgument for bad input (malformed JSON with nlohmann's
// position, a bad element or parameter, named) -> 400; ResourceExhausted
// when the request's budget refuses memory -> 503. Nothing throws out of
// these functions and nothing aborts.
//
// Example:
//   RequestArena request(&arena, 1 << 20);
//   absl::StatusOr<std::string> body = Aggregate("[1, 2, 3]", request);
//   // *body == {"count":3,"sum":6,"mean":2,...}
#ifndef INTEGRATION_SERVER_ENDPOINTS_H_
#define INTEGRATION_SERVER_ENDPOINTS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "integration/server/request_arena.h"

namespace framealloc {
namespace server {

// Aggregates a JSON array whose elements are numbers or objects
// {"key": "<string>", "value": <number>} (other fields ignored; "key"
// optional). Streams the document through nlohmann's SAX parser, so no
// DOM is built: values and per-key groups go straight into request memory.
// Body: {"count","sum","mean","min","max","p50","p90","p99",
//        "groups":[{"key","count","sum","mean","min","max"}, ...] (by key),
//        "request_peak_bytes"}; percentiles are nearest-rank.
absl::StatusOr<std::string> Aggregate(absl::string_view body,
                                      RequestArena& request);

// GET /simulate's parameters.
struct SimulateParams {
  int64_t particles = 0;  // 1..kMaxParticles.
  int64_t steps = 1;      // 1..kMaxSteps; particles * steps <= kMaxWork.
  uint64_t seed = 1;

  static constexpr int64_t kMaxParticles = 1'000'000;
  static constexpr int64_t kMaxSteps = 1000;
  static constexpr int64_t kMaxWork = 20'000'000;

  // From the raw query string (what follows '?' in the request target,
  // still percent-encoded): particles (required), steps, seed. Segments are
  // split on '&', each on its first '=' only, then percent-decoded ('+' is a
  // space). A value must be a plain decimal integer (ASCII digits only: no
  // sign, spaces, second '=' or ';') in range. Unknown, repeated,
  // malformed or out-of-range parameters are InvalidArgument naming the
  // parameter; so are a segment without a name ("=5", or an empty one
  // between two '&') and a broken percent escape.
  static absl::StatusOr<SimulateParams> FromQuery(absl::string_view raw_query);
};

// A plain decimal integer: one or more ASCII digits and nothing else (no
// sign, no spaces, no second '=' or ';' that a lenient split would have cut
// off). Range and overflow are the caller's (absl::SimpleAtoi). For query
// parameters and the Content-Length header alike.
bool IsPlainDecimal(absl::string_view text);

// Runs `steps` steps of a 2-D particle system in the unit box: a uniform
// grid rebuilt every step (counting sort of particles by cell), short-range
// repulsion between neighbours, integration with reflecting walls. The
// particle state lives for the whole request; each step's grid and forces
// are released when the step ends (RequestArena::Scope). Deterministic for
// a given seed. About 64 bytes per particle at the peak.
// Body: {"particles","steps","seed","grid","contacts" (pairs in contact in
// the last step),"kinetic_energy","centroid":[x,y],"inside_box",
// "request_peak_bytes"}.
absl::StatusOr<std::string> Simulate(const SimulateParams& params,
                                     RequestArena& request);

// Appends `s` as a JSON string literal (quotes, backslashes and control
// characters escaped; a byte that is not part of well-formed UTF-8 becomes
// U+FFFD, so the result is valid JSON whatever `s` holds).
void AppendJsonString(std::string* out, absl::string_view s);
// Appends a JSON number: shortest exact form of a finite double, `null`
// otherwise.
void AppendJsonNumber(std::string* out, double v);

}  // namespace server
}  // namespace framealloc

#endif  // INTEGRATION_SERVER_ENDPOINTS_H_
