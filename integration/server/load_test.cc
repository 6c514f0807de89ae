// //integration/server:load_test — wrk against the server, job runtime
// against cpp-httplib's default thread pool, in the same run.
//
// For: the figures in README and docs/server.md:
//   ./bazelw run -c opt //integration/server:load_test
// For each round and each pool (runtime, then httplib) it starts the real
// server binary on an ephemeral loopback port and warms it up with wrk in
// two phases: connections first (every request with `Connection: close`,
// until the server has accepted --warmup_connections), then --warmup_s of
// the measured load. Then it samples the server's resident memory
// (/proc/<pid>/status VmRSS) while a measured wrk run goes, reads the
// server's own counters from /stats, stops it with SIGTERM and expects
// exit 0. The requests mix POST /aggregate (a 250-element JSON document)
// and GET /simulate (500 particles, 2 steps), both allocating on request
// arenas. It fails (exit 1) on any non-2xx answer, socket error, unclean
// exit, or resident memory that grew by more than --rss_tolerance_kib
// between the end of the warm-up and the end of the measured run (the same
// tolerance for both pools), and prints requests/s, p50/p99 latency,
// errors and resident memory per pool, and the ratios.
//
// Why connections are warmed up: on the runtime pool each connection is
// one job, whose record comes from the runtime's record pool. The accept
// thread allocates every record and the worker that ran the connection
// frees it into its own pool cache, which keeps up to 256 records (64 KiB;
// a cache that only frees never raises that limit) before it hands any back:
// the pool grows by up to 64 KiB per worker (512 KiB with 8) until every worker
// has run about 256 connections, then stays there. The measured load makes
// about 90 connections a second (a connection closes after 100 requests), so
// without this phase that bounded growth spreads over the first 20 to 60 s
// (docs/server.md).
//
// Bounded: rounds * 2 * (connection warm-up, at most --warmup_max_s, +
// warmup + duration) seconds plus start-up and stop; about 65 s with the
// defaults (3 rounds of about 2 + 2 + 6 s per pool). Loopback only.
// Not for: a test of correctness (server_test is) or tuning wrk.
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

extern char** environ;

ABSL_FLAG(std::string, server, "integration/server/server",
          "Path of the server binary.");
ABSL_FLAG(std::string, wrk, "/usr/bin/wrk", "Path of wrk.");
ABSL_FLAG(int, rounds, 3, "Rounds; each runs both pools, alternating.");
ABSL_FLAG(int64_t, warmup_connections, -1,
          "Connections the server must have accepted (each request on its "
          "own connection) before the timed warm-up; -1: 1024 per worker "
          "(4 times what filled the runtime's per-worker job-record caches "
          "when connections took records; it also warms the per-thread "
          "caches of the C heap and of oneTBB); 0: no connection warm-up.");
ABSL_FLAG(int, warmup_max_s, 60,
          "Longest connection warm-up, seconds; the round fails if it ends "
          "short of --warmup_connections.");
ABSL_FLAG(int, warmup_s, 2, "Seconds of the measured load before measuring.");
ABSL_FLAG(int, duration_s, 6, "Seconds of the measured wrk run.");
ABSL_FLAG(int, connections, 8, "wrk connections (-c).");
ABSL_FLAG(int, threads, 2, "wrk threads (-t).");
ABSL_FLAG(int, workers, 0,
          "Server --workers (0: cpp-httplib's default count, the same in "
          "both pools).");
ABSL_FLAG(int64_t, rss_tolerance_kib, 64,
          "Largest growth of the server's resident memory from the end of "
          "the warm-up to the end of the measured run, KiB, in either pool "
          "(64: 16 pages; about 1 byte per request of a 6 s round).");

