// The server: options, the runtime task queue, routes, request scopes and
// statistics.
#include "integration/server/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "integration/server/endpoints.h"

namespace framealloc {
namespace server {
namespace {

// The connection job running on this thread. Set for the whole job by the
// wrapper RuntimeTaskQueue submits; read once per request (not per
// allocation). A TBB thread runs one connection job at a time: the job
// never waits on the runtime, so nothing else runs on it meanwhile.
thread_local const jobs::JobContext* current_job = nullptr;

// An error body: {"error": "...", "status": N}.
std::string ErrorBody(int status, absl::string_view message) {
  std::string body = "{\"error\":";
  AppendJsonString(&body, message);
  absl::StrAppend(&body, ",\"status\":", status, "}\n");
  return body;
}

int HttpStatusOf(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 503;
    default:
      return 500;
  }
}

void AtomicMax(std::atomic<uint64_t>& a, uint64_t v) {
  uint64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur &&
         !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

// cpp-httplib's ThreadPool (its default task queue) that counts the
// connections it is handed, as RuntimeTaskQueue does on the runtime pool.
class CountingThreadPool final : public httplib::ThreadPool {
 public:
  CountingThreadPool(size_t threads, std::atomic<uint64_t>* accepted,
                     std::atomic<int64_t>* waiting)
      : httplib::ThreadPool(threads), accepted_(accepted), waiting_(waiting) {}
  void enqueue(std::function<void()> fn) override {
    accepted_->fetch_add(1, std::memory_order_relaxed);
    waiting_->fetch_add(1, std::memory_order_acq_rel);
    httplib::ThreadPool::enqueue([waiting = waiting_, fn = std::move(fn)] {
      waiting->fetch_sub(1, std::memory_order_acq_rel);
      fn();
    });
  }

 private:
  std::atomic<uint64_t>* const accepted_;
  std::atomic<int64_t>* const waiting_;
};

uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// Set by the pre-routing handler when it refuses a HEAD request: the
// refusal has no body, so RefuseAndClose cannot make cpp-httplib close the
// connection; the logger (run on the same thread once the headers are out)
// closes it instead (CloseConnectionOf).
thread_local bool close_after_head_refusal = false;

// The port of `addr` (IPv4 or IPv6), and its numeric address in `host`.
int PortOf(const sockaddr_storage& addr, std::string* host) {
  char text[INET6_ADDRSTRLEN] = "";
  if (addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(addr);
    if (host != nullptr) inet_ntop(AF_INET, &in.sin_addr, text, sizeof(text));
    if (host != nullptr) *host = text;
    return ntohs(in.sin_port);
  }
  if (addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
    if (host != nullptr) {
      inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
      *host = text;
    }
    return ntohs(in6.sin6_port);
  }
  return -1;
}

// Closes the connection from `peer`:`peer_port` to `local_port` under
// cpp-httplib's feet. cpp-httplib 0.11 gives a handler no socket and closes
// a connection only when writing the response fails, which it never does
// for HEAD (no body is written). So the socket is found by its addresses
// among this process's descriptors, shut down (the answer already written
// goes out, then FIN), and its descriptor replaced with /dev/null: the
// connection's next read fails (ENOTSOCK), cpp-httplib ends the connection
// and closes the descriptor, which is then ours. A shutdown alone is not
// enough: Linux still returns data received before it, and a request in
// it would be run. Only on the thread serving that connection (the
// descriptor cannot be closed or reused meanwhile). Returns whether found.
bool CloseConnectionOf(const std::string& peer, int peer_port, int local_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return false;
  int found = -1;
  while (const dirent* entry = readdir(dir)) {
    int fd = -1;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, remote{};
    socklen_t local_len = sizeof(local), remote_len = sizeof(remote);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_len) !=
            0) {
      continue;
    }
    std::string host;
    if (PortOf(local, nullptr) == local_port &&
        PortOf(remote, &host) == peer_port && host == peer) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  if (found < 0) return false;
  shutdown(found, SHUT_RDWR);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd >= 0) {
    dup3(null_fd, found, O_CLOEXEC);
    close(null_fd);
  }
  return true;
}

}  // namespace

