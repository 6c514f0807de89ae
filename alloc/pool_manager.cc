// PoolManager's pages and ThreadCache's slow paths: refills, flushes with
// their misuse checks, page release and statistics (see pool_manager.h). The
// fast paths are inline in the header.
#include "alloc/pool_manager.h"

#include <algorithm>
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
constexpr int kMaxCacheLimit = 1 << 16;

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

struct PoolManager::BadFree {
  const void* block;
  int cls;
  Misuse misuse;
};

// The start of every page. Written once when the page is set up (magic,
// owner, cls, chunk_size: read-only afterwards) and otherwise only under
// the class's mutex. Blocks from the free list come back first, then the
// never-used tail (`carved` counts the blocks ever handed out), so a fresh
// page is never written through.
struct PoolManager::PageHeader {
  uint32_t magic;
  uint16_t cls;
  PageList list;
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
  if (cache_limit < batch || cache_limit > kMaxCacheLimit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolOptions.cache_limit = ", cache_limit,
        " is outside [batch = ", batch, ", ", kMaxCacheLimit, "]"));
  }
  return absl::OkStatus();
}

PoolManager::PoolManager(ChunkCache* cache, PoolOptions options)
    : cache_(cache),
      options_(options),
      page_mask_(~(options.page_size - 1)),
      classes_(std::make_unique<ClassState[]>(kNumClasses)) {
  static_assert(sizeof(PageHeader) <= FirstBlockOffset(0),
                "the page header must fit the first block slot");
  if (absl::Status s = options_.Validate(); !s.ok()) {
    ReportFatalError({ErrorKind::kInvalidArgument, "PoolManager::PoolManager",
                      std::string(s.message()), 0, 0, s});
  }
  for (int cls = 0; cls < kNumClasses; ++cls) {
    blocks_per_page_[cls] =
        (options_.page_size - FirstBlockOffset(cls)) / ClassSize(cls);
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
    ReportError({ErrorKind::kMisuse, "PoolManager::~PoolManager",
                 absl::StrCat("pool destroyed while ", caches,
                              " ThreadCaches are still attached; destroy "
                              "every ThreadCache before its pool"),
                 0, 0, absl::OkStatus()});
  }
  size_t out = 0;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    MutexLock lock(&c.mu);
    out += c.pages.size() * blocks_per_page_[cls] - c.free_blocks;
  }
  if (out != 0) {
    ReportError({ErrorKind::kMisuse, "PoolManager::~PoolManager",
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
  const Block block{page, page->chunk_size, options_.page_size};
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
  {
    MutexLock lock(&c.mu);
    got = TakeLocked(c, cls, want, head, &lost);
    if (got != 0) ++c.refills;
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
    ReportError(
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

void PoolManager::Return(int cls, FreeBlock* head) {
  ClassState& c = classes_[cls];
  // Reported after the class's mutex is dropped: the handler may do anything.
  absl::InlinedVector<BadFree, 4> bad;
  {
    MutexLock lock(&c.mu);
    ++c.flushes;
    while (head != nullptr) {
      FreeBlock* block = head;
      head = LoadNext(block);
      const uintptr_t address = reinterpret_cast<uintptr_t>(block);
      if (const Misuse misuse = CheckLocked(c, cls, address);
          misuse != Misuse::kNone) {
        ++c.dropped_frees;
        bad.push_back({block, cls, misuse});
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
  for (const BadFree& b : bad) ReportBadFree(b);
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
  ReportError({ErrorKind::kMisuse, "PoolManager::ThreadCache::Free",
               std::move(message), size, size, absl::OkStatus()});
}

size_t PoolManager::ReleaseEmptyPages(size_t keep_per_class) {
  size_t released = 0;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    ClassState& c = classes_[cls];
    PageHeader* doomed = nullptr;  // Linked through `next`, ours alone.
    {
      MutexLock lock(&c.mu);
      if (c.empty_pages <= keep_per_class) continue;
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
    out.blocks_out = out.blocks_total - out.blocks_free_in_pages;
    s.pages += out.pages;
    s.refills += c.refills;
    s.flushes += c.flushes;
    s.pages_acquired += c.pages_acquired;
    s.pages_released += c.pages_released;
    s.failed_page_acquisitions += c.failed_page_acquisitions;
    s.dropped_frees += c.dropped_frees;
  }
  s.page_bytes = s.pages * options_.page_size;
  return s;
}

PoolManager::ThreadCache::ThreadCache(PoolManager* pool)
    : limit_(static_cast<uint32_t>(pool->options().cache_limit)),
      batch_(static_cast<uint32_t>(pool->options().batch)),
      pool_(pool) {
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
  return Allocate(cls);
}

void PoolManager::ThreadCache::FlushBatch(int cls) {
  List& list = lists_[cls];
  // The newest `batch_` blocks go; count > limit_ >= batch_ guarantees them.
  FreeBlock* head = list.head;
  FreeBlock* tail = head;
  for (uint32_t i = 1; i < batch_; ++i) tail = LoadNext(tail);
  list.head = LoadNext(tail);
  StoreNext(tail, nullptr);
  list.count -= batch_;
  pool_->Return(cls, head);
}

void PoolManager::ThreadCache::Flush() {
  for (int cls = 0; cls < kNumClasses; ++cls) {
    List& list = lists_[cls];
    if (list.head == nullptr) continue;
    FreeBlock* head = list.head;
    list.head = nullptr;
    list.count = 0;
    pool_->Return(cls, head);
  }
}

}  // namespace framealloc
