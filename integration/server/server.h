// An HTTP server on cpp-httplib whose task queue is the job runtime.
//
// For: serving HTTP with framealloc's job runtime underneath. cpp-httplib
// hands its task queue one task per accepted connection (the keep-alive
// loop of that connection's requests); here that queue is a jobs::Runtime
// (RuntimeTaskQueue): every connection runs as a job on a pinned worker of
// some node, and every request on it runs inside that job with a
// request-scoped arena (RequestArena) carved from the worker's scratch
// arena, which comes from its node's SmartAlloc. The request's memory is
// released whole (chunks back to the node's cache) when its handler has
// produced the response, before the next request of the connection is
// read. A per-request byte budget turns a request that needs too much
// memory into a 503 with a clear body; the server keeps serving.
//
// Endpoints:
//   POST /aggregate       JSON array of numbers or {"key","value"} objects
//                         -> count, sum, mean, min, max, percentiles, groups
//   GET  /simulate?particles=N&steps=K&seed=S   a particle system on arena
//                         memory -> energy, centroid, contacts
//   GET  /stats           the server's counters, the runtime's statistics
//                         (RuntimeStats::ToJson) and each node's allocator
//   GET  /healthz         "ok"
// Bad input -> 400 (the body names the problem), unknown paths -> 404,
// wrong methods -> 405 with Allow, bodies over max_body_bytes -> 413
// (after decoding; chunked ones too; the rest of such a body is read for a
// bounded time and amount only, see kOverLimitDrainMillis), a POST without
// Content-Length or chunking -> 411, a chunked or compressed body on a
// route that takes none -> 411 / 415, a Transfer-Encoding other than
// "chunked" -> 501, a request over its memory budget -> 503. Request
// headers are bounded per line only (cpp-httplib); see docs/server.md,
// "Limits".
//
// Not for: TLS, streaming bodies, or long blocking work: a connection holds
// its worker for as long as it stays open (see docs/server.md), so size
// the workers for the connections you expect, as with any thread pool.
// ServerOptions::pool = kHttplib runs the same handlers on cpp-httplib's
// own thread pool instead (the load test's baseline).
//
// Thread safety: Start, Stop, port and StatsJson may be called from any
// thread; Stop is idempotent.
// Errors: Create returns InvalidArgument naming a bad option, the runtime's
// or the topology's Status, or Unavailable when the address cannot be
// bound. Handlers never throw out to cpp-httplib.
//
// Example:
//   auto server = Server::Create(ServerOptions().set_port(0)).value();
//   if (absl::Status s = server->Start(); !s.ok()) ...;
//   std::cout << "port " << server->port() << "\n";
//   ...                                // until SIGTERM
//   server->Stop();                    // in-flight requests finish first
#ifndef INTEGRATION_SERVER_SERVER_H_
#define INTEGRATION_SERVER_SERVER_H_

#include <httplib.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "alloc/internal/mutex.h"
#include "alloc/smart_alloc.h"
#include "integration/server/request_arena.h"
#include "jobs/runtime.h"
#include "numa/topology.h"

namespace framealloc {
namespace server {

// Who runs the connections.
enum class TaskPool {
  kRuntime,  // jobs::Runtime workers (RuntimeTaskQueue).
  kHttplib,  // cpp-httplib's ThreadPool (its default).
};

// "runtime" / "httplib"; InvalidArgument for anything else.
absl::StatusOr<TaskPool> ParseTaskPool(absl::string_view name);
absl::string_view TaskPoolName(TaskPool pool);

// The thread count cpp-httplib's default pool uses on this machine:
// max(8, hardware threads - 1) (CPPHTTPLIB_THREAD_POOL_COUNT).
int HttplibDefaultThreads();

struct ServerOptions {
  std::string address = "127.0.0.1";
  int port = 0;  // 0: an ephemeral port (see Server::port()).
  TaskPool pool = TaskPool::kRuntime;
  // kRuntime: workers per node. kHttplib: threads of cpp-httplib's
  // ThreadPool. 0: HttplibDefaultThreads() (per node for the runtime), the
  // count cpp-httplib's default task queue has.
  int workers = 0;
  // A synthetic hwloc topology ("pack:2 [numa] core:2 pu:1") for the
  // runtime's nodes; empty: this machine.
  std::string topology;
  // Bytes one request may hold in its arena at once. >= 4096.
  size_t request_budget_bytes = size_t{8} << 20;
  // Largest request body accepted (413 beyond). >= 1.
  size_t max_body_bytes = size_t{4} << 20;
  // Requests served on one connection before it is closed, and how long
  // an idle keep-alive connection is kept (it holds a worker meanwhile,
  // and delays a graceful stop by at most this long).
  int keep_alive_max_count = 100;
  int keep_alive_timeout_seconds = 2;  // >= 1 (see Validate).
  // Called by every request's handler after its arena is set up and before
  // the work: lets tests hold a request in flight. Empty in production. If
  // it throws, the request is answered 500 naming the exception, as a
  // handler's own exception is.
  std::function<void(absl::string_view path)> on_request_start;

