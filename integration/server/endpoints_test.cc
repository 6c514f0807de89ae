// The endpoints and RequestArena without HTTP: values, errors, budgets,
// and memory handed back.
#include "integration/server/endpoints.h"

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "alloc/chunk_cache.h"
#include "alloc/error.h"
#include "alloc/frame_arena.h"
#include "alloc/internal/test_util.h"
#include "alloc/memory_source.h"
#include "gtest/gtest.h"
#include "integration/server/request_arena.h"
#include "nlohmann/json.hpp"

namespace framealloc {
namespace server {
namespace {

using json = nlohmann::json;

class EndpointsTest : public ::testing::Test {
 protected:
  ChunkCache cache_{&SystemMemorySource::Default()};
  FrameArena arena_{&cache_};
};

json AggregateOk(FrameArena& arena, const std::string& body) {
  RequestArena request(&arena, 1 << 20);
  absl::StatusOr<std::string> out = Aggregate(body, request);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? json::parse(*out) : json();
}

TEST_F(EndpointsTest, AggregateComputesTotalsAndNearestRankPercentiles) {
  json r = AggregateOk(arena_, "[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]");
  EXPECT_EQ(r["count"], 10);
  EXPECT_DOUBLE_EQ(r["sum"].get<double>(), 55);
  EXPECT_DOUBLE_EQ(r["mean"].get<double>(), 5.5);
  EXPECT_DOUBLE_EQ(r["min"].get<double>(), 1);
  EXPECT_DOUBLE_EQ(r["max"].get<double>(), 10);
  EXPECT_DOUBLE_EQ(r["p50"].get<double>(), 5);   // rank ceil(5) = 5
  EXPECT_DOUBLE_EQ(r["p90"].get<double>(), 9);   // rank 9
  EXPECT_DOUBLE_EQ(r["p99"].get<double>(), 10);  // rank ceil(9.9) = 10
  EXPECT_TRUE(r["groups"].empty());
}

TEST_F(EndpointsTest, AggregateGroupsByKeyInKeyOrder) {
  json r = AggregateOk(arena_, R"([{"key":"b","value":2},{"value":100},)"
                               R"({"key":"a","value":-1.5,"note":{"x":[1,2]}},)"
                               R"({"key":"b","value":4,"tags":["u","v"]}, 7])");
  EXPECT_EQ(r["count"], 5);
  EXPECT_DOUBLE_EQ(r["sum"].get<double>(), 111.5);
  ASSERT_EQ(r["groups"].size(), 2u);
  EXPECT_EQ(r["groups"][0]["key"], "a");
  EXPECT_EQ(r["groups"][0]["count"], 1);
  EXPECT_DOUBLE_EQ(r["groups"][0]["min"].get<double>(), -1.5);
  EXPECT_EQ(r["groups"][1]["key"], "b");
  EXPECT_EQ(r["groups"][1]["count"], 2);
  EXPECT_DOUBLE_EQ(r["groups"][1]["mean"].get<double>(), 3);
  EXPECT_DOUBLE_EQ(r["groups"][1]["max"].get<double>(), 4);
}

TEST_F(EndpointsTest, AggregateEscapesKeysInTheResponse) {
  json r = AggregateOk(arena_, R"([{"key":"q\"uote\\\n\u0001","value":1}])");
  EXPECT_EQ(r["groups"][0]["key"], "q\"uote\\\n\x01");
}

// Text echoed into error bodies may hold any bytes: well-formed UTF-8 is
// kept, anything else becomes U+FFFD, so the body always parses.
TEST(JsonStringTest, BytesThatAreNotUtf8BecomeTheReplacementCharacter) {
  const std::pair<std::string, std::string> cases[] = {
      {"plain", "plain"},
      {"caf\xc3\xa9", "caf\xc3\xa9"},    // Well-formed: kept.
      {"\xff", "\xef\xbf\xbd"},          // A byte that is never UTF-8.
      {"cut \xc3", "cut \xef\xbf\xbd"},  // A sequence cut short.
      {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // A surrogate.
      {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},  // Four bytes: kept.
  };
  for (const auto& [in, want] : cases) {
    std::string out;
    AppendJsonString(&out, in);
    ASSERT_TRUE(json::accept(out)) << out;
    EXPECT_EQ(json::parse(out).get<std::string>(), want) << out;
  }
}

TEST_F(EndpointsTest, AggregateRejectsBadDocumentsNamingTheProblem) {
  const std::map<std::string, std::string> cases = {
      {"[1, 2", "malformed JSON"},
      {"", "malformed JSON"},
      {"{\"a\": 1}", "must be a JSON array"},
      {"[1, \"x\"]", "element 1: expected a number or an object, got a string"},
      {"[[1]]", "element 0: expected a number or an object, got an array"},
      {"[{\"key\":\"a\"}]", "element 0: an object needs a numeric \"value\""},
      {"[{\"value\":\"3\"}]", "element 0: \"value\" must be a number"},
      {"[{\"key\":3,\"value\":3}]", "element 0: \"key\" must be a string"},
      {"[]", "the array is empty"},
      {"[1e999]", "number overflow"},
      {"[1] 2", "malformed JSON"},
  };
  for (const auto& [body, message] : cases) {
    RequestArena request(&arena_, 1 << 20);
    absl::StatusOr<std::string> out = Aggregate(body, request);
    ASSERT_FALSE(out.ok()) << body;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_NE(out.status().message().find(message), std::string::npos)
        << body << " -> " << out.status();
  }
}

TEST_F(EndpointsTest, AggregateOverBudgetIsResourceExhaustedAndReleased) {
  std::string body = "[";
  for (int i = 0; i < 20000; ++i) body += std::to_string(i) + ",";
  body += "0]";
  const size_t in_use_before = cache_.stats().in_use_bytes;
  {
    RequestArena request(&arena_, 16 << 10);
    absl::StatusOr<std::string> out = Aggregate(body, request);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(out.status().message().find("request memory budget exceeded"),
              std::string::npos);
    EXPECT_GT(request.refusals(), 0u);
    EXPECT_LE(request.peak_bytes(), size_t{16} << 10);
  }
  EXPECT_EQ(arena_.stats().bytes_used, 0u);
  // The same document fits a larger budget, on the same arena.
  json r = AggregateOk(arena_, body);
  EXPECT_EQ(r["count"], 20001);
  EXPECT_GT(r["request_peak_bytes"].get<size_t>(), size_t{16} << 10);
  EXPECT_EQ(arena_.stats().bytes_used, 0u);
  // Only the kept first chunk stays with the arena.
  EXPECT_LE(cache_.stats().in_use_bytes,
            in_use_before + arena_.options().initial_chunk_size);
}

// Every budget between "refused at once" and "fits" fails cleanly or
// succeeds whole: the refusal lands at every point of the parse, rehashes
// of the group map (Abseil's flat_hash_map on the request's memory)
// included, and no budget leaves the request's memory behind or the
// answer wrong (ASan and the leak check watch the rest).
TEST_F(EndpointsTest, AggregateRefusedAtAnyPointFailsCleanly) {
  constexpr int kKeys = 600;
  std::string body = "[";
  for (int i = 0; i < kKeys; ++i) {
    body += R"({"key":"group-)" + std::to_string(i) + R"(","value":)" +
            std::to_string(i) + "},";
  }
  body += "1]";
  int refused = 0, fitted = 0;
  for (size_t budget = 256; budget <= (size_t{256} << 10); budget += 509) {
    RequestArena request(&arena_, budget);
    absl::StatusOr<std::string> out = Aggregate(body, request);
    if (out.ok()) {
      ++fitted;
      const json r = json::parse(*out);
      EXPECT_EQ(r["count"], kKeys + 1) << budget;
      EXPECT_EQ(r["groups"].size(), size_t{kKeys}) << budget;
    } else {
      ++refused;
      EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted)
          << budget << ": " << out.status();
      EXPECT_LE(request.peak_bytes(), budget);
    }
  }
  EXPECT_EQ(arena_.stats().bytes_used, 0u);
  EXPECT_GT(refused, 10);  // The sweep crossed the whole parse...
  EXPECT_GT(fitted, 10);   // ...and reached budgets that fit.
}

// Regression (review): Simulate checked only the last array of each group,
// so a refused array followed by smaller ones that fit was written through
// (ASan: SEGV at particles 1, budget 56, in the counting sort). Every
// budget up to one that fits: a clean ResourceExhausted or the answer.
TEST_F(EndpointsTest, SimulateRefusedAtAnyBudgetFailsCleanly) {
  for (int64_t n = 1; n <= 4; ++n) {
    int fitted = 0;
    for (size_t budget = 0; budget <= 600; ++budget) {
      RequestArena request(&arena_, budget);
      SimulateParams p;
      p.particles = n;
      p.steps = 2;
      absl::StatusOr<std::string> out = Simulate(p, request);
      if (out.ok()) {
        ++fitted;
      } else {
        EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted)
            << n << " particles, budget " << budget << ": " << out.status();
      }
    }
    EXPECT_GT(fitted, 0) << n;
  }
  EXPECT_EQ(arena_.stats().bytes_used, 0u);
}

