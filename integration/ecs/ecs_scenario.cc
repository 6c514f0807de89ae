// The ECS scenario (see ecs_scenario.h).
#include "integration/ecs/ecs_scenario.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace framealloc::integration {
namespace ecs {
namespace {

constexpr float kDt = 1.0f / 60.0f;

// splitmix64: a portable, seedable stream (std's distributions are not
// portable across standard libraries; the scene must be).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi).
  float Uniform(float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(Next() >> 40) * 0x1p-24f;
  }

 private:
  uint64_t state_;
};

FrameExecutor ExecutorFor(const sim::FrameEnv& env) {
  if (sim::UsesRuntime(env.variant)) {
    return FrameExecutor::OnRuntime(env.runtime);
  }
  return FrameExecutor::Sequential(
      env.variant == sim::Variant::kArena ? env.arena : nullptr);
}

}  // namespace

absl::Status EcsSimulation::Init(const sim::ScenarioConfig& config,
                                 const sim::FrameEnv& env) {
  if (absl::Status s = sim::CheckEnv(env, "ecs"); !s.ok()) return s;
  const size_t n = config.size == 0 ? kDefaultEntities : config.size;
  if (n > kMaxEntities) {
    return absl::InvalidArgumentError(
        absl::StrCat("ecs: ScenarioConfig.size = ", n, " entities is above ",
                     "the limit of ", kMaxEntities));
  }
  // Built in a fresh object and moved in whole: a second Init starts over
  // (entities, stores, order, frame counter, digests), and a failed one
  // changes nothing.
  EcsSimulation fresh;
  if (absl::Status s = fresh.Build(n, config.seed); !s.ok()) return s;
  *this = std::move(fresh);
  return absl::OkStatus();
}

absl::Status EcsSimulation::Build(size_t n, uint64_t seed) {
  Rng rng(seed);
  const size_t roots = std::max<size_t>(1, n / 32);
  entities_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const Entity e = registry_.Create();
    LocalTransform t;
    if (i < roots) {
      t.position = {rng.Uniform(-60, 60), rng.Uniform(0.5f, 8),
                    rng.Uniform(-60, 60)};
    } else {
      // A random earlier entity: a random recursive forest, depth ~ ln(n).
      t.parent = entities_[rng.Next() % i];
      t.position = {rng.Uniform(-2, 2), rng.Uniform(-1.5f, 1),
                    rng.Uniform(-2, 2)};
    }
    float ax = rng.Uniform(-1, 1), ay = rng.Uniform(0.2f, 1),
          az = rng.Uniform(-1, 1);
    const float len = std::sqrt(ax * ax + ay * ay + az * az);
    t.rotation = Quat::AxisAngle(ax / len, ay / len, az / len,
                                 rng.Uniform(-3.14159f, 3.14159f));
    t.scale = rng.Uniform(0.9f, 1.0f);
    if (absl::Status s = transforms_.Add(e, t); !s.ok()) return s;
    if (absl::Status s =
            motion_.Add(e, rng.Uniform(-1, 1), rng.Uniform(0.1f, 0.5f));
        !s.ok()) {
      return s;
    }
    entities_.push_back(e);
  }
  if (absl::Status s = order_.Update(transforms_); !s.ok()) return s;
  // Laid out by tree group before the first frame (not in a measured one).
  if (!order_.grouped() && order_.tree_groups() > 1) {
    if (absl::Status s = GroupStores(); !s.ok()) return s;
  }
  const size_t blocks = (n + kBlock - 1) / kBlock;
  heap_blocks_.resize(blocks);
  arena_blocks_.resize(blocks);
  return absl::OkStatus();
}

template <>
std::vector<EcsSimulation::BlockOut<HeapMemory>>&
EcsSimulation::Blocks<HeapMemory>() {
  return heap_blocks_;
}
template <>
std::vector<EcsSimulation::BlockOut<ArenaMemory>>&
EcsSimulation::Blocks<ArenaMemory>() {
  return arena_blocks_;
}

