// Pinhole camera and rigid pose: the two plain structs every solver and the RANSAC loop share.
#pragma once

namespace transpose {

// OpenCV pinhole intrinsics in pixels (x right, y down, z forward).
struct Intrinsics {
  double fx = 1.0, fy = 1.0, cx = 0.0, cy = 0.0;
};

// World-to-camera rigid transform: x_cam = R x_world + t; R row-major.
struct Pose {
  double R[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  double t[3] = {0, 0, 0};
};

// Camera points closer than this (metres) count as behind the camera when scoring.
constexpr double kMinDepth = 1e-3;

}  // namespace transpose
