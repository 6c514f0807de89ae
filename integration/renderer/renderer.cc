// Renderer building blocks (see renderer.h).
#include "integration/renderer/renderer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace framealloc::integration::render {
namespace {

Vec3 Sub(const Vec3& a, const Vec3& b) {
  return {a.x - b.x, a.y - b.y, a.z - b.z};
}
Vec3 Add(const Vec3& a, const Vec3& b) {
  return {a.x + b.x, a.y + b.y, a.z + b.z};
}
Vec3 Scale(const Vec3& a, float s) { return {a.x * s, a.y * s, a.z * s}; }
float Dot(const Vec3& a, const Vec3& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z;
}
Vec3 Cross(const Vec3& a, const Vec3& b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
float Length(const Vec3& a) { return std::sqrt(Dot(a, a)); }
Vec3 Normalize(const Vec3& a) { return Scale(a, 1.0f / Length(a)); }

Plane PlaneThrough(const Vec3& normal, const Vec3& point) {
  const Vec3 n = Normalize(normal);
  return Plane{n.x, n.y, n.z, -Dot(n, point)};
}

bool Finite(const Vec3& v) {
  return std::isfinite(v.x) && std::isfinite(v.y) && std::isfinite(v.z);
}

// Angles for the model matrices: a table, so a draw costs no sin/cos.
struct Rotations {
  std::array<float, 256> cos, sin;
  Rotations() {
    for (int i = 0; i < 256; ++i) {
      cos[i] = std::cos(i * 6.2831853f / 256);
      sin[i] = std::sin(i * 6.2831853f / 256);
    }
  }
};
const Rotations& RotationTable() {
  static const Rotations table;
  return table;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(Next() >> 40) * 0x1p-24f;
  }

 private:
  uint64_t state_;
};

}  // namespace

absl::Status Camera::Validate() const {
  if (!Finite(position) || !Finite(target) || !Finite(up)) {
    return absl::InvalidArgumentError(
        "Camera: position, target and up must be finite");
  }
  if (!(fov_y > 0 && fov_y < 3.1415926f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Camera.fov_y = ", fov_y, " must be in (0, pi)"));
  }
  if (!(aspect > 0) || !std::isfinite(aspect)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Camera.aspect = ", aspect, " must be > 0"));
  }
  if (!(near_plane > 0 && near_plane < far_plane) ||
      !std::isfinite(far_plane)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Camera.near_plane = ", near_plane, ", far_plane = ", far_plane,
        ": need 0 < near_plane < far_plane"));
  }
  const Vec3 f = Sub(target, position);
  if (Length(f) == 0) {
    return absl::InvalidArgumentError(
        "Camera.target equals Camera.position: no view direction");
  }
  if (Length(Cross(Normalize(f), up)) < 1e-6f) {
    return absl::InvalidArgumentError(
        "Camera.up is zero or parallel to the view direction");
  }
  return absl::OkStatus();
}

absl::StatusOr<Frustum> Frustum::FromCamera(const Camera& camera) {
  if (absl::Status s = camera.Validate(); !s.ok()) return s;
  Frustum fr;
  const Vec3 f = Normalize(Sub(camera.target, camera.position));
  const Vec3 r = Normalize(Cross(f, camera.up));
  const Vec3 u = Cross(r, f);
  const float ty = std::tan(camera.fov_y * 0.5f);
  const float tx = ty * camera.aspect;
  const Vec3& e = camera.position;
  fr.planes_[0] = PlaneThrough(Add(r, Scale(f, tx)), e);             // left
  fr.planes_[1] = PlaneThrough(Add(Scale(r, -1), Scale(f, tx)), e);  // right
  fr.planes_[2] = PlaneThrough(Add(u, Scale(f, ty)), e);             // bottom
  fr.planes_[3] = PlaneThrough(Add(Scale(u, -1), Scale(f, ty)), e);  // top
  fr.planes_[4] = PlaneThrough(f, Add(e, Scale(f, camera.near_plane)));
  fr.planes_[5] =
      PlaneThrough(Scale(f, -1), Add(e, Scale(f, camera.far_plane)));
  fr.eye_ = e;
  fr.forward_ = f;
  fr.near_ = camera.near_plane;
  fr.far_ = camera.far_plane;
  return fr;
}

namespace {

// Spheres per pass of the batched cull. A fixed trip count: -O2's
// vectorizer (the "very cheap" cost model) takes only loops it needs no
// scalar remainder for.
constexpr size_t kCullChunk = 256;

struct PlaneColumns {
  float nx[6], ny[6], nz[6], d[6];
};

// inside[i] = 1 if sphere i is on the inner side of all six planes, else
// 0, for i in [0, kCullChunk). `!(distance < -r)` is IntersectsSphere's
// test exactly (a NaN distance passes in both), and each distance is
// computed in the same order as Plane::Distance.
void CullChunk(const PlaneColumns& p, const float* x, const float* y,
               const float* z, const float* radius, uint32_t* inside) {
  for (size_t i = 0; i < kCullChunk; ++i) {
    const float cx = x[i], cy = y[i], cz = z[i], neg_r = -radius[i];
    auto passes = [&](int k) -> uint32_t {
      return !(p.nx[k] * cx + p.ny[k] * cy + p.nz[k] * cz + p.d[k] < neg_r);
    };
    inside[i] =
        passes(0) & passes(1) & passes(2) & passes(3) & passes(4) & passes(5);
  }
}

}  // namespace

