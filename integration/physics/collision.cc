// Sphere contact generation (see collision.h).
#include "integration/physics/collision.h"

#include <cmath>

namespace framealloc {
namespace integration {

bool CollideSpheres(Vec3 ca, float ra, Vec3 cb, float rb, float margin,
                    SphereContact* out) {
  const Vec3 delta = cb - ca;
  const float dist2 = Dot(delta, delta);
  const float reach = ra + rb + margin;
  if (dist2 > reach * reach) return false;
  const float dist = std::sqrt(dist2);
  Vec3 normal{0.0f, 1.0f, 0.0f};
  if (dist > 1e-6f) normal = delta * (1.0f / dist);
  out->normal = normal;
  out->point = ca + normal * ra;
  out->separation = dist - (ra + rb);
  return true;
}

bool CollideSpherePlane(Vec3 c, float r, Vec3 normal, float offset,
                        float margin, SphereContact* out) {
  const float separation = Dot(c, normal) - offset - r;
  if (separation > margin) return false;
  out->normal = normal;
  out->point = c - normal * (r + separation);  // On the plane.
  out->separation = separation;
  return true;
}

}  // namespace integration
}  // namespace framealloc