absl::StatusOr<TaskPool> ParseTaskPool(absl::string_view name) {
  if (name == "runtime") return TaskPool::kRuntime;
  if (name == "httplib") return TaskPool::kHttplib;
  return absl::InvalidArgumentError(
      absl::StrCat("pool must be 'runtime' or 'httplib', got '", name, "'"));
}

absl::string_view TaskPoolName(TaskPool pool) {
  return pool == TaskPool::kRuntime ? "runtime" : "httplib";
}

int HttplibDefaultThreads() {
  // CPPHTTPLIB_THREAD_POOL_COUNT, as the library evaluates it.
  return static_cast<int>(CPPHTTPLIB_THREAD_POOL_COUNT);
}

absl::Status ServerOptions::Validate() const {
  if (address.empty()) {
    return absl::InvalidArgumentError("ServerOptions.address is empty");
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ServerOptions.port must be in 0..65535 (0: ephemeral), got ", port));
  }
  if (workers < 0 || workers > jobs::kMaxWorkersPerNode) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServerOptions.workers must be in 0..",
                     jobs::kMaxWorkersPerNode, ", got ", workers));
  }
  if (request_budget_bytes < 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServerOptions.request_budget_bytes must be >= 4096, got ",
                     request_budget_bytes));
  }
  if (max_body_bytes < 1) {
    return absl::InvalidArgumentError(
        "ServerOptions.max_body_bytes must be >= 1");
  }
  if (keep_alive_max_count < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServerOptions.keep_alive_max_count must be >= 1, got ",
                     keep_alive_max_count));
  }
  if (keep_alive_timeout_seconds < 1) {
    // cpp-httplib waits this long for every request of a connection, the
    // first included (0: about 10 ms, so a slow client's first request
    // would be dropped unanswered).
    return absl::InvalidArgumentError(absl::StrCat(
        "ServerOptions.keep_alive_timeout_seconds must be >= 1, got ",
        keep_alive_timeout_seconds));
  }
  if (pool == TaskPool::kHttplib && !topology.empty()) {
    return absl::InvalidArgumentError(
        "ServerOptions.topology applies to the runtime pool only");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// RuntimeTaskQueue

RuntimeTaskQueue::~RuntimeTaskQueue() { (void)connections_.Wait(); }

void RuntimeTaskQueue::enqueue(std::function<void()> fn) {
  if (accepted_ != nullptr) accepted_->fetch_add(1, std::memory_order_relaxed);
  if (waiting_ != nullptr) waiting_->fetch_add(1, std::memory_order_acq_rel);
  // The connection runs as one job: its context is published for the
  // handlers of its requests, and withdrawn when it ends.
  struct ConnectionJob {
    std::function<void()> fn;
    std::atomic<int64_t>* waiting;
    void operator()(jobs::JobContext& ctx) {
      if (waiting != nullptr) waiting->fetch_sub(1, std::memory_order_acq_rel);
      struct Publish {
        explicit Publish(const jobs::JobContext* c) { current_job = c; }
        ~Publish() { current_job = nullptr; }
      } publish(&ctx);
      fn();
    }
  };
  ConnectionJob job{std::move(fn), waiting_};
  // Spawn takes a copy, so `job` (and the socket its task owns) is still
  // ours if the runtime refuses it.
  const absl::Status s = runtime_->Spawn(
      job, jobs::SubmitOptions().with_counter(&connections_).named("http"));
  if (!s.ok()) {
    if (waiting_ != nullptr) waiting_->fetch_sub(1, std::memory_order_acq_rel);
    job.fn();
  }
}

void RuntimeTaskQueue::shutdown() { (void)connections_.Wait(); }

const jobs::JobContext* RuntimeTaskQueue::CurrentJob() { return current_job; }

// ---------------------------------------------------------------------------
// Server

Server::Server(ServerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<Server> server(new Server(std::move(options)));
  if (absl::Status s = server->Init(); !s.ok()) return s;
  return server;
}

absl::Status Server::Init() {
  const int workers =
      options_.workers > 0 ? options_.workers : HttplibDefaultThreads();
  if (options_.pool == TaskPool::kRuntime) {
    jobs::Config config;
    if (!options_.topology.empty()) {
      auto topology = numa::Topology::FromSynthetic(options_.topology);
      if (!topology.ok()) return topology.status();
      topology_ = *std::move(topology);
      config.set_topology(topology_.get());
    }
    config.set_workers_per_node(workers);
    // The server does not trace jobs; the runtime fills every worker's
    // trace ring up front (65536 events, about 2 MiB per worker, by
    // default), so keep the rings small.
    config.set_trace_events_per_worker(1024);
    auto runtime = jobs::Runtime::Create(std::move(config));
    if (!runtime.ok()) return runtime.status();
    runtime_ = *std::move(runtime);
    jobs::Runtime* rt = runtime_.get();
    std::atomic<uint64_t>* accepted = &connections_;
    std::atomic<int64_t>* waiting = &waiting_;
    http_.new_task_queue = [rt, accepted, waiting] {
      return new RuntimeTaskQueue(rt, accepted, waiting);
    };
  } else {
    auto alloc = SmartAlloc::Create(AllocConfig());
    if (!alloc.ok()) return alloc.status();
    alloc_ = *std::move(alloc);
    // cpp-httplib's own pool, of its default size unless --workers says.
    const size_t n = static_cast<size_t>(workers);
    std::atomic<uint64_t>* accepted = &connections_;
    std::atomic<int64_t>* waiting = &waiting_;
    http_.new_task_queue = [n, accepted, waiting] {
      return new CountingThreadPool(n, accepted, waiting);
    };
  }
  node_requests_ = std::make_unique<std::atomic<uint64_t>[]>(num_nodes());
  for (int k = 0; k < num_nodes(); ++k) node_requests_[k].store(0);

  // SO_REUSEADDR only: a restart may bind while old connections sit in
  // TIME_WAIT, but (unlike cpp-httplib's default SO_REUSEPORT) a second
  // server on a port that is in use fails instead of sharing it.
  http_.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // cpp-httplib writes a response's headers and body separately: without
  // TCP_NODELAY, Nagle's algorithm holds the body until the client's
  // delayed ACK (about 40 ms per keep-alive request on Linux).
  http_.set_tcp_nodelay(true);
  // cpp-httplib reads a Content-Length body itself up to this length, and
  // skips one past it by reading it whole (at 5 s per read, however long);
  // so up to what the bounded reader of POST /aggregate drains, and the
  // pre-routing handler refuses anything longer (and, on the routes that
  // take no body, anything over max_body_bytes) unread.
  const size_t limit = options_.max_body_bytes;
  const size_t drain = OverLimitDrainBytes(limit);
  http_.set_payload_max_length(limit > std::numeric_limits<size_t>::max() -
                                           drain
                                   ? std::numeric_limits<size_t>::max()
                                   : limit + drain);
  http_.set_keep_alive_max_count(
      static_cast<size_t>(options_.keep_alive_max_count));
  http_.set_keep_alive_timeout(options_.keep_alive_timeout_seconds);
  Route();

  if (options_.port == 0) {
    port_ = http_.bind_to_any_port(options_.address);
    if (port_ < 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot bind an ephemeral port on '", options_.address, "'"));
    }
  } else {
    if (!http_.bind_to_port(options_.address, options_.port)) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind ", options_.address, ":", options_.port,
                       " (in use, or not an address of this machine)"));
    }
    port_ = options_.port;
  }
  return absl::OkStatus();
}

