// The only file that knows pybind11: numpy arrays in, numpy arrays / dicts out, GIL released.
// Input validation with friendly messages lives in transpose/ransac.py; the checks here are the
// last line of defence so that a direct call into _core can raise but never crash.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#if TRANSPOSE_HAVE_OPENMP
#include <omp.h>
#endif

#include "core/derivatives.h"
#include "core/fast_score.h"
#include "core/frame.h"
#include "core/kabsch.h"
#include "core/p3p.h"
#include "core/ransac.h"
#include "core/refine.h"
#include "core/scoring.h"
#include "cuda/map_ransac.h"
#include "cuda/score_host.h"
#ifndef TRANSPOSE_HAVE_CUDA
#define TRANSPOSE_HAVE_CUDA 0
#endif
#if TRANSPOSE_HAVE_CUDA
#include "cuda/score_cuda.h"
#endif

namespace py = pybind11;
using namespace transpose;

using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

static int max_threads() {
#if TRANSPOSE_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

// Require `a` to have `ndim` dims with the given sizes (-1: any); returns the sizes.
std::vector<py::ssize_t> expect_shape(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  std::vector<py::ssize_t> dims;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) dims.push_back(a.shape(d));
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || shape[d] == dims[d];
  if (!ok) {
    std::string want = "(", got = "(";
    for (size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + (shape[d] < 0 ? std::string("N") : std::to_string(shape[d]));
    for (size_t d = 0; d < dims.size(); ++d) got += (d ? ", " : "") + std::to_string(dims[d]);
    throw py::value_error(std::string(name) + ": expected shape " + want + "), got " + got + ")");
  }
  return dims;
}

// An optional float array argument: nullptr for None, else its data, checked against `shape`
// (`holder` keeps the converted array alive while the pointer is used).
const double* optional_array(const py::object& obj, Array& holder, const char* name,
                             std::vector<py::ssize_t> shape) {
  if (obj.is_none()) return nullptr;
  holder = Array::ensure(obj);
  if (!holder) throw py::value_error(std::string(name) + ": expected a float array");
  expect_shape(holder, name, std::move(shape));
  return holder.data();
}

Intrinsics intrinsics_from(const Array& K) {
  expect_shape(K, "K", {4});
  const double* k = K.data();
  Intrinsics in;
  in.fx = k[0];
  in.fy = k[1];
  in.cx = k[2];
  in.cy = k[3];
  return in;
}

RansacOptions options_from(const py::dict& d) {
  RansacOptions o;
  for (auto item : d) {
    const std::string key = py::str(item.first);
    py::handle v = item.second;
    try {
    if (key == "num_hypotheses") o.num_hypotheses = py::cast<int>(v);
    else if (key == "threshold") o.threshold = py::cast<double>(v);
    else if (key == "alpha") o.alpha = py::cast<double>(v);
    else if (key == "max_reprojection_error") o.max_reprojection_error = py::cast<double>(v);
    else if (key == "max_tries_per_hypothesis") o.max_tries_per_hypothesis = py::cast<int>(v);
    else if (key == "adaptive") o.adaptive = py::cast<bool>(v);
    else if (key == "confidence") o.confidence = py::cast<double>(v);
    else if (key == "max_iterations") o.max_iterations = py::cast<int>(v);
    else if (key == "min_iterations") o.min_iterations = py::cast<int>(v);
    else if (key == "early_exit") o.early_exit = py::cast<bool>(v);
    else if (key == "exact_scoring") o.exact_scoring = py::cast<bool>(v);
    else if (key == "preemptive_cells") o.preemptive_cells = py::cast<int>(v);
    else if (key == "preemptive_keep") o.preemptive_keep = py::cast<int>(v);
    else if (key == "refine") o.refine = py::cast<bool>(v);
    else if (key == "refine_rounds") o.refine_rounds = py::cast<int>(v);
    else if (key == "lm_iterations") o.lm_iterations = py::cast<int>(v);
    else if (key == "robust_scale") o.robust_scale = py::cast<double>(v);
    else if (key == "robust_rounds") o.robust_rounds = py::cast<int>(v);
    else if (key == "training") o.training = py::cast<bool>(v);
    else if (key == "refine_all") o.refine_all = py::cast<bool>(v);
    else if (key == "seed") o.seed = py::cast<uint64_t>(v);
    else if (key == "num_threads") o.num_threads = py::cast<int>(v);
    else throw py::value_error("unknown RANSAC option '" + key + "'");
    } catch (const py::cast_error&) {
      throw py::value_error("RANSAC option '" + key + "': wrong type");
    }
  }
  if (check_options(o) != kOk)
    throw py::value_error("invalid RANSAC options (need num_hypotheses >= 1, threshold > 0, alpha > 0, "
                          "0 < confidence < 1, max_iterations >= 1, robust_scale >= 0; training excludes adaptive and "
                          "robust_scale)");
  return o;
}

py::array_t<double> mat3(const double* R) {
  py::array_t<double> out({3, 3});
  std::copy(R, R + 9, out.mutable_data());
  return out;
}

py::array_t<double> vec3(const double* t) {
  py::array_t<double> out(3);
  std::copy(t, t + 3, out.mutable_data());
  return out;
}

py::array_t<double> poses_R(const std::vector<Pose>& poses) {
  py::array_t<double> out({static_cast<py::ssize_t>(poses.size()), py::ssize_t(3), py::ssize_t(3)});
  double* p = out.mutable_data();
  for (size_t k = 0; k < poses.size(); ++k) std::copy(poses[k].R, poses[k].R + 9, p + 9 * k);
  return out;
}

py::array_t<double> poses_t(const std::vector<Pose>& poses) {
  py::array_t<double> out({static_cast<py::ssize_t>(poses.size()), py::ssize_t(3)});
  double* p = out.mutable_data();
  for (size_t k = 0; k < poses.size(); ++k) std::copy(poses[k].t, poses[k].t + 3, p + 3 * k);
  return out;
}

// Options as the core takes them: a CoreOptions (parsed once, e.g. cached by ransac.py) or a dict.
RansacOptions options_arg(const py::object& obj) {
  if (py::isinstance<RansacOptions>(obj)) return obj.cast<RansacOptions>();
  if (!py::isinstance<py::dict>(obj)) throw py::value_error("options: expected a dict or a CoreOptions");
  return options_from(obj.cast<py::dict>());
}

// The result as a dict holding every field of ransac.PoseResult (None where a mode has none),
// so that Python can take it as the result's attributes; inliers shaped `shape` when given.
py::dict result_dict(const RansacResult& r, const py::object& shape = py::none()) {
  if (r.status != kOk) throw py::value_error(status_message(r.status));
  py::dict d;
  d["R"] = mat3(r.pose.R);
  d["t"] = vec3(r.pose.t);
  // Camera-to-world (the pose-file convention): [R^T | -R^T t], built here rather than with four
  // numpy calls per frame in Python.
  py::array_t<double> c2w({4, 4});
  double* T = c2w.mutable_data();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) T[4 * i + j] = r.pose.R[3 * j + i];
    T[4 * i + 3] = -(r.pose.R[i] * r.pose.t[0] + r.pose.R[3 + i] * r.pose.t[1] + r.pose.R[6 + i] * r.pose.t[2]);
  }
  T[12] = T[13] = T[14] = 0.0;
  T[15] = 1.0;
  d["pose"] = c2w;
  d["score"] = r.score;
  d["num_inliers"] = r.num_inliers;
  py::array_t<bool> inl(static_cast<py::ssize_t>(r.inliers.size()));
  bool* m = inl.mutable_data();
  for (size_t k = 0; k < r.inliers.size(); ++k) m[k] = r.inliers[k] != 0;
  d["inliers"] = shape.is_none() ? py::object(inl) : py::object(inl.reshape(shape.cast<std::vector<py::ssize_t>>()));
  d["num_hypotheses"] = r.num_hypotheses;
  d["num_samples"] = r.num_samples;
  d["selected"] = r.selected;
  d["selected_score"] = r.selected_score;
  for (const char* key : {"hypotheses_R", "hypotheses_t", "logits", "samples", "refined_R", "refined_t"})
    d[key] = py::none();
  if (!r.logits.empty()) {
    d["hypotheses_R"] = poses_R(r.hypotheses);
    d["hypotheses_t"] = poses_t(r.hypotheses);
    py::array_t<double> logits(static_cast<py::ssize_t>(r.logits.size()));
    std::copy(r.logits.begin(), r.logits.end(), logits.mutable_data());
    d["logits"] = logits;
    py::array_t<int> samples({static_cast<py::ssize_t>(r.logits.size()), py::ssize_t(4)});
    std::copy(r.samples.begin(), r.samples.end(), samples.mutable_data());
    d["samples"] = samples;
  }
  if (!r.refined.empty()) {
    d["refined_R"] = poses_R(r.refined);
    d["refined_t"] = poses_t(r.refined);
  }
  return d;
}