  ServerOptions& set_address(std::string a) {
    address = std::move(a);
    return *this;
  }
  ServerOptions& set_port(int p) {
    port = p;
    return *this;
  }
  ServerOptions& set_pool(TaskPool p) {
    pool = p;
    return *this;
  }
  ServerOptions& set_workers(int w) {
    workers = w;
    return *this;
  }
  ServerOptions& set_topology(std::string t) {
    topology = std::move(t);
    return *this;
  }
  ServerOptions& set_request_budget_bytes(size_t b) {
    request_budget_bytes = b;
    return *this;
  }
  ServerOptions& set_max_body_bytes(size_t b) {
    max_body_bytes = b;
    return *this;
  }
  ServerOptions& set_keep_alive(int max_count, int timeout_seconds) {
    keep_alive_max_count = max_count;
    keep_alive_timeout_seconds = timeout_seconds;
    return *this;
  }
  ServerOptions& set_on_request_start(
      std::function<void(absl::string_view)> f) {
    on_request_start = std::move(f);
    return *this;
  }

  // InvalidArgument naming the bad field.
  absl::Status Validate() const;
};

// cpp-httplib's task queue on a jobs::Runtime: each task (a connection)
// is submitted as a job outside any frame (Affinity::Any: the nodes in
// turn), and runs with its JobContext reachable through CurrentJob().
// shutdown() waits until every connection job has finished.
// Thread-safe (cpp-httplib calls enqueue from its accept thread).
class RuntimeTaskQueue final : public httplib::TaskQueue {
 public:
  // `accepted`, when not null, counts the tasks (connections) enqueued;
  // `waiting`, when not null, those enqueued and not yet started (Stop
  // drains them). Not owned; both must outlive the queue.
  explicit RuntimeTaskQueue(jobs::Runtime* runtime,
                            std::atomic<uint64_t>* accepted = nullptr,
                            std::atomic<int64_t>* waiting = nullptr)
      : runtime_(runtime), accepted_(accepted), waiting_(waiting) {}
  // Waits for the connection jobs still running.
  ~RuntimeTaskQueue() override;

  // Submits `fn` as a job. If the runtime refuses (shut down), runs it on
  // the calling thread instead: the task owns a socket that only it closes.
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

  // The context of the connection job running on the calling thread, or
  // null outside one. Valid during that job only.
  static const jobs::JobContext* CurrentJob();

 private:
  jobs::Runtime* const runtime_;
  std::atomic<uint64_t>* const accepted_;
  std::atomic<int64_t>* const waiting_;
  jobs::JobCounter connections_;
};

class Server {
 public:
  // The longest Stop() waits for accepted connections to reach a worker.
  static constexpr int kDrainSeconds = 5;
  // A body past max_body_bytes is read on and dropped, so that a client
  // that sends its whole body before reading gets a clean 413 on a
  // connection still in step, but only for so long: at most
  // OverLimitDrainBytes() more bytes (after decoding) and at most
  // kOverLimitDrainMillis from the moment the limit was passed. Past
  // either bound, the 413 goes out with "Connection: close" and the
  // connection is closed, unread; a Content-Length that says the body goes
  // past that bound is answered so at once. A client that never stops
  // sending therefore holds its worker (and Stop()) for about a second,
  // not for as long as it likes. (The bounds are checked as data arrives;
  // a client that stalls instead is cut off by cpp-httplib's 5 s read
  // timeout, and its 413 also closes the connection.)
  static constexpr int kOverLimitDrainMillis = 1000;
  static constexpr size_t kMinOverLimitDrainBytes = size_t{64} << 10;
  // max(max_body_bytes, kMinOverLimitDrainBytes).
  static size_t OverLimitDrainBytes(size_t max_body_bytes);
  // Builds the topology, the runtime (or the allocator of the kHttplib
  // mode), the routes, and binds the listening socket.
  static absl::StatusOr<std::unique_ptr<Server>> Create(ServerOptions options);
  // Stop().
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts accepting on a thread of its own; returns once the server
  // accepts. FailedPrecondition if already started or stopped.
  absl::Status Start();
  // Drains, then stops: keeps accepting until every connection already
  // accepted has been picked up by a worker (at most kDrainSeconds; under
  // a steady stream of new connections the wait ends there), then stops
  // accepting, lets every in-flight request finish and be answered, waits
  // for the connection tasks, and shuts the runtime down. Returns OK, or
  // Internal if the accept loop failed. Idempotent. A request whose body
  // runs past max_body_bytes holds it for at most kOverLimitDrainMillis
  // after the limit; a client that sends slowly below the limits is not
  // bounded (cpp-httplib's read timeout is per read; docs/server.md,
  // "Limits").
  absl::Status Stop();

