// Helpers shared by the server's tests.
//
// For: server_test and protocol_test, which start a Server in-process on an
// ephemeral loopback port. Not for: production code.
#ifndef INTEGRATION_SERVER_TEST_UTIL_H_
#define INTEGRATION_SERVER_TEST_UTIL_H_

#include <atomic>
#include <functional>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "integration/server/server.h"

namespace framealloc {
namespace server {

// Creates and starts a server with `options`; null (with a test failure)
// if either step fails.
inline std::unique_ptr<Server> StartServer(ServerOptions options) {
  auto server = Server::Create(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  absl::Status s = (*server)->Start();
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(server);
}

// A ServerOptions::on_request_start hook that holds the first /simulate
// request in its handler: it notifies `entered`, then waits for `release`.
// Later requests pass. Both must outlive the server.
inline std::function<void(absl::string_view)> HoldFirstSimulate(
    absl::Notification* entered, absl::Notification* release) {
  auto held = std::make_shared<std::atomic<bool>>(false);
  return [entered, release, held](absl::string_view path) {
    if (path != "/simulate" || held->exchange(true)) return;
    entered->Notify();
    release->WaitForNotification();
  };
}

}  // namespace server
}  // namespace framealloc

#endif  // INTEGRATION_SERVER_TEST_UTIL_H_
