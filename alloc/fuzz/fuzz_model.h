// The reference model and input decoding shared by framealloc's fuzzers.
//
// For: the libFuzzer targets in this folder (and their corpus replay tests).
// An input is read as a stream of operations by FuzzInput; every block an
// allocator hands out is registered with LiveBlocks, which fills it with a
// pattern unique to the block, checks that it is aligned as asked and
// overlaps no other live block (an ordered map of live ranges), and checks
// the pattern again before the block is freed or its memory released. A
// violated invariant prints what broke and aborts: a fuzzer crash. Also a
// thread that runs closures synchronously (cross-thread frees, driven
// deterministically) and an error handler that records reports and, when
// armed, throws instead of letting a never-null call abort.
// Not for: production code, or tests that can assert with gtest.
#ifndef ALLOC_FUZZ_FUZZ_MODEL_H_
#define ALLOC_FUZZ_FUZZ_MODEL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc/error.h"

namespace framealloc {
namespace fuzz_internal {

// Prints `what` and aborts when `cond` is false: a model violation.
#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "fuzz model violated at %s:%d: %s: ", __FILE__, \
                   __LINE__, #cond);                                       \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fputc('\n', stderr);                                            \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

// Whether to print each operation as it runs (FRAMEALLOC_FUZZ_TRACE set in
// the environment): for reading what a crashing input does.
inline bool TraceOps() {
  static const bool on = std::getenv("FRAMEALLOC_FUZZ_TRACE") != nullptr;
  return on;
}
#define FUZZ_TRACE(...)                  \
  do {                                   \
    if (TraceOps()) {                    \
      std::fprintf(stderr, __VA_ARGS__); \
      std::fputc('\n', stderr);          \
    }                                    \
  } while (0)

// Reads an input front to back; past its end every read is 0 and done()
// is true, so a decoder never reads out of bounds.
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool done() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    const uint16_t lo = Byte();
    return static_cast<uint16_t>(lo | (Byte() << 8));
  }
  // A size spread over many magnitudes: a mantissa of 8 bits shifted by up
  // to `max_shift` bits (0 included).
  size_t Size(int max_shift) {
    const size_t mantissa = Byte();
    const int shift = Byte() % (max_shift + 1);
    return mantissa << shift;
  }
  // A power-of-two alignment 2^[0, max_log2].
  size_t Alignment(int max_log2) {
    return size_t{1} << (Byte() % (max_log2 + 1));
  }

 private:
  const uint8_t* const data_;
  const size_t size_;
  size_t pos_ = 0;
};

// Requests no allocator may honour, for the invalid-request operations:
// `which` picks one (any value works).
struct BadRequest {
  size_t size;
  size_t alignment;
};
inline BadRequest PickBadRequest(uint8_t which) {
  constexpr size_t kMax = size_t{1} << 47;  // MemorySource::kMaxBlockSize.
  switch (which % 6) {
    case 0:
      return {64, 3};  // Not a power of two.
    case 1:
      return {64, 24};
    case 2:
      return {64, 0};  // Zero is not a power of two either.
    case 3:
      return {kMax + 1, 16};  // Larger than any block.
    case 4:
      return {SIZE_MAX, 8};
    default:
      return {16, size_t{1} << 63};  // A power of two, beyond any block.
  }
}

// The pattern of a block: 8-byte words derived from the block's seed and the
// word's index, so a block holding another block's bytes (or stale ones)
// does not match.
inline uint64_t PatternWord(uint64_t seed, size_t index) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + index * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}
inline void FillPattern(void* p, size_t size, uint64_t seed) {
  auto* bytes = static_cast<unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const uint64_t w = PatternWord(seed, i / 8);
    std::memcpy(bytes + i, &w, 8);
  }
  if (i < size) {
    const uint64_t w = PatternWord(seed, i / 8);
    std::memcpy(bytes + i, &w, size - i);
  }
}
// The offset of the first wrong byte, or `size` when all match.
inline size_t FirstMismatch(const void* p, size_t size, uint64_t seed) {
  const auto* bytes = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const uint64_t w = PatternWord(seed, i / 8);
    if (std::memcmp(bytes + i, &w, 8) != 0) break;
  }
  for (; i < size; ++i) {
    const uint64_t w = PatternWord(seed, i / 8);
    if (bytes[i] != reinterpret_cast<const unsigned char*>(&w)[i % 8]) break;
  }
  return i;
}

