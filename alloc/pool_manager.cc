// PoolManager's transfer caches and pages and ThreadCache's slow paths:
// refills, flushes with their misuse checks, draining, page release and
// statistics (see pool_manager.h). The fast paths are inline in the header.
#include "alloc/pool_manager.h"

#include <algorithm>
#include <bit>
#include <new>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "alloc/error.h"

namespace framealloc {
namespace {

using alloc_internal::IsPowerOfTwo;
using alloc_internal::MutexLock;

constexpr uint32_t kPageMagic = 0x506f6f6c;  // "Pool".
constexpr size_t kMinPageSize = size_t{16} << 10;
constexpr size_t kMaxPageSize = size_t{4} << 20;
constexpr int kMaxBatch = 1024;
constexpr size_t kMaxCacheBlocks = size_t{1} << 16;
// Where every class reaches kMaxCacheBlocks: more would change nothing.
constexpr size_t kMaxCacheBytes = kMaxCacheBlocks * PoolManager::kMaxBlockSize;
constexpr int kMaxTransferBatches = 4096;
// Where every class reaches kMaxCacheBlocks at once (65536 blocks of each of
// 8 B to 4 KiB: 511.5 MiB).
constexpr size_t kMaxThreadCacheBytes = size_t{512} << 20;
// Flushes past a raised limit before it loses a batch. (tcmalloc cuts on
// the overage after its kMaxOverages = 3, and keeps counting across raises;
// here the count restarts whenever the limit moves.)
constexpr uint8_t kOverflowsBeforeCut = 3;
// Distinct pages ReturnBatch tallies for its checks (enough for a default
// batch of 32 blocks, each on a page of its own; a flush that also cuts a
// raised limit moves up to 64). A batch spread over more pages goes back to
// them block by block.
constexpr int kMaxTallyPages = 32;

std::string PointerText(const void* p) {
  return absl::StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(p)));
}

}  // namespace

// Which list of its class a page is on.
enum class PoolManager::PageList : uint8_t { kNone, kPartial, kEmpty };

// Why a freed block may not go back to its page.
enum class PoolManager::Misuse : uint8_t {
  kNone,
  kNotInClass,     // Not in a page of the class: foreign, or another class.
  kNeverGivenOut,  // In a page of the class, but not a block it handed out.
  kCorruptHeader,  // The page's header no longer says what it did.
  kDoubleFree,     // Its page has every block free already.
};

// The blocks of a batch in one page, for the checks of a transfer-cache push.
struct PoolManager::PageTally {
  uintptr_t base;
  uint32_t blocks;     // Blocks of the batch in this page.
  uint32_t max_index;  // The highest block index among them.
};

struct PoolManager::BadFree {
  const void* block;
  int cls;
  Misuse misuse;
};

// The start of every page. Written once when the page is set up (magic,
// owner, cls, chunk_alignment_log2, chunk_size: read-only afterwards) and
// otherwise only under
// the class's mutex. Blocks from the free list come back first, then the
// never-used tail (`carved` counts the blocks ever handed out), so a fresh
// page is never written through.
struct PoolManager::PageHeader {
  uint32_t magic;
  uint16_t cls;
  PageList list;
  // log2 of Block::alignment from the cache, handed back with it: a cached
  // chunk acquired at a smaller alignment may serve a page when its
  // address happens to be page-aligned, and keeps its own alignment.
  uint8_t chunk_alignment_log2;
  uint32_t free_count;  // On free_list plus never carved.
  uint32_t carved;
  PoolManager* owner;
  FreeBlock* free_list;
  PageHeader* prev;
  PageHeader* next;
  size_t chunk_size;  // Block::size from the cache, handed back with it.
};