namespace {

struct Server {
  pid_t pid = -1;
  int port = 0;
  int nodes = 0;        // As the server reports them.
  int workers = 0;      // Per node.
  FILE* out = nullptr;  // The server's stdout.
};

absl::StatusOr<Server> StartServer(const std::string& binary,
                                   const std::string& pool, int workers) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<std::string> args = {binary, "--port=0", "--pool=" + pool,
                                   absl::StrCat("--workers=", workers)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Server s;
  const int rc = posix_spawn(&s.pid, binary.c_str(), &actions, nullptr,
                             argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("cannot run ", binary));
  }
  s.out = fdopen(fds[0], "r");
  char line[512];
  if (fgets(line, sizeof(line), s.out) == nullptr) {
    return absl::InternalError("the server exited before listening");
  }
  // "listening on http://127.0.0.1:<port> (pool=P, nodes=N, workers=W ...)"
  const std::string text(line);
  // The number after `key` (up to ' ', ',' or ')'), or -1.
  const auto number_after = [&text](absl::string_view key, size_t from) {
    const size_t at = text.find(key.data(), from, key.size());
    int n = -1;
    if (at == std::string::npos) return n;
    const size_t begin = at + key.size();
    const size_t end = text.find_first_of(" ,)", begin);
    if (!absl::SimpleAtoi(text.substr(begin, end - begin), &n)) n = -1;
    return n;
  };
  s.port = number_after(":", text.find("127.0.0.1"));
  s.nodes = number_after("nodes=", 0);
  s.workers = number_after("workers=", 0);
  if (s.port <= 0 || s.nodes <= 0 || s.workers <= 0) {
    return absl::InternalError(absl::StrCat("unexpected first line: ", text));
  }
  std::cout << "  " << text;
  return s;
}

// SIGTERM, then the exit status (0 = clean) and the server's last words.
int StopServer(Server& s) {
  kill(s.pid, SIGTERM);
  int status = 0;
  waitpid(s.pid, &status, 0);
  char line[512];
  while (fgets(line, sizeof(line), s.out) != nullptr) std::cout << "  " << line;
  fclose(s.out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int64_t ResidentKiB(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      int64_t kib = 0;
      std::string value(absl::StripAsciiWhitespace(
          absl::StripSuffix(absl::StripPrefix(line, "VmRSS:"), "kB")));
      if (absl::SimpleAtoi(value, &kib)) return kib;
    }
  }
  return -1;
}

std::string Run(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), p)) > 0) out.append(buffer, n);
  pclose(p);
  return out;
}

// A wrk duration ("1.23ms", "850.00us", "1.02s") in milliseconds.
double ParseMs(absl::string_view text) {
  double v = 0;
  auto number = [&](absl::string_view suffix, double scale) {
    if (!absl::ConsumeSuffix(&text, suffix)) return false;
    if (!absl::SimpleAtod(text, &v)) v = -1;
    v *= scale;
    return true;
  };
  if (number("us", 1e-3) || number("ms", 1) || number("s", 1e3) ||
      number("m", 6e4)) {
    return v;
  }
  return -1;
}

struct WrkResult {
  double requests_per_s = 0;
  double p50_ms = -1, p99_ms = -1;
  int64_t requests = 0;
  int64_t non_2xx = 0;
  int64_t socket_errors = 0;
  std::string raw;
};

WrkResult ParseWrk(const std::string& out) {
  WrkResult r;
  r.raw = out;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    std::vector<absl::string_view> f =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.empty()) continue;
    if (f[0] == "Requests/sec:" && f.size() >= 2) {
      (void)absl::SimpleAtod(f[1], &r.requests_per_s);
    } else if (f[0] == "50%" && f.size() >= 2) {
      r.p50_ms = ParseMs(f[1]);
    } else if (f[0] == "99%" && f.size() >= 2) {
      r.p99_ms = ParseMs(f[1]);
    } else if (f.size() >= 3 && f[1] == "requests" && f[2] == "in") {
      (void)absl::SimpleAtoi(f[0], &r.requests);
    } else if (absl::StartsWith(line, "Non-2xx or 3xx responses:")) {
      (void)absl::SimpleAtoi(f.back(), &r.non_2xx);
    } else if (absl::StartsWith(line, "Socket errors:")) {
      // "Socket errors: connect 0, read 0, write 0, timeout 0"
      for (size_t i = 2; i + 1 < f.size(); i += 2) {
        int64_t n = 0;
        if (absl::SimpleAtoi(absl::StripSuffix(f[i + 1], ","), &n)) {
          r.socket_errors += n;
        }
      }
    }
  }
  return r;
}

