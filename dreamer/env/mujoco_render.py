"""Per-env camera images for the embedded MuJoCo env: N frames per call from one GL context.

Why not ``mujoco.Renderer``: it renders and reads back one image per call, and it binds its
OpenGL backend when ``mujoco`` is first imported, from ``MUJOCO_GL`` (unset means GLFW, which
needs a display). Here the backend is picked when the camera is built (:func:`pick_gl_backend`),
and every env is drawn into its own tile of one offscreen sheet that is read back once, so N envs
cost one read-back instead of N. The drawing itself is MuJoCo's (``mjv_updateScene`` and
``mjr_render``); a test checks that a tile equals ``mujoco.Renderer``'s image of the same camera.

The camera mirrors the Isaac Lab backend's tiled camera: the same ``pos`` offset and ``rot``
quaternion ``(x, y, z, w)`` in Isaac's "world" convention (looks along +x, up +z) and the same
pinhole (focal length 24, horizontal aperture 20.955). Isaac's camera sits at the env origin;
here it follows the robot's root body (MuJoCo ``track`` mode: fixed offset and orientation in
the world), so a walking Ant stays in view.
"""

from __future__ import annotations

import ctypes.util
import importlib
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import mujoco
import numpy as np

GL_BACKENDS = ("egl", "osmesa")
CAMERA_NAME = "dreamer_camera"
DEFAULT_CAMERA = {
    "height": 64,
    "width": 64,
    "pos": (-3.0, 0.0, 1.5),
    "rot": (0.0, 0.23, 0.0, 0.9732),
}
# Pinhole of TorchRL's IsaacLabWrapper.add_tiled_camera_config (Isaac's PinholeCameraCfg).
FOCAL_LENGTH = 24.0
HORIZONTAL_APERTURE = 20.955
# Largest sheet side in pixels; every GL driver we target allows at least 8192.
MAX_SHEET_PX = 4096
# Render-only floor: a plane's size only matters for drawing (it collides as an infinite plane).
# An infinite plane cost llvmpipe ~3 ms per 64x64 frame, a 20 m one ~0.6 ms; the drawn floor is
# moved under the robot in whole checker periods, so the pattern stays fixed in the world.
FLOOR_HALF_SIZE = 20.0
FLOOR_PERIOD = 1.0  # [m], a multiple of the checker's period (texrepeat 2 per m, 2 squares each)


def pick_gl_backend(device: str = "cpu") -> str:
    """Headless OpenGL backend: ``MUJOCO_GL`` if set, else EGL for CUDA envs, else OSMesa if found.

    PyOpenGL fixes its platform at its first import, so the choice is made once, up front: an
    explicit ``MUJOCO_GL`` (or ``PYOPENGL_PLATFORM``) wins; a CUDA env gets EGL (the GPU driver);
    a CPU env gets OSMesa when ``libOSMesa`` is installed and EGL (Mesa's software driver) if not.
    """
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        value = os.environ.get(var, "").strip().lower()
        if value in GL_BACKENDS:
            return value
        if value and var == "MUJOCO_GL":
            raise ValueError(
                f"MUJOCO_GL={value!r} cannot render the headless env camera; "
                "set MUJOCO_GL=egl (GPU or Mesa EGL) or MUJOCO_GL=osmesa (CPU)."
            )
    if str(device).startswith("cuda"):
        return "egl"
    return "osmesa" if ctypes.util.find_library("OSMesa") else "egl"


def _gl_context(backend: str, width: int, height: int):
    """A current GL context from MuJoCo's own ``mujoco.egl`` / ``mujoco.osmesa`` modules."""
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    try:
        context = importlib.import_module(f"mujoco.{backend}").GLContext(width, height)
    except Exception as err:  # missing library, no device: the message says what to install
        raise RuntimeError(
            f"env.pixels=true needs headless OpenGL, and the {backend!r} backend failed ({err}). "
            "On CPU install OSMesa (apt-get install libosmesa6, done by scripts/setup.sh when "
            "root) or Mesa EGL (libegl1 libegl-mesa0); on a GPU the NVIDIA driver's EGL. "
            "Choose with MUJOCO_GL=osmesa|egl."
        ) from err
    context.make_current()
    return context


