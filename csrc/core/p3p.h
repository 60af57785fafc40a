// Minimal absolute-pose solver from three 2D-3D correspondences (P3P).
#pragma once

#include "camera.h"

namespace transpose {

// Lambda Twist P3P (Persson and Nordberg, ECCV 2018).
//
// bearings: 3 viewing directions in the camera frame (any positive length, normalised inside),
//           row k = direction of point k, i.e. a (3, 3) row-major array.
// points:   the 3 matching world points, (3, 3) row-major.
// poses:    room for 4 world-to-camera solutions (x_cam = R x_world + t).
// Returns the number of solutions (0..4) with all three points in front of the camera.
int p3p_lambda_twist(const double* bearings, const double* points, Pose* poses);

// Lambda Twist in stages, for a sampler that rejects most samples by a 4th correspondence: the
// solver's depth candidates before their Gauss-Newton polish (p3p_prepare), where a candidate puts
// any other world point in the camera frame (p3p_camera_point: a test at ~1e-12 relative
// precision, before the polish), and the polished, checked pose of a candidate (p3p_solution).
// p3p_lambda_twist is p3p_solution over every candidate, duplicates dropped (p3p_duplicate).
struct P3PSetup {
  double y[3][3];                        // unit bearings
  double X1[3];                          // first world point
  double Xi[9];                          // inverse of the world triangle's basis [X1-X2, X1-X3, normal]
  double a12, a13, a23, b12, b13, b23;   // squared world distances, cosines between bearings
  double depths[4][3];                   // candidates: depths of the 3 points along their bearings
  int count = 0;
};
int p3p_prepare(const double* bearings, const double* points, P3PSetup& setup);  // returns setup.count
void p3p_camera_point(const P3PSetup& setup, int candidate, const double* X, double* out);
bool p3p_solution(const P3PSetup& setup, int candidate, Pose& pose);
bool p3p_duplicate(const P3PSetup& setup, const Pose* poses, int count, const Pose& pose);

}  // namespace transpose