// The wrk script: half POST /aggregate (a fixed 250-element document),
// half GET /simulate (500 particles, 2 steps, seeds cycling). With `close`,
// every request asks for its own connection (`Connection: close`; wrk's
// -H would not reach requests that pass their own headers).
std::string WriteScript(bool close) {
  std::string doc = "[";
  for (int i = 0; i < 200; ++i) absl::StrAppend(&doc, i ? "," : "", i * 0.5);
  for (int i = 0; i < 50; ++i) {
    absl::StrAppend(&doc, ",{\"key\":\"k", i % 7, "\",\"value\":", i, "}");
  }
  doc += "]";
  const std::string path = absl::StrCat(
      std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp",
      "/framealloc_server_load_", getpid(), close ? "_close" : "", ".lua");
  const std::string connection = close ? ", [\"Connection\"] = \"close\"" : "";
  std::ofstream lua(path);
  lua << "local body = [=[" << doc << "]=]\n"
      << "local headers = { [\"Content-Type\"] = \"application/json\""
      << connection << " }\n"
      << "local get_headers = "
      << (close ? "{ [\"Connection\"] = \"close\" }" : "nil") << "\n"
      << "local n = 0\n"
      << "request = function()\n"
      << "  n = n + 1\n"
      << "  if n % 2 == 0 then\n"
      << "    return wrk.format(\"POST\", \"/aggregate\", headers, body)\n"
      << "  end\n"
      << "  return wrk.format(\"GET\", "
         "\"/simulate?particles=500&steps=2&seed=\" .. (n % 64), "
         "get_headers)\n"
      << "end\n";
  return path;
}

struct ModeResult {
  std::string pool;
  WrkResult wrk;  // The measured run; errors of the warm-up added.
  // Connections the server had accepted when the connection warm-up ended,
  // the number it was to reach, and how long it took.
  int64_t warmup_connections = 0, warmup_target = 0;
  double warmup_connections_s = 0;
  // Resident memory right after start, after the connection warm-up, after
  // the whole warm-up (the baseline), the largest sample of the measured
  // run, and at its end.
  int64_t rss_start_kib = 0, rss_connections_kib = 0, rss_warm_kib = 0,
          rss_max_kib = 0, rss_end_kib = 0;
  int exit_code = 0;
  std::string stats_warm, stats;  // /stats after warm-up and at the end.
};

std::string WrkCommand(int port, int seconds, const std::string& script) {
  return absl::StrCat(
      absl::GetFlag(FLAGS_wrk), " -t", absl::GetFlag(FLAGS_threads), " -c",
      absl::GetFlag(FLAGS_connections), " -d", seconds, "s --latency -s ",
      script, " http://127.0.0.1:", port, "/ 2>&1");
}

std::string GetStats(int port) {
  httplib::Client client("127.0.0.1", port);
  auto r = client.Get("/stats");
  return r ? r->body : std::string();
}

// A number from the server's /stats body ("\"name\":123"); -1 if absent.
int64_t StatsField(const std::string& stats, const std::string& name) {
  const std::string key = "\"" + name + "\":";
  const size_t at = stats.find(key);
  if (at == std::string::npos) return -1;
  int64_t v = -1;
  const size_t begin = at + key.size();
  const size_t end = stats.find_first_of(",}", begin);
  (void)absl::SimpleAtoi(stats.substr(begin, end - begin), &v);
  return v;
}

void AddErrors(const WrkResult& from, WrkResult* to) {
  to->non_2xx += from.non_2xx;
  to->socket_errors += from.socket_errors;
}

