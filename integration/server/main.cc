// //integration/server:server — the HTTP server binary.
//
// For: running the server from a shell or a load test:
//   bazel run -c opt //integration/server:server -- --port=8080 --workers=8
// prints "listening on http://<address>:<port> ..." once it accepts, serves
// until SIGINT or SIGTERM, then stops gracefully (in-flight requests are
// answered) and exits 0. Not for: embedding (use server.h).
//
// Signals: SIGINT and SIGTERM are blocked in every thread (before any is
// created) and the main thread takes them with sigwait(): no signal
// handler runs, so nothing async-signal-unsafe can happen in one.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "integration/server/server.h"

ABSL_FLAG(std::string, address, "127.0.0.1", "Address to listen on.");
ABSL_FLAG(int, port, 0, "Port; 0 picks an ephemeral one (printed).");
ABSL_FLAG(int, workers, 0,
          "Runtime pool: workers per NUMA node; httplib pool: threads. "
          "0: cpp-httplib's default count, max(8, hardware threads - 1).");
ABSL_FLAG(std::string, topology, "",
          "Synthetic hwloc topology for the runtime's nodes, e.g. "
          "'pack:2 [numa] core:2 pu:1'; empty: this machine.");
ABSL_FLAG(int64_t, request_budget_bytes, int64_t{8} << 20,
          "Bytes one request may hold in its arena at once (503 beyond).");
ABSL_FLAG(int64_t, max_body_bytes, int64_t{4} << 20,
          "Largest request body accepted (413 beyond).");
ABSL_FLAG(std::string, pool, "runtime",
          "Who runs the connections: 'runtime' (the job runtime) or "
          "'httplib' (cpp-httplib's thread pool).");
ABSL_FLAG(int, keep_alive_timeout_s, 2,
          "Seconds an idle keep-alive connection is kept open (>= 1).");
ABSL_FLAG(int, hold_simulate_ms, 0,
          "For tests of the graceful stop: every /simulate request waits "
          "this long (in its handler, arena set up) before working.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "HTTP server on cpp-httplib with the job runtime as its task queue.\n"
      "Endpoints: POST /aggregate, GET /simulate?particles=N&steps=K, "
      "GET /stats, GET /healthz.");
  absl::ParseCommandLine(argc, argv);

  // Block the stop signals before any thread exists: every thread
  // inherits the mask, so only sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  using framealloc::server::ServerOptions;
  auto pool = framealloc::server::ParseTaskPool(absl::GetFlag(FLAGS_pool));
  if (!pool.ok()) {
    std::cerr << "--pool: " << pool.status().message() << "\n";
    return 2;
  }
  const int64_t budget = absl::GetFlag(FLAGS_request_budget_bytes);
  const int64_t max_body = absl::GetFlag(FLAGS_max_body_bytes);
  if (budget < 0 || max_body < 0) {
    std::cerr << "--request_budget_bytes and --max_body_bytes must be >= 0\n";
    return 2;
  }
  ServerOptions options;
  options.set_address(absl::GetFlag(FLAGS_address))
      .set_port(absl::GetFlag(FLAGS_port))
      .set_pool(*pool)
      .set_workers(absl::GetFlag(FLAGS_workers))
      .set_topology(absl::GetFlag(FLAGS_topology))
      .set_request_budget_bytes(static_cast<size_t>(budget))
      .set_max_body_bytes(static_cast<size_t>(max_body))
      .set_keep_alive(100, absl::GetFlag(FLAGS_keep_alive_timeout_s));
  if (const int hold_ms = absl::GetFlag(FLAGS_hold_simulate_ms); hold_ms > 0) {
    options.set_on_request_start([hold_ms](absl::string_view path) {
      if (path == "/simulate") {
        std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms));
      }
    });
  }
  auto server = framealloc::server::Server::Create(options);
  if (!server.ok()) {
    std::cerr << "cannot start the server: " << server.status() << "\n";
    return 1;
  }
  if (absl::Status s = (*server)->Start(); !s.ok()) {
    std::cerr << "cannot start the server: " << s << "\n";
    return 1;
  }
  const int workers = options.workers > 0
                          ? options.workers
                          : framealloc::server::HttplibDefaultThreads();
  std::cout << "listening on http://" << options.address << ":"
            << (*server)->port()
            << " (pool=" << framealloc::server::TaskPoolName(options.pool)
            << ", nodes=" << (*server)->num_nodes() << ", workers=" << workers
            << (options.pool == framealloc::server::TaskPool::kRuntime
                    ? " per node"
                    : "")
            << ")" << std::endl;

  int signal_number = 0;
  if (sigwait(&stop_signals, &signal_number) != 0) {
    std::cerr << "sigwait failed\n";
    return 1;
  }
  std::cout << "signal " << signal_number
            << ": stopping (finishing in-flight requests)" << std::endl;
  absl::Status stopped = (*server)->Stop();
  const auto c = (*server)->counters();
  std::cout << "stopped: " << c.requests << " requests (" << c.status_2xx
            << " 2xx, " << c.status_4xx << " 4xx, " << c.status_5xx << " 5xx, "
            << c.budget_refusals << " over budget)" << std::endl;
  if (!stopped.ok()) {
    std::cerr << "stop: " << stopped << "\n";
    return 1;
  }
  return 0;
}