const double* optional_weights(const py::object& weights, py::ssize_t n, Array& holder) {
  if (weights.is_none()) return nullptr;
  holder = Array::ensure(weights);
  if (!holder) throw py::value_error("weights: expected a float array");
  expect_shape(holder, "weights", {n});
  return holder.data();
}

// Scene points of one frame ((n, 3) float64 rows) or of a batch ((B, n, 3)); with `planes`, the
// layout of coordinate maps instead, (3, n) or (B, 3, n): a float32 or float64 array is read in
// place with its strides (a channel-last map viewed as planes, a slice of a batch), no copy.
class ScenePoints {
 public:
  ScenePoints(const py::object& points, bool planes, py::ssize_t B, py::ssize_t n) {
    std::vector<py::ssize_t> shape = planes ? std::vector<py::ssize_t>{3, n} : std::vector<py::ssize_t>{n, 3};
    if (B >= 0) shape.insert(shape.begin(), B);
    if (planes && in_place(points)) {
      view_ = py::reinterpret_borrow<py::array>(points);
      in_place_ = true;
      expect_shape(view_, "points", shape);
      const py::ssize_t item = view_.itemsize(), nd = view_.ndim();
      is_f32_ = item == 4;
      cell_ = view_.strides(nd - 1) / item;
      channel_ = view_.strides(nd - 2) / item;
      frame_ = B >= 0 ? view_.strides(0) / item : 0;
      return;
    }
    f64_ = Array::ensure(points);
    if (!f64_) throw py::value_error("points: expected a float array");
    expect_shape(f64_, "points", shape);
    cell_ = planes ? 1 : 3;
    channel_ = planes ? n : 1;
    frame_ = 3 * n;
  }
  // Frame b's points (b = 0 for a single frame).
  PointArray frame(py::ssize_t b) const {
    PointArray p;
    if (in_place_) {
      if (is_f32_) p.f32 = static_cast<const float*>(view_.data()) + frame_ * b;
      else p.f64 = static_cast<const double*>(view_.data()) + frame_ * b;
    } else {
      p.f64 = f64_.data() + frame_ * b;
    }
    p.stride = static_cast<long>(cell_);
    p.step = static_cast<long>(channel_);
    return p;
  }

 private:
  // A native-order float32 / float64 array whose strides are whole elements.
  static bool in_place(const py::object& obj) {
    if (!py::array_t<float>::check_(obj) && !py::array_t<double>::check_(obj)) return false;
    const auto a = py::reinterpret_borrow<py::array>(obj);
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      if (a.strides(d) % a.itemsize() != 0) return false;
    return true;
  }

  bool in_place_ = false, is_f32_ = false;
  py::ssize_t cell_ = 1, channel_ = 1, frame_ = 0;
  py::array view_;
  Array f64_;
};

