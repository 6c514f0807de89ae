// SmartAlloc's slow paths: thread states, frames, budgets, heap tracking,
// tags and statistics (see smart_alloc.h).
#include "alloc/smart_alloc.h"

#include <pthread.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "alloc/internal/bits.h"
#include "alloc/internal/json.h"
#include "alloc/internal/sanitizer.h"

namespace framealloc {
namespace {

using alloc_internal::AppendJsonString;
using alloc_internal::MutexLock;
using alloc_internal::ThreadState;

std::atomic<uint64_t> next_instance_id{1};

// Live instances by id, so that a thread exiting after an instance died
// does not touch it. Never destroyed: threads may exit during static
// destruction.
struct LiveInstances {
  alloc_internal::Mutex mu;
  absl::flat_hash_map<uint64_t, SmartAlloc*> by_id ABSL_GUARDED_BY(mu);
};
LiveInstances& Live() {
  static LiveInstances* live = new LiveInstances;
  return *live;
}

// The instance whose state this thread is handing back at its exit, if any
// (SmartAlloc::RetireAtThreadExit).
thread_local const SmartAlloc* retiring_at_exit = nullptr;

// Tracked heap blocks carry this header just before the user pointer (and
// its front canary, when guarded). The magic comes last, next to the user's
// bytes: an underflow reaches it before any other field, so the free sees
// the damage instead of trusting a written-over tag or size.
struct HeapHeader {
  TagId tag;
  size_t size;
  size_t alignment;  // Of the underlying allocation.
  size_t offset;     // From the underlying allocation to the user pointer.
  uint64_t magic;    // kHeapMagic ^ address of the user pointer.
};
static_assert(offsetof(HeapHeader, magic) + sizeof(uint64_t) ==
                  sizeof(HeapHeader),
              "the magic must be the header's last word");
constexpr uint64_t kHeapMagic = 0x4652414d45484541ull;  // "FRAMEHEA"

// The offset HeapAllocate puts between the underlying allocation (aligned
// to `align`) and the user pointer.
size_t HeapOffset(size_t align, bool guarded) {
  size_t offset = sizeof(HeapHeader) + (guarded ? kCanarySize : 0);
  alloc_internal::AlignUp(offset, align, &offset);
  return offset;
}

// What is wrong with a header whose magic matched (a stray write that
// missed the magic), or "" when every field is one HeapAllocate can write:
// heap_free uses none of them before this says so.
std::string HeapHeaderDamage(const HeapHeader& h, int tags, bool guarded) {
  if (h.tag >= tags) {
    return absl::StrCat("tag ", h.tag, " is not one of the ", tags,
                        " tags of this instance");
  }
  if (!alloc_internal::IsPowerOfTwo(h.alignment) ||
      h.alignment < alignof(HeapHeader) ||
      h.alignment > MemorySource::kMaxBlockSize) {
    return absl::StrCat("alignment ", h.alignment,
                        " is not a power of two in [", alignof(HeapHeader),
                        ", ", MemorySource::kMaxBlockSize, "]");
  }
  if (h.offset != HeapOffset(h.alignment, guarded)) {
    return absl::StrCat("offset ", h.offset, " is not the ",
                        HeapOffset(h.alignment, guarded),
                        " its alignment gives");
  }
  if (h.size > MemorySource::kMaxBlockSize) {
    return absl::StrCat("size ", h.size, " exceeds the largest block (",
                        MemorySource::kMaxBlockSize, " bytes)");
  }
  return "";
}

// With canaries, one sits between the header and the user's bytes.
HeapHeader* HeaderOf(void* p, bool guarded) {
  return reinterpret_cast<HeapHeader*>(
      static_cast<char*>(p) - (guarded ? kCanarySize : 0) - sizeof(HeapHeader));
}

void Accumulate(KindStats* into, const KindStats& add) {
  into->allocations += add.allocations;
  into->bytes += add.bytes;
  into->frees += add.frees;
  into->freed_bytes += add.freed_bytes;
}

bool Empty(const KindStats& k) { return k.allocations == 0 && k.frees == 0; }

void AppendKind(std::string* out, absl::string_view name, const KindStats& k) {
  absl::StrAppend(out, "\"", name, "\":{\"allocations\":", k.allocations,
                  ",\"bytes\":", k.bytes, ",\"frees\":", k.frees,
                  ",\"freed_bytes\":", k.freed_bytes,
                  ",\"live_bytes\":", k.live_bytes(), "}");
}

}  // namespace

// A thread's states, one per instance it used, are the value of a pthread
// key whose destructor hands them back when the thread exits. glibc runs
// key destructors after the thread's C++ thread_local destructors, so
// those (a PoolBox held in a thread_local, whatever its construction order)
// still find their state. exit() runs none on the main thread: its states
// stay valid for the static destructors after main returns, and go with
// their instances. (Before, a thread_local hook handed them back, and calls
// from destructors that ran after it used the freed states: defect 35.)
class ThreadExitHook {
 public:
  using StateList = absl::InlinedVector<std::pair<uint64_t, ThreadState*>, 4>;

  // The calling thread's list; created (and registered) if `create`.
  static StateList* Get(bool create) {
    const pthread_key_t key = Key();
    auto* list = static_cast<StateList*>(pthread_getspecific(key));
    if (list == nullptr && create) {
      list = new StateList;
      if (pthread_setspecific(key, list) != 0) {
        delete list;
        ReportFatalError({ErrorKind::kOutOfMemory, "SmartAlloc",
                          "pthread_setspecific refused the thread's state "
                          "list",
                          0, 0, absl::ResourceExhaustedError("no memory")});
      }
    }
    return list;
  }

  // The list HandBack is handing back on this thread (null otherwise):
  // calls its user code makes still find the states not yet handed back.
  static StateList* Exiting() { return exiting; }

 private:
  static pthread_key_t Key() {
    static const pthread_key_t key = [] {
      pthread_key_t k;
      if (pthread_key_create(&k, &HandBack) != 0) {
        ReportFatalError({ErrorKind::kOutOfMemory, "SmartAlloc",
                          "pthread_key_create failed: no key for the "
                          "threads' states",
                          0, 0, absl::ResourceExhaustedError("no key")});
      }
      return k;
    }();
    return key;
  }

  // The key's destructor. A state's hand-back runs user code (its frames'
  // destructors, the error handler for a canary); a call it makes into an
  // instance this thread has no state in gets a new state in a new list,
  // handed back here in turn (not left to glibc's further rounds of key
  // destructors: there are only PTHREAD_DESTRUCTOR_ITERATIONS, and a chain
  // of such first calls longer than that left states behind).
  static void HandBack(void* value) {
    const pthread_key_t key = Key();
    StateList* const outer = exiting;
    // Bounded: a frame object that makes itself anew in every hand-back
    // would go on for ever; what is left then goes to glibc's next round.
    for (int round = 0; value != nullptr && round < 64; ++round) {
      auto* list = static_cast<StateList*>(value);
      exiting = list;
      alloc_internal::last_thread_state = {};
      for (auto& [id, state] : *list) {
        SmartAlloc::RetireAtThreadExit(id, state);
        state = nullptr;
      }
      delete list;
      value = pthread_getspecific(key);
      if (value != nullptr) (void)pthread_setspecific(key, nullptr);
    }
    if (value != nullptr) (void)pthread_setspecific(key, value);
    exiting = outer;
    alloc_internal::last_thread_state = {};
  }

