#include "alloc/error.h"

#include "alloc/internal/test_util.h"
#include "gtest/gtest.h"

namespace framealloc {
namespace {

TEST(ErrorTest, KindNames) {
  EXPECT_EQ(ErrorKindName(ErrorKind::kOutOfMemory), "out of memory");
  EXPECT_EQ(ErrorKindName(ErrorKind::kInvalidArgument), "invalid argument");
  EXPECT_EQ(ErrorKindName(ErrorKind::kMisuse), "misuse");
  EXPECT_EQ(ErrorKindName(ErrorKind::kBudgetExceeded), "budget exceeded");
}

TEST(ErrorTest, FormatNamesKindPlaceMessageAndStatus) {
  ErrorReport report{ErrorKind::kMisuse,
                     "Thing::Do",
                     "it broke",
                     0,
                     0,
                     absl::FailedPreconditionError("why")};
  EXPECT_EQ(FormatErrorReport(report),
            "framealloc: misuse in Thing::Do: it broke "
            "[FAILED_PRECONDITION: why]");
}

TEST(ErrorTest, InstalledHandlerSeesRecoverableErrors) {
  alloc_internal::ErrorRecorder recorder;
  ReportError({ErrorKind::kMisuse, "here", "first", 1, 2, absl::OkStatus()});
  ASSERT_EQ(recorder.count(), 1u);
  EXPECT_EQ(recorder.reports()[0].message, "first");
  EXPECT_EQ(recorder.reports()[0].size, 1u);
  EXPECT_EQ(recorder.reports()[0].alignment, 2u);
}

TEST(ErrorTest, ScopedHandlerRestoresPrevious) {
  alloc_internal::ErrorRecorder outer;
  {
    alloc_internal::ErrorRecorder inner;
    ReportError({ErrorKind::kMisuse, "here", "inner", 0, 0, {}});
    EXPECT_EQ(inner.count(), 1u);
  }
  ReportError({ErrorKind::kMisuse, "here", "outer", 0, 0, {}});
  ASSERT_EQ(outer.count(), 1u);
  EXPECT_EQ(outer.reports()[0].message, "outer");
}

TEST(ErrorDeathTest, DefaultHandlerPrintsAndAborts) {
  EXPECT_DEATH(
      ReportError(
          {ErrorKind::kMisuse, "Where::Call", "a clear sentence", 0, 0, {}}),
      "framealloc: misuse in Where::Call: a clear sentence");
}

TEST(ErrorDeathTest, FatalAbortsEvenWhenHandlerReturns) {
  EXPECT_DEATH(
      {
        alloc_internal::ErrorRecorder recorder;
        ReportFatalError({ErrorKind::kOutOfMemory, "X", "gone", 0, 0, {}});
      },
      "the error handler returned from a fatal error");
}

}  // namespace
}  // namespace framealloc
