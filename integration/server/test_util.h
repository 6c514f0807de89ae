// Helpers shared by the server's tests.
//
// For: server_test and protocol_test, which start a Server in-process on an
// ephemeral loopback port. Not for: production code.
#ifndef INTEGRATION_SERVER_TEST_UTIL_H_
#define INTEGRATION_SERVER_TEST_UTIL_H_

#include <memory>
#include <utility>

#include "absl/status/status.h"
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

}  // namespace server
}  // namespace framealloc

#endif  // INTEGRATION_SERVER_TEST_UTIL_H_