// One live block of the model.
struct LiveBlock {
  size_t size = 0;
  size_t alignment = 0;
  uint64_t seed = 0;  // Also the order of registration (1, 2, ...).
  // What owns it, in the fuzzer's terms: an arena, a pool thread, a frame.
  const void* owner = nullptr;
  int kind = 0;
  uint64_t frame = 0;
};

// Every block an allocator handed out and nobody released yet.
class LiveBlocks {
 public:
  // Registers a fresh block: aligned, inside no other live block, then
  // filled with its pattern. A block of size 0 is only checked for
  // alignment (such a pointer may equal the next block's start) and kept
  // apart, so that it is still freed and counted. Returns its seed.
  uint64_t Add(void* p, size_t size, size_t alignment, const void* owner,
               int kind, uint64_t frame = 0) {
    FUZZ_CHECK(p != nullptr, "null block registered");
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    FUZZ_CHECK(at % alignment == 0,
               "block %p of %zu bytes is not aligned to %zu", p, size,
               alignment);
    const uint64_t seed = next_seed_++;
    const LiveBlock block{size, alignment, seed, owner, kind, frame};
    if (size == 0) {
      empty_.emplace(at, block);
      return seed;
    }
    auto next = sized_.lower_bound(at);
    if (next != sized_.end()) {
      FUZZ_CHECK(at + size <= next->first,
                 "block %p+%zu overlaps live block %#zx+%zu", p, size,
                 static_cast<size_t>(next->first), next->second.size);
    }
    if (next != sized_.begin()) {
      auto prev = std::prev(next);
      FUZZ_CHECK(prev->first + prev->second.size <= at,
                 "block %p+%zu overlaps live block %#zx+%zu", p, size,
                 static_cast<size_t>(prev->first), prev->second.size);
    }
    FillPattern(p, size, seed);
    bytes_ += size;
    sized_.emplace(at, block);
    return seed;
  }

  // Checks one block's pattern.
  static void Check(uintptr_t at, const LiveBlock& b) {
    const size_t bad =
        FirstMismatch(reinterpret_cast<const void*>(at), b.size, b.seed);
    FUZZ_CHECK(bad == b.size,
               "live block %#zx+%zu (seed %llu, kind %d) lost its contents at "
               "offset %zu",
               static_cast<size_t>(at), b.size,
               static_cast<unsigned long long>(b.seed), b.kind, bad);
  }
  void CheckAll() const {
    for (const auto& [at, b] : sized_) Check(at, b);
  }

