// Rigid alignment by Horn's unit-quaternion method (closed form, always a proper rotation):
// the optimal rotation is the eigenvector of the largest eigenvalue of a symmetric 4x4 matrix
// built from the weighted cross-covariance. Equivalent to Kabsch/Umeyama (no scale), but needs
// only a 4x4 symmetric eigen-solver instead of an SVD with a reflection fix.
#include "kabsch.h"

#include <cmath>

#include "math3.h"

namespace transpose {
namespace {

template <typename IndexFn>
bool align_impl(const double* src, const double* dst, const double* weights, int n, IndexFn index,
                Pose& pose) {
  if (n < 3) return false;
  double wsum = 0.0, cs[3] = {0, 0, 0}, cd[3] = {0, 0, 0};
  for (int k = 0; k < n; ++k) {
    const int i = index(k);
    const double w = weights ? weights[i] : 1.0;
    wsum += w;
    for (int j = 0; j < 3; ++j) {
      cs[j] += w * src[3 * i + j];
      cd[j] += w * dst[3 * i + j];
    }
  }
  if (!(wsum > 0.0)) return false;
  for (int j = 0; j < 3; ++j) {
    cs[j] /= wsum;
    cd[j] /= wsum;
  }
  // S_ab = sum_k w (src_a - cs_a)(dst_b - cd_b); scatter of src for the collinearity check.
  double S[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0}, C[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  for (int k = 0; k < n; ++k) {
    const int i = index(k);
    const double w = weights ? weights[i] : 1.0;
    const double a[3] = {src[3 * i] - cs[0], src[3 * i + 1] - cs[1], src[3 * i + 2] - cs[2]};
    const double b[3] = {dst[3 * i] - cd[0], dst[3 * i + 1] - cd[1], dst[3 * i + 2] - cd[2]};
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) {
        S[3 * r + c] += w * a[r] * b[c];
        C[3 * r + c] += w * a[r] * a[c];
      }
  }
  // Collinear sources: the second-largest scatter eigenvalue vanishes.
  double ev[3], V3[9];
  jacobi_eigen(C, 3, ev, V3);
  double e_max = std::fmax(ev[0], std::fmax(ev[1], ev[2]));
  double e_min = std::fmin(ev[0], std::fmin(ev[1], ev[2]));
  double e_mid = ev[0] + ev[1] + ev[2] - e_max - e_min;
  if (!(e_max > 0.0) || !(e_mid > 1e-12 * e_max)) return false;

  const double Sxx = S[0], Sxy = S[1], Sxz = S[2], Syx = S[3], Syy = S[4], Syz = S[5], Szx = S[6],
               Szy = S[7], Szz = S[8];
  double N[16] = {Sxx + Syy + Szz, Syz - Szy, Szx - Sxz, Sxy - Syx,
                  Syz - Szy, Sxx - Syy - Szz, Sxy + Syx, Szx + Sxz,
                  Szx - Sxz, Sxy + Syx, -Sxx + Syy - Szz, Syz + Szy,
                  Sxy - Syx, Szx + Sxz, Syz + Szy, -Sxx - Syy + Szz};
  double evals[4], V[16];
  jacobi_eigen(N, 4, evals, V);
  int best = 0;
  for (int k = 1; k < 4; ++k)
    if (evals[k] > evals[best]) best = k;
  double qw = V[0 * 4 + best], qx = V[1 * 4 + best], qy = V[2 * 4 + best], qz = V[3 * 4 + best];
  const double qn = std::sqrt(qw * qw + qx * qx + qy * qy + qz * qz);
  if (!(qn > 0.0)) return false;
  qw /= qn;
  qx /= qn;
  qy /= qn;
  qz /= qn;
  double* R = pose.R;
  R[0] = 1 - 2 * (qy * qy + qz * qz);
  R[1] = 2 * (qx * qy - qz * qw);
  R[2] = 2 * (qx * qz + qy * qw);
  R[3] = 2 * (qx * qy + qz * qw);
  R[4] = 1 - 2 * (qx * qx + qz * qz);
  R[5] = 2 * (qy * qz - qx * qw);
  R[6] = 2 * (qx * qz - qy * qw);
  R[7] = 2 * (qy * qz + qx * qw);
  R[8] = 1 - 2 * (qx * qx + qy * qy);
  double Rc[3];
  matvec3(R, cs, Rc);
  for (int j = 0; j < 3; ++j) pose.t[j] = cd[j] - Rc[j];
  return true;
}

}  // namespace

bool rigid_align(const double* src, const double* dst, const double* weights, int n, Pose& pose) {
  return align_impl(src, dst, weights, n, [](int k) { return k; }, pose);
}

bool rigid_align_indexed(const double* src, const double* dst, const double* weights, const int* index,
                         int n, Pose& pose) {
  return align_impl(src, dst, weights, n, [index](int k) { return index[k]; }, pose);
}

}  // namespace transpose
