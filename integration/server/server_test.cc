// The server over real HTTP: started in-process on an ephemeral loopback
// port, driven by cpp-httplib's client. Endpoint values, 4xx and 503
// answers, concurrency, request memory handed back, node spreading, and a
// graceful stop with a request in flight.
#include "integration/server/server.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "alloc/frame_arena.h"
#include "gtest/gtest.h"
#include "integration/server/endpoints.h"
#include "integration/server/request_arena.h"
#include "integration/server/test_util.h"
#include "nlohmann/json.hpp"

namespace framealloc {
namespace server {
namespace {

using json = nlohmann::json;

httplib::Client ClientOf(const Server& server) {
  httplib::Client client("127.0.0.1", server.port());
  client.set_read_timeout(60, 0);  // Sanitizer builds are slow.
  return client;
}

std::string Numbers(int n) {
  std::string body = "[";
  for (int i = 0; i < n; ++i) absl::StrAppend(&body, i > 0 ? "," : "", i);
  return body + "]";
}

class ServerTest : public ::testing::TestWithParam<TaskPool> {
 protected:
  ServerOptions Options() const {
    return ServerOptions().set_pool(GetParam()).set_workers(2);
  }
};

TEST_P(ServerTest, HealthzAndStats) {
  auto server = StartServer(Options());
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  ASSERT_EQ(client.Get("/simulate?particles=100")->status, 200);
  auto stats = client.Get("/stats");
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->status, 200);
  json s = json::parse(stats->body);
  EXPECT_EQ(s["server"]["pool"], std::string(TaskPoolName(GetParam())));
  EXPECT_EQ(s["server"]["port"], server->port());
  // healthz and simulate, written before /stats read the counters.
  EXPECT_EQ(s["server"]["requests"], 2);
  // The client does not keep connections alive: one per request, /stats's
  // own counted when it was accepted.
  EXPECT_EQ(s["server"]["connections"], 3);
  EXPECT_EQ(s["server"]["status_2xx"], 2);
  EXPECT_EQ(s["server"]["in_flight"], 1);  // /stats itself.
  EXPECT_EQ(s["server"]["requests_not_released"], 0);
  EXPECT_GT(s["server"]["resident_bytes"].get<uint64_t>(), 0u);
  ASSERT_EQ(s["nodes"].size(), 1u);
  EXPECT_EQ(s["nodes"][0]["requests"], 2);  // simulate, stats.
  if (GetParam() == TaskPool::kRuntime) {
    EXPECT_EQ(s["runtime"]["nodes"][0]["workers"], 2);
    EXPECT_GE(s["runtime"]["jobs_submitted"].get<int>(), 3);
  } else {
    EXPECT_TRUE(s["runtime"].is_null());
  }
  auto full = client.Get("/stats?full=1");
  ASSERT_TRUE(full);
  EXPECT_TRUE(json::parse(full->body)["nodes"][0].contains("alloc"));
}

TEST_P(ServerTest, ConnectionsAreCounted) {
  // Idle keep-alive connections may wait long here: the counts below must
  // not depend on how fast a loaded machine runs the client.
  auto server = StartServer(Options().set_keep_alive(100, 60));
  ASSERT_NE(server, nullptr);
  {
    auto client = ClientOf(*server);
    client.set_keep_alive(true);
    for (int i = 0; i < 5; ++i) {
      auto r = client.Get("/healthz");
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, 200);
    }
    EXPECT_EQ(server->counters().connections, 1u);
  }
  auto client = ClientOf(*server);  // Connection: close.
  for (int i = 0; i < 3; ++i) {
    auto r = client.Get("/healthz");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
  }
  const Server::Counters c = server->counters();
  EXPECT_EQ(c.connections, 4u);
  EXPECT_EQ(c.requests, 8u);
  if (GetParam() == TaskPool::kRuntime) {
    // One connection job each.
    EXPECT_EQ(server->runtime()->stats().jobs_submitted, 4u);
  }
}

TEST_P(ServerTest, AggregateValues) {
  auto server = StartServer(Options());
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  auto r = client.Post(
      "/aggregate",
      R"([3, 1, 2, {"key": "x", "value": 10}, {"key": "x", "value": 20}])",
      "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  json a = json::parse(r->body);
  EXPECT_EQ(a["count"], 5);
  EXPECT_DOUBLE_EQ(a["sum"].get<double>(), 36);
  EXPECT_DOUBLE_EQ(a["mean"].get<double>(), 7.2);
  EXPECT_DOUBLE_EQ(a["min"].get<double>(), 1);
  EXPECT_DOUBLE_EQ(a["max"].get<double>(), 20);
  EXPECT_DOUBLE_EQ(a["p50"].get<double>(), 3);
  EXPECT_DOUBLE_EQ(a["p99"].get<double>(), 20);
  ASSERT_EQ(a["groups"].size(), 1u);
  EXPECT_EQ(a["groups"][0]["key"], "x");
  EXPECT_DOUBLE_EQ(a["groups"][0]["mean"].get<double>(), 15);
}

TEST_P(ServerTest, SimulateMatchesTheDirectCall) {
  auto server = StartServer(Options());
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  auto r = client.Get("/simulate?particles=800&steps=5&seed=7");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;

  ChunkCache cache(&SystemMemorySource::Default());
  FrameArena arena(&cache);
  RequestArena request(&arena, 8 << 20);
  SimulateParams p;
  p.particles = 800;
  p.steps = 5;
  p.seed = 7;
  absl::StatusOr<std::string> direct = Simulate(p, request);
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(r->body, *direct);
  EXPECT_EQ(json::parse(r->body)["inside_box"], true);
}

TEST_P(ServerTest, BadRequestsGetTheRight4xx) {
  auto server = StartServer(Options().set_max_body_bytes(64 << 10));
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  struct Case {
    std::string method, path, body;
    int status;
    std::string text;
  };
  const std::vector<Case> cases = {
      {"POST", "/aggregate", "[1, 2", 400, "malformed JSON"},
      {"POST", "/aggregate", "[true]", 400, "element 0"},
      {"POST", "/aggregate", "[]", 400, "empty"},
      {"GET", "/simulate", "", 400, "'particles' is required"},
      {"GET", "/simulate?particles=-3", "", 400, "'particles'"},
      {"GET", "/simulate?particles=10&steps=x", "", 400, "'steps'"},
      {"GET", "/simulate?particles=10&bogus=1", "", 400, "unknown"},
      {"GET", "/nowhere", "", 404, "no endpoint /nowhere"},
      {"GET", "/aggregate", "", 405, "not allowed"},
      {"DELETE", "/stats", "", 405, "not allowed"},
      {"POST", "/healthz", "{}", 405, "not allowed"},
      {"POST", "/aggregate", Numbers(20000), 413, "too large"},
  };
  for (const Case& c : cases) {
    httplib::Result r =
        c.method == "GET" ? client.Get(c.path.c_str())
        : c.method == "DELETE"
            ? client.Delete(c.path.c_str())
            : client.Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(r) << c.method << " " << c.path;
    EXPECT_EQ(r->status, c.status)
        << c.method << " " << c.path << ": " << r->body;
    EXPECT_NE(r->body.find(c.text), std::string::npos)
        << c.method << " " << c.path << ": " << r->body;
    EXPECT_EQ(json::parse(r->body)["status"], c.status);
    if (c.status == 405) {
      EXPECT_TRUE(r->has_header("Allow"));
    }
  }
  EXPECT_EQ(server->counters().status_4xx, cases.size());
  // Still serving.
  EXPECT_EQ(client.Get("/healthz")->status, 200);
}

TEST_P(ServerTest, OverBudgetIs503AndTheServerKeepsServing) {
  auto server = StartServer(Options().set_request_budget_bytes(64 << 10));
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  auto big = client.Get("/simulate?particles=100000");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 503);
  EXPECT_NE(big->body.find("request memory budget exceeded"), std::string::npos)
      << big->body;
  EXPECT_NE(big->body.find("65536"), std::string::npos) << big->body;
  EXPECT_EQ(big->get_header_value("Retry-After"), "1");

  auto agg = client.Post("/aggregate", Numbers(20000), "application/json");
  ASSERT_TRUE(agg);
  EXPECT_EQ(agg->status, 503) << agg->body;

  auto small = client.Get("/simulate?particles=200&steps=2");
  ASSERT_TRUE(small);
  EXPECT_EQ(small->status, 200) << small->body;
  auto small_agg = client.Post("/aggregate", Numbers(100), "application/json");
  ASSERT_TRUE(small_agg);
  EXPECT_EQ(small_agg->status, 200);
  EXPECT_EQ(json::parse(small_agg->body)["count"], 100);

  const Server::Counters c = server->counters();
  EXPECT_EQ(c.budget_refusals, 2u);
  EXPECT_EQ(c.status_5xx, 2u);
  EXPECT_EQ(c.status_2xx, 2u);
  EXPECT_EQ(c.not_released, 0u);
  EXPECT_LE(c.request_peak_bytes, size_t{64} << 10);
}

TEST_P(ServerTest, RequestMemoryReturnsToTheNodeCache) {
  // One worker, so every request runs on the same arena.
  auto server = StartServer(Options().set_workers(1));
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  ASSERT_EQ(client.Get("/simulate?particles=10")->status, 200);  // Warm-up.
  ChunkCache& cache = server->node_alloc(0).chunk_cache();
  const size_t baseline = cache.stats().in_use_bytes;
  for (int i = 0; i < 3; ++i) {
    auto sim = client.Get("/simulate?particles=30000&steps=2");
    ASSERT_TRUE(sim);
    ASSERT_EQ(sim->status, 200);
    EXPECT_GT(json::parse(sim->body)["request_peak_bytes"].get<size_t>(),
              size_t{1} << 20);
    EXPECT_EQ(cache.stats().in_use_bytes, baseline) << "after simulate " << i;
    auto agg = client.Post("/aggregate", Numbers(50000), "application/json");
    ASSERT_TRUE(agg);
    ASSERT_EQ(agg->status, 200);
    EXPECT_EQ(cache.stats().in_use_bytes, baseline) << "after aggregate " << i;
  }
  // The requests did take chunks from this node's cache meanwhile.
  EXPECT_GE(cache.stats().peak_in_use_bytes, baseline + (size_t{1} << 20));
  EXPECT_EQ(server->counters().not_released, 0u);
}

TEST_P(ServerTest, ConcurrentClientsGetCorrectAnswers) {
  for (int workers : {1, 3}) {
    auto server = StartServer(Options().set_workers(workers));
    ASSERT_NE(server, nullptr);
    constexpr int kClients = 4, kRequests = 12;
    std::atomic<int> good{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < kClients; ++t) {
      clients.emplace_back([&, t] {
        auto client = ClientOf(*server);
        client.set_keep_alive(t % 2 == 0);  // Both kinds of connections.
        for (int i = 0; i < kRequests; ++i) {
          const int n = 10 + t * 100 + i;
          auto r = client.Post("/aggregate", Numbers(n), "application/json");
          if (!r || r->status != 200) continue;
          json a = json::parse(r->body);
          if (a["count"] == n && a["sum"].get<double>() == n * (n - 1) / 2.0 &&
              a["max"].get<double>() == n - 1) {
            good.fetch_add(1);
          }
        }
      });
    }
    for (auto& t : clients) t.join();
    EXPECT_EQ(good.load(), kClients * kRequests) << workers << " workers";
    EXPECT_EQ(server->counters().status_2xx,
              static_cast<uint64_t>(kClients * kRequests));
    EXPECT_EQ(server->counters().not_released, 0u);
    EXPECT_TRUE(server->Stop().ok());
  }
}

TEST_P(ServerTest, StopFinishesTheRequestInFlight) {
  absl::Notification entered, release;
  auto options =
      Options().set_on_request_start(HoldFirstSimulate(&entered, &release));
  auto server = StartServer(std::move(options));
  ASSERT_NE(server, nullptr);
  const int port = server->port();

  int in_flight_status = 0;
  std::string in_flight_body;
  std::thread request([&] {
    auto client = ClientOf(*server);
    if (auto r = client.Get("/simulate?particles=300&steps=3")) {
      in_flight_status = r->status;
      in_flight_body = r->body;
    }
  });
  entered.WaitForNotification();
  std::atomic<bool> stopped{false};
  absl::Status stop_status;
  std::thread stopper([&] {
    stop_status = server->Stop();
    stopped.store(true);
  });
  // Wait until the listening socket is closed: new connections fail.
  for (;;) {
    httplib::Client probe("127.0.0.1", port);
    probe.set_connection_timeout(1, 0);
    if (!probe.Get("/healthz")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_FALSE(stopped.load());  // Stop waits for the request...
  release.Notify();
  request.join();
  stopper.join();
  EXPECT_TRUE(stop_status.ok()) << stop_status;
  // ...which was answered in full.
  ASSERT_EQ(in_flight_status, 200) << "the request in flight got no answer";
  EXPECT_EQ(json::parse(in_flight_body)["particles"], 300);
}

// A request hook (ServerOptions::on_request_start) that throws, a std
// exception or another kind: the request is answered 500 with a body that
// says why, the server keeps serving, and the counters balance (no request
// left "in flight").
TEST_P(ServerTest, AThrowingRequestHookIsA500AndTheCountersBalance) {
  auto server =
      StartServer(Options().set_on_request_start([](absl::string_view path) {
        if (path == "/simulate") throw std::runtime_error("hook refused");
        if (path == "/aggregate") throw 42;
      }));
  ASSERT_NE(server, nullptr);
  auto client = ClientOf(*server);
  auto simulate = client.Get("/simulate?particles=100");
  ASSERT_TRUE(simulate);
  EXPECT_EQ(simulate->status, 500);
  EXPECT_NE(simulate->body.find("hook refused"), std::string::npos)
      << simulate->body;
  auto aggregate = client.Post("/aggregate", "[1,2]", "application/json");
  ASSERT_TRUE(aggregate);
  EXPECT_EQ(aggregate->status, 500);
  EXPECT_NE(aggregate->body.find("non-std exception"), std::string::npos)
      << aggregate->body;
  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const Server::Counters c = server->counters();
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.requests, 3u);
  EXPECT_EQ(c.status_5xx, 2u);
  EXPECT_EQ(c.not_released, 0u);
}

INSTANTIATE_TEST_SUITE_P(Pools, ServerTest,
                         ::testing::Values(TaskPool::kRuntime,
                                           TaskPool::kHttplib),
                         [](const ::testing::TestParamInfo<TaskPool>& p) {
                           return std::string(TaskPoolName(p.param));
                         });

TEST(ServerNodesTest, ConnectionsSpreadOverTheNodes) {
  auto server = StartServer(
      ServerOptions().set_topology("pack:2 [numa] core:1 pu:1").set_workers(1));
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->num_nodes(), 2);
  auto client = ClientOf(*server);  // One connection per request.
  std::vector<int> seen(2, 0);
  for (int i = 0; i < 6; ++i) {
    auto r = client.Get("/simulate?particles=1000");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    const int node = std::stoi(r->get_header_value("X-Node"));
    ASSERT_TRUE(node == 0 || node == 1) << node;
    ++seen[node];
  }
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  const auto c = server->counters();
  EXPECT_EQ(c.node_requests[0], static_cast<uint64_t>(seen[0]));
  EXPECT_EQ(c.node_requests[1], static_cast<uint64_t>(seen[1]));
  json s = json::parse(client.Get("/stats")->body);
  EXPECT_EQ(s["nodes"].size(), 2u);
  EXPECT_EQ(s["runtime"]["nodes"].size(), 2u);
}

TEST(ServerCreateTest, BadOptionsAreNamed) {
  const std::vector<std::pair<ServerOptions, std::string>> bad = {
      {ServerOptions().set_workers(-1), "ServerOptions.workers"},
      {ServerOptions().set_port(70000), "ServerOptions.port"},
      {ServerOptions().set_request_budget_bytes(100),
       "ServerOptions.request_budget_bytes"},
      {ServerOptions().set_max_body_bytes(0), "ServerOptions.max_body_bytes"},
      // 0 dropped a first request sent 50 ms after connecting (review).
      {ServerOptions().set_keep_alive(100, 0),
       "ServerOptions.keep_alive_timeout_seconds"},
      {ServerOptions().set_pool(TaskPool::kHttplib).set_topology("pack:2"),
       "ServerOptions.topology"},
      {ServerOptions().set_address(""), "ServerOptions.address"},
  };
  for (const auto& [options, field] : bad) {
    auto s = Server::Create(options);
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(field), std::string::npos)
        << s.status();
  }
  auto topology = Server::Create(ServerOptions().set_topology("nonsense:3"));
  EXPECT_EQ(topology.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseTaskPool("threads").ok());
}

TEST(ServerCreateTest, ABusyPortIsUnavailable) {
  auto first = StartServer(ServerOptions().set_workers(1));
  ASSERT_NE(first, nullptr);
  auto second =
      Server::Create(ServerOptions().set_workers(1).set_port(first->port()));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace server
}  // namespace framealloc