  static inline thread_local StateList* exiting = nullptr;
};

// ---------------------------------------------------------------------------
// Configuration

absl::Status AllocConfig::Validate() const {
  if (frames_in_flight < 1 || frames_in_flight > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllocConfig.frames_in_flight = ", frames_in_flight,
                     " is outside [1, 3]"));
  }
  if (frame_history < 1 || frame_history > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllocConfig.frame_history = ", frame_history,
                     " is outside [1, 4096]"));
  }
  for (size_t i = 0; i < tag_budgets.size(); ++i) {
    const auto& [path, budget] = tag_budgets[i];
    for (size_t k = 0; k < i; ++k) {
      if (tag_budgets[k].first == path) {
        // Charges went to the last, tag_used() read the first.
        return absl::InvalidArgumentError(
            absl::StrCat("AllocConfig.tag_budgets names '", path, "' twice"));
      }
    }
    if (path.empty() || path.front() == '/' || path.back() == '/' ||
        path.find("//") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AllocConfig.tag_budgets: '", path, "' is not a tag path"));
    }
    if (budget.limit_bytes != 0 && budget.warn_bytes > budget.limit_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AllocConfig.tag_budgets['", path, "']: warn_bytes ",
          budget.warn_bytes, " exceeds limit_bytes ", budget.limit_bytes));
    }
    if (budget.limit_bytes == 0 && budget.warn_bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("AllocConfig.tag_budgets['", path,
                       "'] sets neither warn_bytes nor ", "limit_bytes"));
    }
  }
  if (absl::Status s = arena.Validate(); !s.ok()) return s;
  if (absl::Status s = cache.Validate(); !s.ok()) return s;
  if (absl::Status s = pool.Validate(); !s.ok()) return s;
  if (absl::Status s = debug.Validate(); !s.ok()) return s;
  if (kMinimalBuild && (global_budget != 0 || !tag_budgets.empty() ||
                        frame_budget != 0 || debug.any())) {
    return absl::InvalidArgumentError(
        "AllocConfig: budgets and debug aids need a build without "
        "--config=minimal (FRAMEALLOC_MINIMAL compiles them out)");
  }
  return absl::OkStatus();
}

namespace {
AllocConfig ValidOrDie(AllocConfig config) {
  if (absl::Status s = config.Validate(); !s.ok()) {
    ReportFatalError({ErrorKind::kInvalidArgument, "SmartAlloc::SmartAlloc",
                      std::string(s.message()), 0, 0, s});
  }
  return config;
}
}  // namespace

// ---------------------------------------------------------------------------
// Thread state

namespace alloc_internal {

void KindCounters::Read(KindStats* out) const {
  out->allocations = allocations.Get();
  out->bytes = bytes.Get();
  out->frees = frees.Get();
  out->freed_bytes = freed_bytes.Get();
}

ThreadState::ThreadState(SmartAlloc* owner_alloc, uint64_t thread_serial)
    : owner(owner_alloc),
      serial(thread_serial),
      pool_cache(owner_alloc->pools_.get()),
      frame_start(std::chrono::steady_clock::now()) {
  for (int i = 0; i < owner->config_.frames_in_flight; ++i) {
    arenas.push_back(std::make_unique<FrameArena>(owner->cache_.get(),
                                                  owner->config_.arena));
  }
  current_arena = arenas[0].get();
  MutexLock lock(&history_mu);
  history.reserve(static_cast<size_t>(owner->config_.frame_history));
}

ThreadState::~ThreadState() = default;

}  // namespace alloc_internal

// ---------------------------------------------------------------------------
// SmartAlloc

SmartAlloc::SmartAlloc(AllocConfig config)
    : config_(ValidOrDie(std::move(config))),
      id_(next_instance_id.fetch_add(1, std::memory_order_relaxed)),
      backend_source_(config_.backend == nullptr
                          ? nullptr
                          : std::make_unique<BackendMemorySource>(
                                config_.backend.get(),
                                config_.source != nullptr
                                    ? config_.source
                                    : &SystemMemorySource::Default())),
      source_(backend_source_ != nullptr  ? backend_source_.get()
              : config_.source != nullptr ? config_.source
                                          : &SystemMemorySource::Default()),
      cache_(std::make_unique<ChunkCache>(source_, config_.cache)),
      pools_(std::make_unique<PoolManager>(cache_.get(), config_.pool)),
      budgets_(config_.global_budget, config_.tag_budgets, &tags_,
               config_.on_event),
      budgets_active_(budgets_.active()),
      frame_budgets_(budgets_active_ || config_.frame_budget != 0),
      guard_layout_(config_.debug.canaries),
      slow_(frame_budgets_ || config_.debug.any()) {
  {
    MutexLock lock(&threads_mu_);
    retired_tags_.resize(TagRegistry::kMaxTags);
  }
  LiveInstances& live = Live();
  MutexLock lock(&live.mu);
  live.by_id[id_] = this;
}

absl::StatusOr<std::unique_ptr<SmartAlloc>> SmartAlloc::Create(
    AllocConfig config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  return std::make_unique<SmartAlloc>(std::move(config));
}

SmartAlloc::~SmartAlloc() {
  if (retiring_at_exit == this) {
    // A frame destructor run while this thread's state is handed back at
    // its exit destroyed the instance: the hand-back up the stack still
    // uses it, and waiting for it (as for other threads' exits) would wait
    // for this very call.
    ReportFatalError(
        {ErrorKind::kMisuse, "SmartAlloc::~SmartAlloc",
         "destroyed from a frame object's destructor while the thread's "
         "state in it was handed back at thread exit; destroy the instance "
         "elsewhere (the destructor cannot wait for its own caller)",
         0, 0, absl::OkStatus()});
  }
  LiveInstances& live = Live();
  {
    MutexLock lock(&live.mu);
    live.by_id.erase(id_);
  }
  // Threads that found this instance before the erase may still be handing
  // their states back (RetireAtThreadExit); no new one can start.
  for (;;) {
    {
      MutexLock lock(&live.mu);
      if (exits_in_progress_ == 0) break;
    }
    std::this_thread::yield();
  }
  if (alloc_internal::last_thread_state.instance == id_) {
    alloc_internal::last_thread_state = {};
  }
  // The other threads' states first, this thread's last: frees that the
  // retired frames' destructors make here go to this thread's state, which
  // must still be there (or is made anew, and retired in turn).
  const std::thread::id self = std::this_thread::get_id();
  for (;;) {
    ThreadState* next = nullptr;
    {
      MutexLock lock(&threads_mu_);
      for (ThreadState* ts : threads_) {
        if (ts->thread != self) {
          next = ts;
          break;
        }
      }
      if (next == nullptr && !threads_.empty()) next = threads_.back();
    }
    if (next == nullptr) break;
    RetireThread(next, next->thread == self);
  }
  if (alloc_internal::last_thread_state.instance == id_) {
    alloc_internal::last_thread_state = {};
  }
  // pools_ (which reports blocks never freed) and then cache_ go next, in
  // reverse order of declaration.
}