// The same when the memory source refuses one call (the k-th) and gives
// the next: a refused array may be followed by ones that get memory (UBSan:
// a reference bound to null at k = 1 before the fix).
TEST(SimulateFaultTest, ASourceRefusingAnyOneCallFailsCleanly) {
  for (int k = 1; k <= 16; ++k) {
    alloc_internal::FailingSource source;
    ChunkCache cache(&source);
    FrameArena arena(
        &cache,
        FrameArenaOptions().set_initial_chunk_size(1024).set_max_chunk_size(
            1024));
    source.FailCalls(k, 1);
    RequestArena request(&arena, size_t{8} << 20);
    SimulateParams p;
    p.particles = 2000;
    p.steps = 1;
    absl::StatusOr<std::string> out = Simulate(p, request);
    if (!out.ok()) {
      EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted)
          << "fault at call " << k << ": " << out.status();
    }
  }
}

TEST_F(EndpointsTest, SimulateIsDeterministicPerSeed) {
  const auto run = [&](uint64_t seed) {
    RequestArena request(&arena_, 8 << 20);
    SimulateParams p;
    p.particles = 2000;
    p.steps = 4;
    p.seed = seed;
    absl::StatusOr<std::string> out = Simulate(p, request);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.value_or("");
  };
  const std::string a = run(3), b = run(3), c = run(4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  json r = json::parse(a);
  EXPECT_EQ(r["particles"], 2000);
  EXPECT_EQ(r["inside_box"], true);
  EXPECT_GT(r["contacts"].get<int>(), 0);
  EXPECT_GT(r["kinetic_energy"].get<double>(), 0);
  EXPECT_GT(r["centroid"][0].get<double>(), 0.3);
  EXPECT_LT(r["centroid"][0].get<double>(), 0.7);
}

TEST_F(EndpointsTest, SimulateStepsGiveTheirMemoryBack) {
  // The peak of 100 steps is the peak of one: each step's grid goes.
  const auto peak = [&](int64_t steps) {
    RequestArena request(&arena_, 8 << 20);
    SimulateParams p;
    p.particles = 5000;
    p.steps = steps;
    EXPECT_TRUE(Simulate(p, request).ok());
    return request.peak_bytes();
  };
  EXPECT_EQ(peak(1), peak(100));
}

TEST_F(EndpointsTest, SimulateOverBudgetNamesTheRequest) {
  RequestArena request(&arena_, 64 << 10);
  SimulateParams p;
  p.particles = 100000;
  absl::StatusOr<std::string> out = Simulate(p, request);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(out.status().message().find("100000 particles"), std::string::npos)
      << out.status();
  EXPECT_NE(out.status().message().find("65536 bytes"), std::string::npos)
      << out.status();
}

TEST(SimulateParamsTest, ParsesAndRejectsNamingTheParameter) {
  auto ok = SimulateParams::FromQuery("particles=10&steps=3&seed=99");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->particles, 10);
  EXPECT_EQ(ok->steps, 3);
  EXPECT_EQ(ok->seed, 99u);
  // Percent-encoded digits and names are decoded first.
  auto encoded = SimulateParams::FromQuery("%70articles=%31%30");
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(encoded->particles, 10);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "'particles' is required"},
      {"particles=0", "'particles' must be an integer in 1..1000000"},
      {"particles=x", "got 'x'"},
      {"particles=10&steps=1001", "'steps'"},
      {"particles=10&seed=-1", "'seed'"},
      {"particles=10&color=red", "unknown query parameter"},
      {"particles=10&particles=11", "repeated"},
      {"particles=1000000&steps=21", "exceeds 20000000"},
  };
  for (const auto& [query, message] : bad) {
    auto r = SimulateParams::FromQuery(query);
    ASSERT_FALSE(r.ok()) << query;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(message), std::string::npos)
        << query << ": " << r.status();
  }
}