absl::Status PoolOptions::Validate() const {
  if (!IsPowerOfTwo(page_size) || page_size < kMinPageSize ||
      page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolOptions.page_size = ", page_size, " is not a power of two in [",
        kMinPageSize, ", ", kMaxPageSize, "]"));
  }
  if (batch < 1 || batch > kMaxBatch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolOptions.batch = ", batch, " is outside [1, ", kMaxBatch, "]"));
  }
  if (cache_bytes > kMaxCacheBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoolOptions.cache_bytes = ", cache_bytes, " is above ",
                     kMaxCacheBytes, " (65536 blocks of every class)"));
  }
  if (max_cache_bytes > kMaxCacheBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolOptions.max_cache_bytes = ", max_cache_bytes, " is above ",
        kMaxCacheBytes, " (65536 blocks of every class)"));
  }
  if (thread_cache_bytes > kMaxThreadCacheBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolOptions.thread_cache_bytes = ", thread_cache_bytes, " is above ",
        kMaxThreadCacheBytes, " (65536 blocks of every class at once)"));
  }
  if (transfer_batches < 0 || transfer_batches > kMaxTransferBatches) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoolOptions.transfer_batches = ", transfer_batches,
                     " is outside [0, ", kMaxTransferBatches, "]"));
  }
  return absl::OkStatus();
}

PoolManager::PoolManager(ChunkCache* cache, PoolOptions options)
    : cache_(cache),
      options_(options),
      page_mask_(~(options.page_size - 1)),
      classes_(std::make_unique<ClassState[]>(kNumClasses)),
      // Clamped so that bad options reach the fatal report below.
      transfer_slots_(std::make_unique<Batch[]>(
          kNumClasses *
          static_cast<size_t>(
              std::clamp(options.transfer_batches, 0, kMaxTransferBatches)))) {
  static_assert(sizeof(PageHeader) <= FirstBlockOffset(0),
                "the page header must fit the first block slot");
  if (absl::Status s = options_.Validate(); !s.ok()) {
    ReportFatalError({ErrorKind::kInvalidArgument, "PoolManager::PoolManager",
                      std::string(s.message()), 0, 0, s});
  }
  const size_t min_cache = 2 * static_cast<size_t>(options_.batch);
  for (int cls = 0; cls < kNumClasses; ++cls) {
    blocks_per_page_[cls] =
        (options_.page_size - FirstBlockOffset(cls)) / ClassSize(cls);
    cache_limits_[cls] = static_cast<uint32_t>(std::clamp(
        options_.cache_bytes / ClassSize(cls), min_cache, kMaxCacheBlocks));
    cache_ceilings_[cls] = static_cast<uint32_t>(
        std::clamp(options_.max_cache_bytes / ClassSize(cls),
                   size_t{cache_limits_[cls]}, kMaxCacheBlocks));
    // Set before any thread sees the pool; only the slots are guarded.
    classes_[cls].transfer = transfer_slots_.get() +
                             static_cast<size_t>(cls) *
                                 static_cast<size_t>(options_.transfer_batches);
  }
}

size_t PoolManager::TakeRaise(size_t bytes) {
  const size_t total = options_.total_thread_cache_bytes;
  size_t raised = raised_cache_bytes_.load(std::memory_order_relaxed);
  for (;;) {
    const size_t granted =
        std::min(bytes, total > raised ? total - raised : size_t{0});
    if (granted == 0) return 0;
    if (raised_cache_bytes_.compare_exchange_weak(raised, raised + granted,
                                                  std::memory_order_relaxed)) {
      return granted;
    }
  }
}

