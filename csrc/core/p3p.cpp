// Lambda Twist P3P, written from the paper (Persson and Nordberg, "Lambda Twist: An Accurate Fast
// Robust Perspective Three Point (P3P) Solver", ECCV 2018):
//   1. the depths L = (l1, l2, l3) satisfy L^T M_ij L = a_ij (a_ij = squared world distances);
//   2. two homogeneous combinations D1, D2 of these quadrics vanish on the solution; a root gamma of
//      the cubic det(D1 + gamma D2) = 0 gives a degenerate conic D0 that splits into two planes
//      through the origin;
//   3. each plane, intersected with one more quadric, gives a quadratic in the depth ratio;
//   4. the depths are polished by Gauss-Newton on the three distance equations and the pose
//      follows from the two triangles.
#include "p3p.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "math3.h"

namespace transpose {
namespace {

// Real cube root to ~1e-16 relative without libm's cbrt, which goes through frexp and scalbn and
// took ~10 % of the solver: a first guess from the exponent bits (a few % off, as fdlibm's), then
// Halley steps, each cubing the relative error (3e-2 -> 3e-5 -> 3e-14 -> rounding).
double cube_root(double a) {
  const double m = std::fabs(a);
  // Far from 1 (and for 0, inf, NaN) y^3 would leave the normal range: libm's cbrt.
  if (!(m > 1e-250 && m < 1e250)) return std::cbrt(a);
  uint64_t bits;
  std::memcpy(&bits, &m, sizeof bits);
  bits = ((bits >> 32) / 3 + 715094163u) << 32;  // fdlibm's first guess: exponent / 3, plus a bias
  double y;
  std::memcpy(&y, &bits, sizeof y);
  for (int it = 0; it < 3; ++it) {
    const double y3 = y * y * y;
    y *= (y3 + 2.0 * m) / (2.0 * y3 + m);
  }
  return std::copysign(y, a);
}

// A real root of x^3 + b x^2 + c x + d (the largest one when there are three), Newton-polished.
double cubic_real_root(double b, double c, double d) {
  const double p = c - b * b / 3.0;
  const double q = 2.0 * b * b * b / 27.0 - b * c / 3.0 + d;
  const double disc = q * q / 4.0 + p * p * p / 27.0;
  double y;
  if (disc >= 0.0) {
    // Cardano, y = A + B with A^3, B^3 the roots of z^2 + q z - p^3 / 27: A from the root of larger
    // magnitude (no cancellation), B = -p / (3 A) from A B = -p / 3; one cube root instead of two.
    const double s = std::sqrt(disc);
    const double A = cube_root(-0.5 * q - std::copysign(s, q));
    y = A != 0.0 ? A - p / (3.0 * A) : 0.0;
  } else {  // three real roots: trigonometric form, largest root
    const double r = std::sqrt(-p / 3.0);
    double arg = -q / (2.0 * r * r * r);
    arg = std::fmax(-1.0, std::fmin(1.0, arg));
    y = 2.0 * r * std::cos(std::acos(arg) / 3.0);
  }
  double x = y - b / 3.0;
  for (int it = 0; it < 3; ++it) {
    const double f = ((x + b) * x + c) * x + d;
    const double df = (3.0 * x + 2.0 * b) * x + c;
    if (df == 0.0) break;
    const double step = f / df;
    x -= step;
    if (std::fabs(step) <= 1e-15 * std::fabs(x)) break;
  }
  return x;
}

// Column k of a row-major symmetric 3x3 equals its row k.
inline double det_rows(const double* a, const double* b, const double* c) {
  double bc[3];
  cross3(b, c, bc);
  return dot3(a, bc);
}

// The largest cross product of two rows of a symmetric 3x3 matrix: its null direction when the
// matrix has rank 2, not normalised; returns its squared length (0 when every pair is parallel).
double null_vector(const double* A, double* out) {
  double c[3][3];
  cross3(A, A + 3, c[0]);
  cross3(A, A + 6, c[1]);
  cross3(A + 3, A + 6, c[2]);
  int best = 0;
  double bn = dot3(c[0], c[0]);
  for (int k = 1; k < 3; ++k) {
    const double n = dot3(c[k], c[k]);
    if (n > bn) {
      bn = n;
      best = k;
    }
  }
  for (int k = 0; k < 3; ++k) out[k] = c[best][k];
  return bn > 0.0 ? bn : 0.0;
}

}  // namespace

int p3p_prepare(const double* bearings, const double* points, P3PSetup& st) {
  st.count = 0;
  double (&y)[3][3] = st.y;
  for (int k = 0; k < 3; ++k) {
    const double n = norm3(bearings + 3 * k);
    if (!(n > 0.0) || !std::isfinite(n)) return 0;
    for (int j = 0; j < 3; ++j) y[k][j] = bearings[3 * k + j] / n;
  }
  const double* X1 = points;
  const double* X2 = points + 3;
  const double* X3 = points + 6;
  std::copy(X1, X1 + 3, st.X1);
  double d12[3], d13[3], d23[3];
  sub3(X1, X2, d12);
  sub3(X1, X3, d13);
  sub3(X2, X3, d23);
  const double a12 = dot3(d12, d12), a13 = dot3(d13, d13), a23 = dot3(d23, d23);
  st.a12 = a12;
  st.a13 = a13;
  st.a23 = a23;
  double nrm[3];
  cross3(d12, d13, nrm);
  // Collinear (or coincident) world points have no unique pose.
  if (!(dot3(nrm, nrm) > 1e-20 * (a12 * a13 + 1e-300))) return 0;
  const double b12 = dot3(y[0], y[1]), b13 = dot3(y[0], y[2]), b23 = dot3(y[1], y[2]);
  st.b12 = b12;
  st.b13 = b13;
  st.b23 = b23;

  // D1 = a23 M12 - a12 M23, D2 = a23 M13 - a13 M23 (row-major symmetric).
  const double D1[9] = {a23, -a23 * b12, 0.0,
                        -a23 * b12, a23 - a12, a12 * b23,
                        0.0, a12 * b23, -a12};
  const double D2[9] = {a23, 0.0, -a23 * b13,
                        0.0, -a13, a13 * b23,
                        -a23 * b13, a13 * b23, a23 - a13};
  // det(D1 + g D2) = c3 g^3 + c2 g^2 + c1 g + c0, expanded by multilinearity in the rows.
  const double* p0 = D1;
  const double* p1 = D1 + 3;
  const double* p2 = D1 + 6;
  const double* q0 = D2;
  const double* q1 = D2 + 3;
  const double* q2 = D2 + 6;
  const double c3 = det_rows(q0, q1, q2);
  const double c2 = det_rows(p0, q1, q2) + det_rows(q0, p1, q2) + det_rows(q0, q1, p2);
  const double c1 = det_rows(q0, p1, p2) + det_rows(p0, q1, p2) + det_rows(p0, p1, q2);
  const double c0 = det_rows(p0, p1, p2);
  const double cmax =
      fmax_inline(fmax_inline(std::fabs(c0), std::fabs(c1)), fmax_inline(std::fabs(c2), std::fabs(c3)));
  if (!(cmax > 0.0)) return 0;

  double D0[9];
  bool use_d1;  // which homogeneous quadric to intersect with the planes (the better-scaled one)
  if (std::fabs(c3) <= 1e-13 * cmax) {
    // Root at infinity: D2 itself is degenerate.
    for (int k = 0; k < 9; ++k) D0[k] = D2[k];
    use_d1 = true;
  } else {
    const double g = cubic_real_root(c2 / c3, c1 / c3, c0 / c3);
    for (int k = 0; k < 9; ++k) D0[k] = D1[k] + g * D2[k];
    use_d1 = std::fabs(g) > 1.0;
  }
  const double* Dq = use_d1 ? D1 : D2;

  // Eigen-decomposition of the rank-2 D0: null vector e3, eigenpairs (s1, e1), (s2, e2), the
  // vectors unnormalised (lengths r3, r1).
  double e3[3];
  const double r3_squared = null_vector(D0, e3);
  if (!(r3_squared > 0.0)) return 0;
  const double tr = D0[0] + D0[4] + D0[8];
  const double minors = (D0[0] * D0[4] - D0[1] * D0[1]) + (D0[0] * D0[8] - D0[2] * D0[2]) +
                        (D0[4] * D0[8] - D0[5] * D0[5]);
  const double disc = std::sqrt(fmax_inline(0.0, tr * tr - 4.0 * minors));
  double s1 = 0.5 * (tr + disc), s2 = 0.5 * (tr - disc);
  if (std::fabs(s2) > std::fabs(s1)) std::swap(s1, s2);
  if (!(std::fabs(s1) > 0.0)) return 0;
  double A[9];
  for (int k = 0; k < 9; ++k) A[k] = D0[k];
  A[0] -= s1;
  A[4] -= s1;
  A[8] -= s1;
  double e1[3], e2[3];
  // e1 spans the null space of D0 - s1 I, i.e. the cross of its rows (which also contain e3's
  // orthogonal complement).
  if (!(null_vector(A, e1) > 0.0)) return 0;
  // e2 = e3 x e1 has length r3 r1. The planes below need only the direction of the unit-vector
  // combination e1 / r1 -+ s e2 / (r3 r1), i.e. of r3 e1 -+ s e2: one square root, no division.
  cross3(e3, e1, e2);
  const double r3 = std::sqrt(r3_squared);
  const double ratio = -s2 / s1;
  const double s = ratio > 0.0 ? std::sqrt(ratio) : 0.0;

  // The world triangle's basis X = [d12 d13 nrm], inverted once for every root below.
  const double Xm[9] = {d12[0], d13[0], nrm[0], d12[1], d13[1], nrm[1], d12[2], d13[2], nrm[2]};
  if (!inv3(Xm, st.Xi)) return 0;

  const int nsigns = s > 0.0 ? 2 : 1;
  for (int si = 0; si < nsigns; ++si) {
    const double sgn = si == 0 ? 1.0 : -1.0;
    double n[3];
    for (int k = 0; k < 3; ++k) n[k] = r3 * e1[k] - sgn * s * e2[k];
    // Eliminate the depth with the largest coefficient: l_k = w_i l_i + w_j l_j.
    int kk = 0;
    if (std::fabs(n[1]) > std::fabs(n[kk])) kk = 1;
    if (std::fabs(n[2]) > std::fabs(n[kk])) kk = 2;
    if (!(std::fabs(n[kk]) > 0.0)) continue;
    const int ii = (kk + 1) % 3, jj = (kk + 2) % 3;
    // Basis of the plane: L = l_i * bi + l_j * bj.
    double bi[3] = {0, 0, 0}, bj[3] = {0, 0, 0};
    bi[ii] = 1.0;
    bi[kk] = -n[ii] / n[kk];
    bj[jj] = 1.0;
    bj[kk] = -n[jj] / n[kk];
    double Dbi[3], Dbj[3];
    matvec3(Dq, bi, Dbi);
    matvec3(Dq, bj, Dbj);
    const double qa = dot3(bi, Dbi), qb = 2.0 * dot3(bi, Dbj), qc = dot3(bj, Dbj);
    // qa tau^2 + qb tau + qc = 0 with tau = l_i / l_j.
    double taus[2];
    int ntau = 0;
    if (std::fabs(qa) <= 1e-14 * (std::fabs(qb) + std::fabs(qc))) {
      if (std::fabs(qb) > 0.0) taus[ntau++] = -qc / qb;
    } else {
      const double dd = qb * qb - 4.0 * qa * qc;
      if (dd < 0.0) continue;
      const double sq = std::sqrt(dd);
      // Numerically stable pair of roots.
      const double qq = -0.5 * (qb + (qb >= 0.0 ? sq : -sq));
      taus[ntau++] = qq / qa;
      if (qq != 0.0) taus[ntau++] = qc / qq;
    }
    for (int ti = 0; ti < ntau; ++ti) {
      const double tau = taus[ti];
      if (!(tau > 0.0) || !std::isfinite(tau)) continue;
      double L[3];
      for (int k = 0; k < 3; ++k) L[k] = tau * bi[k] + bj[k];
      // Scale from the largest of the three distance equations.
      const double q12 = L[0] * L[0] + L[1] * L[1] - 2.0 * b12 * L[0] * L[1];
      const double q13 = L[0] * L[0] + L[2] * L[2] - 2.0 * b13 * L[0] * L[2];
      const double q23 = L[1] * L[1] + L[2] * L[2] - 2.0 * b23 * L[1] * L[2];
      double num = a23, den = q23;
      if (a12 > num) { num = a12; den = q12; }
      if (a13 > num) { num = a13; den = q13; }
      if (!(den > 0.0)) continue;
      const double mu = std::sqrt(num / den);
      for (int k = 0; k < 3; ++k) L[k] *= mu;
      if (!(L[0] > 0.0 && L[1] > 0.0 && L[2] > 0.0)) continue;
      std::copy(L, L + 3, st.depths[st.count++]);
    }
  }
  return st.count;
}

void p3p_camera_point(const P3PSetup& st, int c, const double* X, double* out) {
  const double* L = st.depths[c];
  double P1[3], u12[3], u13[3], ucr[3];
  for (int k = 0; k < 3; ++k) {
    P1[k] = L[0] * st.y[0][k];
    u12[k] = P1[k] - L[1] * st.y[1][k];
    u13[k] = P1[k] - L[2] * st.y[2][k];
  }
  cross3(u12, u13, ucr);
  // R (X - X1) = Y Xi (X - X1), with Y = [u12 u13 ucr] as in p3p_pose below.
  double d[3], w[3];
  sub3(X, st.X1, d);
  matvec3(st.Xi, d, w);
  for (int k = 0; k < 3; ++k) out[k] = P1[k] + u12[k] * w[0] + u13[k] * w[1] + ucr[k] * w[2];
}

bool p3p_solution(const P3PSetup& st, int c, Pose& pose) {
  const double a12 = st.a12, a13 = st.a13, a23 = st.a23, b12 = st.b12, b13 = st.b13, b23 = st.b23;
  double L[3] = {st.depths[c][0], st.depths[c][1], st.depths[c][2]};
  // Gauss-Newton on f(L) = (|l1 y1 - l2 y2|^2 - a12, ... ) for full double precision.
  for (int it = 0; it < 5; ++it) {
    const double f0 = L[0] * L[0] + L[1] * L[1] - 2.0 * b12 * L[0] * L[1] - a12;
    const double f1 = L[0] * L[0] + L[2] * L[2] - 2.0 * b13 * L[0] * L[2] - a13;
    const double f2 = L[1] * L[1] + L[2] * L[2] - 2.0 * b23 * L[1] * L[2] - a23;
    if (std::fabs(f0) + std::fabs(f1) + std::fabs(f2) < 1e-15 * (a12 + a13 + a23)) break;
    const double J[9] = {2.0 * (L[0] - b12 * L[1]), 2.0 * (L[1] - b12 * L[0]), 0.0,
                         2.0 * (L[0] - b13 * L[2]), 0.0, 2.0 * (L[2] - b13 * L[0]),
                         0.0, 2.0 * (L[1] - b23 * L[2]), 2.0 * (L[2] - b23 * L[1])};
    double Ji[9];
    if (!inv3(J, Ji)) break;
    const double f[3] = {f0, f1, f2};
    double dl[3];
    matvec3(Ji, f, dl);
    for (int k = 0; k < 3; ++k) L[k] -= dl[k];
  }
  if (!(L[0] > 0.0 && L[1] > 0.0 && L[2] > 0.0)) return false;
  {
    // A spurious root (e.g. from the plane meeting the wrong quadric) leaves the distance
    // equations unsatisfied and would give a sheared "rotation": reject it.
    const double f0 = L[0] * L[0] + L[1] * L[1] - 2.0 * b12 * L[0] * L[1] - a12;
    const double f1 = L[0] * L[0] + L[2] * L[2] - 2.0 * b13 * L[0] * L[2] - a13;
    const double f2 = L[1] * L[1] + L[2] * L[2] - 2.0 * b23 * L[1] * L[2] - a23;
    const double scale = fmax_inline(a12, fmax_inline(a13, a23));
    if (!(fmax_inline(std::fabs(f0), fmax_inline(std::fabs(f1), std::fabs(f2))) <= 1e-9 * scale)) return false;
  }

  // Pose from the camera-frame triangle P_k = l_k y_k and the world triangle X_k.
  double P1[3], P2[3], P3[3];
  for (int k = 0; k < 3; ++k) {
    P1[k] = L[0] * st.y[0][k];
    P2[k] = L[1] * st.y[1][k];
    P3[k] = L[2] * st.y[2][k];
  }
  double u12[3], u13[3], ucr[3];
  sub3(P1, P2, u12);
  sub3(P1, P3, u13);
  cross3(u12, u13, ucr);
  // Columns: Y = [u12 u13 ucr], X = [d12 d13 nrm]; R = Y X^-1.
  const double Y[9] = {u12[0], u13[0], ucr[0], u12[1], u13[1], ucr[1], u12[2], u13[2], ucr[2]};
  matmul3(Y, st.Xi, pose.R);
  double RX1[3];
  matvec3(pose.R, st.X1, RX1);
  for (int k = 0; k < 3; ++k) pose.t[k] = P1[k] - RX1[k];
  bool finite = true;
  for (int k = 0; k < 9; ++k) finite = finite && std::isfinite(pose.R[k]);
  for (int k = 0; k < 3; ++k) finite = finite && std::isfinite(pose.t[k]);
  if (!finite) return false;
  // Congruent triangles give a rotation; anything else (near-degenerate input) is dropped.
  double off = 0.0;
  for (int r = 0; r < 3; ++r)
    for (int c2 = 0; c2 < 3; ++c2) {
      const double rtr = pose.R[r] * pose.R[c2] + pose.R[3 + r] * pose.R[3 + c2] + pose.R[6 + r] * pose.R[6 + c2];
      off = fmax_inline(off, std::fabs(rtr - (r == c2 ? 1.0 : 0.0)));
    }
  return off < 1e-6 && det3(pose.R) > 0.0;
}

bool p3p_duplicate(const P3PSetup& st, const Pose* poses, int count, const Pose& pose) {
  // The two planes can meet the quadric in the same point (s tiny).
  for (int o = 0; o < count; ++o) {
    double diff = 0.0;
    for (int k = 0; k < 9; ++k) diff = fmax_inline(diff, std::fabs(poses[o].R[k] - pose.R[k]));
    for (int k = 0; k < 3; ++k) diff = fmax_inline(diff, std::fabs(poses[o].t[k] - pose.t[k]) / (std::sqrt(st.a12) + 1e-300));
    if (diff < 1e-9) return true;
  }
  return false;
}

int p3p_lambda_twist(const double* bearings, const double* points, Pose* poses) {
  P3PSetup st;
  const int m = p3p_prepare(bearings, points, st);
  int count = 0;
  for (int c = 0; c < m; ++c)
    if (p3p_solution(st, c, poses[count]) && !p3p_duplicate(st, poses, count, poses[count])) ++count;
  return count;
}

}  // namespace transpose
