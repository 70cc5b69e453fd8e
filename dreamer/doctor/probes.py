"""Render probes the doctor runs in a child process (a broken GL stack can hang or crash it).

Run as a file, not as a module, so the child needs nothing of this project on its path:

    python probes.py mujoco      # MuJoCo offscreen render with the GL backend in MUJOCO_GL
    python probes.py isaaclab    # Newton's warp camera, the renderer of Isaac Lab 3 kit-less

Each prints one JSON line: image ``shape``, ``colors`` (distinct pixel values), ``renderer``.
"""

from __future__ import annotations

import json
import sys

# A red sphere under a light, seen from the front: any working renderer draws several colours.
SCENE_XML = """
<mujoco>
  <worldbody>
    <light pos="0 -1 3" dir="0 0.3 -1"/>
    <geom type="sphere" size="0.3" rgba="0.9 0.1 0.1 1"/>
    <camera name="front" pos="0 -1.5 0" xyaxes="1 0 0 0 0 1"/>
  </worldbody>
</mujoco>
"""


def probe_mujoco() -> dict:
    """Render the scene offscreen through the GL backend named by ``MUJOCO_GL``."""
    import mujoco
    import numpy as np

    model = mujoco.MjModel.from_xml_string(SCENE_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    with mujoco.Renderer(model, 64, 64) as renderer:
        renderer.update_scene(data, camera="front")
        image = renderer.render()
        try:  # the context is still current: ask which GL implementation drew it
            from OpenGL import GL

            name = GL.glGetString(GL.GL_RENDERER)
            renderer_name = name.decode() if name else "unknown"
        except Exception as exc:  # noqa: BLE001 - the name is only informative
            renderer_name = f"unknown ({type(exc).__name__})"
    colors = len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))
    return {"shape": list(image.shape), "colors": int(colors), "renderer": renderer_name}


def probe_isaaclab() -> dict:
    """Ray-trace a sphere with Newton's tiled camera on the GPU (CPU when warp sees none)."""
    import newton
    import numpy as np
    import warp as wp
    from newton.sensors import SensorTiledCamera

    device = "cuda:0" if wp.get_cuda_device_count() > 0 else "cpu"
    builder = newton.ModelBuilder()
    body = builder.add_body(xform=wp.transform((0.0, 0.0, 0.0), wp.quat_identity()))
    builder.add_shape_sphere(body, radius=0.5)
    model = builder.finalize(device=device)
    camera = SensorTiledCamera(model)
    rays = camera.utils.compute_camera_rays_pinhole(32, 32, camera_fovs=0.8)
    color = camera.utils.create_color_image_output(32, 32)
    # 3 m in front of the sphere, looking at it
    pose = wp.transformf((0.0, -3.0, 0.0), wp.quat_from_axis_angle(wp.vec3(1.0, 0.0, 0.0), 1.5708))
    poses = wp.array([[pose]], dtype=wp.transformf, device=device)
    camera.update(model.state(), poses, rays, color_image=color)
    image = color.numpy()
    return {
        "shape": list(image.shape),
        "colors": int(len(np.unique(image))),
        "renderer": f"Newton warp ray tracer on {device}",
    }


if __name__ == "__main__":
    probe = {"mujoco": probe_mujoco, "isaaclab": probe_isaaclab}[sys.argv[1]]
    print(json.dumps(probe()))
