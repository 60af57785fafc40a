#include "frame.h"

#include <cmath>
#include <limits>

#include "math3.h"
#include "simd.h"

namespace transpose {

const char* status_message(int status) {
  switch (status) {
    case kOk: return "ok";
    case kTooFewPoints: return "fewer than 4 valid correspondences";
    case kNonFinite: return "NaN or inf in the correspondences";
    case kBadIntrinsics: return "intrinsics must be finite with positive focal lengths";
    case kDegenerate: return "degenerate configuration: scene points or pixels are coincident or collinear";
    case kNoHypothesis:
      return "no valid pose hypothesis found (degenerate configuration or too many outliers)";
    case kBadOptions: return "invalid RANSAC options";
    case kBadWeights: return "weights must be finite and non-negative";
    default: return "unknown error";
  }
}

namespace {

// True when the points span at most a line (second-largest scatter eigenvalue ~ 0); 3D points
// (x, y, z) or 2D points (x, y, z = nullptr), as separate arrays.
TRANSPOSE_HOT
bool spans_at_most_a_line(const double* x, const double* y, const double* z, int n) {
  const int dim = z ? 3 : 2;
  // One pass of moments about the first point (shifting avoids cancellation for far-away scenes);
  // `omp simd` lets the sums vectorise (only the last bits of the moments depend on the order).
  const double ox = x[0], oy = y[0], oz = z ? z[0] : 0.0;
  double sa = 0, sb = 0, sc = 0, saa = 0, sab = 0, sac = 0, sbb = 0, sbc = 0, scc = 0;
  if (z) {
#pragma omp simd reduction(+ : sa, sb, sc, saa, sab, sac, sbb, sbc, scc)
    for (int i = 0; i < n; ++i) {
      const double a = x[i] - ox, b = y[i] - oy, c = z[i] - oz;
      sa += a; sb += b; sc += c;
      saa += a * a; sab += a * b; sac += a * c; sbb += b * b; sbc += b * c; scc += c * c;
    }
  } else {
#pragma omp simd reduction(+ : sa, sb, saa, sab, sbb)
    for (int i = 0; i < n; ++i) {
      const double a = x[i] - ox, b = y[i] - oy;
      sa += a; sb += b;
      saa += a * a; sab += a * b; sbb += b * b;
    }
  }
  const double sum[3] = {sa, sb, sc}, sq[6] = {saa, sab, sac, sbb, sbc, scc};
  const int pos[3][3] = {{0, 1, 2}, {1, 3, 4}, {2, 4, 5}};
  double C[9];
  for (int r = 0; r < dim; ++r)
    for (int c = 0; c < dim; ++c) C[dim * r + c] = sq[pos[r][c]] - sum[r] * sum[c] / n;
  double ev[3], V[9];
  jacobi_eigen(C, dim, ev, V);
  double e_max = ev[0], e_min = ev[0], e_sum = 0.0;
  for (int j = 0; j < dim; ++j) {
    e_max = std::fmax(e_max, ev[j]);
    e_min = std::fmin(e_min, ev[j]);
    e_sum += ev[j];
  }
  const double e_second = dim == 3 ? e_sum - e_max - e_min : e_min;
  return !(e_max > 0.0) || !(e_second > 1e-10 * e_max);
}

// True when every value is finite (NaN fails the comparison); written to vectorise.
template <class T>
TRANSPOSE_HOT bool all_finite(const T* x, size_t n) {
  int ok = 1;
#pragma omp simd reduction(& : ok)
  for (size_t i = 0; i < n; ++i) ok &= std::fabs(x[i]) <= std::numeric_limits<T>::max() ? 1 : 0;
  return ok != 0;
}

int check_spread(const Frame& f) {
  if (f.n < 4) return kTooFewPoints;
  if (spans_at_most_a_line(f.X.data(), f.Y.data(), f.Z.data(), f.n)) return kDegenerate;
  if (spans_at_most_a_line(f.u.data(), f.v.data(), nullptr, f.n)) return kDegenerate;
  return kOk;
}

// The unweighted copy of build_frame_from, pixels: from (n, 2) rows, or (pixels = nullptr) the
// cell centres of a grid (CellGrid) in row-major order.
TRANSPOSE_HOT void copy_pixels(const double* __restrict pixels, const CellGrid& grid, size_t n, double cx, double cy,
                               Frame& f) {
  double* __restrict u = f.u.data();
  double* __restrict v = f.v.data();
  double* __restrict uc = f.uc.data();
  double* __restrict vc = f.vc.data();
  int* __restrict original = f.original.data();
  for (size_t i = 0; i < n; ++i) original[i] = static_cast<int>(i);
  if (pixels) {
    for (size_t i = 0; i < n; ++i) {
      u[i] = pixels[2 * i];
      v[i] = pixels[2 * i + 1];
      uc[i] = pixels[2 * i] - cx;
      vc[i] = pixels[2 * i + 1] - cy;
    }
    return;
  }
  const size_t width = static_cast<size_t>(grid.width);
  for (size_t r = 0, i = 0; i < n; ++r) {
    const double y = grid.stride * static_cast<double>(r) + 0.5 * grid.stride;
    for (size_t c = 0; c < width; ++c, ++i) {
      const double x = grid.stride * static_cast<double>(c) + 0.5 * grid.stride;
      u[i] = x;
      v[i] = y;
      uc[i] = x - cx;
      vc[i] = y - cy;
    }
  }
}

// ... and points (coordinate k of point i at points[i * stride + k * step]). Planes with unit
// cell stride (every coordinate map) take straight loops that vectorise; other layouts are gathered.
template <class T>
TRANSPOSE_HOT void copy_points(const T* __restrict points, long stride, long step, size_t n, Frame& f) {
  double* __restrict X = f.X.data();
  double* __restrict Y = f.Y.data();
  double* __restrict Z = f.Z.data();
  if (stride == 1) {
    const T* __restrict P0 = points;
    const T* __restrict P1 = points + step;
    const T* __restrict P2 = points + 2 * step;
    for (size_t i = 0; i < n; ++i) {
      X[i] = P0[i];
      Y[i] = P1[i];
      Z[i] = P2[i];
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      const T* p = points + static_cast<long>(i) * stride;
      X[i] = p[0];
      Y[i] = p[step];
      Z[i] = p[2 * step];
    }
  }
}

template <class T>
int build_frame_from(const double* pixels, const CellGrid& grid, const T* points, long stride, long step,
                     const double* camera_points, const double* weights, int n_total, const Intrinsics& K, Frame& f) {
  if (!(std::isfinite(K.fx) && std::isfinite(K.fy) && std::isfinite(K.cx) && std::isfinite(K.cy)) ||
      !(K.fx > 0.0) || !(K.fy > 0.0))
    return kBadIntrinsics;
  f.K = K;
  f.n_total = n_total;
  f.wsum = 0.0;
  const size_t cap = static_cast<size_t>(n_total);
  if (!weights && !camera_points) {
    // Every correspondence counts: straight copies instead of the filtering loop below; the points
    // are checked once copied (any strides).
    if (pixels && !all_finite(pixels, 2 * cap)) return kNonFinite;
    f.u.resize(cap); f.v.resize(cap); f.X.resize(cap); f.Y.resize(cap); f.Z.resize(cap);
    f.uc.resize(cap); f.vc.resize(cap);
    f.w.assign(cap, 1.0);
    f.original.resize(cap);
    f.points.clear();
    f.camera.clear();
    copy_pixels(pixels, grid, cap, K.cx, K.cy, f);
    copy_points(points, stride, step, cap, f);
    if (!all_finite(f.X.data(), cap) || !all_finite(f.Y.data(), cap) || !all_finite(f.Z.data(), cap))
      return kNonFinite;
    f.n = n_total;
    f.wsum = static_cast<double>(n_total);
    return check_spread(f);
  }
  f.u.resize(cap); f.v.resize(cap); f.X.resize(cap); f.Y.resize(cap); f.Z.resize(cap); f.w.resize(cap);
  f.points.resize(camera_points ? 3 * cap : 0);
  f.camera.resize(camera_points ? 3 * cap : 0);
  f.original.resize(cap);
  int n = 0;
  for (int i = 0; i < n_total; ++i) {
    const double w = weights ? weights[i] : 1.0;
    if (!std::isfinite(w) || w < 0.0) return kBadWeights;
    if (w == 0.0) continue;
    if (camera_points && !(camera_points[3 * i + 2] > 0.0)) {
      if (std::isnan(camera_points[3 * i + 2])) return kNonFinite;
      continue;  // missing depth
    }
    const T* pi = points + static_cast<long>(i) * stride;
    const double p[3] = {static_cast<double>(pi[0]), static_cast<double>(pi[step]),
                         static_cast<double>(pi[2 * step])};
    const double* q = pixels + 2 * i;
    if (!(std::isfinite(p[0]) && std::isfinite(p[1]) && std::isfinite(p[2]) && std::isfinite(q[0]) &&
          std::isfinite(q[1])))
      return kNonFinite;
    if (camera_points) {
      const double* c = camera_points + 3 * i;
      if (!(std::isfinite(c[0]) && std::isfinite(c[1]) && std::isfinite(c[2]))) return kNonFinite;
      f.camera[3 * n] = c[0];
      f.camera[3 * n + 1] = c[1];
      f.camera[3 * n + 2] = c[2];
      f.points[3 * n] = p[0];
      f.points[3 * n + 1] = p[1];
      f.points[3 * n + 2] = p[2];
    }
    f.u[n] = q[0];
    f.v[n] = q[1];
    f.X[n] = p[0];
    f.Y[n] = p[1];
    f.Z[n] = p[2];
    f.w[n] = w;
    f.original[n] = i;
    f.wsum += w;
    ++n;
  }
  f.n = n;
  const size_t m = static_cast<size_t>(n);
  f.u.resize(m); f.v.resize(m); f.X.resize(m); f.Y.resize(m); f.Z.resize(m); f.w.resize(m);
  if (camera_points) {
    f.points.resize(3 * m);
    f.camera.resize(3 * m);
  }
  f.original.resize(m);
  f.uc.resize(m);
  f.vc.resize(m);
  for (size_t i = 0; i < m; ++i) {
    f.uc[i] = f.u[i] - K.cx;
    f.vc[i] = f.v[i] - K.cy;
  }
  return check_spread(f);
}

}  // namespace

int build_frame(const double* pixels, const PointArray& points, const double* camera_points, const double* weights,
                int n_total, const Intrinsics& K, Frame& f) {
  const CellGrid none;
  if (points.f32)
    return build_frame_from(pixels, none, points.f32, points.stride, points.step, camera_points, weights, n_total, K, f);
  return build_frame_from(pixels, none, points.f64, points.stride, points.step, camera_points, weights, n_total, K, f);
}

int build_frame_grid(const CellGrid& grid, const PointArray& points, const Intrinsics& K, Frame& f) {
  if (!(grid.width > 0 && grid.height > 0 && grid.stride > 0.0)) return kTooFewPoints;
  const int n = grid.width * grid.height;
  if (points.f32)
    return build_frame_from(nullptr, grid, points.f32, points.stride, points.step, nullptr, nullptr, n, K, f);
  return build_frame_from(nullptr, grid, points.f64, points.stride, points.step, nullptr, nullptr, n, K, f);
}

}  // namespace transpose