absl::StatusOr<std::unique_ptr<PoolManager>> PoolManager::Create(
    ChunkCache* cache, PoolOptions options) {
  if (cache == nullptr) {
    return absl::InvalidArgumentError("PoolManager::Create: cache is null");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<PoolManager>(cache, options);
}

PoolManager::~PoolManager() {
  const int caches = attached_caches_.load(std::memory_order_relaxed);
  if (caches != 0) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "PoolManager::~PoolManager",
         absl::StrCat("pool destroyed while ", caches,
                      " ThreadCaches are still attached; destroy "
                      "every ThreadCache before its pool"),
         0, 0, absl::OkStatus()});
  }
  // Blocks parked in transfer caches are free, not out: back to the pages
  // first, so that only blocks really out are reported.
  DrainTransferCaches();
  size_t out = 0;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    MutexLock lock(&c.mu);
    out += c.pages.size() * blocks_per_page_[cls] - c.free_blocks;
  }
  if (out != 0) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "PoolManager::~PoolManager",
         absl::StrCat("pool destroyed with ", out,
                      " blocks still allocated or in thread caches; "
                      "free them and flush every ThreadCache first "
                      "(their pages are released anyway)"),
         0, 0, absl::OkStatus()});
  }
  {
    MutexLock lock(&pages_mu_);
    page_set_.clear();
  }
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    MutexLock lock(&c.mu);
    for (uintptr_t base : c.pages) {
      ReleasePage(reinterpret_cast<PageHeader*>(base));
    }
    c.pages.clear();
    c.partial = c.empty = nullptr;
  }
}

PoolManager::PageHeader* PoolManager::NewPage(int cls) {
  absl::StatusOr<Block> block =
      cache_->Acquire(options_.page_size, options_.page_size);
  if (!block.ok()) return nullptr;
  auto* page = ::new (block->data) PageHeader{
      kPageMagic,
      static_cast<uint16_t>(cls),
      PageList::kNone,
      static_cast<uint8_t>(std::countr_zero(block->alignment)),
      static_cast<uint32_t>(blocks_per_page_[cls]),
      /*carved=*/0,
      this,
      /*free_list=*/nullptr,
      /*prev=*/nullptr,
      /*next=*/nullptr,
      block->size,
  };
  // Everything past the header is free memory until handed out.
  FRAMEALLOC_POISON(block->begin() + sizeof(PageHeader),
                    options_.page_size - sizeof(PageHeader));
  MutexLock lock(&pages_mu_);
  page_set_.insert(reinterpret_cast<uintptr_t>(page));
  return page;
}

void PoolManager::ReleasePage(PageHeader* page) {
  const Block block{page, page->chunk_size,
                    size_t{1} << page->chunk_alignment_log2};
  // Shadow memory outlives our use: unpoison before handing the page on.
  FRAMEALLOC_UNPOISON(block.data, block.size);
  cache_->Release(block);
}

void PoolManager::UnlinkLocked(ClassState& c, PageHeader* page) {
  if (page->list == PageList::kNone) return;
  PageHeader*& head = page->list == PageList::kEmpty ? c.empty : c.partial;
  if (page->prev != nullptr) page->prev->next = page->next;
  if (page->next != nullptr) page->next->prev = page->prev;
  if (head == page) head = page->next;
  if (page->list == PageList::kEmpty) --c.empty_pages;
  page->prev = page->next = nullptr;
  page->list = PageList::kNone;
}

void PoolManager::RelinkLocked(ClassState& c, PageHeader* page) {
  const PageList want = page->free_count == 0 ? PageList::kNone
                        : page->free_count == blocks_per_page_[page->cls]
                            ? PageList::kEmpty
                            : PageList::kPartial;
  if (want == page->list) return;
  UnlinkLocked(c, page);
  if (want == PageList::kNone) return;
  PageHeader*& head = want == PageList::kEmpty ? c.empty : c.partial;
  page->next = head;
  if (head != nullptr) head->prev = page;
  head = page;
  page->list = want;
  if (want == PageList::kEmpty) ++c.empty_pages;
}