ThreadState& SmartAlloc::LocalSlow() {
  for (ThreadExitHook::StateList* list :
       {ThreadExitHook::Exiting(), ThreadExitHook::Get(/*create=*/false)}) {
    if (list == nullptr) continue;
    for (const auto& [id, state] : *list) {
      if (id == id_ && state != nullptr) {
        alloc_internal::last_thread_state = {id_, state};
        return *state;
      }
    }
  }
  uint64_t serial;
  {
    MutexLock lock(&threads_mu_);
    serial = next_thread_serial_++;
  }
  auto* state = new ThreadState(this, serial);
  {
    MutexLock lock(&threads_mu_);
    threads_.push_back(state);
  }
  ThreadExitHook::StateList& states = *ThreadExitHook::Get(/*create=*/true);
  if (states.size() >= 8) {
    // Forget instances that died, so a long-lived thread that sees many
    // instances keeps a short list.
    LiveInstances& live = Live();
    MutexLock lock(&live.mu);
    size_t kept = 0;
    for (const auto& entry : states) {
      if (live.by_id.contains(entry.first)) states[kept++] = entry;
    }
    states.resize(kept);
  }
  states.emplace_back(id_, state);
  alloc_internal::last_thread_state = {id_, state};
  return *state;
}

void SmartAlloc::RetireAtThreadExit(uint64_t id, ThreadState* ts) {
  SmartAlloc* instance;
  {
    LiveInstances& live = Live();
    MutexLock lock(&live.mu);
    auto it = live.by_id.find(id);
    if (it == live.by_id.end()) return;  // Its destructor retired `ts`.
    instance = it->second;
    ++instance->exits_in_progress_;  // Its destructor waits for this.
  }
  const SmartAlloc* const outer = retiring_at_exit;
  retiring_at_exit = instance;
  instance->RetireThread(ts, /*own_thread=*/true);
  retiring_at_exit = outer;
  LiveInstances& live = Live();
  MutexLock lock(&live.mu);
  --instance->exits_in_progress_;  // The last touch of the instance.
}

void SmartAlloc::RetireThread(ThreadState* ts, bool own_thread) {
  // The thread's frame memory goes now: its guards are checked (a report
  // calls the error handler) and its pending destructors run. That is user
  // code, so no lock of the library is held, and the state is still listed
  // and counted: frees those destructors make on its own thread land in it
  // and are counted below (on another thread, in that thread's state).
  alloc_internal::LastThreadState& last = alloc_internal::last_thread_state;
  if (own_thread) last = {id_, ts};
  const int slots = static_cast<int>(ts->arenas.size());
  for (int slot = 0; slot < slots; ++slot) {
    CheckFrameGuards(*ts, slot);
    ts->arenas[slot]->Reset();
  }
  // A destructor may have put frame objects into a slot already released:
  // release again (a few rounds), so that none is left for `delete ts`.
  for (int round = 0; round < 3; ++round) {
    bool again = false;
    for (int slot = 0; slot < slots; ++slot) {
      if (ts->arenas[slot]->stats().allocations > 0) {
        again = true;
        CheckFrameGuards(*ts, slot);
        ts->arenas[slot]->Reset();
      }
    }
    if (!again) break;
  }
  if (last.state == ts) last = {};
  if (own_thread) {
    // Whatever runs from here on (a frame object made in the last round's
    // destructors, destroyed with its arena) must not find `ts`.
    for (ThreadExitHook::StateList* list :
         {ThreadExitHook::Exiting(), ThreadExitHook::Get(/*create=*/false)}) {
      if (list == nullptr) continue;
      for (auto& [id, state] : *list) {
        if (state == ts) state = nullptr;
      }
    }
  }
  {
    MutexLock lock(&threads_mu_);
    auto it = std::find(threads_.begin(), threads_.end(), ts);
    if (it != threads_.end()) threads_.erase(it);
    FoldRetired(*ts);
  }
  // Flushes the pool cache to the global lists and returns every chunk
  // (ThreadCache::Flush may report a misuse: no lock held here either).
  delete ts;
}

void SmartAlloc::FoldRetired(const ThreadState& state) {
  const ThreadState* ts = &state;
  for (int slot = 0; slot < static_cast<int>(ts->arenas.size()); ++slot) {
    for (const auto& [tag, bytes] : ts->slot_charges[slot]) {
      budgets_.Release(tag, bytes);
    }
  }
  KindStats k;
  for (int tag = 0; tag < TagRegistry::kMaxTags; ++tag) {
    ts->tag_frame[tag].Read(&k);
    Accumulate(&retired_tags_[tag].frame, k);
    Accumulate(&retired_frame_, k);
    ts->tag_pool[tag].Read(&k);
    Accumulate(&retired_tags_[tag].pool, k);
    Accumulate(&retired_pool_, k);
    ts->tag_heap[tag].Read(&k);
    Accumulate(&retired_tags_[tag].heap, k);
    Accumulate(&retired_heap_, k);
  }
  ++exited_threads_;
}

// ---------------------------------------------------------------------------
// Frames

void SmartAlloc::begin_frame() {
  ThreadState& ts = local();
  if (ts.in_frame) {
    ReportError({ErrorKind::kMisuse, "SmartAlloc::begin_frame",
                 absl::StrCat("begin_frame called twice on thread #", ts.serial,
                              " without end_frame (frame ", ts.frame, ")"),
                 0, 0, absl::OkStatus()});
    return;
  }
  ts.in_frame = true;
  ts.frame_start = std::chrono::steady_clock::now();
}

void SmartAlloc::end_frame() {
  ThreadState& ts = local();
  const auto now = std::chrono::steady_clock::now();
  const FrameArenaStats arena = ts.arena().stats();
  // The arena also counts its destructor registrations as allocations and
  // canary guards as requested bytes (FrameArenaStats): the record counts
  // the frame_* calls, from the counters stats().frame sums.
  uint64_t allocations = 0, requested = 0;
  if constexpr (!kMinimalBuild) {  // Counters compiled out: zeros.
    const int tag_count = tags_.size();
    for (int t = 0; t < tag_count; ++t) {
      allocations += ts.tag_frame[t].allocations.Get();
      requested += ts.tag_frame[t].bytes.Get();
    }
  }
  FrameRecord record;
  record.frame = ts.frame;
  record.bytes = arena.bytes_used;
  record.requested = requested - ts.frame_requested_before;
  record.allocations = allocations - ts.frame_allocations_before;
  ts.frame_allocations_before = allocations;
  ts.frame_requested_before = requested;
  record.peak_bytes = arena.frame_peak_bytes_used;
  record.chunks = arena.chunks;
  record.waste_bytes = arena.waste_bytes;
  // Only a frame begin_frame opened has a duration (0 otherwise, as the
  // header says; it was the time since the previous end_frame).
  record.duration_ms =
      ts.in_frame
          ? std::chrono::duration<double, std::milli>(now - ts.frame_start)
                .count()
          : 0.0;
  // Traced as part of the frame that ends (before the number advances).
  Trace(TraceEvent::Op::kFrameEnd, AllocKind::kFrame, ts.tag, record.bytes,
        nullptr, ts.serial);
  {
    MutexLock lock(&ts.history_mu);
    if (ts.history.size() < static_cast<size_t>(config_.frame_history)) {
      ts.history.push_back(record);
    } else {
      ts.history[ts.history_next] = record;
    }
    ts.history_next = (ts.history_next + 1) % config_.frame_history;
  }
  ++ts.frame;
  uint64_t global = frame_number_.load(std::memory_order_relaxed);
  bool advanced = false;
  while (ts.frame > global) {
    if (frame_number_.compare_exchange_weak(global, ts.frame,
                                            std::memory_order_relaxed)) {
      advanced = true;
      break;
    }
  }
  // The next slot holds frame N + 1 - frames_in_flight: its time is over.
  const int next = (ts.slot + 1) % static_cast<int>(ts.arenas.size());
  ReleaseSlot(ts, next);
  ts.slot = next;
  ts.current_arena = ts.arenas[next].get();
  ts.frame_bytes = 0;
  ts.in_frame = false;
  ts.frame_start = now;
  // The cache's epochs are global frames: the first thread to end a frame
  // ends the epoch, so threads do not queue on the cache once per frame each.
  if (advanced) cache_->EndEpoch();
}