  // The bound port (the chosen one when ServerOptions::port was 0).
  int port() const { return port_; }
  const ServerOptions& options() const { return options_; }
  // Null in the kHttplib mode.
  jobs::Runtime* runtime() const { return runtime_.get(); }
  // The allocator request memory comes from on `node` (the runtime's node
  // SmartAlloc, or the kHttplib mode's single one for node 0).
  SmartAlloc& node_alloc(int node) const;
  int num_nodes() const;

  // GET /stats's body.
  std::string StatsJson(bool full) const;

  // Counters (exact once no request is running).
  struct Counters {
    // Connections accepted: tasks cpp-httplib handed the task queue (each
    // one connection job on the runtime pool).
    uint64_t connections = 0;
    uint64_t requests = 0;
    uint64_t status_2xx = 0, status_4xx = 0, status_5xx = 0;
    uint64_t budget_refusals = 0;  // 503s for the request budget.
    uint64_t in_flight = 0;        // Requests inside a handler now.
    // Requests after which their worker's arena held more than before
    // (their memory was not released whole). 0 unless something is wrong.
    uint64_t not_released = 0;
    uint64_t request_bytes_total = 0;     // Peak bytes of each request, summed.
    uint64_t request_peak_bytes = 0;      // The largest request's peak.
    std::vector<uint64_t> node_requests;  // Requests served per node.
  };
  Counters counters() const;

 private:
  explicit Server(ServerOptions options);
  absl::Status Init();
  void Route();
  // Runs `work` for the request with its RequestArena, and turns its
  // outcome into the response.
  void Handle(const httplib::Request& req, httplib::Response& res,
              const std::function<absl::StatusOr<std::string>(
                  const httplib::Request&, RequestArena&)>& work);
  // Counts a response with `status`.
  void Count(int status);
  // Answers `status` with an error body naming `message` and
  // "Connection: close", and has cpp-httplib close the connection once the
  // answer is out (whatever of the request is left is never read; see
  // server.cc for how). Counts it.
  void RefuseAndClose(httplib::Response& res, int status,
                      absl::string_view message);

  ServerOptions options_;
  std::unique_ptr<numa::Topology> topology_;
  std::unique_ptr<jobs::Runtime> runtime_;
  // The kHttplib mode's allocator (per-thread arenas of the pool threads).
  std::unique_ptr<SmartAlloc> alloc_;
  httplib::Server http_;
  int port_ = 0;

  alloc_internal::Mutex mu_;  // Start/Stop.
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread listener_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> listen_ok_{true};
  std::atomic<bool> listener_done_{false};

  // Statistics: relaxed, counters only (nothing is published through
  // them); read exactly after the requests that changed them returned.
  std::atomic<uint64_t> connections_{0};
  // Connections accepted and not yet picked up by a worker (Stop drains
  // them: cpp-httplib closes such a connection unanswered once stopped).
  std::atomic<int64_t> waiting_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> status_2xx_{0}, status_4xx_{0}, status_5xx_{0};
  std::atomic<uint64_t> budget_refusals_{0};
  std::atomic<uint64_t> in_flight_{0};
  std::atomic<uint64_t> not_released_{0};
  std::atomic<uint64_t> request_bytes_total_{0};
  std::atomic<uint64_t> request_peak_bytes_{0};
  std::unique_ptr<std::atomic<uint64_t>[]> node_requests_;
};

}  // namespace server
}  // namespace framealloc

#endif  // INTEGRATION_SERVER_SERVER_H_