def isaac_quat_to_mujoco_camera(rot_xyzw: Sequence[float]) -> np.ndarray:
    """MuJoCo camera quaternion ``(w, x, y, z)`` for an Isaac "world"-convention ``(x, y, z, w)``.

    Isaac's world convention looks along +x with +z up; a MuJoCo camera looks along its -z
    with +y up, so the camera frame is rotated by ``R_fix`` (columns: camera x, y, z axes
    expressed in the Isaac camera frame) after the configured rotation.
    """
    x, y, z, w = (float(v) for v in rot_xyzw)
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm == 0:
        raise ValueError("env.camera.rot must be a non-zero quaternion (x, y, z, w).")
    fix_mat = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    fix = np.zeros(4)
    mujoco.mju_mat2Quat(fix, fix_mat.reshape(-1))
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.array([w, x, y, z]) / norm, fix)
    return out


def camera_settings(camera: Mapping | None) -> dict:
    """``env.camera`` merged over :data:`DEFAULT_CAMERA`, checked."""
    settings = {**DEFAULT_CAMERA, **dict(camera or {})}
    height, width = int(settings["height"]), int(settings["width"])
    if height < 8 or width < 8 or height > MAX_SHEET_PX or width > MAX_SHEET_PX:
        raise ValueError(
            f"env.camera height/width must be in [8, {MAX_SHEET_PX}], got {height}x{width}."
        )
    if len(settings["pos"]) != 3 or len(settings["rot"]) != 4:
        raise ValueError("env.camera.pos needs 3 values and env.camera.rot 4 (x, y, z, w).")
    return {**settings, "height": height, "width": width}


def render_model(xml_path: str | Path, camera: Mapping, sheet: tuple[int, int]) -> mujoco.MjModel:
    """The task's MJCF plus the tracking camera and cheap, legible visuals (physics untouched).

    Adds the camera on the root body, a checker texture on the floor (so motion is visible
    under a camera that follows the robot), a bright headlight, and turns off what costs most in
    software rendering at small sizes (shadow maps, multisampling, fine tessellation).
    """
    spec = mujoco.MjSpec.from_file(str(xml_path))
    root = spec.worldbody.first_body()
    height, width = camera["height"], camera["width"]
    fovy = 2 * math.degrees(math.atan(HORIZONTAL_APERTURE * height / width / (2 * FOCAL_LENGTH)))
    root.add_camera(
        name=CAMERA_NAME,
        mode=mujoco.mjtCamLight.mjCAMLIGHT_TRACK,
        pos=[float(v) for v in camera["pos"]],
        quat=isaac_quat_to_mujoco_camera(camera["rot"]),
        fovy=fovy,
    )
    floors = [g for g in spec.worldbody.geoms if g.type == mujoco.mjtGeom.mjGEOM_PLANE]
    if floors:
        spec.add_texture(
            name="dreamer_checker",
            type=mujoco.mjtTexture.mjTEXTURE_2D,
            builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
            rgb1=[0.25, 0.3, 0.35],
            rgb2=[0.45, 0.5, 0.55],
            width=64,
            height=64,
        )
        material = spec.add_material(
            name="dreamer_floor", texrepeat=[2.0 / FLOOR_PERIOD] * 2, texuniform=True
        )
        material.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "dreamer_checker"
        for floor in floors:
            floor.material = "dreamer_floor"
            floor.size = [FLOOR_HALF_SIZE, FLOOR_HALF_SIZE, floor.size[2]]
    visual = spec.visual
    visual.global_.offwidth, visual.global_.offheight = sheet
    visual.quality.shadowsize = 0
    visual.quality.offsamples = 0
    visual.quality.numslices, visual.quality.numstacks, visual.quality.numquads = 8, 4, 1
    visual.headlight.ambient = [0.35, 0.35, 0.35]
    visual.headlight.diffuse = [0.5, 0.5, 0.5]
    return spec.compile()


