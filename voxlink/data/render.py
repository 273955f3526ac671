"""Offscreen rendering of RGB, depth and mask through pyrender (OpenGL via OSMesa or EGL).

Why pyrender: it renders trimesh's materials and textures (multi-part OBJ with MTL and JPG/PNG
maps) with shading, gives a z-buffer depth map in the same pass, and runs headless on Debian's
``libosmesa6`` (software, any machine) or EGL (GPU). Open3D's ``RaycastingScene`` gives depth
but no textured shading, so colours would have to be re-implemented. pyrender pins
``PyOpenGL==3.1.0``, which cannot create an OSMesa context on current systems, so voxlink installs
it without dependencies and pins ``PyOpenGL>=3.1.7`` (see ``scripts/setup.sh``).

The platform is chosen by ``PYOPENGL_PLATFORM`` (default ``osmesa``; set ``egl`` on a GPU machine)
and must be set before OpenGL is imported, which this module does on import.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from voxlink.camera import CV_TO_GL  # noqa: E402


class RenderError(RuntimeError):
    """The OpenGL context could not be created or a render failed."""


def _pyrender():
    try:
        import pyrender
    except Exception as e:  # ImportError, or OpenGL failing to find libOSMesa
        raise RenderError(
            f"pyrender / OpenGL unavailable ({type(e).__name__}: {e}); install Debian's libosmesa6 "
            "and run scripts/setup.sh (PYOPENGL_PLATFORM=osmesa) or use EGL on a GPU machine"
        ) from e
    _patch_program_cache(pyrender)
    return pyrender


def _patch_program_cache(pyrender) -> None:
    """Make pyrender's shader cache hit again under PyOpenGL >= 3.1.7.

    pyrender keys compiled shader programs by ``OpenGL.contextdata.getContext()``, which for OSMesa
    now returns a new ctypes pointer object on every call; the key never matched, so every draw
    compiled a fresh program (about 3 MB leaked and tens of ms lost per render). The patched cache
    keys by the context's address.
    """
    import ctypes

    import OpenGL.contextdata
    from pyrender import shader_program as sp

    if getattr(sp.ShaderProgramCache, "_voxlink_patched", False):
        return

    def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
        """pyrender's ShaderProgramCache.get_program, keyed by the context's address (see above)."""
        defines = defines or {}
        files = [f for f in (vertex_shader, fragment_shader, geometry_shader) if f is not None]
        ctx = OpenGL.contextdata.getContext()
        cid = ctypes.cast(ctx, ctypes.c_void_p).value if not isinstance(ctx, int) else ctx
        key = tuple([cid] + sorted([(os.path.basename(f), 1) for f in files] + [(d, defines[d]) for d in defines]))
        if key not in self._program_cache:
            paths = [os.path.join(self.shader_dir, f) for f in files] + [None] * (3 - len(files))
            self._program_cache[key] = sp.ShaderProgram(vertex_shader=paths[0], fragment_shader=paths[1],
                                                        geometry_shader=paths[2], defines=defines)
        return self._program_cache[key]

    sp.ShaderProgramCache.get_program = get_program
    sp.ShaderProgramCache._voxlink_patched = True


def to_pyrender_meshes(parts: list[trimesh.Trimesh]):
    """Convert trimesh parts (textured, vertex- or face-coloured) into pyrender meshes.

    Face-coloured parts are drawn flat (pyrender cannot smooth face colours); others smooth.
    """
    pyrender = _pyrender()
    out = []
    for p in parts:
        p = _drawable(p)
        smooth = not (p.visual.kind == "face")
        try:
            out.append(pyrender.Mesh.from_trimesh(p, smooth=smooth))
        except Exception:
            # A broken material or texture must not lose the geometry: draw it plain grey.
            plain = trimesh.Trimesh(p.vertices, p.faces, process=False)
            plain.visual.face_colors = [180, 180, 180, 255]
            out.append(pyrender.Mesh.from_trimesh(plain, smooth=False))
    return out


def _base_colour(material) -> np.ndarray:
    """RGBA uint8 [4] base colour of a trimesh material (PBR ``baseColorFactor`` or the diffuse colour)."""
    for attr in ("baseColorFactor", "diffuse", "main_color"):
        c = getattr(material, attr, None)
        if c is not None:
            c = np.asarray(c, dtype=np.float64).ravel()
            if c.size >= 3:
                if c.max() <= 1.0 and c.dtype.kind == "f" and attr == "baseColorFactor":
                    c = c * 255.0
                rgba = np.append(c[:3], c[3] if c.size > 3 else 255.0)
                return np.clip(rgba, 0, 255).astype(np.uint8)
    return np.array([180, 180, 180, 255], np.uint8)


def _drawable(p: trimesh.Trimesh) -> trimesh.Trimesh:
    """The part as pyrender can draw it: a material with a texture image but without per-vertex texture
    coordinates (pyrender's textured shader fails to compile for it) is drawn in the material's base
    colour; every other part is returned as it is."""
    vis = p.visual
    if getattr(vis, "kind", None) == "texture" or isinstance(vis, trimesh.visual.texture.TextureVisuals):
        uv = getattr(vis, "uv", None)
        mat = getattr(vis, "material", None)
        has_image = any(getattr(mat, a, None) is not None for a in ("image", "baseColorTexture"))
        if has_image and (uv is None or len(uv) != len(p.vertices)):
            colour = _base_colour(getattr(vis, "material", None))
            plain = trimesh.Trimesh(p.vertices, p.faces, process=False)
            plain.visual.face_colors = np.tile(colour, (len(p.faces), 1))
            return plain
    return p


class Renderer:
    """Renders views of one object at a time: RGB with shading and textures, depth and mask.

    Args:
        size: image width = height in pixels.

    Raises:
        RenderError: no OpenGL context (missing OSMesa / EGL).
    """

    def __init__(self, size: int = 128):
        pyrender = _pyrender()
        self.size = size
        try:
            self._r = pyrender.OffscreenRenderer(size, size)
        except Exception as e:
            raise RenderError(f"cannot create an offscreen OpenGL context: {type(e).__name__}: {e}") from e
        self._scene = pyrender.Scene(bg_color=[0, 0, 0, 255], ambient_light=[0.35, 0.35, 0.35])
        self._cam_node = self._scene.add(pyrender.IntrinsicsCamera(fx=100, fy=100, cx=size / 2, cy=size / 2), pose=np.eye(4))
        self._key = self._scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=2.5), pose=np.eye(4))

    def render(self, parts: list[trimesh.Trimesh], K: np.ndarray, poses: np.ndarray,
               backgrounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render one object from several cameras.

        Args:
            parts: trimesh parts in the object frame (metres).
            K: float [3, 3] intrinsics (OpenCV, pixels) for a ``size`` x ``size`` image.
            poses: float [V, 4, 4] camera-to-object poses (OpenCV convention).
            backgrounds: uint8 [V, 3] plain background colour of each view (RGB).

        Returns:
            ``rgb`` uint8 [V, H, W, 3] and ``depth`` float32 [V, H, W] z-depth in metres (0 = no hit);
            the mask is ``depth > 0``.

        Raises:
            RenderError: the render failed.
        """
        pyrender = _pyrender()
        V = len(poses)
        scene = self._scene
        # pyrender's principal point is measured from the image's left/top edge, in continuous
        # coordinates: OpenCV's pixel-centre convention is half a pixel off.
        self._cam_node.camera = pyrender.IntrinsicsCamera(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5,
                                                          znear=0.05, zfar=20.0)
        nodes = [scene.add(m) for m in to_pyrender_meshes(parts)]
        rgb = np.empty((V, self.size, self.size, 3), np.uint8)
        depth = np.empty((V, self.size, self.size), np.float32)
        try:
            for i in range(V):
                T_gl = np.asarray(poses[i], np.float64) @ CV_TO_GL
                scene.set_pose(self._cam_node, T_gl)
                # Key light from above the camera's left shoulder, so faces shade differently.
                scene.set_pose(self._key, T_gl @ _light_offset())
                scene.bg_color = np.append(np.asarray(backgrounds[i], np.float64) / 255.0, 1.0)
                try:
                    c, d = self._r.render(scene)
                except Exception as e:
                    raise RenderError(f"render failed: {type(e).__name__}: {e}") from e
                rgb[i] = c[..., :3]
                depth[i] = d
        finally:
            # One scene per renderer, meshes swapped per object: a new scene (and light) per object
            # leaked ~75 MB of GL resources each in pyrender.
            for n in nodes:
                scene.remove_node(n)
        return rgb, depth

    def close(self) -> None:
        """Release the OpenGL context."""
        if self._r is not None:
            self._r.delete()
            self._r = None


def _light_offset() -> np.ndarray:
    """Rotation (OpenGL camera frame) that tilts the key light 30 degrees up and 20 to the left."""
    a, b = np.radians(30.0), np.radians(20.0)
    Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    Ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    T = np.eye(4)
    T[:3, :3] = Ry @ Rx
    return T