uint32_t PoolManager::TakeLocked(ClassState& c, int cls, uint32_t want,
                                 FreeBlock** head, uint32_t* lost) {
  const size_t size = ClassSize(cls);
  const uint32_t capacity = static_cast<uint32_t>(blocks_per_page_[cls]);
  FreeBlock* first = nullptr;
  FreeBlock* last = nullptr;
  uint32_t got = 0;
  while (got < want) {
    // Partly used pages first, so that empty ones stay empty (releasable).
    PageHeader* page = c.partial != nullptr ? c.partial : c.empty;
    if (page == nullptr) break;
    char* const base = reinterpret_cast<char*>(page);
    while (got < want && page->free_count != 0) {
      FreeBlock* block = page->free_list;
      if (block != nullptr) {
        FreeBlock* next = LoadNext(block);
        // A link leaving the page or missing a block boundary was written
        // by a use after free: cut the list there rather than follow it.
        const uintptr_t offset = reinterpret_cast<uintptr_t>(next) -
                                 reinterpret_cast<uintptr_t>(base);
        if (next != nullptr &&
            (offset >= options_.page_size || offset < FirstBlockOffset(cls) ||
             (offset - FirstBlockOffset(cls)) % size != 0)) {
          next = nullptr;
        }
        page->free_list = next;
      } else if (page->carved < capacity) {
        block = reinterpret_cast<FreeBlock*>(base + FirstBlockOffset(cls) +
                                             page->carved * size);
        ++page->carved;
      } else {
        // The count holds more free blocks than the list and the uncarved
        // tail: the list was cut (above, or by a write after free). Give
        // the missing blocks up rather than carve past the page.
        *lost += page->free_count;
        c.free_blocks -= page->free_count;
        page->free_count = 0;
        break;
      }
      --page->free_count;
      --c.free_blocks;
      ++got;
      if (last != nullptr) {
        StoreNext(last, block);
      } else {
        first = block;
      }
      last = block;
    }
    RelinkLocked(c, page);
  }
  if (got != 0) {
    StoreNext(last, *head);
    *head = first;
  }
  return got;
}

uint32_t PoolManager::Refill(int cls, uint32_t want, FreeBlock** head) {
  ClassState& c = classes_[cls];
  uint32_t lost = 0;
  uint32_t got = 0;
  Batch batch{nullptr, nullptr, 0};
  {
    MutexLock lock(&c.mu);
    if (c.transfer_size != 0) {
      batch = c.transfer[--c.transfer_size];
      c.transfer_blocks -= batch.count;
      ++c.refills;
      ++c.transfer_refills;
    } else {
      got = TakeLocked(c, cls, want, head, &lost);
      if (got != 0) ++c.refills;
    }
  }
  if (batch.count != 0) {
    // Spliced outside the mutex: the batch is ours alone now, and its tail
    // may be a cache miss. From AllocateSlow the list is empty and the
    // tail's link already null.
    if (*head != nullptr) StoreNext(batch.tail, *head);
    *head = batch.head;
    return batch.count;
  }
  if (got == 0) {
    // No page of the class has a free block. Add one outside the class's
    // mutex: the cache may go to the memory source, which may be slow.
    PageHeader* page = NewPage(cls);
    MutexLock lock(&c.mu);
    if (page == nullptr) {
      ++c.failed_page_acquisitions;
    } else {
      c.pages.insert(reinterpret_cast<uintptr_t>(page));
      ++c.pages_acquired;
      c.free_blocks += page->free_count;
      RelinkLocked(c, page);
    }
    // Other threads may have returned blocks meanwhile, even without a page.
    got = TakeLocked(c, cls, want, head, &lost);
    if (got != 0) ++c.refills;
  }
  if (lost != 0) {
    ReportErrorAndContinue(
        {ErrorKind::kMisuse, "PoolManager::ThreadCache::Allocate",
         absl::StrCat(lost, " free blocks of ", ClassSize(cls),
                      " B were missing from their page's free list (a block "
                      "was written after it was freed, or freed twice); "
                      "they are given up"),
         ClassSize(cls), ClassSize(cls), absl::OkStatus()});
  }
  return got;
}

PoolManager::Misuse PoolManager::CheckLocked(const ClassState& c, int cls,
                                             uintptr_t block) const {
  const uintptr_t base = block & page_mask_;
  // Membership first: never read a header of memory we do not own.
  if (!c.pages.contains(base)) return Misuse::kNotInClass;
  const auto* page = reinterpret_cast<const PageHeader*>(base);
  if (page->magic != kPageMagic || page->owner != this || page->cls != cls) {
    return Misuse::kCorruptHeader;
  }
  const size_t size = ClassSize(cls);
  const uintptr_t offset = block - base;
  if (offset < FirstBlockOffset(cls) ||
      (offset - FirstBlockOffset(cls)) % size != 0 ||
      (offset - FirstBlockOffset(cls)) / size >= page->carved) {
    return Misuse::kNeverGivenOut;
  }
  if (page->free_count == blocks_per_page_[cls]) return Misuse::kDoubleFree;
  return Misuse::kNone;
}