std::optional<ModeResult> RunMode(const std::string& pool,
                                  const std::string& script,
                                  const std::string& close_script) {
  ModeResult m;
  m.pool = pool;
  auto server = StartServer(absl::GetFlag(FLAGS_server), pool,
                            absl::GetFlag(FLAGS_workers));
  if (!server.ok()) {
    std::cerr << server.status() << "\n";
    return std::nullopt;
  }
  m.rss_start_kib = ResidentKiB(server->pid);
  WrkResult errors;

  // 1. Connections, one request each, in 1 s runs of wrk, until the server
  // has accepted the target (its /stats counts them, its own included).
  const int64_t target = absl::GetFlag(FLAGS_warmup_connections) >= 0
                             ? absl::GetFlag(FLAGS_warmup_connections)
                             : int64_t{1024} * server->workers * server->nodes;
  m.warmup_target = target;
  const auto begin = std::chrono::steady_clock::now();
  const auto elapsed_s = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         begin)
        .count();
  };
  while (m.warmup_connections < target &&
         elapsed_s() < absl::GetFlag(FLAGS_warmup_max_s)) {
    AddErrors(ParseWrk(Run(WrkCommand(server->port, 1, close_script))),
              &errors);
    m.warmup_connections = StatsField(GetStats(server->port), "connections");
    if (m.warmup_connections < 0) break;  // No /stats: the round fails.
  }
  m.warmup_connections_s = elapsed_s();
  m.rss_connections_kib = ResidentKiB(server->pid);

  // 2. The measured load itself for --warmup_s; then the baseline, after
  // the /stats request (its own first-time costs are not the load's).
  AddErrors(ParseWrk(Run(WrkCommand(server->port, absl::GetFlag(FLAGS_warmup_s),
                                    script))),
            &errors);
  m.stats_warm = GetStats(server->port);
  m.rss_warm_kib = ResidentKiB(server->pid);

  // 3. The measured run, resident memory sampled every 200 ms.
  std::atomic<bool> done{false};
  std::string out;
  std::thread wrk([&] {
    out =
        Run(WrkCommand(server->port, absl::GetFlag(FLAGS_duration_s), script));
    done.store(true);
  });
  m.rss_max_kib = m.rss_warm_kib;
  while (!done.load()) {
    m.rss_max_kib = std::max(m.rss_max_kib, ResidentKiB(server->pid));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  wrk.join();
  m.wrk = ParseWrk(out);
  AddErrors(errors, &m.wrk);
  m.rss_end_kib = ResidentKiB(server->pid);
  m.rss_max_kib = std::max(m.rss_max_kib, m.rss_end_kib);
  m.stats = GetStats(server->port);
  m.exit_code = StopServer(*server);
  if (m.wrk.requests == 0) std::cerr << "wrk said:\n" << out << "\n";
  return m;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  const int64_t tolerance_kib = absl::GetFlag(FLAGS_rss_tolerance_kib);
  if (tolerance_kib < 0 || absl::GetFlag(FLAGS_rounds) < 1 ||
      absl::GetFlag(FLAGS_duration_s) < 1 ||
      absl::GetFlag(FLAGS_warmup_s) < 0 ||
      absl::GetFlag(FLAGS_warmup_max_s) < 1) {
    std::cerr << "--rss_tolerance_kib and --warmup_s must be >= 0, --rounds, "
                 "--duration_s and --warmup_max_s >= 1\n";
    return 2;
  }
  const std::string script = WriteScript(/*close=*/false);
  const std::string close_script = WriteScript(/*close=*/true);
  std::cout << "wrk -t" << absl::GetFlag(FLAGS_threads) << " -c"
            << absl::GetFlag(FLAGS_connections) << ", warm-up: "
            << (absl::GetFlag(FLAGS_warmup_connections) < 0
                    ? std::string("1024 connections per worker")
                    : absl::StrCat(absl::GetFlag(FLAGS_warmup_connections),
                                   " connections"))
            << " (Connection: close), then " << absl::GetFlag(FLAGS_warmup_s)
            << " s; measured " << absl::GetFlag(FLAGS_duration_s) << " s, "
            << absl::GetFlag(FLAGS_rounds)
            << " rounds; requests: POST /aggregate (250 elements) and GET "
               "/simulate?particles=500&steps=2, alternating; resident "
               "memory may grow by "
            << tolerance_kib << " KiB after warm-up\n";
  std::vector<ModeResult> results;
  bool ok = true;
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    for (const std::string pool : {"runtime", "httplib"}) {
      std::cout << "round " << round + 1 << ", pool " << pool << ":\n";
      auto m = RunMode(pool, script, close_script);
      if (!m) return 1;
      const int64_t server_non2xx = StatsField(m->stats, "status_4xx") +
                                    StatsField(m->stats, "status_5xx");
      const bool clean = m->wrk.requests > 0 && m->wrk.non_2xx == 0 &&
                         m->wrk.socket_errors == 0 && server_non2xx == 0 &&
                         m->exit_code == 0 &&
                         StatsField(m->stats, "requests_not_released") == 0;
      const bool warm = m->warmup_connections >= m->warmup_target;
      const int64_t growth = m->rss_end_kib - m->rss_warm_kib;
      const bool flat = growth <= tolerance_kib;
      if (!clean) {
        std::cout << "  FAILED: non-2xx " << m->wrk.non_2xx
                  << ", socket errors " << m->wrk.socket_errors
                  << ", server 4xx+5xx " << server_non2xx << ", exit "
                  << m->exit_code << "\n"
                  << m->wrk.raw;
      }
      if (!warm) {
        std::cout << "  FAILED: the warm-up reached " << m->warmup_connections
                  << " of " << m->warmup_target << " connections in "
                  << absl::GetFlag(FLAGS_warmup_max_s)
                  << " s (--warmup_max_s)\n";
      }
      if (!flat) {
        std::cout << "  FAILED: resident memory grew by " << growth
                  << " KiB after warm-up (tolerance " << tolerance_kib
                  << " KiB, --rss_tolerance_kib)\n";
      }
      ok = ok && clean && warm && flat;
      std::cout << absl::StrFormat(
          "  warm-up: %d connections in %.1f s; RSS %d KiB at start, %d KiB "
          "after the connections, %d KiB after warm-up\n"
          "  %.0f req/s, p50 %.3f ms, p99 %.3f ms, %d requests on %d "
          "connections; RSS %d KiB max, %d KiB at the end (%+d KiB); chunk "
          "cache misses (calls to the memory source) %d after warm-up, %d at "
          "the end\n",
          m->warmup_connections, m->warmup_connections_s, m->rss_start_kib,
          m->rss_connections_kib, m->rss_warm_kib, m->wrk.requests_per_s,
          m->wrk.p50_ms, m->wrk.p99_ms, m->wrk.requests,
          StatsField(m->stats, "connections") -
              StatsField(m->stats_warm, "connections"),
          m->rss_max_kib, m->rss_end_kib, growth,
          StatsField(m->stats_warm, "misses"), StatsField(m->stats, "misses"));
      results.push_back(*std::move(m));
    }
  }
  std::remove(script.c_str());
  std::remove(close_script.c_str());

  std::cout << "\n| pool | req/s | p50 ms | p99 ms | requests | non-2xx + "
               "socket errors | warm-up connections | RSS after warm-up KiB "
               "| RSS end KiB | growth KiB | RSS max KiB | source calls "
               "after warm-up |\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
               "\n";
  std::vector<double> rps[2], p50[2], p99[2];
  int64_t max_growth[2] = {INT64_MIN, INT64_MIN};
  for (size_t i = 0; i < results.size(); ++i) {
    const ModeResult& m = results[i];
    const int k = m.pool == "runtime" ? 0 : 1;
    rps[k].push_back(m.wrk.requests_per_s);
    p50[k].push_back(m.wrk.p50_ms);
    p99[k].push_back(m.wrk.p99_ms);
    max_growth[k] = std::max(max_growth[k], m.rss_end_kib - m.rss_warm_kib);
    std::cout << absl::StrFormat(
        "| %s (round %d) | %.0f | %.3f | %.3f | %d | %d | %d | %d | %d | %+d "
        "| %d | %d |\n",
        m.pool, static_cast<int>(i / 2) + 1, m.wrk.requests_per_s, m.wrk.p50_ms,
        m.wrk.p99_ms, m.wrk.requests, m.wrk.non_2xx + m.wrk.socket_errors,
        m.warmup_connections, m.rss_warm_kib, m.rss_end_kib,
        m.rss_end_kib - m.rss_warm_kib, m.rss_max_kib,
        StatsField(m.stats, "misses") - StatsField(m.stats_warm, "misses"));
  }
  std::cout << absl::StrFormat(
      "\nmedians: runtime %.0f req/s, p99 %.3f ms; httplib pool %.0f req/s, "
      "p99 %.3f ms\nruntime / httplib: throughput %.2fx, p99 latency %.2fx "
      "(lower is better)\nresident memory after warm-up: largest growth "
      "%+d KiB (runtime), %+d KiB (httplib pool); tolerance %d KiB\n",
      Median(rps[0]), Median(p99[0]), Median(rps[1]), Median(p99[1]),
      Median(rps[0]) / Median(rps[1]), Median(p99[0]) / Median(p99[1]),
      max_growth[0], max_growth[1], tolerance_kib);
  std::cout << (ok ? "OK: zero failed requests, clean exits, resident "
                     "memory flat after warm-up in both pools\n"
                   : "FAILED: see above\n");
  return ok ? 0 : 1;
}