py::dict ransac_single(const Array& pixels, const py::object& points_obj, const py::object& camera_points,
                       const py::object& weights, const Array& K, const py::object& opts, bool planes,
                       const py::object& seed, const py::object& shape) {
  const auto dims = expect_shape(pixels, "pixels", {-1, 2});
  const py::ssize_t n = dims[0];
  const ScenePoints points(points_obj, planes, -1, n);
  Array cam_holder, w_holder;
  const double* cam = nullptr;
  if (!camera_points.is_none()) {
    cam_holder = Array::ensure(camera_points);
    if (!cam_holder) throw py::value_error("camera_points: expected a float array");
    expect_shape(cam_holder, "camera_points", {n, 3});
    cam = cam_holder.data();
  }
  const double* w = optional_weights(weights, n, w_holder);
  const Intrinsics in = intrinsics_from(K);
  RansacOptions o = options_arg(opts);
  if (!seed.is_none()) {
    try {
      o.seed = seed.cast<uint64_t>();
    } catch (const py::cast_error&) {
      throw py::value_error("seed: expected an integer in [0, 2**64)");
    }
  }
  RansacResult r;
  {
    py::gil_scoped_release release;
    Frame f;
    const int st = build_frame(pixels.data(), points.frame(0), cam, w, static_cast<int>(n), in, f);
    if (st != kOk)
      r.status = st;
    else
      ransac(f, cam ? Model::kRigid : Model::kPnP, o, r);
  }
  return result_dict(r, shape);
}

// The common call of ransac.estimate_pose in one step: a (3, H, W) float32 / float64 numpy map, a
// float64 (3, 3) pinhole K, a positive int stride, no mask or weights. Returns None for anything
// else, and for input the core rejects (non-finite values, fewer than 4 cells, a degenerate map):
// the Python path then checks it and raises its usual, named errors. Saves the Python-level checks,
// the pixel grid and their ~20 us on a call that follows other work (caches cold).
py::object ransac_map_py(const py::object& coords, const py::object& K_obj, const py::object& stride_obj,
                         const py::object& opts, const py::object& seed_obj) {
  if (!PyLong_CheckExact(stride_obj.ptr()) || !PyLong_CheckExact(seed_obj.ptr())) return py::none();
  const long long stride = PyLong_AsLongLong(stride_obj.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return py::none();
  }
  const unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return py::none();
  }
  if (stride <= 0 || !py::isinstance<RansacOptions>(opts)) return py::none();
  if (!py::array_t<float>::check_(coords) && !py::array_t<double>::check_(coords)) return py::none();
  if (!py::array_t<double>::check_(K_obj)) return py::none();
  const auto map = py::reinterpret_borrow<py::array>(coords);
  const auto Karr = py::reinterpret_borrow<py::array>(K_obj);
  if (map.ndim() != 3 || map.shape(0) != 3 || Karr.ndim() != 2 || Karr.shape(0) != 3 || Karr.shape(1) != 3)
    return py::none();
  // K: exactly what geometry.check_intrinsics accepts, else the Python path raises its message.
  double k[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      k[3 * r + c] = *static_cast<const double*>(
          static_cast<const void*>(static_cast<const char*>(Karr.data()) + r * Karr.strides(0) + c * Karr.strides(1)));
  for (double v : k)
    if (!std::isfinite(v)) return py::none();
  if (!(k[0] > 0.0 && k[4] > 0.0) || k[1] != 0.0 || k[3] != 0.0 || k[6] != 0.0 || k[7] != 0.0 ||
      std::fabs(k[8] - 1.0) > 1e-9)
    return py::none();
  // Cells must flatten to one stride (any C-contiguous map, a channel-last view), as in ScenePoints.
  const py::ssize_t item = map.itemsize(), H = map.shape(1), W = map.shape(2);
  if (map.strides(0) % item || map.strides(1) % item || map.strides(2) % item) return py::none();
  const py::ssize_t cell = map.strides(2) / item;
  if (H > 1 && map.strides(1) / item != W * cell) return py::none();
  if (H * W < 4 || H * W > std::numeric_limits<int>::max()) return py::none();
  RansacOptions o = opts.cast<RansacOptions>();
  o.seed = static_cast<uint64_t>(seed);
  PointArray points;
  if (item == 4) points.f32 = static_cast<const float*>(map.data());
  else points.f64 = static_cast<const double*>(map.data());
  points.stride = static_cast<long>(cell);
  points.step = static_cast<long>(map.strides(0) / item);
  CellGrid grid;
  grid.height = static_cast<int>(H);
  grid.width = static_cast<int>(W);
  grid.stride = static_cast<double>(stride);
  Intrinsics in;
  in.fx = k[0];
  in.fy = k[4];
  in.cx = k[2];
  in.cy = k[5];
  RansacResult r;
  {
    py::gil_scoped_release release;
    Frame f;
    const int st = build_frame_grid(grid, points, in, f);
    if (st != kOk)
      r.status = st;
    else
      ransac(f, Model::kPnP, o, r);
  }
  if (r.status == kNonFinite || r.status == kTooFewPoints) return py::none();
  return result_dict(r, py::make_tuple(H, W));
}

