"""voxlink: image compression made for 3D reconstruction.

A small encoder on the drone turns each 128 x 128 view into K bits; the ground station fuses the codes
of any number of views into a 32^3 occupancy grid, depth maps and point clouds (Golts & Schechner,
"Image compression optimized for 3D reconstruction by utilizing deep neural networks", Sec. III-C,
built on 3D-R2N2, Choy et al. 2016).

Conventions used everywhere (see :mod:`voxlink.camera`): metres (object units), radians, OpenCV
pinhole cameras, camera-to-object poses, occupancy grids indexed ``[x, y, z]`` over the unit cube.
"""

__version__ = "0.1.0"