// ---------------------------------------------------------------------------
// Debug aids

void SmartAlloc::UpdateSlow() {
  slow_.store(frame_budgets_ || config_.debug.any() ||
                  tracing_.load(std::memory_order_relaxed),
              std::memory_order_relaxed);
}

std::vector<LeakGroup> SmartAlloc::leaks(uint64_t min_age_frames) const {
  return tracker_.Leaks(frame_number(), min_age_frames);
}

std::string SmartAlloc::leak_report(uint64_t min_age_frames) const {
  const std::vector<LeakGroup> groups = leaks(min_age_frames);
  size_t count = 0, bytes = 0;
  for (const LeakGroup& g : groups) {
    count += g.count;
    bytes += g.bytes;
  }
  std::string out =
      absl::StrCat(count, " live allocations (", bytes, " bytes) older than ",
                   min_age_frames, " frames at frame ", frame_number(),
                   ", from ", groups.size(), " sites\n");
  for (const LeakGroup& g : groups) {
    absl::StrAppend(&out, "- ", g.count, " ", AllocKindName(g.kind),
                    " allocations, ", g.bytes, " bytes, tag '",
                    tags_.Path(g.tag), "', oldest from frame ", g.oldest_frame,
                    "\n",
                    g.stack.empty() ? "  (no stack: set "
                                      "DebugOptions.stack_depth)\n"
                                    : g.stack);
  }
  return out;
}

std::vector<SiteStats> SmartAlloc::hottest_sites(size_t n) const {
  return tracker_.HottestSites(n);
}

std::string SmartAlloc::site_report(size_t n) const {
  std::string out;
  for (const SiteStats& site : hottest_sites(n)) {
    absl::StrAppend(&out, site.count, " allocations, ", site.bytes, " bytes:");
    for (const SiteStats::PerTag& t : site.tags) {
      absl::StrAppend(&out, " '", tags_.Path(t.tag), "' ", t.count, "/",
                      t.bytes, "B");
    }
    absl::StrAppend(&out, "\n", site.stack);
  }
  return out;
}

absl::Status SmartAlloc::start_trace(const std::string& path,
                                     uint64_t first_frame,
                                     uint64_t frame_count) {
  if (kMinimalBuild) {
    return absl::FailedPreconditionError(
        "start_trace: tracing is compiled out in a --config=minimal build");
  }
  absl::Status started = tracer_.Start(path, first_frame, frame_count);
  if (!started.ok()) return started;
  tracing_.store(true, std::memory_order_relaxed);
  UpdateSlow();
  return absl::OkStatus();
}

absl::Status SmartAlloc::stop_trace() {
  tracing_.store(false, std::memory_order_relaxed);
  UpdateSlow();
  return tracer_.Stop();
}

void SmartAlloc::ReleaseSlot(ThreadState& ts, int slot) {
  FrameArena& arena = *ts.arenas[slot];
  const uint64_t generation = arena.generation();  // Reset changes it.
  if (!ts.guards[slot].empty()) CheckFrameGuards(ts, slot);
  arena.Reset();  // Runs the frame's destructors.
  if (!ts.guards[slot].empty()) {
#if !FRAMEALLOC_HAS_ASAN  // Under ASan, poisoning replaces the fill.
    if (config_.debug.fill_patterns) {
      // Only memory the arena still holds: Reset() gave every chunk but the
      // first back to the cache, where another arena may own it already.
      // Reset() also marked it released (under --config=valgrind memcheck
      // calls it NOACCESS): the fill is the library's own write, so it opens
      // the bytes for it and closes them again. (Other builds: no-ops.)
      for (const ThreadState::FrameGuard& g : ts.guards[slot]) {
        if (g.generation == generation && arena.Owns(g.user)) {
          FRAMEALLOC_UNPOISON(g.user, g.size);
          std::memset(g.user, kReleasedFill, g.size);
          FRAMEALLOC_POISON(g.user, g.size);
        }
      }
    }
#else
    (void)generation;
#endif
    ts.guards[slot].clear();
  }
  if (!ts.slot_charges[slot].empty()) {
    for (const auto& [tag, bytes] : ts.slot_charges[slot]) {
      budgets_.Release(tag, bytes);
    }
    ts.slot_charges[slot].clear();
  }
}

void SmartAlloc::CheckFrameGuards(ThreadState& ts, int slot) {
  if (!guard_layout_) return;
  const uint64_t generation = ts.arenas[slot]->generation();
  for (const ThreadState::FrameGuard& g : ts.guards[slot]) {
    if (g.generation != generation) continue;  // Rewound since: not ours.
    CheckCanaries("SmartAlloc::end_frame", AllocKind::kFrame, g.user, g.size,
                  g.tag, g.frame, g.site);
  }
}

bool SmartAlloc::ChargeFrameBudgets(ThreadState& ts, size_t bytes, bool fatal) {
  if (config_.frame_budget != 0 &&
      (bytes > config_.frame_budget ||
       ts.frame_bytes > config_.frame_budget - bytes)) {
    budgets_.Emit({AllocEventKind::kBudgetRefused, BudgetScope::kFrame, "",
                   bytes, ts.frame_bytes, config_.frame_budget,
                   frame_number()});
    Refused("SmartAlloc::frame_alloc", bytes, 0, fatal,
            absl::ResourceExhaustedError(
                absl::StrCat("frame budget of thread #", ts.serial, " refused ",
                             bytes, " bytes: ", ts.frame_bytes, " of ",
                             config_.frame_budget, " bytes used this frame")));
    return false;
  }
  if (budgets_active_) {
    absl::Status charged = budgets_.Charge(ts.tag, bytes, frame_number());
    if (!charged.ok()) {
      Refused("SmartAlloc::frame_alloc", bytes, 0, fatal, charged);
      return false;
    }
    ts.slot_charges[ts.slot][ts.tag] += bytes;
  }
  ts.frame_bytes += bytes;
  return true;
}

void SmartAlloc::RefundFrame(ThreadState& ts, size_t bytes) {
  ts.frame_bytes -= bytes;
  if (budgets_active_) {
    ts.slot_charges[ts.slot][ts.tag] -= bytes;
    budgets_.Release(ts.tag, bytes);
  }
}