py::list ransac_batch_py(const Array& pixels, const py::object& points_obj, const py::object& camera_points,
                         const py::object& weights, const Array& K, const std::vector<uint64_t>& seeds,
                         const py::dict& opts, int num_threads, bool planes) {
  const auto dims = expect_shape(pixels, "pixels", {-1, -1, 2});
  const py::ssize_t B = dims[0], n = dims[1];
  const ScenePoints points(points_obj, planes, B, n);
  expect_shape(K, "K", {B, 4});
  if (static_cast<py::ssize_t>(seeds.size()) != B) throw py::value_error("seeds: expected one seed per frame");
  Array cam_holder, w_holder;
  const double* cam = optional_array(camera_points, cam_holder, "camera_points", {B, n, 3});
  const double* w = optional_array(weights, w_holder, "weights", {B, n});
  const RansacOptions o = options_from(opts);
  std::vector<RansacResult> results;
  {
    py::gil_scoped_release release;
    std::vector<Frame> frames(static_cast<size_t>(B));
    std::vector<int> status(static_cast<size_t>(B), kOk);
    const int threads = resolve_threads(num_threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && B > 1)
    for (py::ssize_t b = 0; b < B; ++b) {
      const double* k = K.data() + 4 * b;
      Intrinsics in;
      in.fx = k[0];
      in.fy = k[1];
      in.cx = k[2];
      in.cy = k[3];
      status[static_cast<size_t>(b)] =
          build_frame(pixels.data() + 2 * n * b, points.frame(b), cam ? cam + 3 * n * b : nullptr,
                      w ? w + n * b : nullptr, static_cast<int>(n), in, frames[static_cast<size_t>(b)]);
    }
    ransac_batch(frames, status, cam ? Model::kRigid : Model::kPnP, o, seeds, num_threads, results);
  }
  py::list out;
  for (size_t b = 0; b < results.size(); ++b) {
    if (results[b].status != kOk)
      throw py::value_error("frame " + std::to_string(b) + ": " + status_message(results[b].status));
    out.append(result_dict(results[b]));
  }
  return out;
}

py::list p3p_py(const Array& bearings, const Array& points) {
  expect_shape(bearings, "bearings", {3, 3});
  expect_shape(points, "points", {3, 3});
  Pose poses[4];
  const int m = p3p_lambda_twist(bearings.data(), points.data(), poses);
  py::list out;
  for (int k = 0; k < m; ++k) out.append(py::make_tuple(mat3(poses[k].R), vec3(poses[k].t)));
  return out;
}

py::tuple rigid_align_py(const Array& src, const Array& dst, const py::object& weights) {
  const auto dims = expect_shape(src, "src", {-1, 3});
  expect_shape(dst, "dst", {dims[0], 3});
  Array w_holder;
  const double* w = optional_weights(weights, dims[0], w_holder);
  Pose pose;
  bool ok;
  {
    py::gil_scoped_release release;
    ok = rigid_align(src.data(), dst.data(), w, static_cast<int>(dims[0]), pose);
  }
  if (!ok) throw py::value_error("rigid alignment is degenerate (fewer than 3 points, zero weights or collinear points)");
  return py::make_tuple(mat3(pose.R), vec3(pose.t));
}

// Build a frame for the stand-alone scoring / refinement entry points.
Frame frame_for(const Array& pixels, const Array& points, const py::object& camera_points,
                const py::object& weights, const Array& K, Array& cam_holder, Array& w_holder) {
  const auto dims = expect_shape(pixels, "pixels", {-1, 2});
  const py::ssize_t n = dims[0];
  expect_shape(points, "points", {n, 3});
  const double* cam = nullptr;
  if (!camera_points.is_none()) {
    cam_holder = Array::ensure(camera_points);
    if (!cam_holder) throw py::value_error("camera_points: expected a float array");
    expect_shape(cam_holder, "camera_points", {n, 3});
    cam = cam_holder.data();
  }
  const double* w = optional_weights(weights, n, w_holder);
  Frame f;
  const int st = build_frame(pixels.data(), points.data(), cam, w, static_cast<int>(n), intrinsics_from(K), f);
  if (st != kOk) throw py::value_error(status_message(st));
  return f;
}

Pose pose_from(const Array& R, const Array& t) {
  expect_shape(R, "R", {3, 3});
  expect_shape(t, "t", {3});
  Pose p;
  std::copy(R.data(), R.data() + 9, p.R);
  std::copy(t.data(), t.data() + 3, p.t);
  return p;
}

py::tuple refine_py(const Array& pixels, const Array& points, const py::object& camera_points,
                    const py::object& weights, const Array& K, const Array& R, const Array& t, double threshold,
                    double max_err, int rounds, int lm_iterations) {
  Array ch, wh;
  const Frame f = frame_for(pixels, points, camera_points, weights, K, ch, wh);
  Pose p = pose_from(R, t);
  if (!(threshold > 0.0)) throw py::value_error("threshold must be positive");
  int used;
  {
    py::gil_scoped_release release;
    Buffer<int> scratch;
    used = refine_hypothesis(f, camera_points.is_none() ? Model::kPnP : Model::kRigid,
                             make_score_params(threshold, max_err), rounds, lm_iterations, p, scratch);
  }
  return py::make_tuple(mat3(p.R), vec3(p.t), used);
}

py::tuple score_py(const Array& pixels, const Array& points, const py::object& weights, const Array& K,
                   const Array& R, const Array& t, double threshold, double max_err, bool float32) {
  Array ch, wh;
  const Frame f = frame_for(pixels, points, py::none(), weights, K, ch, wh);
  const Pose p = pose_from(R, t);
  if (!(threshold > 0.0)) throw py::value_error("threshold must be positive");
  const ScoreParams sp = make_score_params(threshold, max_err);
  ScoreOut so;
  if (float32) {
    PackedFrame pk;
    pack_frame(f, 0, 0, pk);
    so = soft_score_packed(pk.all, f.K, p, sp, 0, f.n, -HUGE_VAL);
  } else {
    so = soft_score(f, p, sp, -HUGE_VAL);
  }
  py::array_t<double> errs(static_cast<py::ssize_t>(f.n_total));
  double* e = errs.mutable_data();
  for (int i = 0; i < f.n_total; ++i) e[i] = std::nan("");
  std::vector<double> valid(static_cast<size_t>(f.n));
  reprojection_errors(f, p, sp, valid.data());
  for (int k = 0; k < f.n; ++k) e[f.original[k]] = valid[static_cast<size_t>(k)];
  return py::make_tuple(so.score, so.inliers, errs);
}

