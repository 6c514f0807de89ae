// Renderer building blocks: cameras and frustum culling, draw sort keys, the
// scene's objects (SoA) and draw commands with variable-size payloads.
//
// For: integration/renderer's FrameRenderer (frame_renderer.h) and its
// tests. A Camera gives a Frustum of six planes; IntersectsSphere culls an
// object's bounding sphere. MakeSortKey packs pass, material, depth and
// object id into 64 bits so that one integer sort orders a frame's draws:
// opaque draws by material then front to back, transparent draws back to
// front, ties impossible (the object id is in the key). DrawCommand<Mem> is
// one draw with its own uniform payload and, for dynamic objects, its own
// vertex staging data, in containers of the memory policy Mem (heap or
// frame arena, integration/ecs/frame_memory.h).
// Not for: talking to a GPU (there is none here: the "GPU" is a consumer
// that checksums what was submitted), or lighting and materials.
//
// Thread safety: all types are plain values; const functions may run
// concurrently.
// Errors: Camera::Validate and SceneObjects::Validate return InvalidArgument
// naming the field; Frustum::FromCamera passes the camera's error on.
//
// Example:
//   Camera cam;                       // at the origin looking down -z
//   auto frustum = Frustum::FromCamera(cam);
//   if (frustum->IntersectsSphere({0, 0, -10}, 1)) {
//     uint64_t key = MakeSortKey(Pass::kOpaque, 3, frustum->Depth01(
//                                    {0, 0, -10}), 17);
//   }
#ifndef INTEGRATION_RENDERER_RENDERER_H_
#define INTEGRATION_RENDERER_RENDERER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace framealloc::integration::render {

struct Vec3 {
  float x = 0, y = 0, z = 0;
};

// Points p with n.p + d >= 0 are inside.
struct Plane {
  float nx = 0, ny = 0, nz = 0, d = 0;
  float Distance(const Vec3& p) const {
    return nx * p.x + ny * p.y + nz * p.z + d;
  }
};

struct Camera {
  Vec3 position;
  Vec3 target{0, 0, -1};  // The point looked at.
  Vec3 up{0, 1, 0};
  float fov_y = 1.0471976f;  // Radians (60 degrees).
  float aspect = 16.0f / 9.0f;
  float near_plane = 0.5f;
  float far_plane = 200.0f;

  // InvalidArgument naming the field: fov_y in (0, pi), aspect > 0,
  // 0 < near_plane < far_plane, target != position, up not parallel to the
  // view direction, every value finite.
  absl::Status Validate() const;
};

class Frustum {
 public:
  static absl::StatusOr<Frustum> FromCamera(const Camera& camera);

  // The sphere is at least partly inside every plane (conservative: a
  // sphere outside near a corner may pass, as in every engine).
  bool IntersectsSphere(const Vec3& c, float radius) const {
    for (const Plane& p : planes_) {
      if (p.Distance(c) < -radius) return false;
    }
    return true;
  }
  // The batched form of IntersectsSphere, with the same answer for every
  // sphere (NaN included): tests spheres i in [0, n), centres (x[i], y[i],
  // z[i]) and radii radius[i], and writes first + i for each one that
  // intersects to out, in order. Returns how many it wrote. `out` must have
  // room for n entries (every slot may be written; those past the returned
  // count hold nothing of use). All six planes are tested for every sphere
  // with no branch per plane, so the loop vectorizes and a scene in which
  // a quarter of the objects is visible costs no mispredicted branches
  // (the per-sphere loop's early exit is taken at an unpredictable plane).
  size_t CullSpheres(const float* x, const float* y, const float* z,
                     const float* radius, size_t n, uint32_t first,
                     uint32_t* out) const;
  // Distance along the view direction mapped to [0, 1] (near..far),
  // clamped.
  float Depth01(const Vec3& c) const;
  const Plane& plane(int i) const { return planes_[i]; }
  const Vec3& eye() const { return eye_; }
  const Vec3& forward() const { return forward_; }

 private:
  Plane planes_[6];  // left, right, bottom, top, near, far
  Vec3 eye_, forward_;
  float near_ = 0, far_ = 0;
};

// The render pass of a draw: the sort key's top bit, so every opaque draw
// comes before every transparent one.
enum class Pass : uint8_t { kOpaque = 0, kTransparent = 1 };
inline constexpr int kPassCount = 2;

inline constexpr uint32_t kMaxMaterials = 1u << 12;
inline constexpr uint32_t kMaxObjects = 1u << 24;
inline constexpr uint32_t kDepthBits = 26;

// The sort key: bits 63-62 pass; opaque: 61-50 material, 49-24 depth (near
// first); transparent: 61-36 inverted depth (far first), 35-24 material;
// 23-0 the object id. REQUIRES: material < kMaxMaterials, object <
// kMaxObjects, depth01 in [0, 1] (SceneObjects::Validate checks the first
// two for a scene).
inline uint64_t MakeSortKey(Pass pass, uint32_t material, float depth01,
                            uint32_t object) {
  const uint64_t depth_max = (uint64_t{1} << kDepthBits) - 1;
  uint64_t depth =
      static_cast<uint64_t>(depth01 * static_cast<float>(depth_max));
  if (depth > depth_max) depth = depth_max;
  const uint64_t p = static_cast<uint64_t>(pass) << 62;
  const uint64_t m = material & (kMaxMaterials - 1);
  const uint64_t id = object & (kMaxObjects - 1);
  if (pass == Pass::kOpaque) return p | (m << 50) | (depth << 24) | id;
  return p | ((depth_max - depth) << 36) | (m << 24) | id;
}