size_t Frustum::CullSpheres(const float* x, const float* y, const float* z,
                            const float* radius, size_t n, uint32_t first,
                            uint32_t* out) const {
  PlaneColumns p;
  for (int k = 0; k < 6; ++k) {
    p.nx[k] = planes_[k].nx;
    p.ny[k] = planes_[k].ny;
    p.nz[k] = planes_[k].nz;
    p.d[k] = planes_[k].d;
  }
  size_t count = 0;
  uint32_t inside[kCullChunk];
  for (size_t base = 0; base < n; base += kCullChunk) {
    const size_t m = std::min(kCullChunk, n - base);
    if (m == kCullChunk) {
      CullChunk(p, x + base, y + base, z + base, radius + base, inside);
    } else {
      // The last, partial chunk: copied into full-sized columns (the
      // padding's answers are not used).
      float cx[kCullChunk] = {}, cy[kCullChunk] = {}, cz[kCullChunk] = {},
            cr[kCullChunk] = {};
      std::copy_n(x + base, m, cx);
      std::copy_n(y + base, m, cy);
      std::copy_n(z + base, m, cz);
      std::copy_n(radius + base, m, cr);
      CullChunk(p, cx, cy, cz, cr, inside);
    }
    // Branch-free compaction: every index is written, and only those
    // inside advance the count.
    for (size_t i = 0; i < m; ++i) {
      out[count] = first + static_cast<uint32_t>(base + i);
      count += inside[i];
    }
  }
  return count;
}

float Frustum::Depth01(const Vec3& c) const {
  const float d = (Dot(Sub(c, eye_), forward_) - near_) / (far_ - near_);
  return std::clamp(d, 0.0f, 1.0f);
}

absl::Status SceneObjects::ValidateColumns() const {
  const size_t n = x.size();
  const std::pair<const char*, size_t> columns[] = {
      {"y", y.size()},
      {"z", z.size()},
      {"radius", radius.size()},
      {"vx", vx.size()},
      {"vy", vy.size()},
      {"vz", vz.size()},
      {"material", material.size()},
      {"pass", pass.size()},
      {"uniform_floats", uniform_floats.size()},
      {"vertex_count", vertex_count.size()}};
  for (const auto& [name, size] : columns) {
    if (size != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("SceneObjects.", name, " has ", size,
                       " entries; SceneObjects.x has ", n));
    }
  }
  if (n > kMaxObjects) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SceneObjects: ", n, " objects; the sort key holds ", kMaxObjects));
  }
  return absl::OkStatus();
}

absl::Status SceneObjects::ValidateDrawInputs(size_t i) const {
  if (material[i] >= kMaxMaterials) {
    return absl::InvalidArgumentError(
        absl::StrCat("SceneObjects.material[", i, "] = ", material[i],
                     " must be < ", kMaxMaterials));
  }
  if (static_cast<unsigned>(pass[i]) >= unsigned{kPassCount}) {
    return absl::InvalidArgumentError(
        absl::StrCat("SceneObjects.pass[", i, "] = ", static_cast<int>(pass[i]),
                     " is not a pass"));
  }
  if (uniform_floats[i] < 16 || uniform_floats[i] > kMaxUniformFloats) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SceneObjects.uniform_floats[", i, "] = ", uniform_floats[i],
        " must be in [16, ", kMaxUniformFloats, "]"));
  }
  if (vertex_count[i] > kMaxVertices) {
    return absl::InvalidArgumentError(absl::StrCat("SceneObjects.vertex_count[",
                                                   i, "] = ", vertex_count[i],
                                                   " is above ", kMaxVertices));
  }
  return absl::OkStatus();
}