void* SmartAlloc::FrameAllocateSlow(ThreadState& ts, size_t size,
                                    size_t alignment, bool fatal) {
  if (ABSL_PREDICT_FALSE(!alloc_internal::IsPowerOfTwo(alignment) ||
                         alignment > MemorySource::kMaxBlockSize ||
                         size > MemorySource::kMaxBlockSize)) {
    // No allocator can honour it: an invalid argument, not a budget matter.
    // The arena refuses it as it does on the fast path (the same report, a
    // failed Try* counted), before anything is charged.
    return fatal ? ts.arena().Allocate(size, alignment)
                 : ts.arena().TryAllocate(size, alignment);
  }
  if (frame_budgets_ && !ChargeFrameBudgets(ts, size, fatal)) return nullptr;
  // Undoes the charge unless the arena serves the request. A destructor, so
  // that it also runs when the handler of a fatal report throws out of the
  // arena (error.h allows a handler to throw).
  struct Refund {
    SmartAlloc* self;
    ThreadState* ts;
    size_t size;
    bool armed;
    ~Refund() {
      if (armed) self->RefundFrame(*ts, size);
    }
  } refund{this, &ts, size, frame_budgets_};
  FrameArena& arena = ts.arena();
  char* user;
  if (guard_layout_) {
    // [front guard: canary at its end][user bytes][canary]. No overflow:
    // size and alignment are at most kMaxBlockSize (2^47).
    const size_t front = std::max(kCanarySize, alignment);
    const size_t total = front + size + kCanarySize;
    char* raw = static_cast<char*>(
        fatal ? arena.Allocate(total, std::max(alignment, kCanarySize))
              : arena.TryAllocate(total, std::max(alignment, kCanarySize)));
    user = raw == nullptr ? nullptr : raw + front;
    if (user != nullptr) WriteCanaries(user, size);
  } else {
    user = static_cast<char*>(fatal ? arena.Allocate(size, alignment)
                                    : arena.TryAllocate(size, alignment));
  }
  if (user == nullptr) return nullptr;  // `refund` gives the charge back.
  refund.armed = false;
  CountFrame(ts, size);
  const uint64_t site =
      OnDebugAlloc(ts, AllocKind::kFrame, user, size, alignment);
  if (guard_layout_ || config_.debug.fill_patterns) {
    ts.guards[ts.slot].push_back(
        {user, size, ts.tag, frame_number(), site, arena.generation()});
  }
  return user;
}

void SmartAlloc::WriteCanaries(char* user, size_t size) {
  std::memcpy(user - kCanarySize, &kCanary, kCanarySize);
  std::memcpy(user + size, &kCanary, kCanarySize);
}

uint64_t SmartAlloc::OnDebugAlloc(ThreadState& ts, AllocKind kind, char* user,
                                  size_t size, size_t alignment) {
  if (config_.debug.fill_patterns) std::memset(user, kFreshFill, size);
  const uint64_t site = CaptureSite(ts.tag, size);
  if (kind != AllocKind::kFrame && config_.debug.track_allocations) {
    tracker_.Add(
        user, {kind, size, alignment, ts.tag, frame_number(), ts.serial, site},
        nullptr);
  }
  Trace(TraceEvent::Op::kAlloc, kind, ts.tag, size, user, ts.serial);
  return site;
}

uint64_t SmartAlloc::CaptureSite(TagId tag, size_t size) {
  if (config_.debug.stack_depth == 0) return 0;
  // Skip OnDebugAlloc and the slow path that called it (both out of line),
  // so the first frame is the user's call site.
  const CallStack stack = CallStack::Capture(config_.debug.stack_depth, 2);
  if (config_.debug.profile_sites) {
    tracker_.CountSite(stack, tag, size);
    return stack.Hash();
  }
  // Kept for the reports that name the site (leaks, canaries).
  return tracker_.InternSite(stack);
}

void SmartAlloc::Trace(TraceEvent::Op op, AllocKind kind, TagId tag,
                       size_t size, const void* p, uint64_t thread) {
  if (!tracing_.load(std::memory_order_relaxed)) return;
  const uint64_t frame = frame_number();
  if (!tracer_.Wants(frame)) return;
  tracer_.Record({op, kind, frame, thread, tag, size, p}, tags_);
}

void SmartAlloc::CheckCanaries(const char* where, AllocKind kind,
                               const char* user, size_t size, TagId tag,
                               uint64_t frame, uint64_t site) {
  uint64_t before, after;
  std::memcpy(&before, user - kCanarySize, kCanarySize);
  std::memcpy(&after, user + size, kCanarySize);
  if (before == kCanary && after == kCanary) return;
  const bool overflow = after != kCanary;
  std::string stack = tracker_.SiteStack(site);
  ReportErrorAndContinue(
      {ErrorKind::kMisuse, where,
       absl::StrCat("buffer ", overflow ? "overflow" : "underflow", ": the ",
                    AllocKindName(kind), " allocation of ", size,
                    " bytes under tag '", tags_.Path(tag), "' made in frame ",
                    frame, " was written ",
                    overflow ? "past its end" : "before its start",
                    absl::StrFormat(" (canary reads 0x%016x)",
                                    overflow ? after : before),
                    stack.empty() ? "" : "; allocated at:\n", stack),
       size, 0, absl::OkStatus()});
}

void SmartAlloc::FrameArrayOverflow(size_t count, size_t size, size_t alignment,
                                    bool fatal) {
  if (!fatal) {
    // The arena refuses it too, and counts the failed Try* as it does for
    // every request it refuses.
    (void)local().arena().TryAllocateN(count, size, alignment);
    return;
  }
  const std::string what =
      absl::StrCat(count, " * ", size, " overflows size_t");
  ReportFatalError(
      {ErrorKind::kInvalidArgument, "SmartAlloc::frame_array",
       absl::StrCat("cannot allocate an array of ", count, " elements of ",
                    size, " bytes under tag '", current_tag(), "' in frame ",
                    frame_number(), ": ", what),
       size, alignment, absl::InvalidArgumentError(what)});
}

void* SmartAlloc::Refused(const char* where, size_t size, size_t alignment,
                          bool fatal, const absl::Status& why) {
  if (!fatal) return nullptr;
  const bool budget = why.code() == absl::StatusCode::kResourceExhausted &&
                      absl::StrContains(why.message(), "budget");
  ReportFatalError(
      {budget ? ErrorKind::kBudgetExceeded
       : why.code() == absl::StatusCode::kInvalidArgument
           ? ErrorKind::kInvalidArgument
           : ErrorKind::kOutOfMemory,
       where,
       absl::StrCat(
           "cannot allocate ", size, " bytes",
           alignment != 0 ? absl::StrCat(" at alignment ", alignment) : "",
           " under tag '", current_tag(), "' in frame ", frame_number()),
       size, alignment, why});
}

std::unique_ptr<FrameArena> SmartAlloc::new_scoped_arena() {
  return std::make_unique<FrameArena>(cache_.get(), config_.arena);
}

// ---------------------------------------------------------------------------
// Pools and heap

void* SmartAlloc::PoolAllocateSlow(int cls, size_t size, size_t alignment,
                                   bool fatal) {
  // With canaries the block holds [front guard][user][canary]: a larger
  // class, or the heap when that exceeds the pools.
  const size_t front = guard_layout_ ? std::max(kCanarySize, alignment) : 0;
  if (guard_layout_ && cls >= 0) {
    cls = PoolManager::ClassFor(front + size + kCanarySize,
                                std::max(alignment, kCanarySize));
  }
  if (cls < 0) return HeapAllocate(size, alignment, fatal);
  ThreadState& ts = local();
  if (budgets_active_) {
    absl::Status charged = budgets_.Charge(ts.tag, size, frame_number());
    if (!charged.ok()) {
      return Refused("SmartAlloc::pool_alloc", size, alignment, fatal, charged);
    }
  }
  char* block = static_cast<char*>(ts.pool_cache.Allocate(cls));
  if (block == nullptr) {
    if (budgets_active_) budgets_.Release(ts.tag, size);
    return Refused("SmartAlloc::pool_alloc", size, alignment, fatal,
                   absl::ResourceExhaustedError(
                       absl::StrCat("the pools could not get a page from the ",
                                    source_->name(), " source")));
  }
  char* user = block + front;
  if (guard_layout_) WriteCanaries(user, size);
  if (budgets_active_) {
    MutexLock lock(&charged_mu_);
    pool_block_tags_[user] = {ts.tag, size};
  }
  OnDebugAlloc(ts, AllocKind::kPool, user, size, alignment);
  alloc_internal::KindCounters& counters = ts.tag_pool[ts.tag];
  counters.allocations.Add(1);
  counters.bytes.Add(size);
  return user;
}