// ---------------------------------------------------------------- end-to-end training (DSAC* loss)

py::list dsac_loss_batch_py(const Array& pixels, const Array& points, const py::object& camera_points,
                            const py::object& weights, const Array& K, const Array& gt_R, const Array& gt_t,
                            const std::vector<uint64_t>& seeds, const py::dict& opts, double weight_rot,
                            double weight_trans, double cut, double min_probability, bool gradient,
                            int polish_iterations, int num_threads) {
  const auto dims = expect_shape(pixels, "pixels", {-1, -1, 2});
  const py::ssize_t B = dims[0], n = dims[1];
  expect_shape(points, "points", {B, n, 3});
  expect_shape(K, "K", {B, 4});
  expect_shape(gt_R, "gt_R", {B, 3, 3});
  expect_shape(gt_t, "gt_t", {B, 3});
  if (static_cast<py::ssize_t>(seeds.size()) != B) throw py::value_error("seeds: expected one seed per frame");
  if (!(weight_rot >= 0.0) || !(weight_trans >= 0.0) || !(cut > 0.0) || !(min_probability >= 0.0) ||
      polish_iterations < 0)
    throw py::value_error("dsac_loss: need weight_rot >= 0, weight_trans >= 0, cut > 0, min_probability >= 0");
  Array cam_holder, w_holder;
  const double* cam = optional_array(camera_points, cam_holder, "camera_points", {B, n, 3});
  const double* w = optional_array(weights, w_holder, "weights", {B, n});
  DsacOptions o;
  o.ransac = options_from(opts);
  o.ransac.training = true;
  o.loss.weight_rot = weight_rot;
  o.loss.weight_trans = weight_trans;
  o.loss.cut = cut;
  o.min_probability = min_probability;
  o.gradient = gradient;
  o.polish_iterations = polish_iterations;
  std::vector<DsacResult> results;
  {
    py::gil_scoped_release release;
    std::vector<Frame> frames(static_cast<size_t>(B));
    std::vector<int> status(static_cast<size_t>(B), kOk);
    std::vector<Pose> gts(static_cast<size_t>(B));
    for (py::ssize_t b = 0; b < B; ++b) {
      const double* k = K.data() + 4 * b;
      Intrinsics in;
      in.fx = k[0];
      in.fy = k[1];
      in.cx = k[2];
      in.cy = k[3];
      status[static_cast<size_t>(b)] =
          build_frame(pixels.data() + 2 * n * b, points.data() + 3 * n * b, cam ? cam + 3 * n * b : nullptr,
                      w ? w + n * b : nullptr, static_cast<int>(n), in, frames[static_cast<size_t>(b)]);
      std::copy(gt_R.data() + 9 * b, gt_R.data() + 9 * b + 9, gts[static_cast<size_t>(b)].R);
      std::copy(gt_t.data() + 3 * b, gt_t.data() + 3 * b + 3, gts[static_cast<size_t>(b)].t);
    }
    dsac_loss_batch(frames, status, cam ? Model::kRigid : Model::kPnP, o, gts, seeds, num_threads, results);
  }
  py::list out;
  for (const DsacResult& r : results) {
    py::dict d;
    d["status"] = r.status;
    d["message"] = std::string(status_message(r.status));
    d["loss"] = r.loss;
    if (r.status == kOk) {
      const py::ssize_t M = static_cast<py::ssize_t>(r.logits.size());
      auto vec = [](const std::vector<double>& v) {
        py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
        std::copy(v.begin(), v.end(), a.mutable_data());
        return a;
      };
      d["logits"] = vec(r.logits);
      d["probabilities"] = vec(r.probabilities);
      d["losses"] = vec(r.losses);
      d["hypotheses_R"] = poses_R(r.hypotheses);
      d["hypotheses_t"] = poses_t(r.hypotheses);
      d["refined_R"] = poses_R(r.refined);
      d["refined_t"] = poses_t(r.refined);
      py::array_t<int> samples({M, py::ssize_t(4)});
      std::copy(r.samples.begin(), r.samples.end(), samples.mutable_data());
      d["samples"] = samples;
      py::array_t<int> used(M);
      std::copy(r.inliers_used.begin(), r.inliers_used.end(), used.mutable_data());
      d["inliers_used"] = used;
      d["backward_hypotheses"] = r.backward_hypotheses;
      if (gradient) {
        py::array_t<double> g({n, py::ssize_t(3)});
        std::copy(r.grad.begin(), r.grad.end(), g.mutable_data());
        d["grad"] = g;
      }
    }
    out.append(d);
  }
  return out;
}

py::tuple pose_loss_py(const Array& R, const Array& t, const Array& gt_R, const Array& gt_t, double weight_rot,
                       double weight_trans, double cut) {
  const Pose est = pose_from(R, t), gt = pose_from(gt_R, gt_t);
  PoseLossParams p;
  p.weight_rot = weight_rot;
  p.weight_trans = weight_trans;
  p.cut = cut;
  py::array_t<double> grad(6);
  const double loss = pose_loss(est, gt, p, grad.mutable_data());
  return py::make_tuple(loss, grad);
}

// ---------------------------------------------------------------- batched scoring of dense maps (GPU + host twin)

// Calls fn(T{}) with T = float for float32 maps (read as they are, like the kernel reads them) and
// T = double otherwise.
template <typename Fn>
auto with_map_type(bool float32, Fn&& fn) {
  return float32 ? fn(float{}) : fn(double{});
}

bool is_float32(const py::object& obj) {
  return py::isinstance<py::array>(obj) && py::reinterpret_borrow<py::array>(obj).dtype().is(py::dtype::of<float>());
}