Server::~Server() { (void)Stop(); }

int Server::num_nodes() const {
  return runtime_ != nullptr ? runtime_->num_nodes() : 1;
}

SmartAlloc& Server::node_alloc(int node) const {
  return runtime_ != nullptr ? runtime_->memory().node(node) : *alloc_;
}

void Server::Route() {
  using Req = const httplib::Request&;
  http_.Get("/healthz", [this](Req, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
    Count(200);
  });
  http_.Get("/stats", [this](Req req, httplib::Response& res) {
    Handle(req, res, [this](Req r, RequestArena&) {
      return absl::StatusOr<std::string>(StatsJson(r.has_param("full")));
    });
  });
  // The body through a reader: cpp-httplib bounds only a body with a
  // Content-Length by itself (set_payload_max_length); read this way a
  // chunked body, and a compressed one as it inflates, are bounded too. The
  // rest of a body past the limit is read and dropped, so the connection
  // stays in step, and the answer is 413; but that drain is bounded too
  // (OverLimitDrainBytes, kOverLimitDrainMillis): it used to go on until
  // the client ended its body, so a client that kept sending held the
  // worker, and Stop(), for as long as it liked. Past the bound the reader
  // is stopped, the 413 says "Connection: close" and the connection is
  // closed.
  http_.Post("/aggregate", [this](Req req, httplib::Response& res,
                                  const httplib::ContentReader& reader) {
    std::string body;
    bool too_large = false;
    bool cut_off = false;  // The drain's bound was reached.
    const size_t limit = options_.max_body_bytes;
    const size_t drain_bytes = OverLimitDrainBytes(limit);
    size_t dropped = 0;  // Bytes read past the limit.
    std::chrono::steady_clock::time_point over_at;
    const bool read = reader([&](const char* data, size_t size) {
      if (!too_large) {
        if (size <= limit - body.size()) {
          body.append(data, size);
          return true;
        }
        too_large = true;
        over_at = std::chrono::steady_clock::now();
        dropped = size - (limit - body.size());
        std::string().swap(body);
      } else {
        dropped += std::min(size, drain_bytes + 1);  // Saturates past it.
      }
      if (dropped > drain_bytes ||
          std::chrono::steady_clock::now() - over_at >
              std::chrono::milliseconds(kOverLimitDrainMillis)) {
        cut_off = true;
        return false;  // Stops cpp-httplib's reading.
      }
      return true;
    });
    // Cut off, or the read failed (the client stopped sending mid-body and
    // a read timed out, or the body was malformed): either way the
    // connection is not in step, so it is closed. Every over-limit body,
    // with a Content-Length or chunked, comes through here: cpp-httplib's
    // payload limit is past the drain (Init), so it never skips one itself.
    if (cut_off || (too_large && !read)) {
      RefuseAndClose(
          res, 413,
          absl::StrCat("request body too large: over --max_body_bytes (", limit,
                       " bytes, after any decoding); the rest of it was not "
                       "read"));
      return;
    }
    if (!read) {
      RefuseAndClose(res,
                     res.status == 413 || res.status == 415 ? res.status : 400,
                     "the request body could not be read (it ended early, "
                     "a read timed out, or it was malformed); the rest of it "
                     "was not read");
      return;
    }
    // Read to its end: the connection is in step and stays open.
    if (too_large) {
      res.status = 413;
      res.set_content(
          ErrorBody(413, absl::StrCat("request body too large: over "
                                      "--max_body_bytes (",
                                      limit, " bytes, after any decoding)")),
          "application/json");
      Count(413);
      return;
    }
    Handle(req, res, [&body](Req, RequestArena& request) {
      return Aggregate(body, request);
    });
  });
  http_.Get("/simulate", [this](Req req, httplib::Response& res) {
    Handle(req, res,
           [](Req r, RequestArena& request) -> absl::StatusOr<std::string> {
             // The raw query, not r.params: cpp-httplib keeps the last
             // '='-separated piece of a segment ("particles=abc=20" -> 20).
             const absl::string_view target = r.target;
             const size_t q = target.find('?');
             auto params = SimulateParams::FromQuery(
                 q == absl::string_view::npos ? absl::string_view()
                                              : target.substr(q + 1));
             if (!params.ok()) return params.status();
             return Simulate(*params, request);
           });
  });

  // Every other method on a known path: 405 with the allowed ones.
  const auto not_allowed = [this](const char* allow) {
    return [this, allow](Req req, httplib::Response& res) {
      res.set_header("Allow", allow);
      res.status = 405;
      res.set_content(
          ErrorBody(405, absl::StrCat("method ", req.method, " not allowed on ",
                                      req.path, "; allowed: ", allow)),
          "application/json");
      Count(405);
    };
  };
  for (const char* path : {"/healthz", "/stats", "/simulate"}) {
    http_.Post(path, not_allowed("GET, HEAD"));
    http_.Put(path, not_allowed("GET, HEAD"));
    http_.Patch(path, not_allowed("GET, HEAD"));
    http_.Delete(path, not_allowed("GET, HEAD"));
    http_.Options(path, not_allowed("GET, HEAD"));
  }
  http_.Get("/aggregate", not_allowed("POST"));
  http_.Put("/aggregate", not_allowed("POST"));
  http_.Patch("/aggregate", not_allowed("POST"));
  http_.Delete("/aggregate", not_allowed("POST"));
  http_.Options("/aggregate", not_allowed("POST"));

  // Before cpp-httplib reads a body into memory for any other route (or
  // a 404): there it bounds only a body with a Content-Length, reads a
  // chunked or length-less one whole, and inflates a compressed one
  // without limit. Only POST /aggregate takes a body, through its bounded
  // reader; elsewhere a chunked or compressed body is refused unread, and
  // anywhere a body that has neither length nor chunking (it would be read
  // until the client closes). What is left of such a body must not be read
  // as the connection's next requests (they would be run: a request hidden
  // in a body is request smuggling behind a proxy that keeps connections
  // to this server alive): the connection is closed after the refusal
  // (RefuseAndClose; for HEAD, CloseConnectionOf from the logger).
  //
  // cpp-httplib 0.11 reads a body only on POST, PUT, PATCH, DELETE (and
  // PRI); on any other method (GET, HEAD, OPTIONS, ...) it leaves a body
  // with a Content-Length on the connection and parses it as the next
  // requests. Such a request is refused unread with 400, as is a chunked
  // one (411 off POST /aggregate).
  //
  // "Chunked" is decided as cpp-httplib decides it: the first
  // Transfer-Encoding header equal to "chunked", ignoring case. Any other
  // value (identity, gzip, "gzip, chunked", "chunked, identity") made
  // cpp-httplib read the body until the client closed, and a request
  // pipelined behind it was swallowed; it used to count as chunked here
  // (any Transfer-Encoding did), which skipped the 411. Such a request is
  // refused unread with 501 (RFC 9112 6.1: a transfer coding the server
  // does not implement), on every route. A Transfer-Encoding together with
  // a Content-Length is refused with 400 (RFC 9112 6.1: the server must
  // close such a connection; a front end that frames the body by its
  // Content-Length would disagree with this server about where the next
  // request starts).
  //
  // A Content-Length past what the body reader would drain
  // (max_body_bytes + OverLimitDrainBytes), or on a route that takes no
  // body past max_body_bytes, is refused unread with 413. A value that is
  // not plain decimal digits is refused with 400 (cpp-httplib reads it
  // with strtoull: "-1" is 2^64 - 1 bytes to skip).
  //
  // Not covered: "Expect: 100-continue" is answered "100 Continue" by
  // cpp-httplib before this handler runs, so a request refused here has
  // been invited to send its body first (docs/server.md, "Limits").
  http_.set_pre_routing_handler([this](Req req, httplib::Response& res) {
    close_after_head_refusal = false;
    const auto refuse = [this, &req, &res](int status,
                                           absl::string_view message) {
      RefuseAndClose(res, status, message);
      // No body is written for HEAD, so RefuseAndClose cannot close it.
      if (req.method == "HEAD") close_after_head_refusal = true;
      return httplib::Server::HandlerResponse::Handled;
    };
    if (req.has_header("Transfer-Encoding") &&
        (req.get_header_value_count("Transfer-Encoding") != 1 ||
         !absl::EqualsIgnoreCase(req.get_header_value("Transfer-Encoding"),
                                 "chunked"))) {
      return refuse(
          501, absl::StrCat("Transfer-Encoding '",
                            req.get_header_value("Transfer-Encoding"),
                            req.get_header_value_count("Transfer-Encoding") > 1
                                ? "' (in more than one header)"
                                : "'",
                            " is not supported: only 'chunked' is (or send a "
                            "Content-Length)"));
    }
    const bool chunked = req.has_header("Transfer-Encoding");
    if (chunked && req.has_header("Content-Length")) {
      return refuse(400, "both Transfer-Encoding and Content-Length: send one");
    }
    const bool takes_body = req.method == "POST" && req.path == "/aggregate";
    // The methods whose body cpp-httplib 0.11 reads (its expect_content).
    const bool body_read = req.method == "POST" || req.method == "PUT" ||
                           req.method == "PATCH" || req.method == "DELETE" ||
                           req.method == "PRI";
    if (!chunked && req.has_header("Content-Length")) {
      const std::string value = req.get_header_value("Content-Length");
      uint64_t length = 0;
      if (req.get_header_value_count("Content-Length") != 1 ||
          !IsPlainDecimal(value) || !absl::SimpleAtoi(value, &length)) {
        return refuse(400, absl::StrCat("Content-Length must be one decimal "
                                        "number of bytes, got '",
                                        value, "'"));
      }
      if (length > 0 && !body_read) {
        return refuse(400, absl::StrCat("a body (Content-Length ", length,
                                        ") on ", req.method, " ", req.path,
                                        ", which takes none; it was not "
                                        "read"));
      }
      const size_t limit = options_.max_body_bytes;
      const size_t drain = takes_body ? OverLimitDrainBytes(limit) : 0;
      if (length > limit && length - limit > drain) {
        return refuse(
            413, absl::StrCat("request body too large: Content-Length ", length,
                              " is over --max_body_bytes (", limit,
                              " bytes); the body was not read"));
      }
    }
    const std::string encoding = req.get_header_value("Content-Encoding");
    if (!takes_body && !encoding.empty() && encoding != "identity") {
      return refuse(
          415, absl::StrCat("Content-Encoding '", encoding, "' on ", req.method,
                            " ", req.path, ", which takes no body"));
    }
    if (!takes_body && chunked) {
      return refuse(411, absl::StrCat("a chunked body on ", req.method, " ",
                                      req.path, ", which takes no body"));
    }
    if ((req.method == "POST" || req.method == "PUT" ||
         req.method == "PATCH") &&
        !chunked && !req.has_header("Content-Length")) {
      return refuse(411, absl::StrCat("a ", req.method,
                                      " needs a Content-Length (or a chunked "
                                      "body)"));
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Runs once a response is written, on the connection's thread.
  http_.set_logger([this](Req req, const httplib::Response&) {
    if (!close_after_head_refusal) return;
    close_after_head_refusal = false;
    CloseConnectionOf(req.remote_addr, req.remote_port, port_);
  });

  // Statuses cpp-httplib sets itself (404, 413, 400 for an unparsable
  // request) get a body that says why.
  http_.set_error_handler([this](Req req, httplib::Response& res) {
    // Ours: counted already (a refusal above has its body in a provider and
    // is the only response that says "Connection: close" at this point).
    if (!res.body.empty() || res.has_header("Connection")) return;
    Count(res.status);
    std::string message;
    switch (res.status) {
      case 404:
        message = absl::StrCat("no endpoint ", req.path,
                               " (try /aggregate, /simulate, /stats, "
                               "/healthz)");
        break;
      case 413:
        message = "request body too large (--max_body_bytes)";
        break;
      case 400:
        message = "malformed HTTP request";
        break;
      default:
        message = absl::StrCat("HTTP status ", res.status);
    }
    res.set_content(ErrorBody(res.status, message), "application/json");
  });
}

void Server::Handle(const httplib::Request& req, httplib::Response& res,
                    const std::function<absl::StatusOr<std::string>(
                        const httplib::Request&, RequestArena&)>& work) {
  // The arena of the worker running this request: the connection job's
  // scratch arena (from its node's SmartAlloc), or in the kHttplib mode the
  // pool thread's frame arena of the server's SmartAlloc.
  const jobs::JobContext* job = RuntimeTaskQueue::CurrentJob();
  FrameArena* arena;
  int node = 0;
  if (job != nullptr) {
    arena = &job->arena();
    node = job->node();
    res.set_header("X-Worker", absl::StrCat(job->worker()));
  } else {
    // kHttplib; or a connection the runtime refused, run on the accept
    // thread, on node 0.
    arena = &node_alloc(0).frame_arena();
  }
  res.set_header("X-Node", absl::StrCat(node));
  node_requests_[node].fetch_add(1, std::memory_order_relaxed);
  in_flight_.fetch_add(1, std::memory_order_relaxed);

  const FrameArenaStats before = arena->stats();
  absl::StatusOr<std::string> body;
  size_t peak = 0;
  {
    RequestArena request(arena, options_.request_budget_bytes);
    // The hook too, and exceptions of any type: one that left here would
    // reach cpp-httplib (a bare 500) past the accounting below, and the
    // request would count as in flight for good.
    try {
      if (options_.on_request_start) options_.on_request_start(req.path);
      body = work(req, request);
    } catch (const std::bad_alloc&) {
      // BudgetExceeded from a pmr container, or the heap itself.
      body = request.BudgetError(absl::StrCat("handling ", req.path));
    } catch (const std::exception& e) {
      body = absl::InternalError(absl::StrCat("handler failed: ", e.what()));
    } catch (...) {
      body = absl::InternalError("handler failed: a non-std exception");
    }
    peak = request.peak_bytes();
  }  // The request's memory goes back here, whole.
  const FrameArenaStats after = arena->stats();
  if (after.bytes_used != before.bytes_used ||
      after.oversize_blocks != before.oversize_blocks ||
      after.chunks > std::max<size_t>(before.chunks, 1)) {
    not_released_.fetch_add(1, std::memory_order_relaxed);
  }
  request_bytes_total_.fetch_add(peak, std::memory_order_relaxed);
  AtomicMax(request_peak_bytes_, peak);

  if (body.ok()) {
    res.status = 200;
    res.set_content(*std::move(body), "application/json");
  } else {
    const int status = HttpStatusOf(body.status());
    if (status == 503) {
      budget_refusals_.fetch_add(1, std::memory_order_relaxed);
      res.set_header("Retry-After", "1");
    }
    res.status = status;
    res.set_content(ErrorBody(status, body.status().message()),
                    "application/json");
  }
  Count(res.status);
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

// cpp-httplib 0.11 closes a connection only when the request asked for it
// or writing the response failed; a "Connection: close" set on the
// response is sent but not honoured. So the refusal's body goes out through
// a content provider that writes it whole and then reports failure: the
// response is complete on the wire, write_response returns false, and
// cpp-httplib shuts the socket down and closes it. (Not for HEAD: no body
// is written for it; the pre-routing handler has the logger close such a
// connection, see CloseConnectionOf.)
void Server::RefuseAndClose(httplib::Response& res, int status,
                            absl::string_view message) {
  res.status = status;
  res.set_header("Connection", "close");
  auto body = std::make_shared<const std::string>(ErrorBody(status, message));
  res.set_content_provider(
      body->size(), "application/json",
      [body](size_t offset, size_t length, httplib::DataSink& sink) {
        sink.write(body->data() + offset, length);
        return false;  // Written whole: now close the connection.
      });
  Count(status);
}

size_t Server::OverLimitDrainBytes(size_t max_body_bytes) {
  return std::max(max_body_bytes, kMinOverLimitDrainBytes);
}

// Counted when the response is decided, before cpp-httplib writes it: a
// client that has its answer sees the counters include it.
void Server::Count(int status) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  if (status >= 200 && status < 300) {
    status_2xx_.fetch_add(1, std::memory_order_relaxed);
  } else if (status >= 400 && status < 500) {
    status_4xx_.fetch_add(1, std::memory_order_relaxed);
  } else if (status >= 500) {
    status_5xx_.fetch_add(1, std::memory_order_relaxed);
  }
}

absl::Status Server::Start() {
  alloc_internal::MutexLock lock(&mu_);
  if (started_ || stopped_) {
    return absl::FailedPreconditionError(
        started_ ? "Server::Start: already started"
                 : "Server::Start: the server was stopped");
  }
  started_ = true;
  listener_done_.store(false);
  listener_ = std::thread([this] {
    listen_ok_.store(http_.listen_after_bind());
    listener_done_.store(true);
  });
  // is_running() turns true when the accept loop starts; polling it is how
  // cpp-httplib 0.11 lets a caller know (it has no ready callback).
  while (!http_.is_running() && !listener_done_.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!http_.is_running() && listener_done_.load() && !listen_ok_.load()) {
    return absl::InternalError("Server::Start: the accept loop failed");
  }
  return absl::OkStatus();
}

absl::Status Server::Stop() {
  alloc_internal::MutexLock lock(&mu_);
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  if (started_) {
    // Drain: once stopped, cpp-httplib closes a connection that no worker
    // has picked up yet without reading its request. Keep accepting until
    // every accepted connection has reached a worker (bounded: a steady
    // stream of new connections would keep the queue from emptying), and
    // give the last one a moment to read its request.
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(kDrainSeconds);
    while (waiting_.load(std::memory_order_acquire) > 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    // Closes the listening socket: the accept loop ends, then shuts its
    // task queue down, which waits for every connection; each finishes
    // the request it is serving and answers it.
    http_.stop();
    listener_.join();
  }
  if (runtime_ != nullptr) {
    absl::Status s = runtime_->Shutdown(jobs::ShutdownMode::kFinish);
    if (!s.ok()) return s;
  }
  if (started_ && !listen_ok_.load()) {
    return absl::InternalError("the accept loop ended with an error");
  }
  return absl::OkStatus();
}

Server::Counters Server::counters() const {
  Counters c;
  c.connections = connections_.load(std::memory_order_relaxed);
  c.requests = requests_.load(std::memory_order_relaxed);
  c.status_2xx = status_2xx_.load(std::memory_order_relaxed);
  c.status_4xx = status_4xx_.load(std::memory_order_relaxed);
  c.status_5xx = status_5xx_.load(std::memory_order_relaxed);
  c.budget_refusals = budget_refusals_.load(std::memory_order_relaxed);
  c.in_flight = in_flight_.load(std::memory_order_relaxed);
  c.not_released = not_released_.load(std::memory_order_relaxed);
  c.request_bytes_total = request_bytes_total_.load(std::memory_order_relaxed);
  c.request_peak_bytes = request_peak_bytes_.load(std::memory_order_relaxed);
  for (int k = 0; k < num_nodes(); ++k) {
    c.node_requests.push_back(
        node_requests_[k].load(std::memory_order_relaxed));
  }
  return c;
}

std::string Server::StatsJson(bool full) const {
  const Counters c = counters();
  std::string out;
  absl::StrAppend(
      &out, "{\"server\":{\"pool\":\"", TaskPoolName(options_.pool),
      "\",\"port\":", port_, ",\"nodes\":", num_nodes(),
      ",\"request_budget_bytes\":", options_.request_budget_bytes,
      ",\"max_body_bytes\":", options_.max_body_bytes,
      ",\"connections\":", c.connections, ",\"requests\":", c.requests,
      ",\"status_2xx\":", c.status_2xx, ",\"status_4xx\":", c.status_4xx,
      ",\"status_5xx\":", c.status_5xx,
      ",\"budget_refusals\":", c.budget_refusals,
      ",\"in_flight\":", c.in_flight,
      ",\"requests_not_released\":", c.not_released,
      ",\"request_bytes_total\":", c.request_bytes_total,
      ",\"request_peak_bytes\":", c.request_peak_bytes,
      ",\"resident_bytes\":", ResidentBytes(), "},\"nodes\":[");
  for (int k = 0; k < num_nodes(); ++k) {
    SmartAlloc& alloc = node_alloc(k);
    const ChunkCacheStats cache = alloc.chunk_cache().stats();
    if (k > 0) out.push_back(',');
    absl::StrAppend(&out, "{\"node\":", k, ",\"requests\":", c.node_requests[k],
                    ",\"cache\":{\"in_use_bytes\":", cache.in_use_bytes,
                    ",\"peak_in_use_bytes\":", cache.peak_in_use_bytes,
                    ",\"cached_bytes\":", cache.cached_bytes,
                    ",\"hits\":", cache.hits, ",\"misses\":", cache.misses,
                    ",\"returned_to_source\":", cache.returned_to_source,
                    ",\"populated_blocks\":", cache.populated_blocks,
                    ",\"populate_failures\":", cache.populate_failures, "}");
    if (full) absl::StrAppend(&out, ",\"alloc\":", alloc.stats().ToJson());
    out.push_back('}');
  }
  out.append("],\"runtime\":");
  if (runtime_ != nullptr) {
    out.append(runtime_->stats().ToJson());
  } else {
    out.append("null");
  }
  out.append("}\n");
  return out;
}

}  // namespace server
}  // namespace framealloc