void SmartAlloc::PoolDeallocateSlow(void* p, int cls, size_t size,
                                    size_t alignment) {
  if (p == nullptr) return;
  ThreadState& ts = local();
  TagId tag = ts.tag;
  uint64_t frame = frame_number(), site = 0;
  if (config_.debug.track_allocations) {
    absl::StatusOr<AllocationRecord> record = tracker_.Remove(p);
    if (!record.ok()) {
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::pool_free",
           absl::StrFormat("pool free of %p (%zu bytes): a double "
                           "free, or a pointer the pool never gave "
                           "out; ignored",
                           p, size),
           size, alignment, absl::OkStatus()});
      return;
    }
    if (record->size != size || record->alignment != alignment) {
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::pool_free",
           absl::StrCat("pool free with the wrong size: allocated ",
                        record->size, " bytes (alignment ", record->alignment,
                        "), freed as ", size, " bytes (alignment ", alignment,
                        "); freed as allocated"),
           size, alignment, absl::OkStatus()});
      // Free what was really allocated: the record knows.
      size = record->size;
      alignment = record->alignment;
      cls = PoolManager::ClassFor(size, alignment);
    }
    if (record->kind == AllocKind::kHeap) {
      HeapFree(p, /*untracked=*/true);
      return;
    }
    tag = record->tag;
    frame = record->frame;
    site = record->site;
  }
  if (budgets_active_) {
    // What the allocation charged, to which tag: a free under another tag,
    // or with another size of the same class, releases exactly that.
    bool charged = false;
    PoolCharge charge;
    {
      MutexLock lock(&charged_mu_);
      if (auto it = pool_block_tags_.find(p); it != pool_block_tags_.end()) {
        charged = true;
        charge = it->second;
        pool_block_tags_.erase(it);
      }
    }
    if (charged) {
      budgets_.Release(charge.tag, charge.size);
      tag = charge.tag;
      if (charge.size != size) {
        // (With tracking on, the record already corrected the size.)
        ReportErrorAndContinue(
            {ErrorKind::kMisuse, "SmartAlloc::pool_free",
             absl::StrCat("pool free with the wrong size: allocated ",
                          charge.size, " bytes, freed as ", size,
                          " bytes; freed as allocated"),
             size, alignment, absl::OkStatus()});
        size = charge.size;
        cls = PoolManager::ClassFor(size, alignment);
      }
    }
  }
  if (cls < 0 || (guard_layout_ &&
                  PoolManager::ClassFor(
                      std::max(kCanarySize, alignment) + size + kCanarySize,
                      std::max(alignment, kCanarySize)) < 0)) {
    heap_free(p);
    return;
  }
  char* user = static_cast<char*>(p);
  size_t front = 0;
  if (guard_layout_) {
    front = std::max(kCanarySize, alignment);
    cls = PoolManager::ClassFor(front + size + kCanarySize,
                                std::max(alignment, kCanarySize));
    CheckCanaries("SmartAlloc::pool_free", AllocKind::kPool, user, size, tag,
                  frame, site);
  }
  if (config_.debug.fill_patterns) std::memset(user, kReleasedFill, size);
  Trace(TraceEvent::Op::kFree, AllocKind::kPool, tag, size, p, ts.serial);
  ts.pool_cache.Free(user - front, cls);
  alloc_internal::KindCounters& counters = ts.tag_pool[tag];
  counters.frees.Add(1);
  counters.freed_bytes.Add(size);
}

void* SmartAlloc::HeapAllocate(size_t size, size_t alignment, bool fatal) {
  if (!alloc_internal::IsPowerOfTwo(alignment) ||
      alignment > MemorySource::kMaxBlockSize ||
      size > MemorySource::kMaxBlockSize) {
    return Refused(
        "SmartAlloc::heap_alloc", size, alignment, fatal,
        absl::InvalidArgumentError(absl::StrCat(
            "size ", size, " or alignment ", alignment,
            " is invalid (alignment must be a power of two; both at most ",
            MemorySource::kMaxBlockSize, ")")));
  }
  ThreadState& ts = local();
  if (ABSL_PREDICT_FALSE(budgets_active_)) {
    absl::Status charged = budgets_.Charge(ts.tag, size, frame_number());
    if (!charged.ok()) {
      return Refused("SmartAlloc::heap_alloc", size, alignment, fatal, charged);
    }
  }
  const size_t align = std::max(alignment, alignof(HeapHeader));
  // [header][front canary][user][rear canary]; canaries only when guarded.
  const size_t tail = guard_layout_ ? kCanarySize : 0;
  const size_t offset = HeapOffset(align, guard_layout_);
  char* raw = static_cast<char*>(::operator new(
      offset + size + tail, std::align_val_t(align), std::nothrow));
  if (raw == nullptr) {
    if (budgets_active_) budgets_.Release(ts.tag, size);
    return Refused("SmartAlloc::heap_alloc", size, alignment, fatal,
                   absl::ResourceExhaustedError("the C++ heap is exhausted"));
  }
  char* user = raw + offset;
  *HeaderOf(user, guard_layout_) =
      HeapHeader{ts.tag, size, align, offset,
                 kHeapMagic ^ reinterpret_cast<uintptr_t>(user)};
  if (guard_layout_) WriteCanaries(user, size);
  if (ABSL_PREDICT_FALSE(slow_.load(std::memory_order_relaxed))) {
    OnDebugAlloc(ts, AllocKind::kHeap, user, size, alignment);
  }
  alloc_internal::KindCounters& counters = ts.tag_heap[ts.tag];
  counters.allocations.Add(1);
  counters.bytes.Add(size);
  return user;
}

void SmartAlloc::heap_free(void* p) { HeapFree(p, /*untracked=*/false); }

