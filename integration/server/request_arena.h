// RequestArena: the memory of one HTTP request, with a byte budget.
//
// For: the temporaries of one request handler (parsed values, grids,
// particle arrays), taken from a per-worker FrameArena between a mark set
// when the request starts and a rewind when it ends, so the request's
// memory is released whole (its chunks back to the node's cache) and the
// next request on that worker starts from the same point. Every allocation
// is charged to the request's budget; a request that would go over it gets
// nullptr (Try* calls) or BudgetExceeded (the pmr resource), and the
// server answers 503. Nested Scopes release a phase's memory (one
// simulation step) before the next one, and give the budget back.
// Not for: memory that outlives the request (the response body is a
// std::string of its own), nor sharing between threads (the arena has one
// owner: the worker running the request).
//
// Thread safety: none; one thread (the request's) at a time.
// Errors: Try* return nullptr (or an empty span) on a refusal, counting it
// in refusals(); resource() throws BudgetExceeded (a std::bad_alloc), as
// std::pmr expects. Nothing aborts.
//
// Example:
//   framealloc::server::RequestArena request(&ctx.arena(), 8 << 20);
//   std::span<float> x = request.TryArray<float>(n);
//   if (x.empty()) return BudgetError(request);   // -> 503
//   std::pmr::vector<double> values(request.resource());
//   ...                                            // released at scope exit
#ifndef INTEGRATION_SERVER_REQUEST_ARENA_H_
#define INTEGRATION_SERVER_REQUEST_ARENA_H_

#include <cstddef>
#include <memory_resource>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "alloc/frame_arena.h"

namespace framealloc {
namespace server {

// Thrown by RequestArena::resource() when the budget (or the arena)
// refuses: the std::pmr boundary. Handlers catch it and answer 503.
class BudgetExceeded : public std::bad_alloc {
 public:
  const char* what() const noexcept override {
    return "request memory budget exceeded";
  }
};

class RequestArena {
 public:
  // Marks `arena` (not owned; it must outlive this object and belong to
  // the calling thread) and charges at most `budget_bytes` to the request.
  // REQUIRES: no other mark on `arena` is opened after this one and left
  // open when this object is destroyed.
  RequestArena(FrameArena* arena, size_t budget_bytes);
  // Rewinds the arena to the mark: every chunk the request took beyond it
  // returns to the cache, destructors registered since run. If the rewind
  // fails (a newer mark left open, against the REQUIRES above), the arena
  // is left as it is and the misuse is reported through
  // ReportErrorAndContinue (alloc/error.h): a throwing handler's exception
  // is dropped. ~Scope does the same.
  ~RequestArena();
  RequestArena(const RequestArena&) = delete;
  RequestArena& operator=(const RequestArena&) = delete;

  // `size` bytes aligned to `alignment`, or nullptr when the budget or the
  // arena refuses (counted in refusals()).
  void* TryAllocate(size_t size, size_t alignment = alignof(std::max_align_t)) {
    if (size > budget_ - used_) return Refuse(size);
    void* p = arena_->TryAllocate(size, alignment);
    if (p == nullptr) return Refuse(size);
    used_ += size;
    if (used_ > peak_) peak_ = used_;
    return p;
  }

  // `n` uninitialized Ts (trivially destructible only), or an empty span
  // when refused; `n * sizeof(T)` overflow is a refusal. n == 0 gives an
  // empty span without a refusal.
  template <typename T>
  std::span<T> TryArray(size_t n) {
    static_assert(std::is_trivially_destructible_v<T>,
                  "request arrays are released without destructors");
    if (n == 0) return {};
    size_t bytes;
    if (__builtin_mul_overflow(n, sizeof(T), &bytes)) {
      Refuse(SIZE_MAX);
      return {};
    }
    T* p = static_cast<T*>(TryAllocate(bytes, alignof(T)));
    return p == nullptr ? std::span<T>() : std::span<T>(p, n);
  }

  // A std::pmr resource over this request's memory (deallocation is a
  // no-op; everything goes at the rewind). Throws BudgetExceeded on a
  // refusal.
  std::pmr::memory_resource* resource() { return &resource_; }

  // A phase inside the request: what it allocates is released, and its
  // bytes given back to the budget, when the Scope ends. Scopes nest like
  // the arena's marks (the newest closes first).
  class Scope {
   public:
    explicit Scope(RequestArena* request);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    RequestArena* request_;
    ArenaMark mark_;
    size_t used_;
  };

  // Bytes the request holds now (requested sizes, without padding).
  size_t used_bytes() const { return used_; }
  // The most it held at once.
  size_t peak_bytes() const { return peak_; }
  size_t budget_bytes() const { return budget_; }
  // Allocations refused (budget or arena).
  size_t refusals() const { return refusals_; }
  // The size of the last refused request (SIZE_MAX for an overflow).
  size_t last_refused_bytes() const { return last_refused_; }
  // ResourceExhausted naming the budget, the bytes held and the refused
  // request, for the 503 body: "request memory budget exceeded: ...".
  absl::Status BudgetError(const std::string& what) const;
  FrameArena& arena() const { return *arena_; }

 private:
  class Resource final : public std::pmr::memory_resource {
   public:
    explicit Resource(RequestArena* owner) : owner_(owner) {}

   private:
    void* do_allocate(size_t bytes, size_t alignment) override;
    void do_deallocate(void*, size_t, size_t) override {}
    bool do_is_equal(
        const std::pmr::memory_resource& other) const noexcept override {
      return this == &other;
    }
    RequestArena* owner_;
  };

  void* Refuse(size_t size);

  FrameArena* arena_;
  ArenaMark mark_;
  size_t budget_;
  size_t used_ = 0;
  size_t peak_ = 0;
  size_t refusals_ = 0;
  size_t last_refused_ = 0;
  Resource resource_{this};
};

}  // namespace server
}  // namespace framealloc

#endif  // INTEGRATION_SERVER_REQUEST_ARENA_H_
