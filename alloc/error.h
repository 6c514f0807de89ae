// The one error path of framealloc.
//
// For: every error the library detects at a place that cannot return a
// Status: a never-null allocation that cannot be satisfied, an invalid
// argument to such a call, a misuse (a scope rewound out of order, a cache
// destroyed with blocks still out). Each goes through ReportError or
// ReportFatalError, which call the installed handler. The default handler
// prints the report to stderr and aborts. Not for: errors of calls that
// return absl::Status or a null from a Try* call; those are the caller's to
// handle and never reach this path.
#ifndef ALLOC_ERROR_H_
#define ALLOC_ERROR_H_

#include <cstddef>
#include <string>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace framealloc {

// What went wrong, by category.
enum class ErrorKind {
  kOutOfMemory,      // A memory source could not supply a block.
  kInvalidArgument,  // A size, count or alignment no allocator can honour.
  kMisuse,           // The API was used against its contract.
  kBudgetExceeded,   // A budget refused a never-null allocation.
};

// Returns "out of memory", "invalid argument", "misuse" or "budget
// exceeded".
absl::string_view ErrorKindName(ErrorKind kind);

// One detected error, with everything needed to explain it.
struct ErrorReport {
  ErrorKind kind;
  // The call that detected it, for example "FrameArena::Allocate".
  absl::string_view where;
  // A full sentence naming the request and the state that refused it.
  std::string message;
  // The request, where one exists (0 otherwise).
  size_t size = 0;
  size_t alignment = 0;
  // The underlying status (the memory source's answer, for example).
  absl::Status status;
};

// A handler sees every report. It may log, count, throw, or return. If it
// returns from a fatal report, the process aborts (a never-null call has no
// value to return); if it returns from a non-fatal one, the library goes on
// with the safe recovery documented at the call that reported it. Reports
// made while memory is being released or a scope is ending (frees,
// end_frame and resets, scope and object destructors) cannot unwind: an
// exception the handler throws from those is dropped (with a line on
// stderr), and the library goes on as if the handler had returned.
using ErrorHandler = void (*)(const ErrorReport& report, void* context);

// Installs `handler` (with `context` passed back to it) and returns the
// previous handler. `nullptr` restores the default: print and abort.
// Thread-safe.
ErrorHandler SetErrorHandler(ErrorHandler handler, void* context = nullptr);

// Restores the previous handler when it goes out of scope. For tests and
// for hosts that observe errors in one region of code.
class ScopedErrorHandler {
 public:
  ScopedErrorHandler(ErrorHandler handler, void* context);
  ~ScopedErrorHandler();
  ScopedErrorHandler(const ScopedErrorHandler&) = delete;
  ScopedErrorHandler& operator=(const ScopedErrorHandler&) = delete;

 private:
  ErrorHandler previous_handler_;
  void* previous_context_;
};

// Reports a recoverable error: calls the handler, and returns if it does.
ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ReportError(
    const ErrorReport& report);

// As ReportError, for a caller that must finish what it is doing (a free,
// a reset, a destructor): an exception the handler throws is dropped.
ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ReportErrorAndContinue(
    const ErrorReport& report) noexcept;

// Reports an error after which the caller cannot continue: calls the
// handler, then aborts if the handler returned.
[[noreturn]] ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ReportFatalError(
    const ErrorReport& report);

// Formats a report the way the default handler prints it.
std::string FormatErrorReport(const ErrorReport& report);

}  // namespace framealloc

#endif  // ALLOC_ERROR_H_