void SmartAlloc::HeapFree(void* p, bool untracked) {
  if (p == nullptr) return;
  HeapHeader* header = HeaderOf(p, guard_layout_);
  HeapHeader h;
  uint64_t frame = 0, site = 0;
  const bool tracking = config_.debug.track_allocations && !untracked;
  if (tracking) {
    // The tracker answers without reading memory that may not be ours.
    absl::StatusOr<AllocationRecord> record =
        tracker_.Remove(p, AllocKind::kHeap);
    if (!record.ok()) {
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::heap_free",
           absl::IsFailedPrecondition(record.status())
               // A pool block: it stays the pool's (and tracked).
               ? absl::StrFormat("heap_free of %p: %s, not a heap_alloc "
                                 "one (free it with pool_deallocate); "
                                 "ignored",
                                 p, record.status().message())
               : absl::StrFormat("heap_free of %p: a double free, or a "
                                 "pointer heap_alloc never returned; "
                                 "ignored",
                                 p),
           0, 0, absl::OkStatus()});
      return;
    }
    h.size = record->size;
    h.tag = record->tag;
    h.alignment = std::max(record->alignment, alignof(HeapHeader));
    h.offset = HeapOffset(h.alignment, guard_layout_);
    frame = record->frame;
    site = record->site;
    if (header->magic != (kHeapMagic ^ reinterpret_cast<uintptr_t>(p))) {
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::heap_free",
           absl::StrCat("buffer underflow: the heap allocation of ", h.size,
                        " bytes under tag '", tags_.Path(h.tag),
                        "' made in frame ", frame,
                        " was written before its start (its header "
                        "is overwritten)"),
           h.size, 0, absl::OkStatus()});
    }
  } else {
    // Nothing in the header is used before it is known good: a damaged one
    // (an underflow, a stray write) would free with a wrong size or
    // alignment, or index the tag counters out of bounds. Such a block is
    // reported and leaked: not freed, not counted, its charge kept.
    if (header->magic != (kHeapMagic ^ reinterpret_cast<uintptr_t>(p))) {
      std::string underflow;
      if (guard_layout_) {
        uint64_t before;
        std::memcpy(&before, static_cast<char*>(p) - kCanarySize, kCanarySize);
        if (before != kCanary) {
          underflow = absl::StrFormat(
              "; the canary before it reads 0x%016x: a buffer underflow",
              before);
        }
      }
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::heap_free",
           absl::StrFormat("heap_free of a pointer heap_alloc never "
                           "returned (%p; or freed twice, or a corrupted "
                           "heap header: written over before its start); "
                           "ignored, so a block whose header was written "
                           "over is leaked%s",
                           p, underflow),
           0, 0, absl::OkStatus()});
      return;
    }
    h = *header;
    if (const std::string damage =
            HeapHeaderDamage(h, tags_.size(), guard_layout_);
        !damage.empty()) {
      ReportErrorAndContinue(
          {ErrorKind::kMisuse, "SmartAlloc::heap_free",
           absl::StrFormat("heap_free of %p: corrupted heap header (%s; its "
                           "magic is intact: a stray write into it); the "
                           "block is leaked (not freed, its budget charge "
                           "kept)",
                           p, damage),
           0, 0, absl::OkStatus()});
      return;
    }
  }
  // A second free of the same block is caught above while the freed
  // memory keeps this (only track_allocations is sure: heap_free's
  // comment in smart_alloc.h).
  header->magic = 0;
  char* user = static_cast<char*>(p);
  if (guard_layout_) {
    CheckCanaries("SmartAlloc::heap_free", AllocKind::kHeap, user, h.size,
                  h.tag, frame, site);
  }
  if (ABSL_PREDICT_FALSE(budgets_active_)) budgets_.Release(h.tag, h.size);
  ThreadState& ts = local();
  if (config_.debug.fill_patterns) std::memset(user, kReleasedFill, h.size);
  Trace(TraceEvent::Op::kFree, AllocKind::kHeap, h.tag, h.size, p, ts.serial);
  alloc_internal::KindCounters& counters = ts.tag_heap[h.tag];
  counters.frees.Add(1);
  counters.freed_bytes.Add(h.size);
  ::operator delete(user - h.offset, std::align_val_t(h.alignment));
}

size_t SmartAlloc::release_empty_pool_pages() {
  return pools_->ReleaseEmptyPages();
}

void SmartAlloc::flush_thread_pool_cache() { local().pool_cache.Flush(); }

// ---------------------------------------------------------------------------
// Tags

void SmartAlloc::PushTag(absl::string_view name) {
  ThreadState& ts = local();
  absl::StatusOr<TagId> child = tags_.Child(ts.tag, name);
  ts.tag_stack.push_back(ts.tag);
  if (!child.ok()) {
    ReportErrorAndContinue(
        {ErrorKind::kInvalidArgument, "SmartAlloc::with_tag",
         absl::StrCat(child.status().message(), "; allocations stay under '",
                      tags_.Path(ts.tag), "'"),
         0, 0, child.status()});
    return;
  }
  ts.tag = *child;
}

void SmartAlloc::PopTag() {
  ThreadState& ts = local();
  if (ts.tag_stack.empty()) return;
  ts.tag = ts.tag_stack.back();
  ts.tag_stack.pop_back();
}

std::string SmartAlloc::current_tag() { return tags_.Path(local().tag); }

TagScope::TagScope(SmartAlloc& alloc, absl::string_view name) : alloc_(alloc) {
  alloc_.PushTag(name);
  tag_ = alloc_.local().tag;
}

TagScope::~TagScope() {
  alloc_internal::ThreadState& ts = alloc_.local();
  if (ts.tag != tag_) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "TagScope::~TagScope",
         absl::StrCat("tag scope '", alloc_.tags_.Path(tag_),
                      "' closed while '", alloc_.tags_.Path(ts.tag),
                      "' is current: scopes must close in reverse "
                      "order"),
         0, 0, absl::OkStatus()});
  }
  alloc_.PopTag();
}

// ---------------------------------------------------------------------------
// Statistics

AllocStats SmartAlloc::stats() const {
  AllocStats s;
  s.frame_number = frame_number();
  s.budget_warnings = budgets_.warnings();
  s.budget_refusals = budgets_.refusals();
  s.global_budget_used = budgets_.global_used();
  s.global_budget = config_.global_budget;
  s.frame_budget = config_.frame_budget;
  s.tag_budgets = budgets_.Uses();
  const int tag_count = tags_.size();
  std::vector<TagStats> tags(static_cast<size_t>(tag_count));
  {
    MutexLock lock(&threads_mu_);
    s.frame = retired_frame_;
    s.pool = retired_pool_;
    s.heap = retired_heap_;
    s.exited_threads = exited_threads_;
    s.live_threads = threads_.size();
    for (int t = 0; t < tag_count; ++t) tags[t] = retired_tags_[t];
    for (const ThreadState* ts : threads_) {
      ThreadStats thread;
      thread.thread = ts->serial;
      KindStats k;
      for (int t = 0; t < tag_count; ++t) {
        ts->tag_frame[t].Read(&k);
        Accumulate(&tags[t].frame, k);
        Accumulate(&thread.frame_memory, k);
        ts->tag_pool[t].Read(&k);
        Accumulate(&tags[t].pool, k);
        Accumulate(&thread.pool, k);
        ts->tag_heap[t].Read(&k);
        Accumulate(&tags[t].heap, k);
        Accumulate(&thread.heap, k);
      }
      Accumulate(&s.frame, thread.frame_memory);
      Accumulate(&s.pool, thread.pool);
      Accumulate(&s.heap, thread.heap);
      {
        MutexLock history_lock(&ts->history_mu);
        const size_t n = ts->history.size();
        // Oldest first: once the ring is full, history_next is the oldest.
        const size_t start = n < static_cast<size_t>(config_.frame_history)
                                 ? 0
                                 : ts->history_next;
        for (size_t i = 0; i < n; ++i) {
          thread.history.push_back(ts->history[(start + i) % n]);
        }
        thread.frame =
            thread.history.empty() ? 0 : thread.history.back().frame + 1;
      }
      s.threads.push_back(std::move(thread));
    }
  }
  for (int t = 0; t < tag_count; ++t) {
    if (Empty(tags[t].frame) && Empty(tags[t].pool) && Empty(tags[t].heap)) {
      continue;
    }
    tags[t].path = tags_.Path(static_cast<TagId>(t));
    s.tags.push_back(std::move(tags[t]));
  }
  s.cache = cache_->stats();
  s.pools = pools_->stats();
  s.source = source_->stats();
  return s;
}