bool PoolManager::TallyPassesLocked(const ClassState& c, int cls,
                                    const PageTally* tally, int n) const {
  for (int i = 0; i < n; ++i) {
    const PageTally& t = tally[i];
    // CheckLocked's tests, once per page: membership first (never read a
    // header of memory we do not own), then the header, the highest block
    // index against the carved part, and the blocks against those the page
    // has out: returned one by one, a block past that count would find its
    // page all free (a double free).
    if (!c.pages.contains(t.base)) return false;
    const auto* page = reinterpret_cast<const PageHeader*>(t.base);
    if (page->magic != kPageMagic || page->owner != this || page->cls != cls ||
        t.max_index >= page->carved ||
        t.blocks > blocks_per_page_[cls] - page->free_count) {
      return false;
    }
  }
  return true;
}

void PoolManager::ReturnBatch(int cls, uint32_t n, FreeBlock** list) {
  ClassState& c = classes_[cls];
  // Walk the batch to find the cut (its blocks were just freed: hot in this
  // thread's cache) and tally its pages, so that the checks under the mutex
  // cost one lookup per page instead of one per block. The offset tests need
  // no memory but the block's address; a block failing them (or a batch on
  // more than kMaxTallyPages pages) sends the batch to Return's path.
  const uintptr_t first = FirstBlockOffset(cls);
  const int shift = cls + 3;  // log2(ClassSize(cls)).
  const uintptr_t per_page = blocks_per_page_[cls];
  PageTally tally[kMaxTallyPages];
  int pages = 0;
  int at = 0;  // The tally entry of the previous block's page.
  bool checkable = true;
  FreeBlock* const head = *list;
  FreeBlock* tail = head;
  for (uint32_t i = 1;; ++i) {
    if (checkable) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(tail);
      const uintptr_t base = address & page_mask_;
      // Below the first block this wraps to a huge offset and fails too.
      const uintptr_t offset = address - base - first;
      if ((offset & (ClassSize(cls) - 1)) != 0 ||
          (offset >> shift) >= per_page) {
        checkable = false;
      } else {
        if (pages == 0 || tally[at].base != base) {
          at = 0;
          while (at < pages && tally[at].base != base) ++at;
          if (at == pages) {
            if (pages == kMaxTallyPages) {
              checkable = false;
            } else {
              tally[pages++] = {base, 0, 0};
            }
          }
        }
        if (checkable) {
          const auto index = static_cast<uint32_t>(offset >> shift);
          ++tally[at].blocks;
          tally[at].max_index = std::max(tally[at].max_index, index);
        }
      }
    }
    if (i == n) break;
    tail = LoadNext(tail);
  }
  *list = LoadNext(tail);
  StoreNext(tail, nullptr);

  // Reported after the class's mutex is dropped: the handler may do anything.
  BadFrees bad;
  {
    MutexLock lock(&c.mu);
    ++c.flushes;
    if (c.transfer_size == static_cast<uint32_t>(options_.transfer_batches)) {
      ++c.transfer_overflows;
    } else if (checkable && TallyPassesLocked(c, cls, tally, pages)) {
      c.transfer[c.transfer_size++] = Batch{head, tail, n};
      c.transfer_blocks += n;
      ++c.transfer_flushes;
      return;
    }
    ReturnLocked(c, cls, head, &bad);
  }
  for (const BadFree& b : bad) ReportBadFree(b);
}