class MujocoCamera:
    """Renders ``(n, H, W, 3)`` uint8 images of n physics states, each env in one sheet tile.

    Args:
        xml_path: the task's MJCF (the same model the physics runs).
        num_envs: most states rendered per call (sizes the sheet).
        camera: ``env.camera`` settings (``height``, ``width``, ``pos``, ``rot``).
        device: the env's device; picks the GL backend (see :func:`pick_gl_backend`).
    """

    def __init__(
        self, xml_path: str | Path, num_envs: int, camera: Mapping | None, device: str = "cpu"
    ):
        self.camera = camera_settings(camera)
        self.height, self.width = self.camera["height"], self.camera["width"]
        self.cols = max(1, min(num_envs, MAX_SHEET_PX // self.width))
        self.rows = max(1, min(-(-num_envs // self.cols), MAX_SHEET_PX // self.height))
        sheet = (self.cols * self.width, self.rows * self.height)
        self.backend = pick_gl_backend(device)
        self.model = render_model(xml_path, self.camera, sheet)
        self._data = mujoco.MjData(self.model)
        planes = self.model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE
        self._floors = np.flatnonzero(planes & (self.model.geom_bodyid == 0))
        self._root = 1  # the first body under the world: the robot's root
        self._gl = _gl_context(self.backend, *sheet)
        self._context = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(self.model, maxgeom=max(100, 2 * self.model.ngeom))
        for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX"):
            self._scene.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME
        )
        self._sheet = np.empty((sheet[1], sheet[0], 3), dtype=np.uint8)
        # Free GL objects while the interpreter is still whole (MuJoCo's own __del__ at shutdown
        # can run after PyOpenGL is torn down and prints errors).
        self._finalizer = weakref.finalize(self, _free, self._context, self._gl)

    def render(self, qpos: np.ndarray) -> np.ndarray:
        """Images ``(n, H, W, 3)`` uint8 of the states ``qpos`` ``(n, nq)``."""
        if not self._finalizer.alive:
            raise RuntimeError("this camera was closed; build a new env to render again.")
        qpos = np.asarray(qpos, dtype=np.float64).reshape(-1, self.model.nq)
        per_sheet = self.rows * self.cols
        images = np.empty((qpos.shape[0], self.height, self.width, 3), dtype=np.uint8)
        self._gl.make_current()
        for start in range(0, qpos.shape[0], per_sheet):
            chunk = qpos[start : start + per_sheet]
            images[start : start + chunk.shape[0]] = self._render_sheet(chunk)
        return images

    def _render_sheet(self, qpos: np.ndarray) -> np.ndarray:
        m, d, h, w = self.model, self._data, self.height, self.width
        for i, q in enumerate(qpos):
            d.qpos[:] = q
            mujoco.mj_kinematics(m, d)
            if self._floors.size:
                under = np.round(d.xpos[self._root, :2] / FLOOR_PERIOD) * FLOOR_PERIOD
                d.geom_xpos[self._floors, :2] = under
            mujoco.mj_camlight(m, d)
            mujoco.mjv_updateScene(
                m,
                d,
                self._option,
                self._perturb,
                self._cam,
                mujoco.mjtCatBit.mjCAT_ALL,
                self._scene,
            )
            viewport = mujoco.MjrRect((i % self.cols) * w, (i // self.cols) * h, w, h)
            mujoco.mjr_render(viewport, self._scene, self._context)
        rows = -(-qpos.shape[0] // self.cols)
        sheet = self._sheet[: rows * h]
        mujoco.mjr_readPixels(
            sheet, None, mujoco.MjrRect(0, 0, self.cols * w, rows * h), self._context
        )
        # GL rows run bottom-up: flip the sheet, then the tile rows come out top-down reversed.
        tiles = sheet[::-1].reshape(rows, h, self.cols, w, 3).transpose(0, 2, 1, 3, 4)[::-1]
        return tiles.reshape(rows * self.cols, h, w, 3)[: qpos.shape[0]]

    def close(self) -> None:
        """Release the GL context (idempotent)."""
        self._finalizer()


def _free(context: mujoco.MjrContext, gl) -> None:
    gl.make_current()
    context.free()
    gl.free()