template <typename T>
DenseMaps<T> dense_maps(const T* coords, const double* weights, py::ssize_t B, py::ssize_t H, py::ssize_t W,
                        double stride) {
  if (!(stride > 0.0) || !std::isfinite(stride)) throw py::value_error("stride must be positive");
  if (B < 0 || H < 0 || W < 0 || H * W > (py::ssize_t(1) << 30)) throw py::value_error("coords: bad map size");
  DenseMaps<T> m;
  m.coords = coords;
  m.weights = weights;
  m.batch = static_cast<int>(B);
  m.height = static_cast<int>(H);
  m.width = static_cast<int>(W);
  m.stride = stride;
  return m;
}

// Host maps from a (B, 3, H, W) array and optional (B, H, W) weights (holders keep them alive).
template <typename T>
DenseMaps<T> host_maps(const py::object& coords, const py::object& weights, double stride,
                       py::array_t<T, py::array::c_style | py::array::forcecast>& holder, Array& w_holder) {
  holder = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(coords);
  if (!holder) throw py::value_error("coords: expected a float array");
  const auto d = expect_shape(holder, "coords", {-1, 3, -1, -1});
  const double* w = optional_array(weights, w_holder, "weights", {d[0], d[2], d[3]});
  return dense_maps(holder.data(), w, d[0], d[2], d[3], stride);
}

std::vector<FrameIntrinsics> frame_intrinsics(const Array& K, py::ssize_t B) {
  expect_shape(K, "K", {B, 4});
  std::vector<FrameIntrinsics> out(static_cast<size_t>(B));
  for (py::ssize_t b = 0; b < B; ++b) {
    const double* k = K.data() + 4 * b;
    out[static_cast<size_t>(b)] = FrameIntrinsics{k[0], k[1], k[2], k[3]};
  }
  return out;
}

// Hypotheses R (B, M, 3, 3), t (B, M, 3) -> poses (B * M); M into `M`.
std::vector<Pose> hypotheses_from(const Array& R, const Array& t, py::ssize_t B, int& M) {
  M = static_cast<int>(expect_shape(R, "R", {B, -1, 3, 3})[1]);
  expect_shape(t, "t", {B, M, 3});
  std::vector<Pose> poses(static_cast<size_t>(B * M));
  for (size_t k = 0; k < poses.size(); ++k) {
    std::copy(R.data() + 9 * k, R.data() + 9 * k + 9, poses[k].R);
    std::copy(t.data() + 3 * k, t.data() + 3 * k + 3, poses[k].t);
  }
  return poses;
}

// Scores of hypotheses (R, t) on maps by `score(poses, M, sp, scores, inliers)` -> (scores (B, M), inliers (B, M)).
template <typename Score>
py::tuple score_maps(py::ssize_t B, const Array& R, const Array& t, double threshold, double max_err, Score&& score) {
  int M = 0;
  const auto poses = hypotheses_from(R, t, B, M);
  if (!(threshold > 0.0)) throw py::value_error("threshold must be positive");
  py::array_t<double> scores({B, py::ssize_t(M)});
  py::array_t<int> inliers({B, py::ssize_t(M)});
  double* s = scores.mutable_data();
  int* n = inliers.mutable_data();
  {
    py::gil_scoped_release release;
    score(poses.data(), M, make_score_params(threshold, max_err), s, n);
  }
  return py::make_tuple(scores, inliers);
}

// Test-mode RANSAC of host maps with `scorer` doing the heavy part -> list of result dicts.
template <typename T>
py::list ransac_maps(const DenseMaps<T>& host, const std::vector<FrameIntrinsics>& K,
                     const std::vector<uint64_t>& seeds, const py::dict& opts, int threads, const BatchScorer& scorer,
                     const std::function<void(DenseMaps<T>&)>& fetch = nullptr) {
  if (static_cast<int>(seeds.size()) != host.batch) throw py::value_error("seeds: expected one seed per frame");
  const RansacOptions o = options_from(opts);
  if (o.training || o.adaptive)
    throw py::value_error("batched (GPU) scoring runs the fixed-count test mode only; training and adaptive "
                          "RANSAC run on the CPU core");
  std::vector<RansacResult> results;
  {
    py::gil_scoped_release release;
    DenseMaps<T> maps = host;
    if (fetch) fetch(maps);  // device maps: point `maps` at a host copy
    std::vector<Frame> frames;
    std::vector<int> status;
    frames_from_maps(maps, K.data(), threads, frames, status);
    ransac_batch_scored(frames, status, o, seeds, threads, scorer, results);
  }
  py::list out;
  for (size_t b = 0; b < results.size(); ++b) {
    if (results[b].status != kOk)
      throw py::value_error("frame " + std::to_string(b) + ": " + status_message(results[b].status));
    out.append(result_dict(results[b]));
  }
  return out;
}

py::tuple score_host_py(const py::object& coords, const py::object& weights, const Array& K, double stride,
                        const Array& R, const Array& t, double threshold, double max_err, int num_threads) {
  return with_map_type(is_float32(coords), [&](auto tag) {
    using T = decltype(tag);
    py::array_t<T, py::array::c_style | py::array::forcecast> holder;
    Array w_holder;
    const DenseMaps<T> maps = host_maps<T>(coords, weights, stride, holder, w_holder);
    const auto Kv = frame_intrinsics(K, maps.batch);
    return score_maps(maps.batch, R, t, threshold, max_err,
                      [&](const Pose* poses, int M, const ScoreParams& sp, double* s, int* n) {
                        score_hypotheses_host(maps, Kv.data(), poses, M, sp, s, n, num_threads);
                      });
  });
}