absl::Status EcsSimulation::GroupStores() {
  // The transforms in tree-group order (each group's trees contiguous,
  // level by level), and the motion components in the same entity order,
  // so the systems that join them still walk both ascending. Afterwards the
  // order is grouped (a fixed point), so this runs again only after the
  // hierarchy changes.
  if (absl::Status s = transforms_.Reorder(order_.GroupedSlotOrder());
      !s.ok()) {
    return s;
  }
  const auto entities = transforms_.store().entities();
  std::vector<uint32_t> motion_order;
  motion_order.reserve(motion_.size());
  std::vector<bool> taken(motion_.size(), false);
  for (const Entity e : entities) {
    const uint32_t m = motion_.SlotOrAbsent(e);
    if (m == decltype(motion_)::kAbsent) continue;
    motion_order.push_back(m);
    taken[m] = true;
  }
  for (uint32_t m = 0; m < motion_.size(); ++m) {
    if (!taken[m]) motion_order.push_back(m);
  }
  if (absl::Status s = motion_.Permute(motion_order); !s.ok()) return s;
  return order_.Update(transforms_);
}

absl::Status EcsSimulation::Step(const sim::FrameEnv& env) {
  if (absl::Status s = sim::CheckStepEnv(env, "ecs"); !s.ok()) return s;
  const FrameExecutor exec = ExecutorFor(env);
  if (sim::UsesArena(env.variant)) {
    return RunFrame<ArenaMemory>(exec, Blocks<ArenaMemory>());
  }
  return RunFrame<HeapMemory>(exec, Blocks<HeapMemory>());
}

template <typename Mem>
absl::Status EcsSimulation::RunFrame(const FrameExecutor& exec,
                                     std::vector<BlockOut<Mem>>& blocks) {
  if (absl::Status s = order_.Update(transforms_); !s.ok()) return s;
  if (!order_.grouped() && order_.tree_groups() > 1) {
    if (absl::Status s = GroupStores(); !s.ok()) return s;
  }
  const size_t n = transforms_.size();
  const auto tf_entities = transforms_.store().entities();
  std::span<Quat> rotations = transforms_.rotations();
  std::span<Vec3> positions = transforms_.positions();
  std::span<float> rates = motion_.column<0>();
  std::span<const float> radii = motion_.column<1>();

  // 1. Spin: a query over Transform x Motion, dense slots split by node.
  absl::Status s = exec.ForRange(n, 4096, [&](const Lane&, size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const uint32_t m = motion_.SlotOrAbsent(tf_entities[i]);
      if (m == decltype(motion_)::kAbsent) continue;
      rotations[i] = (rotations[i] * Quat::AxisAngle(0, 1, 0, rates[m] * kDt))
                         .Normalized();
    }
  });
  if (!s.ok()) return s;

  // 2. World matrices: the per-frame component, parent before child.
  FrameColumn<Mat4, Mem> world;
  s = ComputeWorldTransforms<Mem>(transforms_, order_, exec, &world);
  if (!s.ok()) return s;

  // 3. Visibility and contacts: per-block query results on frame memory.
  const float t = static_cast<float>(frame_) * kDt;
  const Vec3 focus{40 * std::cos(0.3f * t), 2, 40 * std::sin(0.3f * t)};
  const float view_radius = 45;
  s = exec.ForBlocks(blocks.size(), [&](const Lane& lane, size_t blk) {
    Mem mem = Mem::From(lane);
    BlockOut<Mem>& out = blocks[blk];
    out.visible.emplace(mem.template MakeVec<uint32_t>());
    out.contacts.emplace(mem.template MakeVec<ContactEvent>());
    out.visible->reserve(kBlock);
    double sum = 0;
    const size_t end = std::min(n, (blk + 1) * kBlock);
    for (size_t k = blk * kBlock; k < end; ++k) {
      const Vec3 p = world[k].Translation();
      sum += static_cast<double>(p.x) + p.y + p.z;
      const uint32_t slot = order_.slot(k);
      const uint32_t m = motion_.SlotOrAbsent(tf_entities[slot]);
      const float r = m == decltype(motion_)::kAbsent ? 0 : radii[m];
      const float dx = p.x - focus.x, dy = p.y - focus.y, dz = p.z - focus.z;
      const float reach = view_radius + r;
      if (dx * dx + dy * dy + dz * dz < reach * reach) {
        out.visible->push_back(static_cast<uint32_t>(k));
      }
      if (p.y < r) out.contacts->push_back(ContactEvent{slot, r - p.y});
    }
    out.world_sum = sum;

    // 4. Response, in the same job: the block's contacts reverse the spin
    // and lift the entity (its local position). Each entity appears in one
    // block's contacts at most once, and no block of this system reads
    // local positions or spin rates, so the blocks may do it in any order.
    for (const ContactEvent& c : *out.contacts) {
      const uint32_t cm = motion_.SlotOrAbsent(tf_entities[c.slot]);
      if (cm != decltype(motion_)::kAbsent) rates[cm] = -rates[cm];
      positions[c.slot].y += std::min(c.depth, 0.5f);
    }
    // The block's digest: its counts, world sum and visible list.
    const uint64_t counts[2] = {out.visible->size(), out.contacts->size()};
    uint64_t d = sim::HashBytes(counts, sizeof(counts));
    d = sim::HashBytes(&out.world_sum, sizeof(out.world_sum), d);
    if (!out.visible->empty()) {
      d = sim::HashBytes(out.visible->data(),
                         out.visible->size() * sizeof(uint32_t), d);
    }
    out.digest = d;
  });
  if (!s.ok()) return s;

  // The frame's digest, the blocks' in block order: the only serial step.
  // (The response and the hashing of the visible lists ran here, on the
  // main thread, reading what both workers had written: two-worker frames
  // 5.15-5.31 ms in four runs of six, against 3.24-3.62 ms in five of six
  // since; docs/ecs.md.)
  last_ = EcsFrameStats();
  last_.frame = frame_;
  last_.entities = n;
  last_.levels = order_.levels();
  last_.world_bytes = n * sizeof(Mat4);
  uint64_t digest = digest_;
  for (BlockOut<Mem>& out : blocks) {
    digest = sim::HashBytes(&out.digest, sizeof(out.digest), digest);
    last_.visible += out.visible->size();
    last_.contacts += out.contacts->size();
  }
  digest_ = digest;
  total_contacts_ += last_.contacts;
  // The frame's components go: the lists are dropped (heap: freed), the
  // world column forgotten.
  for (BlockOut<Mem>& out : blocks) {
    out.visible.reset();
    out.contacts.reset();
  }
  world.Release();
  ++frame_;
  return absl::OkStatus();
}