void PoolManager::ReturnLocked(ClassState& c, int cls, FreeBlock* head,
                               BadFrees* bad) {
  while (head != nullptr) {
    FreeBlock* block = head;
    head = LoadNext(block);
    const uintptr_t address = reinterpret_cast<uintptr_t>(block);
    if (const Misuse misuse = CheckLocked(c, cls, address);
        misuse != Misuse::kNone) {
      ++c.dropped_frees;
      bad->push_back({block, cls, misuse});
      continue;
    }
    auto* page = reinterpret_cast<PageHeader*>(address & page_mask_);
    StoreNext(block, page->free_list);
    page->free_list = block;
    ++page->free_count;
    ++c.free_blocks;
    RelinkLocked(c, page);
  }
}

void PoolManager::Return(int cls, FreeBlock* head) {
  ClassState& c = classes_[cls];
  // Reported after the class's mutex is dropped: the handler may do anything.
  BadFrees bad;
  {
    MutexLock lock(&c.mu);
    ++c.flushes;
    ReturnLocked(c, cls, head, &bad);
  }
  for (const BadFree& b : bad) ReportBadFree(b);
}

void PoolManager::DrainLocked(ClassState& c, int cls, BadFrees* bad) {
  // Checked again block by block: a block freed twice into two batches
  // passes the per-page tally but not its page's count here.
  for (uint32_t i = 0; i < c.transfer_size; ++i) {
    ReturnLocked(c, cls, c.transfer[i].head, bad);
  }
  c.transfer_size = 0;
  c.transfer_blocks = 0;
}

void PoolManager::DrainTransferCaches() {
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    BadFrees bad;
    {
      MutexLock lock(&c.mu);
      DrainLocked(c, cls, &bad);
    }
    for (const BadFree& b : bad) ReportBadFree(b);
  }
}

void PoolManager::ReportBadFree(const BadFree& bad) const {
  const size_t size = ClassSize(bad.cls);
  std::string message;
  switch (bad.misuse) {
    case Misuse::kNotInClass: {
      // A page of another class, or not ours at all? Read the header only
      // while page_set_ says the page is ours (its class never changes then).
      const uintptr_t base =
          reinterpret_cast<uintptr_t>(bad.block) & page_mask_;
      size_t actual = 0;
      {
        MutexLock lock(&pages_mu_);
        if (page_set_.contains(base)) {
          actual = ClassSize(reinterpret_cast<const PageHeader*>(base)->cls);
        }
      }
      // A page of this very class not yet adopted by it (Refill between
      // NewPage and taking the mutex) has handed out nothing.
      if (actual == size) actual = 0;
      message = actual == 0
                    ? absl::StrCat(
                          "pool free of a pointer this pool never gave out (",
                          PointerText(bad.block), " freed as ", size,
                          " B); the pointer is dropped")
                    : absl::StrCat(
                          "pool block ", PointerText(bad.block),
                          " freed with the wrong size class (block of ", actual,
                          " B freed as ", size, " B); the pointer is dropped");
      break;
    }
    case Misuse::kNeverGivenOut:
      message = absl::StrCat(
          "pool free of a pointer this pool never gave out (",
          PointerText(bad.block), " freed as ", size,
          " B is not the start of a block handed out by its page); the "
          "pointer is dropped");
      break;
    case Misuse::kCorruptHeader:
      message = absl::StrCat(
          "pool free of ", PointerText(bad.block), " (freed as ", size,
          " B) into a page whose header is corrupt (written past the start "
          "of a block?); the pointer is dropped");
      break;
    case Misuse::kDoubleFree:
      message = absl::StrCat("pool free of ", PointerText(bad.block),
                             " (freed as ", size,
                             " B) into a page whose blocks are all free "
                             "already (a double free); the pointer is dropped");
      break;
    case Misuse::kNone:
      return;
  }
  ReportErrorAndContinue({ErrorKind::kMisuse, "PoolManager::ThreadCache::Free",
                          std::move(message), size, size, absl::OkStatus()});
}