// Regression: the parameters came from cpp-httplib's parsed query, which
// splits a segment on every '=' and keeps the last piece, so
// "particles=abc=20" was served with 20 particles and "particles=5;steps=2"
// with 2; absl::SimpleAtoi also took " 5 " and "+5". The raw query is split
// here now, on the first '=', and a value must be plain decimal digits.
TEST(SimulateParamsTest, AnythingButAPlainDecimalIntegerIsRefusedNamingIt) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"particles=abc=20", "'particles' must be an integer"},
      {"particles=10=20", "'particles' must be an integer"},
      {"particles=5;steps=2", "'particles' must be an integer"},
      {"particles=5&steps=3=1", "'steps' must be an integer"},
      {"particles=5&seed=1=2", "'seed'"},
      {"particles=%205%20", "'particles' must be an integer"},
      {"particles=+5", "'particles' must be an integer"},
      {"particles=-0", "'particles' must be an integer"},
      {"particles=", "'particles' must be an integer"},
      {"particles", "'particles' must be an integer"},
      {"particles=5&seed=+7", "'seed'"},
      {"particles=0x10", "'particles' must be an integer"},
      {"particles=99999999999999999999", "'particles' must be an integer"},
      {"particles=%zz", "'particles' has a value"},
      {"=5&particles=5", "without a name"},
      {"particles=5&&steps=2", "without a name"},
      {"particles=5&", "without a name"},
  };
  for (const auto& [query, message] : bad) {
    auto r = SimulateParams::FromQuery(query);
    ASSERT_FALSE(r.ok()) << query << " was accepted: particles=" << r->particles
                         << " steps=" << r->steps;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(message), std::string::npos)
        << query << ": " << r.status();
  }
}

