// RequestArena: marks, rewinds and the budget of one request's memory.
#include "integration/server/request_arena.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "alloc/error.h"

namespace framealloc {
namespace server {
namespace {

// A rewind that fails means a mark was left open inside the request: a
// bug in the handler, reported (the arena is left as it is). Called from
// destructors only (~RequestArena, ~Scope), which cannot unwind: an
// exception the handler throws is dropped (ReportErrorAndContinue), where
// ReportError let it reach the noexcept destructor and std::terminate.
void RewindOrReport(FrameArena* arena, const ArenaMark& mark,
                    const char* where) {
  absl::Status status = arena->Rewind(mark);
  if (!status.ok()) {
    ReportErrorAndContinue({ErrorKind::kMisuse, where,
                            std::string(status.message()), 0, 0, status});
  }
}

}  // namespace

RequestArena::RequestArena(FrameArena* arena, size_t budget_bytes)
    : arena_(arena), mark_(arena->Mark()), budget_(budget_bytes) {}

RequestArena::~RequestArena() {
  RewindOrReport(arena_, mark_, "RequestArena::~RequestArena");
}

void* RequestArena::Refuse(size_t size) {
  ++refusals_;
  last_refused_ = size;
  return nullptr;
}

absl::Status RequestArena::BudgetError(const std::string& what) const {
  return absl::ResourceExhaustedError(
      absl::StrCat("request memory budget exceeded: ", what, " needs ",
                   last_refused_ == SIZE_MAX ? std::string("more than SIZE_MAX")
                                             : absl::StrCat(last_refused_),
                   " more bytes while the request holds ", used_, " of its ",
                   budget_, " bytes (--request_budget_bytes)"));
}

void* RequestArena::Resource::do_allocate(size_t bytes, size_t alignment) {
  void* p = owner_->TryAllocate(bytes, alignment);
  if (p == nullptr) throw BudgetExceeded();
  return p;
}

RequestArena::Scope::Scope(RequestArena* request)
    : request_(request),
      mark_(request->arena_->Mark()),
      used_(request->used_) {}

RequestArena::Scope::~Scope() {
  RewindOrReport(request_->arena_, mark_, "RequestArena::Scope::~Scope");
  request_->used_ = used_;
}

}  // namespace server
}  // namespace framealloc