size_t PoolManager::ReleaseEmptyPages(size_t keep_per_class) {
  size_t released = 0;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    PageHeader* doomed = nullptr;  // Linked through `next`, ours alone.
    BadFrees bad;
    {
      MutexLock lock(&c.mu);
      // Pages whose blocks sit in the transfer cache are empty in truth.
      DrainLocked(c, cls, &bad);
      if (c.empty_pages > keep_per_class) {
        MutexLock pages_lock(&pages_mu_);
        while (c.empty_pages > keep_per_class) {
          PageHeader* page = c.empty;
          UnlinkLocked(c, page);
          const uintptr_t base = reinterpret_cast<uintptr_t>(page);
          c.pages.erase(base);
          page_set_.erase(base);
          c.free_blocks -= page->free_count;
          ++c.pages_released;
          page->next = doomed;
          doomed = page;
        }
      }
    }
    for (const BadFree& b : bad) ReportBadFree(b);
    while (doomed != nullptr) {
      PageHeader* page = doomed;
      doomed = page->next;
      released += options_.page_size;
      ReleasePage(page);
    }
  }
  return released;
}

bool PoolManager::Owns(const void* p) const {
  const uintptr_t base = reinterpret_cast<uintptr_t>(p) & page_mask_;
  MutexLock lock(&pages_mu_);
  return page_set_.contains(base);
}

PoolStats PoolManager::stats() const {
  PoolStats s;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    const ClassState& c = classes_[cls];
    PoolClassStats& out = s.classes[cls];
    MutexLock lock(&c.mu);
    out.block_size = ClassSize(cls);
    out.blocks_per_page = blocks_per_page_[cls];
    out.pages = c.pages.size();
    out.empty_pages = c.empty_pages;
    out.blocks_total = out.pages * out.blocks_per_page;
    out.blocks_free_in_pages = c.free_blocks;
    out.blocks_in_transfer = c.transfer_blocks;
    out.blocks_out =
        out.blocks_total - out.blocks_free_in_pages - out.blocks_in_transfer;
    s.pages += out.pages;
    s.refills += c.refills;
    s.flushes += c.flushes;
    s.transfer_refills += c.transfer_refills;
    s.transfer_flushes += c.transfer_flushes;
    s.transfer_overflows += c.transfer_overflows;
    s.pages_acquired += c.pages_acquired;
    s.pages_released += c.pages_released;
    s.failed_page_acquisitions += c.failed_page_acquisitions;
    s.dropped_frees += c.dropped_frees;
  }
  s.page_bytes = s.pages * options_.page_size;
  s.raised_cache_bytes = raised_cache_bytes();
  return s;
}

PoolManager::ThreadCache::ThreadCache(PoolManager* pool)
    : pool_(pool), batch_(static_cast<uint32_t>(pool->options().batch)) {
  for (int cls = 0; cls < kNumClasses; ++cls) {
    lists_[cls].limit = pool_->CacheLimit(cls);
    limit_bytes_ += size_t{lists_[cls].limit} * ClassSize(cls);
  }
  start_bytes_ = limit_bytes_;
  pool_->attached_caches_.fetch_add(1, std::memory_order_relaxed);
}

PoolManager::ThreadCache::~ThreadCache() {
  Flush();
  pool_->attached_caches_.fetch_sub(1, std::memory_order_relaxed);
}

void* PoolManager::ThreadCache::AllocateSlow(int cls) {
  List& list = lists_[cls];
  const uint32_t got = pool_->Refill(cls, batch_, &list.head);
  if (got == 0) return nullptr;
  list.count += got;
  // The list ran dry: the thread's working set of this class is larger than
  // its limit lets it keep.
  Raise(cls);
  return Allocate(cls);
}

void PoolManager::ThreadCache::SetLimit(int cls, uint32_t limit) {
  List& list = lists_[cls];
  limit_bytes_ = limit_bytes_ - size_t{list.limit} * ClassSize(cls) +
                 size_t{limit} * ClassSize(cls);
  list.limit = limit;
  overflows_[cls] = 0;
}

