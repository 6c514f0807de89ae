#include "jobs/runtime.h"

#include "gtest/gtest.h"
namespace framealloc::jobs {
namespace {
TEST(RuntimeTest, Smoke) {
  auto rt = Runtime::Create(Config()).value();
  auto h = rt->Submit([](JobContext& ctx) { return ctx.node() + 41; });
  ASSERT_TRUE(h.Wait().ok());
  EXPECT_EQ(h.value(), 41);
}
}  // namespace
}  // namespace framealloc::jobs