std::string AllocStats::ToJson() const {
  std::string out = absl::StrCat("{\"frame_number\":", frame_number, ",");
  AppendKind(&out, "frame", frame);
  out += ",";
  AppendKind(&out, "pool", pool);
  out += ",";
  AppendKind(&out, "heap", heap);
  absl::StrAppend(&out, ",\"live_threads\":", live_threads,
                  ",\"exited_threads\":", exited_threads,
                  ",\"budget_warnings\":", budget_warnings,
                  ",\"budget_refusals\":", budget_refusals,
                  ",\"global_budget_used\":", global_budget_used,
                  ",\"tags\":[");
  for (size_t i = 0; i < tags.size(); ++i) {
    if (i != 0) out += ",";
    out += "{\"path\":";
    AppendJsonString(&out, tags[i].path);
    out += ",";
    AppendKind(&out, "frame", tags[i].frame);
    out += ",";
    AppendKind(&out, "pool", tags[i].pool);
    out += ",";
    AppendKind(&out, "heap", tags[i].heap);
    out += "}";
  }
  out += "],\"threads\":[";
  for (size_t i = 0; i < threads.size(); ++i) {
    const ThreadStats& t = threads[i];
    if (i != 0) out += ",";
    absl::StrAppend(&out, "{\"thread\":", t.thread, ",\"frame\":", t.frame,
                    ",");
    AppendKind(&out, "frame_memory", t.frame_memory);
    out += ",";
    AppendKind(&out, "pool", t.pool);
    out += ",";
    AppendKind(&out, "heap", t.heap);
    out += ",\"history\":[";
    for (size_t j = 0; j < t.history.size(); ++j) {
      const FrameRecord& r = t.history[j];
      if (j != 0) out += ",";
      absl::StrAppend(
          &out, "{\"frame\":", r.frame, ",\"bytes\":", r.bytes,
          ",\"requested\":", r.requested, ",\"allocations\":", r.allocations,
          ",\"peak_bytes\":", r.peak_bytes, ",\"chunks\":", r.chunks,
          ",\"waste_bytes\":", r.waste_bytes,
          ",\"duration_ms\":", absl::StrFormat("%.6f", r.duration_ms), "}");
    }
    out += "]}";
  }
  absl::StrAppend(&out, "],\"budgets\":{\"global\":", global_budget,
                  ",\"global_used\":", global_budget_used,
                  ",\"frame\":", frame_budget, ",\"tags\":[");
  for (size_t i = 0; i < tag_budgets.size(); ++i) {
    const BudgetManager::Use& b = tag_budgets[i];
    if (i != 0) out += ",";
    out += "{\"path\":";
    AppendJsonString(&out, b.path);
    absl::StrAppend(&out, ",\"used\":", b.used,
                    ",\"warn\":", b.budget.warn_bytes,
                    ",\"limit\":", b.budget.limit_bytes, "}");
  }
  absl::StrAppend(&out, "]},\"pools\":[");
  bool first_class = true;
  for (const PoolClassStats& c : pools.classes) {
    if (c.pages == 0) continue;
    if (!first_class) out += ",";
    first_class = false;
    absl::StrAppend(
        &out, "{\"block_size\":", c.block_size, ",\"pages\":", c.pages,
        ",\"used_bytes\":", c.blocks_out * c.block_size, ",\"free_bytes\":",
        (c.blocks_free_in_pages + c.blocks_in_transfer) * c.block_size, "}");
  }
  absl::StrAppend(
      &out, "],\"cache\":{\"hits\":", cache.hits, ",\"misses\":", cache.misses,
      ",\"cached_bytes\":", cache.cached_bytes,
      ",\"in_use_bytes\":", cache.in_use_bytes,
      ",\"peak_in_use_bytes\":", cache.peak_in_use_bytes,
      "},\"source\":{\"allocations\":", source.allocations,
      ",\"deallocations\":", source.deallocations,
      ",\"bytes_outstanding\":", source.bytes_outstanding,
      ",\"peak_bytes_outstanding\":", source.peak_bytes_outstanding, "}}");
  return out;
}

std::string AllocStats::ToText() const {
  auto kind = [](const KindStats& k) {
    return absl::StrFormat("%8llu allocs %12llu B  %8llu frees  %10lld B live",
                           static_cast<unsigned long long>(k.allocations),
                           static_cast<unsigned long long>(k.bytes),
                           static_cast<unsigned long long>(k.frees),
                           static_cast<long long>(k.live_bytes()));
  };
  std::string out = absl::StrCat("framealloc report at frame ", frame_number,
                                 ": ", live_threads, " live threads, ",
                                 exited_threads, " exited\n");
  absl::StrAppend(&out, "  frame ", kind(frame), "\n  pool  ", kind(pool),
                  "\n  heap  ", kind(heap), "\n");
  if (!tags.empty()) absl::StrAppend(&out, "tags\n");
  for (const TagStats& t : tags) {
    absl::StrAppend(&out, "  '", t.path, "'\n    frame ", kind(t.frame),
                    "\n    pool  ", kind(t.pool), "\n    heap  ", kind(t.heap),
                    "\n");
  }
  if (!threads.empty()) absl::StrAppend(&out, "threads\n");
  for (const ThreadStats& t : threads) {
    absl::StrAppend(&out, "  #", t.thread, ": ", t.frame, " frames");
    if (!t.history.empty()) {
      const FrameRecord& last = t.history.back();
      absl::StrAppend(&out, "; last frame ", last.frame, ": ", last.allocations,
                      " allocs, ", last.bytes, " B used, peak ",
                      last.peak_bytes, " B, waste ", last.waste_bytes, " B, ",
                      last.chunks, " chunks, ",
                      absl::StrFormat("%.3f", last.duration_ms), " ms");
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "budgets: ", budget_warnings, " warnings, ",
                  budget_refusals, " refusals");
  if (global_budget != 0) {
    absl::StrAppend(&out, "; global ", global_budget_used, " of ",
                    global_budget, " B");
  }
  if (frame_budget != 0) {
    absl::StrAppend(&out, "; frame ", frame_budget, " B per thread");
  }
  absl::StrAppend(&out, "\n");
  for (const BudgetManager::Use& b : tag_budgets) {
    absl::StrAppend(&out, "  '", b.path, "': ", b.used, " B used, warn at ",
                    b.budget.warn_bytes, ", limit ", b.budget.limit_bytes,
                    "\n");
  }
  absl::StrAppend(&out, "pools (free against used bytes per size class)\n");
  for (const PoolClassStats& c : pools.classes) {
    if (c.pages == 0) continue;
    const size_t used = c.blocks_out * c.block_size;
    const size_t free =
        (c.blocks_free_in_pages + c.blocks_in_transfer) * c.block_size;
    absl::StrAppend(
        &out, absl::StrFormat("  %5zu B: %4zu pages, %10zu B used, %10zu B "
                              "free (%.1f%% free)\n",
                              c.block_size, c.pages, used, free,
                              used + free == 0
                                  ? 0.0
                                  : 100.0 * static_cast<double>(free) /
                                        static_cast<double>(used + free)));
  }
  absl::StrAppend(&out, "cache: ", cache.cached_bytes, " B idle, ",
                  cache.in_use_bytes, " B in use, ", cache.hits, " hits, ",
                  cache.misses, " misses; source: ", source.bytes_outstanding,
                  " B outstanding\n");
  return out;
}

}  // namespace framealloc