void PoolManager::ThreadCache::Raise(int cls) {
  const List& list = lists_[cls];
  const uint32_t ceiling = pool_->CacheCeiling(cls);
  if (list.limit >= ceiling) return;
  const size_t size = ClassSize(cls);
  const size_t budget = pool_->options().thread_cache_bytes;
  const size_t room = budget > limit_bytes_ ? budget - limit_bytes_ : 0;
  uint32_t add = std::min(batch_, ceiling - list.limit);
  // What the thread budget leaves comes from the pool-wide allowance; the
  // rest from other classes' raised, unused limits (moving room within the
  // thread takes nothing from the pool). The starting limits always hold.
  const size_t granted = pool_->TakeRaise(std::min(size_t{add} * size, room));
  size_t reclaimed = 0;
  if (size_t{add} * size > granted) {
    add = static_cast<uint32_t>(
        std::min<size_t>(add, (granted + Reclaimable(cls)) / size));
    if (size_t{add} * size > granted) {
      reclaimed = Reclaim(cls, size_t{add} * size - granted);
    }
  }
  // The thread's raised bytes changed by add * size - reclaimed; it took
  // `granted` from the pool: give back the difference (>= 0: reclaimed
  // covers at least add * size - granted).
  if (const size_t back = granted + reclaimed - size_t{add} * size; back != 0) {
    pool_->ReturnRaise(back);
  }
  if (add == 0) return;
  SetLimit(cls, list.limit + add);
  ++limit_raises_;
}

uint32_t PoolManager::ThreadCache::UnusedRaise(int cls) const {
  const List& list = lists_[cls];
  const uint32_t floor = std::max(pool_->CacheLimit(cls), list.count);
  return list.limit > floor ? list.limit - floor : 0;
}

size_t PoolManager::ThreadCache::Reclaimable(int except) const {
  size_t bytes = 0;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    if (cls != except) bytes += size_t{UnusedRaise(cls)} * ClassSize(cls);
  }
  return bytes;
}

size_t PoolManager::ThreadCache::Reclaim(int except, size_t bytes) {
  size_t freed = 0;
  // Largest blocks first: the fewest classes touched.
  for (int cls = kNumClasses - 1; cls >= 0 && freed < bytes; --cls) {
    const uint32_t unused = cls == except ? 0 : UnusedRaise(cls);
    if (unused == 0) continue;
    const size_t size = ClassSize(cls);
    const uint32_t cut = static_cast<uint32_t>(
        std::min<size_t>(unused, (bytes - freed + size - 1) / size));
    SetLimit(cls, lists_[cls].limit - cut);
    freed += size_t{cut} * size;
    ++limit_cuts_;
  }
  return freed;
}

void PoolManager::ThreadCache::FlushBatch(int cls) {
  List& list = lists_[cls];
  // count == limit + 1 here. A raised limit that keeps overflowing loses a
  // batch (at most down to its start): this thread frees more than it
  // allocates, and a larger cache only parks blocks others will need.
  uint32_t cut = 0;
  const uint32_t start = pool_->CacheLimit(cls);
  if (list.limit > start && ++overflows_[cls] >= kOverflowsBeforeCut) {
    cut = std::min(batch_, list.limit - start);
    SetLimit(cls, list.limit - cut);
    pool_->ReturnRaise(size_t{cut} * ClassSize(cls));
    ++limit_cuts_;
  }
  // Leaves count == limit + 1 - batch_. limit >= 2 * batch_ and cut <=
  // batch_ guarantee the blocks: count >= batch_ + cut + 1.
  const uint32_t n = batch_ + cut;
  pool_->ReturnBatch(cls, n, &list.head);
  list.count -= n;
}

void PoolManager::ThreadCache::Flush() {
  if (limit_bytes_ != start_bytes_)
    pool_->ReturnRaise(limit_bytes_ - start_bytes_);
  for (int cls = 0; cls < kNumClasses; ++cls) {
    List& list = lists_[cls];
    SetLimit(cls, pool_->CacheLimit(cls));
    if (list.head == nullptr) continue;
    FreeBlock* head = list.head;
    list.head = nullptr;
    list.count = 0;
    pool_->Return(cls, head);
  }
}

}  // namespace framealloc
