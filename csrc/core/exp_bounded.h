// Branch-free exp for the scoring loops (so that they vectorise): exp_bounded in float64, one
// definition for the CPU core (scoring.cpp) and the CUDA kernels (csrc/cuda/cell_score.h), so that
// GPU and CPU scores agree to rounding, which the device's own exp() would not; exp_f32 in float32
// for the test-time ranking (fast_score.cpp, host only).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TRANSPOSE_HD __host__ __device__ __forceinline__
#else
#define TRANSPOSE_HD inline
#endif

namespace transpose {

// Bit casts between double and int64 (memcpy on the host; register moves on the device).
TRANSPOSE_HD int64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(x);
#else
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

TRANSPOSE_HD double double_of(int64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(b);
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// exp(x) for |x| < 700: the branch-free polynomial of scoring.cpp (2^n e^f, degree-10 Taylor for
// e^f, relative error < 4e-13). The same polynomial on both sides keeps GPU and CPU scores equal
// to rounding, which the device's own exp() would not.
TRANSPOSE_HD double exp_bounded(double x) {
  const double y = x * 1.4426950408889634;   // log2(e)
  const double shift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double t = y + shift;
  const double n = t - shift;
  const double f = (y - n) * 0.6931471805599453;  // ln(2)
  double p = 1.0 / 3628800.0;
  p = p * f + 1.0 / 362880.0;
  p = p * f + 1.0 / 40320.0;
  p = p * f + 1.0 / 5040.0;
  p = p * f + 1.0 / 720.0;
  p = p * f + 1.0 / 120.0;
  p = p * f + 1.0 / 24.0;
  p = p * f + 1.0 / 6.0;
  p = p * f + 0.5;
  p = p * f + 1.0;
  p = p * f + 1.0;
  // multiply p by 2^n through the exponent field
  return double_of(bits_of(p) + (bits_of(t) - bits_of(shift)) * (int64_t(1) << 52));
}

// exp(x) in float32 for |x| < 87 without branches, so loops calling it vectorise (8 lanes with
// AVX2): exp(x) = 2^n e^r with n = round(x / ln 2); r = x - n ln 2 (two-part ln 2, exact for our
// n), |r| <= ln(2) / 2; e^r from a degree-6 Taylor polynomial. Relative error < 3e-7.
inline float exp_f32(float x) {
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504f + shift;
  const float n = t - shift;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860677e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t tb, pb, sb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&pb, &p, sizeof pb);
  std::memcpy(&sb, &shift, sizeof sb);
  pb += (tb - sb) * (int32_t(1) << 23);  // multiply p by 2^n through the exponent field
  float out;
  std::memcpy(&out, &pb, sizeof out);
  return out;
}

}  // namespace transpose