absl::Status SceneObjects::Validate() const {
  if (absl::Status s = ValidateColumns(); !s.ok()) return s;
  for (size_t i = 0; i < x.size(); ++i) {
    if (absl::Status s = ValidateDrawInputs(i); !s.ok()) return s;
    if (!(radius[i] >= 0) || !std::isfinite(radius[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("SceneObjects.radius[", i, "] = ", radius[i],
                       " must be finite and >= 0"));
    }
  }
  return absl::OkStatus();
}

void SceneObjects::Advance(size_t begin, size_t end, float dt, float extent,
                           float height) {
  for (size_t i = begin; i < end; ++i) {
    x[i] += vx[i] * dt;
    y[i] += vy[i] * dt;
    z[i] += vz[i] * dt;
    if (x[i] < -extent || x[i] > extent) vx[i] = -vx[i];
    if (y[i] < 0 || y[i] > height) vy[i] = -vy[i];
    if (z[i] < -extent || z[i] > extent) vz[i] = -vz[i];
  }
}

absl::StatusOr<SceneObjects> MakeScene(size_t n, uint64_t seed, float extent,
                                       float height) {
  if (n > kMaxObjects) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeScene: ", n, " objects is above the limit of ", kMaxObjects));
  }
  SceneObjects s;
  Rng rng(seed);
  for (size_t i = 0; i < n; ++i) {
    s.x.push_back(rng.Uniform(-extent, extent));
    s.y.push_back(rng.Uniform(0, height));
    s.z.push_back(rng.Uniform(-extent, extent));
    s.radius.push_back(rng.Uniform(0.3f, 2.0f));
    s.vx.push_back(rng.Uniform(-2, 2));
    s.vy.push_back(rng.Uniform(-0.5f, 0.5f));
    s.vz.push_back(rng.Uniform(-2, 2));
    s.material.push_back(static_cast<uint16_t>(rng.Next() % 200));
    s.pass.push_back(rng.Next() % 5 == 0 ? Pass::kTransparent : Pass::kOpaque);
    s.uniform_floats.push_back(static_cast<uint16_t>(16 + rng.Next() % 49));
    s.vertex_count.push_back(
        rng.Next() % 8 == 0 ? static_cast<uint16_t>(8 + rng.Next() % 25) : 0);
  }
  return s;
}

size_t FormatDrawLabel(uint32_t object, uint32_t material, Pass pass,
                       char* out) {
  char* p = out;
  auto put = [&p](const char* text) {
    while (*text != 0) *p++ = *text++;
  };
  auto number = [&p](uint32_t v) {
    char digits[10];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n > 0) *p++ = digits[--n];
  };
  put("draw ");
  number(object);
  put(" mat ");
  number(material);
  put(pass == Pass::kOpaque ? " opaque" : " transparent");
  return static_cast<size_t>(p - out);
}

void WriteUniforms(const SceneObjects& scene, uint32_t object, uint64_t frame,
                   std::byte* out, size_t floats) {
  const Rotations& rot = RotationTable();
  const size_t a = (frame + object) & 255;
  const float c = rot.cos[a], s = rot.sin[a], k = scene.radius[object];
  const float model[16] = {c * k,
                           0,
                           -s * k,
                           0,
                           0,
                           k,
                           0,
                           0,
                           s * k,
                           0,
                           c * k,
                           0,
                           scene.x[object],
                           scene.y[object],
                           scene.z[object],
                           1};
  std::memcpy(out, model, sizeof(model));
  const float base =
      scene.material[object] * 0.001f + static_cast<float>(frame & 63) * 0.01f;
  float params[SceneObjects::kMaxUniformFloats];
  for (size_t i = 16; i < floats; ++i) {
    params[i - 16] = base + static_cast<float>(i) * 0.5f;
  }
  std::memcpy(out + sizeof(model), params, (floats - 16) * sizeof(float));
}

void WriteVertices(const SceneObjects& scene, uint32_t object, uint64_t frame,
                   Vertex* out, size_t count) {
  const Rotations& rot = RotationTable();
  const float r = scene.radius[object];
  const float wobble = 1.0f + 0.05f * rot.sin[(frame * 8) & 255];
  for (size_t i = 0; i < count; ++i) {
    const size_t a = (i * 256 / count) & 255;
    const float nx = rot.cos[a], nz = rot.sin[a];
    out[i] = Vertex{scene.x[object] + nx * r * wobble,
                    scene.y[object],
                    scene.z[object] + nz * r * wobble,
                    nx,
                    0,
                    nz,
                    static_cast<float>(i) / static_cast<float>(count),
                    0};
  }
}

uint64_t ChecksumDraw(uint64_t key, const std::byte* uniforms,
                      size_t uniform_bytes, const Vertex* vertices,
                      size_t vertex_count) {
  // Sum and xor of 64-bit words (a device reading the data, not a slow
  // hash). The loop waits on memory: a form that -O2 vectorizes (four
  // words at a time into four lanes) measured no faster in the render
  // scenario.
  auto fold = [](const std::byte* p, size_t bytes) {
    uint64_t sum = bytes, x = 0;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      sum += w;
      x ^= w;
    }
    if (i < bytes) {
      uint64_t w = 0;
      std::memcpy(&w, p + i, bytes - i);
      sum += w;
      x ^= w;
    }
    return sum ^ ((x << 17) | (x >> 47));
  };
  uint64_t h = key * 0x9e3779b97f4a7c15ull;
  h ^= fold(uniforms, uniform_bytes) + 0x632be59bd9b4e019ull + (h << 6) +
       (h >> 2);
  h ^= fold(reinterpret_cast<const std::byte*>(vertices),
            vertex_count * sizeof(Vertex)) +
       0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

}  // namespace framealloc::integration::render
