// Implementation of the single error path (see error.h).
#include "alloc/error.h"

#include <cstdio>
#include <cstdlib>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "alloc/internal/mutex.h"
#include "alloc/internal/no_unwind.h"

namespace framealloc {
namespace {

struct HandlerSlot {
  alloc_internal::Mutex mu;
  ErrorHandler handler ABSL_GUARDED_BY(mu) = nullptr;
  void* context ABSL_GUARDED_BY(mu) = nullptr;
};

HandlerSlot& Slot() {
  static HandlerSlot* slot = new HandlerSlot;  // Never destroyed: errors may
                                               // be reported during exit.
  return *slot;
}

void DefaultHandler(const ErrorReport& report) {
  const std::string text = FormatErrorReport(report);
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
  std::abort();
}

// Copies the handler out under the lock and calls it without the lock, so a
// handler may itself install another handler or report again.
void CallHandler(const ErrorReport& report) {
  ErrorHandler handler;
  void* context;
  {
    HandlerSlot& slot = Slot();
    alloc_internal::MutexLock lock(&slot.mu);
    handler = slot.handler;
    context = slot.context;
  }
  if (handler == nullptr) DefaultHandler(report);
  handler(report, context);
}

}  // namespace

absl::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kOutOfMemory:
      return "out of memory";
    case ErrorKind::kInvalidArgument:
      return "invalid argument";
    case ErrorKind::kMisuse:
      return "misuse";
    case ErrorKind::kBudgetExceeded:
      return "budget exceeded";
  }
  return "unknown error";
}

ErrorHandler SetErrorHandler(ErrorHandler handler, void* context) {
  HandlerSlot& slot = Slot();
  alloc_internal::MutexLock lock(&slot.mu);
  ErrorHandler previous = slot.handler;
  slot.handler = handler;
  slot.context = context;
  return previous;
}

ScopedErrorHandler::ScopedErrorHandler(ErrorHandler handler, void* context) {
  HandlerSlot& slot = Slot();
  alloc_internal::MutexLock lock(&slot.mu);
  previous_handler_ = slot.handler;
  previous_context_ = slot.context;
  slot.handler = handler;
  slot.context = context;
}

ScopedErrorHandler::~ScopedErrorHandler() {
  SetErrorHandler(previous_handler_, previous_context_);
}

std::string FormatErrorReport(const ErrorReport& report) {
  std::string text = absl::StrCat("framealloc: ", ErrorKindName(report.kind),
                                  " in ", report.where, ": ", report.message);
  if (!report.status.ok()) {
    absl::StrAppend(&text, " [", report.status.ToString(), "]");
  }
  return text;
}

void ReportError(const ErrorReport& report) { CallHandler(report); }

void ReportErrorAndContinue(const ErrorReport& report) noexcept {
  alloc_internal::CallDroppingExceptions(
      "the error handler",
      std::string_view(report.where.data(), report.where.size()),
      [&report] { CallHandler(report); });
}

void ReportFatalError(const ErrorReport& report) {
  CallHandler(report);
  std::fprintf(stderr, "%s\n(the error handler returned from a fatal error)\n",
               FormatErrorReport(report).c_str());
  std::abort();
}

}  // namespace framealloc
