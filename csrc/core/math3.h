// Small fixed-size linear algebra for the core: 3-vectors, row-major 3x3 matrices, tiny solvers.
// Header-only and allocation-free so the hypothesis loop never touches the heap.
#pragma once

#include <cmath>

namespace transpose {

// std::fmax(a, b) for an `a` that is not NaN (a NaN `b` is ignored likewise), but inline: without
// -ffinite-math-only std::fmax is a libm call on x86-64, and the minimal solvers call it often.
inline double fmax_inline(double a, double b) { return b > a ? b : a; }

inline double dot3(const double* a, const double* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

inline void cross3(const double* a, const double* b, double* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

inline double norm3(const double* a) { return std::sqrt(dot3(a, a)); }

inline void sub3(const double* a, const double* b, double* out) {
  out[0] = a[0] - b[0];
  out[1] = a[1] - b[1];
  out[2] = a[2] - b[2];
}

// out = M v for a row-major 3x3 M.
inline void matvec3(const double* M, const double* v, double* out) {
  out[0] = M[0] * v[0] + M[1] * v[1] + M[2] * v[2];
  out[1] = M[3] * v[0] + M[4] * v[1] + M[5] * v[2];
  out[2] = M[6] * v[0] + M[7] * v[1] + M[8] * v[2];
}

// C = A B (row-major 3x3); C must not alias A or B.
inline void matmul3(const double* A, const double* B, double* C) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      C[3 * i + j] = A[3 * i] * B[j] + A[3 * i + 1] * B[3 + j] + A[3 * i + 2] * B[6 + j];
}

inline double det3(const double* M) {
  return M[0] * (M[4] * M[8] - M[5] * M[7]) - M[1] * (M[3] * M[8] - M[5] * M[6]) +
         M[2] * (M[3] * M[7] - M[4] * M[6]);
}

// Inverse of a row-major 3x3 matrix; false when (numerically) singular relative to its scale.
inline bool inv3(const double* M, double* out) {
  const double c00 = M[4] * M[8] - M[5] * M[7];
  const double c01 = M[5] * M[6] - M[3] * M[8];
  const double c02 = M[3] * M[7] - M[4] * M[6];
  const double det = M[0] * c00 + M[1] * c01 + M[2] * c02;
  double scale = 0.0;
  for (int i = 0; i < 9; ++i) scale = fmax_inline(scale, std::fabs(M[i]));
  if (!(std::fabs(det) > 1e-14 * scale * scale * scale)) return false;
  const double s = 1.0 / det;
  out[0] = c00 * s;
  out[1] = (M[2] * M[7] - M[1] * M[8]) * s;
  out[2] = (M[1] * M[5] - M[2] * M[4]) * s;
  out[3] = c01 * s;
  out[4] = (M[0] * M[8] - M[2] * M[6]) * s;
  out[5] = (M[2] * M[3] - M[0] * M[5]) * s;
  out[6] = c02 * s;
  out[7] = (M[1] * M[6] - M[0] * M[7]) * s;
  out[8] = (M[0] * M[4] - M[1] * M[3]) * s;
  return true;
}

// Rotation matrix exp([w]x) (Rodrigues), row-major.
inline void so3_exp(const double* w, double* R) {
  const double th2 = dot3(w, w);
  double a, b;  // R = I + a [w]x + b [w]x^2
  if (th2 < 1e-16) {
    a = 1.0 - th2 / 6.0;
    b = 0.5 - th2 / 24.0;
  } else {
    const double th = std::sqrt(th2);
    a = std::sin(th) / th;
    b = (1.0 - std::cos(th)) / th2;
  }
  const double x = w[0], y = w[1], z = w[2];
  R[0] = 1.0 - b * (y * y + z * z);
  R[1] = -a * z + b * x * y;
  R[2] = a * y + b * x * z;
  R[3] = a * z + b * x * y;
  R[4] = 1.0 - b * (x * x + z * z);
  R[5] = -a * x + b * y * z;
  R[6] = -a * y + b * x * z;
  R[7] = a * x + b * y * z;
  R[8] = 1.0 - b * (x * x + y * y);
}

// Solve A x = b for a symmetric positive definite n x n A (row-major, n <= 6) by Cholesky.
// Returns false when A is not positive definite.
inline bool solve_spd(const double* A, const double* b, double* x, int n) {
  double L[36];
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) {
      double s = A[i * n + j];
      for (int k = 0; k < j; ++k) s -= L[i * n + k] * L[j * n + k];
      if (i == j) {
        if (!(s > 0.0)) return false;
        L[i * n + i] = std::sqrt(s);
      } else {
        L[i * n + j] = s / L[j * n + j];
      }
    }
  }
  double y[6];
  for (int i = 0; i < n; ++i) {
    double s = b[i];
    for (int k = 0; k < i; ++k) s -= L[i * n + k] * y[k];
    y[i] = s / L[i * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {
    double s = y[i];
    for (int k = i + 1; k < n; ++k) s -= L[k * n + i] * x[k];
    x[i] = s / L[i * n + i];
  }
  return true;
}

// Eigen-decomposition of a symmetric n x n matrix (n <= 4) by cyclic Jacobi rotations.
// A (row-major) is overwritten; eigenvalues go to evals, eigenvectors to the columns of V.
inline void jacobi_eigen(double* A, int n, double* evals, double* V) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) V[i * n + j] = (i == j) ? 1.0 : 0.0;
  for (int sweep = 0; sweep < 50; ++sweep) {
    double off = 0.0, diag = 0.0;
    for (int i = 0; i < n; ++i) {
      diag += A[i * n + i] * A[i * n + i];
      for (int j = i + 1; j < n; ++j) off += A[i * n + j] * A[i * n + j];
    }
    if (off <= 1e-30 * diag || off == 0.0) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = A[p * n + q];
        if (apq == 0.0) continue;
        const double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = V[k * n + p], vkq = V[k * n + q];
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  for (int i = 0; i < n; ++i) evals[i] = A[i * n + i];
}

}  // namespace transpose
