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

}  // namespace transpose