// One vertex of dynamic geometry streamed every frame.
struct Vertex {
  float px, py, pz, nx, ny, nz, u, v;
};

// The scene's objects, one column per field (persistent, on the heap).
struct SceneObjects {
  std::vector<float> x, y, z;      // Bounding sphere centre.
  std::vector<float> radius;       // Bounding sphere radius.
  std::vector<float> vx, vy, vz;   // Motion per second.
  std::vector<uint16_t> material;  // < kMaxMaterials.
  std::vector<Pass> pass;
  // Floats of per-draw uniform data: a 4x4 model matrix (16) plus the
  // material's parameters; in [16, kMaxUniformFloats].
  std::vector<uint16_t> uniform_floats;
  // Dynamic vertices streamed per draw; 0 for static meshes.
  std::vector<uint16_t> vertex_count;

  static constexpr uint16_t kMaxUniformFloats = 256;
  static constexpr uint16_t kMaxVertices = 1024;

  size_t size() const { return x.size(); }
  // InvalidArgument naming the column and the first bad object: columns of
  // unequal length, more than kMaxObjects objects, a material >=
  // kMaxMaterials, a pass out of range, uniform_floats outside [16,
  // kMaxUniformFloats], vertex_count > kMaxVertices, a negative or
  // non-finite radius. O(n): once per scene, not per frame.
  absl::Status Validate() const;
  // The O(1) part of Validate: InvalidArgument naming the first column whose
  // length is not x's, or more than kMaxObjects objects.
  absl::Status ValidateColumns() const;
  // Whether object i's draw inputs are in range: material < kMaxMaterials,
  // a pass, uniform_floats in [16, kMaxUniformFloats], vertex_count <=
  // kMaxVertices. A few compares: FrameRenderer::Record checks every
  // visible object with it before building its draw. REQUIRES: i < size(),
  // ValidateColumns() is OK.
  bool DrawInputsValid(size_t i) const {
    // uniform_floats - 16 wraps below 16, so one compare checks both ends.
    return material[i] < kMaxMaterials &&
           static_cast<unsigned>(pass[i]) < unsigned{kPassCount} &&
           static_cast<unsigned>(uniform_floats[i]) - 16u <=
               unsigned{kMaxUniformFloats} - 16u &&
           vertex_count[i] <= kMaxVertices;
  }
  // InvalidArgument naming object i's first bad draw input (the field, the
  // object and the value, as Validate names it); OK when DrawInputsValid(i).
  // REQUIRES: as DrawInputsValid.
  absl::Status ValidateDrawInputs(size_t i) const;
  // Moves every object by its velocity for dt seconds, bouncing off the box
  // [-extent, extent] x [0, height] x [-extent, extent]; objects [begin, end).
  void Advance(size_t begin, size_t end, float dt, float extent, float height);
};

// A deterministic scene of n objects from `seed`, spread over the box of
// Advance: 80% opaque, a quarter of the objects dynamic (streamed vertices).
// InvalidArgument if n > kMaxObjects.
absl::StatusOr<SceneObjects> MakeScene(size_t n, uint64_t seed, float extent,
                                       float height);

// What the frame renderer sorts: the key and the command it orders.
template <typename Command>
struct SortItem {
  uint64_t key;
  const Command* command;
  friend bool operator<(const SortItem& a, const SortItem& b) {
    return a.key < b.key;
  }
};

// One draw: key, what to draw, and its per-draw data in containers of the
// memory policy (std::vector on the heap, or vectors in a frame arena).
template <typename Mem>
struct DrawCommand {
  // `label`: the draw's debug label (GPU debug markers), `n` chars.
  DrawCommand(const Mem& mem, const char* label_chars, size_t n)
      : label(mem.MakeString(label_chars, n)),
        uniforms(mem.template MakeBuffer<std::byte>()),
        vertices(mem.template MakeBuffer<Vertex>()) {}
  uint64_t key = 0;
  uint32_t object = 0;
  uint16_t material = 0;
  Pass pass = Pass::kOpaque;
  typename Mem::String label;
  // Sized, then written in full (Mem::Buffer: not zero-filled first on
  // frame memory).
  typename Mem::template Buffer<std::byte> uniforms;
  typename Mem::template Buffer<Vertex> vertices;
};

// Longest label FormatDrawLabel writes.
inline constexpr size_t kMaxLabel = 48;
// Writes "draw <object> mat <material> <pass>" to `out` (at least kMaxLabel
// chars) and returns its length: the debug label engines attach to a draw.
size_t FormatDrawLabel(uint32_t object, uint32_t material, Pass pass,
                       char* out);

// Fills a draw's uniform payload: the object's model matrix (translation
// and uniform scale, rotated by frame time) then material parameters.
void WriteUniforms(const SceneObjects& scene, uint32_t object, uint64_t frame,
                   std::byte* out, size_t floats);
// Fills a dynamic object's vertices: a ring that wobbles with the frame.
void WriteVertices(const SceneObjects& scene, uint32_t object, uint64_t frame,
                   Vertex* out, size_t count);

// The "GPU": a checksum of one draw as the device would read it: key,
// uniforms and vertices, 64-bit words summed and mixed.
uint64_t ChecksumDraw(uint64_t key, const std::byte* uniforms,
                      size_t uniform_bytes, const Vertex* vertices,
                      size_t vertex_count);

}  // namespace framealloc::integration::render

#endif  // INTEGRATION_RENDERER_RENDERER_H_