TEST_F(EndpointsTest, RequestArenaRefusesOverflowAndOverBudget) {
  RequestArena request(&arena_, 4096);
  EXPECT_TRUE(request.TryArray<double>(SIZE_MAX / 4).empty());
  EXPECT_EQ(request.last_refused_bytes(), SIZE_MAX);
  EXPECT_NE(request.TryAllocate(4000), nullptr);
  EXPECT_EQ(request.TryAllocate(100), nullptr);
  EXPECT_EQ(request.refusals(), 2u);
  {
    RequestArena::Scope scope(&request);
    EXPECT_EQ(request.TryAllocate(97), nullptr);  // Still 4000 held.
  }
  EXPECT_EQ(request.used_bytes(), 4000u);
  EXPECT_TRUE(request.TryArray<int>(0).empty());
  EXPECT_EQ(request.refusals(), 3u);
}

// Regression: ~RequestArena and ~Scope reported a failed rewind (a mark the
// handler left open) through ReportError, so a handler that throws, which
// alloc/error.h allows, ended in std::terminate from those noexcept
// destructors. They report through ReportErrorAndContinue now: the handler
// sees each failure once, its exception is dropped, and the request ends.
TEST_F(EndpointsTest, AFailedRewindInADestructorDropsAThrowingHandlersThrow) {
  std::vector<std::string> where;
  ArenaMark left_open;
  {
    ScopedErrorHandler handler(
        [](const ErrorReport& report, void* context) {
          static_cast<std::vector<std::string>*>(context)->emplace_back(
              report.where);
          throw std::runtime_error("a handler that throws");
        },
        &where);
    RequestArena request(&arena_, 4096);
    {
      RequestArena::Scope scope(&request);
      ASSERT_NE(request.TryAllocate(100), nullptr);
      left_open = arena_.Mark();  // A handler's bug: a mark left open.
    }  // ~Scope: the rewind is refused (a newer mark is open).
  }    // ~RequestArena: refused too.
  EXPECT_EQ(where, (std::vector<std::string>{"RequestArena::Scope::~Scope",
                                             "RequestArena::~RequestArena"}));
  // Put the fixture's arena back: the mark left open, then the two the
  // destructors could not close (Reset reports them; recorded here).
  EXPECT_TRUE(arena_.Rewind(left_open).ok());
  alloc_internal::ErrorRecorder recorder;
  arena_.Reset();
  EXPECT_EQ(arena_.open_marks(), 0u);
}

}  // namespace
}  // namespace server
}  // namespace framealloc