uint64_t EcsSimulation::StateHash() const {
  const auto& store = transforms_.store();
  uint64_t h = sim::HashBytes(&frame_, sizeof(frame_));
  h = sim::HashBytes(&digest_, sizeof(digest_), h);
  h = sim::HashBytes(&total_contacts_, sizeof(total_contacts_), h);
  const auto pos = store.column<Transforms::kPosition>();
  const auto rot = store.column<Transforms::kRotation>();
  const auto scl = store.column<Transforms::kScale>();
  h = sim::HashBytes(pos.data(), pos.size_bytes(), h);
  h = sim::HashBytes(rot.data(), rot.size_bytes(), h);
  h = sim::HashBytes(scl.data(), scl.size_bytes(), h);
  const auto rates = motion_.column<0>();
  h = sim::HashBytes(rates.data(), rates.size_bytes(), h);
  return h;
}

size_t EcsSimulation::WorkingSetBytes() const {
  const size_t n = transforms_.size();
  // Local TRS and parent, motion, the order, and the frame's world column.
  return n * (sizeof(Vec3) + sizeof(Quat) + sizeof(float) + sizeof(Entity) +
              2 * sizeof(float) + sizeof(uint32_t) + sizeof(int32_t) +
              sizeof(Mat4));
}

}  // namespace ecs

sim::ScenarioInfo EcsScenario() {
  sim::ScenarioInfo info;
  info.name = "ecs";
  info.description =
      "ECS: transform hierarchy (SoA, parent before child), spin, "
      "visibility and contact events; world matrices and query results on "
      "frame memory";
  info.allocation_heavy = false;
  info.default_size = ecs::EcsSimulation::kDefaultEntities;
  info.create = [] { return std::make_unique<ecs::EcsSimulation>(); };
  return info;
}

}  // namespace framealloc::integration