  // Checks and forgets the block at `p`, which must be live.
  LiveBlock Remove(const void* p) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    if (auto it = sized_.find(at); it != sized_.end()) {
      Check(it->first, it->second);
      const LiveBlock b = it->second;
      bytes_ -= b.size;
      sized_.erase(it);
      return b;
    }
    auto it = empty_.find(at);
    FUZZ_CHECK(it != empty_.end(), "removing %p, which is not live", p);
    const LiveBlock b = it->second;
    empty_.erase(it);
    return b;
  }

  // Checks and forgets every block for which `pred(block)` holds; returns
  // how many.
  template <typename Pred>
  size_t RemoveIf(Pred pred) {
    return RemoveIfIn(sized_, pred) + RemoveIfIn(empty_, pred);
  }

  // The `r`-th (modulo) block for which `pred` holds, or nullptr.
  template <typename Pred>
  void* Pick(uint32_t r, Pred pred) const {
    const size_t n = Count(pred);
    if (n == 0) return nullptr;
    size_t skip = r % n;
    for (const auto& [at, b] : sized_) {
      if (pred(b) && skip-- == 0) return reinterpret_cast<void*>(at);
    }
    for (const auto& [at, b] : empty_) {
      if (pred(b) && skip-- == 0) return reinterpret_cast<void*>(at);
    }
    return nullptr;
  }

  // Checks and forgets every block; returns them.
  std::vector<std::pair<void*, LiveBlock>> TakeAll() {
    std::vector<std::pair<void*, LiveBlock>> all;
    for (const auto& [at, b] : sized_) {
      Check(at, b);
      all.emplace_back(reinterpret_cast<void*>(at), b);
    }
    for (const auto& [at, b] : empty_) {
      all.emplace_back(reinterpret_cast<void*>(at), b);
    }
    sized_.clear();
    empty_.clear();
    bytes_ = 0;
    return all;
  }

  // Whether another block may be registered: the model stays small enough
  // that every operation is cheap (at most 1024 blocks, 1 MiB).
  bool HasRoom() const { return size() < 1024 && bytes_ < (size_t{1} << 20); }

  const LiveBlock& Get(const void* p) const {
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    if (auto it = sized_.find(at); it != sized_.end()) return it->second;
    auto it = empty_.find(at);
    FUZZ_CHECK(it != empty_.end(), "%p is not live", p);
    return it->second;
  }

  template <typename Pred>
  size_t Count(Pred pred) const {
    size_t n = 0;
    for (const auto& entry : sized_) n += pred(entry.second) ? 1 : 0;
    for (const auto& entry : empty_) n += pred(entry.second) ? 1 : 0;
    return n;
  }
  size_t size() const { return sized_.size() + empty_.size(); }
  // The seed the next block will get: blocks registered after a mark have
  // seeds at or above the value read when the mark was set.
  uint64_t next_seed() const { return next_seed_; }

 private:
  template <typename Map, typename Pred>
  size_t RemoveIfIn(Map& map, Pred pred) {
    size_t removed = 0;
    for (auto it = map.begin(); it != map.end();) {
      if (pred(it->second)) {
        Check(it->first, it->second);
        bytes_ -= it->second.size;
        it = map.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
    return removed;
  }

  std::map<uintptr_t, LiveBlock> sized_;       // Overlap-checked.
  std::multimap<uintptr_t, LiveBlock> empty_;  // Size 0.
  size_t bytes_ = 0;
  uint64_t next_seed_ = 1;
};

// A second thread that runs closures one at a time, synchronously: Run()
// returns when the closure has run on the helper. Cross-thread frees are then
// deterministic (the fuzzer decides exactly what the other thread does and
// when) while still crossing a real thread boundary. Process-wide, so a
// fuzzer does not start a thread per input.
class HelperThread {
 public:
  static HelperThread& Get() {
    static HelperThread* helper = new HelperThread;  // Never destroyed.
    return *helper;
  }

  void Run(const std::function<void()>& fn) {
    std::unique_lock<std::mutex> lock(mu_);
    task_ = &fn;
    cv_.notify_all();
    cv_.wait(lock, [&] { return task_ == nullptr; });
  }

 private:
  HelperThread() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return task_ != nullptr; });
      (*task_)();
      task_ = nullptr;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* task_ = nullptr;
};

// Thrown by ReportHandler when armed: a never-null call whose request no
// allocator can honour reports a fatal error, and the handler turns it into
// an exception instead of letting the process abort (error.h allows a
// handler to throw).
struct FatalReport {
  ErrorKind kind;
};

// Records every report; installs itself for its lifetime. When armed (for
// the next report only) it throws FatalReport.
class ReportHandler {
 public:
  ReportHandler() : scope_(&ReportHandler::Handle, this) {}

  void ArmThrow() { throw_armed_ = true; }
  void Disarm() { throw_armed_ = false; }
  size_t reports() const { return reports_; }
  size_t reports_of(ErrorKind kind) const {
    return by_kind_[static_cast<int>(kind)];
  }
  const std::string& last_message() const { return last_message_; }

 private:
  static void Handle(const ErrorReport& report, void* self) {
    auto* h = static_cast<ReportHandler*>(self);
    ++h->reports_;
    ++h->by_kind_[static_cast<int>(report.kind)];
    h->last_message_ = report.message;
    if (h->throw_armed_) {
      h->throw_armed_ = false;
      throw FatalReport{report.kind};
    }
  }

  bool throw_armed_ = false;
  size_t reports_ = 0;
  size_t by_kind_[4] = {};
  std::string last_message_;
  ScopedErrorHandler scope_;
};

}  // namespace fuzz_internal
}  // namespace framealloc

#endif  // ALLOC_FUZZ_FUZZ_MODEL_H_