py::list ransac_maps_host_py(const py::object& coords, const py::object& weights, const Array& K, double stride,
                             const std::vector<uint64_t>& seeds, const py::dict& opts, int num_threads) {
  return with_map_type(is_float32(coords), [&](auto tag) {
    using T = decltype(tag);
    py::array_t<T, py::array::c_style | py::array::forcecast> holder;
    Array w_holder;
    const DenseMaps<T> maps = host_maps<T>(coords, weights, stride, holder, w_holder);
    const auto Kv = frame_intrinsics(K, maps.batch);
    return ransac_maps<T>(maps, Kv, seeds, opts, num_threads,
                          [&](const Pose* poses, int M, const ScoreParams& sp, double* s, int* n) {
                            score_hypotheses_host(maps, Kv.data(), poses, M, sp, s, n, num_threads);
                          });
  });
}

#if TRANSPOSE_HAVE_CUDA

// Maps on the GPU: `coords` and `weights` (0: none) are device addresses of contiguous tensors.
bool device_float32(const std::string& dtype) {
  if (dtype != "float32" && dtype != "float64")
    throw py::value_error("coords: the GPU path reads float32 or float64 maps, got " + dtype);
  return dtype == "float32";
}

py::tuple score_cuda_py(uintptr_t coords, const std::string& dtype, uintptr_t weights, py::ssize_t B, py::ssize_t H,
                        py::ssize_t W, const Array& K, double stride, const Array& R, const Array& t,
                        double threshold, double max_err, int device, uintptr_t stream) {
  return with_map_type(device_float32(dtype), [&](auto tag) {
    using T = decltype(tag);
    const DenseMaps<T> maps = dense_maps(reinterpret_cast<const T*>(coords),
                                         reinterpret_cast<const double*>(weights), B, H, W, stride);
    const auto Kv = frame_intrinsics(K, B);
    return score_maps(B, R, t, threshold, max_err,
                      [&](const Pose* poses, int M, const ScoreParams& sp, double* s, int* n) {
                        score_hypotheses_cuda(maps, Kv.data(), poses, M, sp, s, n, device, stream);
                      });
  });
}

py::list ransac_maps_cuda_py(uintptr_t coords, const std::string& dtype, uintptr_t weights, py::ssize_t B,
                             py::ssize_t H, py::ssize_t W, const Array& K, double stride,
                             const std::vector<uint64_t>& seeds, const py::dict& opts, int num_threads, int device,
                             uintptr_t stream) {
  return with_map_type(device_float32(dtype), [&](auto tag) {
    using T = decltype(tag);
    const DenseMaps<T> d_maps = dense_maps(reinterpret_cast<const T*>(coords),
                                           reinterpret_cast<const double*>(weights), B, H, W, stride);
    const auto Kv = frame_intrinsics(K, B);
    // Sampling and refinement read a host copy (B x 60 KB at 80x60); the kernel reads the maps in place.
    std::vector<T> host_coords;
    std::vector<double> host_weights;
    auto fetch = [&](DenseMaps<T>& maps) {
      const size_t cells = static_cast<size_t>(maps.batch) * static_cast<size_t>(maps.cells());
      host_coords.resize(3 * cells);
      cuda_copy_to_host(host_coords.data(), maps.coords, sizeof(T) * 3 * cells, device, stream);
      maps.coords = host_coords.data();
      if (maps.weights) {
        host_weights.resize(cells);
        cuda_copy_to_host(host_weights.data(), maps.weights, sizeof(double) * cells, device, stream);
        maps.weights = host_weights.data();
      }
    };
    return ransac_maps<T>(d_maps, Kv, seeds, opts, num_threads,
                          [&](const Pose* poses, int M, const ScoreParams& sp, double* s, int* n) {
                            score_hypotheses_cuda(d_maps, Kv.data(), poses, M, sp, s, n, device, stream);
                          },
                          fetch);
  });
}

