"""Networks: scene-coordinate regressor and the absolute pose regression (APR) baselines.

Submodules (import them directly; this package stays light so ``import transpose.models``
costs nothing):

- ``scr``            scene-coordinate regression network
- ``backbones``      GoogLeNet, ResNet34, EfficientNet-B0 in plain torch, torchvision-compatible keys
- ``posenet``        PoseNet (GoogLeNet with aux pose heads, or ResNet34), Bayesian PoseNet (MC dropout)
- ``mstransformer``  MS-Transformer (multi-scene, two transformer branches, one query per scene)
- ``hyperpose``      HyperPose and MS-HyperPose (hypernetwork-generated regression heads)
- ``apr``            ``build_apr_model(config)`` and ``load_apr_config`` for the files in ``apr_configs/``

Every APR model's ``forward(image)`` returns a dict with ``position (B, 3)`` (camera centre) and
``quaternion (B, 4)`` (w, x, y, z of the camera-to-world rotation, not normalized).
"""