#endif  // TRANSPOSE_HAVE_CUDA

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "transpose native RANSAC/PnP core";
  m.def("has_openmp", []() { return bool(TRANSPOSE_HAVE_OPENMP); });
  m.def("openmp_runtime", []() { return std::string(TRANSPOSE_OPENMP_RUNTIME); });
  m.def("max_threads", &max_threads);

  m.def("p3p", &p3p_py, py::arg("bearings"), py::arg("points"),
        "Lambda Twist P3P: bearings (3, 3) rows = viewing directions, points (3, 3) world points -> "
        "list of (R (3, 3), t (3,)) world-to-camera solutions.");
  m.def("rigid_align", &rigid_align_py, py::arg("src"), py::arg("dst"), py::arg("weights") = py::none(),
        "Weighted rigid alignment dst ~ R src + t of (N, 3) point sets -> (R, t).");
  py::class_<RansacOptions>(m, "CoreOptions",
                            "RANSAC options parsed and checked once (from a dict of RansacOptions fields), "
                            "for callers that pass the same options every frame.")
      .def(py::init([](const py::dict& d) { return options_from(d); }), py::arg("options"))
      .def_readonly("seed", &RansacOptions::seed)
      .def_readonly("num_hypotheses", &RansacOptions::num_hypotheses)
      .def_readonly("threshold", &RansacOptions::threshold);
  m.def("ransac", &ransac_single, py::arg("pixels"), py::arg("points"), py::arg("camera_points") = py::none(),
        py::arg("weights") = py::none(), py::arg("K"), py::arg("options") = py::dict(), py::arg("planes") = false,
        py::arg("seed") = py::none(), py::arg("shape") = py::none(),
        "RANSAC pose of one frame: pixels (N, 2), scene points (N, 3) (planes: (3, N), float32 or float64, "
        "as a flattened coordinate map), optional camera points (N, 3) for RGB-D, optional weights (N,) "
        "(0 drops a cell), K = (fx, fy, cx, cy), options a dict or a CoreOptions, seed (overrides the "
        "options'), shape of the returned inlier mask (default (N,)). Returns a dict.");
  m.def("ransac_map", &ransac_map_py, py::arg("coords"), py::arg("K"), py::arg("stride"), py::arg("options"),
        py::arg("seed"),
        "RANSAC pose of a (3, H, W) float32 / float64 coordinate map with a (3, 3) K, an int stride, options a "
        "CoreOptions and an int seed; every cell counts. Returns the result dict (inliers (H, W)), or None when "
        "the input is not that plain case or the core rejects it (estimate_pose then takes its checked path).");
  m.def("ransac_batch", &ransac_batch_py, py::arg("pixels"), py::arg("points"),
        py::arg("camera_points") = py::none(), py::arg("weights") = py::none(), py::arg("K"), py::arg("seeds"),
        py::arg("options") = py::dict(), py::arg("num_threads") = 0, py::arg("planes") = false,
        "RANSAC on B frames in parallel: pixels (B, N, 2), points (B, N, 3) (planes: (B, 3, N)), K (B, 4), "
        "seeds (B,).");
  m.def("refine_pose", &refine_py, py::arg("pixels"), py::arg("points"), py::arg("camera_points") = py::none(),
        py::arg("weights") = py::none(), py::arg("K"), py::arg("R"), py::arg("t"), py::arg("threshold") = 10.0,
        py::arg("max_reprojection_error") = 100.0, py::arg("rounds") = 100, py::arg("lm_iterations") = 10,
        "DSAC*-style refinement of a world-to-camera pose -> (R, t, inliers used in the last fit).");
  m.def("soft_score", &score_py, py::arg("pixels"), py::arg("points"), py::arg("weights") = py::none(),
        py::arg("K"), py::arg("R"), py::arg("t"), py::arg("threshold") = 10.0,
        py::arg("max_reprojection_error") = 100.0, py::arg("float32") = false,
        "Soft inlier score, hard inlier count and per-correspondence reprojection errors (N,) of a pose; "
        "float32: score and count as test-mode RANSAC ranks hypotheses (float32 arithmetic).");
  m.def("dsac_loss_batch", &dsac_loss_batch_py, py::arg("pixels"), py::arg("points"),
        py::arg("camera_points") = py::none(), py::arg("weights") = py::none(), py::arg("K"), py::arg("gt_R"),
        py::arg("gt_t"), py::arg("seeds"), py::arg("options") = py::dict(), py::arg("weight_rot") = 1.0,
        py::arg("weight_trans") = 100.0, py::arg("cut") = 100.0, py::arg("min_probability") = 1e-6,
        py::arg("gradient") = true, py::arg("polish_iterations") = 2, py::arg("num_threads") = 0,
        "DSAC* expected pose loss of B frames and its gradient w.r.t. the scene points: pixels (B, N, 2), "
        "points (B, N, 3), K (B, 4), gt_R (B, 3, 3), gt_t (B, 3) world-to-camera -> list of dicts "
        "(loss, grad (N, 3), logits, probabilities, losses, ...; status != 0 for a failed frame).");
  m.def("pose_loss", &pose_loss_py, py::arg("R"), py::arg("t"), py::arg("gt_R"), py::arg("gt_t"),
        py::arg("weight_rot") = 1.0, py::arg("weight_trans") = 100.0, py::arg("cut") = 100.0,
        "DSAC* pose loss of world-to-camera poses -> (loss, d loss / d(w, dt) (6,) left perturbation).");

  // Batched scoring of dense maps (B, 3, H, W): the GPU path and its host twin (same per-cell code).
  m.def("has_cuda", []() { return bool(TRANSPOSE_HAVE_CUDA); },
        "True when the CUDA kernels were compiled in (TRANSPOSE_CUDA=ON with a CUDA compiler).");
  m.def("score_hypotheses_host", &score_host_py, py::arg("coords"), py::arg("weights") = py::none(), py::arg("K"),
        py::arg("stride"), py::arg("R"), py::arg("t"), py::arg("threshold") = 10.0,
        py::arg("max_reprojection_error") = 100.0, py::arg("num_threads") = 0,
        "Host twin of the GPU scorer: coords (B, 3, H, W) float32/float64, weights (B, H, W) or None, K (B, 4), "
        "R (B, M, 3, 3), t (B, M, 3) world-to-camera -> (soft scores (B, M), hard inlier counts (B, M)).");
  m.def("ransac_maps_host", &ransac_maps_host_py, py::arg("coords"), py::arg("weights") = py::none(), py::arg("K"),
        py::arg("stride"), py::arg("seeds"), py::arg("options") = py::dict(), py::arg("num_threads") = 0,
        "The GPU path's RANSAC driver with the host twin as scorer: coords (B, 3, H, W), weights (B, H, W) or None, "
        "K (B, 4), seeds (B,) -> list of result dicts as ransac_batch (fixed-count test mode).");
#if TRANSPOSE_HAVE_CUDA
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices the runtime sees (0 without driver or device).");
  m.def("score_hypotheses_cuda", &score_cuda_py, py::arg("coords"), py::arg("dtype"), py::arg("weights"),
        py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("K"), py::arg("stride"), py::arg("R"),
        py::arg("t"), py::arg("threshold") = 10.0, py::arg("max_reprojection_error") = 100.0, py::arg("device") = 0,
        py::arg("stream") = 0,
        "score_hypotheses_host on the GPU: coords / weights are device addresses of contiguous (B, 3, H, W) "
        "float32/float64 and (B, H, W) float64 (0: none) tensors on `device`, ordered on `stream`.");
  m.def("ransac_maps_cuda", &ransac_maps_cuda_py, py::arg("coords"), py::arg("dtype"), py::arg("weights"),
        py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("K"), py::arg("stride"), py::arg("seeds"),
        py::arg("options") = py::dict(), py::arg("num_threads") = 0, py::arg("device") = 0, py::arg("stream") = 0,
        "RANSAC of B maps on the GPU (sampling and refinement on the CPU from a host copy, every hypothesis "
        "scored by the kernel): device addresses as score_hypotheses_cuda -> list of result dicts.");
#endif
}
