"""Camera frames of the embedded env: spec, real content, one tile per env, resets, GL choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from torchrl.envs.utils import check_env_specs

from dreamer.env.mujoco_env import MujocoBatchedEnv
from dreamer.env.mujoco_render import (
    MujocoCamera,
    camera_settings,
    isaac_quat_to_mujoco_camera,
    pick_gl_backend,
)
from dreamer.env.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def ant():
    env = MujocoBatchedEnv("Isaac-Ant-v0", 3, seed=0, pixels=SMALL)
    yield env
    env.close()


def test_pixels_spec_matches_isaac_layout_and_env_output(ant):
    spec = ant.observation_spec["pixels"]
    assert spec.shape == (3, 32, 32, 3) and spec.dtype == torch.uint8
    assert spec.space.low.min() == 0 and spec.space.high.max() == 255
    td = ant.reset()
    assert td["pixels"].shape == (3, 32, 32, 3) and td["pixels"].dtype == torch.uint8
    check_env_specs(ant, seed=0)


def test_frames_show_the_robot_and_change_when_it_moves(ant):
    td = ant.reset()
    frames = td["pixels"].float()
    # A blank or flat frame has ~0 spread; the Ant on a checker floor has tens of grey levels.
    assert frames.std(dim=(1, 2, 3)).min() > 10
    qpos, qvel = ant.get_physics_state()
    # Envs 0 and 2 in one state, env 1 with bent legs: tiles must not mix envs up.
    qpos[2] = qpos[0]
    qpos[1, 7:] = qpos[0, 7:] + np.array([0.6, 1.2, -0.6, -1.2, 0.6, -1.2, -0.6, 1.2])
    ant.set_physics_state(qpos, np.zeros_like(qvel))
    td["action"] = torch.zeros(3, 8)
    moved = ant.step(td)["next", "pixels"].float()
    assert (moved[0] - moved[2]).abs().mean() < 1.0  # same state, same picture
    assert (moved[1] - moved[0]).abs().mean() > 2.0  # legs moved, picture changed


def test_camera_follows_the_robot_so_the_floor_moves(ant):
    ant.reset()
    qpos, qvel = ant.get_physics_state()
    shifted = qpos.copy()
    shifted[:, 0] += 0.25  # half a checker square along the camera's view
    before = ant.camera.render(qpos)
    after = ant.camera.render(shifted)
    assert np.abs(before.astype(int) - after).mean() > 2.0


def test_the_floor_is_drawn_wherever_the_robot_walks(ant):
    qpos, _ = ant.get_physics_state()
    here = ant.camera.render(qpos[:1])
    far = qpos[:1].copy()
    far[0, :2] += [300.0, -120.0]  # far beyond the drawn floor's 20 m half size
    there = ant.camera.render(far)
    # Same pose on the same checker phase (whole periods away): the same picture.
    assert np.abs(here.astype(int) - there).mean() < 1.0


def test_partial_reset_renders_only_the_reset_envs(ant):
    td = ant.reset()
    td["action"] = torch.rand(3, 8) * 2 - 1
    for _ in range(3):
        td = ant.step(td)["next"].clone()
        td["action"] = torch.rand(3, 8) * 2 - 1
    last = td["pixels"].clone()
    out = ant.reset(td.set("_reset", torch.tensor([[True], [False], [False]])))
    torch.testing.assert_close(out["pixels"][1:], last[1:], rtol=0, atol=0)
    qpos, _ = ant.get_physics_state()
    fresh = torch.from_numpy(ant.camera.render(qpos[:1]))
    torch.testing.assert_close(out["pixels"][:1], fresh, rtol=0, atol=0)


def test_no_camera_unless_asked():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 2, seed=0)
    assert "pixels" not in env.observation_spec.keys() and env.camera is None
    assert "pixels" not in env.reset().keys()


def test_cartpole_frames_follow_the_cart():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 2, seed=0, pixels=SMALL)
    env.reset()
    qpos = np.array([[-1.0, 0.0], [1.0, 0.0]])
    frames = env.camera.render(qpos)
    env.close()
    columns = [np.argwhere(f.sum(-1) > 60)[:, 1].mean() for f in frames]
    # The camera looks along +x, so world +y (the cart's axis) is image left.
    assert columns[0] > columns[1] + 5


def test_gl_backend_choice(monkeypatch):
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert pick_gl_backend("cuda") == "osmesa"
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    with pytest.raises(ValueError, match="MUJOCO_GL=egl"):
        pick_gl_backend("cpu")
    monkeypatch.delenv("MUJOCO_GL")
    assert pick_gl_backend("cuda:0") == "egl"
    assert pick_gl_backend("cpu") in ("egl", "osmesa")


def test_isaac_world_convention_maps_to_mujoco_camera_axes():
    import mujoco

    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, isaac_quat_to_mujoco_camera((0, 0, 0, 1)))
    mat = mat.reshape(3, 3)  # columns: camera x, y, z in the world
    np.testing.assert_allclose(-mat[:, 2], [1, 0, 0], atol=1e-9)  # looks along +x
    np.testing.assert_allclose(mat[:, 1], [0, 0, 1], atol=1e-9)  # up is +z
    mujoco.mju_quat2Mat(mat.reshape(-1), isaac_quat_to_mujoco_camera((0, 0.23, 0, 0.9732)))
    view = -mat.reshape(3, 3)[:, 2]
    assert view[0] > 0.85 and view[2] < -0.4  # the default pose looks forward and down


def test_bad_camera_settings_are_rejected():
    with pytest.raises(ValueError, match="height/width"):
        camera_settings({"height": 4})
    with pytest.raises(ValueError, match="rot"):
        camera_settings({"rot": [0, 0, 1]})


def test_tile_equals_mujoco_renderer_image():
    """Our one-sheet rendering draws exactly what ``mujoco.Renderer`` draws for each env."""
    script = f"""
import json, mujoco, numpy as np
from dreamer.env.mujoco_render import MujocoCamera, CAMERA_NAME
cam = MujocoCamera({str(TASKS["Isaac-Ant-v0"].xml_path)!r}, 3, {SMALL!r})
qpos = np.tile(cam.model.qpos0, (3, 1))
qpos[:, 0] = [0.0, 0.3, -0.4]
qpos[1, 7:] += 0.5
tiles = cam.render(qpos)
renderer = mujoco.Renderer(cam.model, 32, 32)
for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX"):
    renderer.scene.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
diffs = []
for i in range(3):
    data = mujoco.MjData(cam.model)
    data.qpos[:] = qpos[i]
    mujoco.mj_forward(cam.model, data)
    renderer.update_scene(data, CAMERA_NAME)
    diffs.append(int(np.abs(renderer.render().astype(int) - tiles[i]).max()))
print(json.dumps({{"diffs": diffs, "std": float(tiles.std())}}))
"""
    env = subprocess_env(MUJOCO_GL=pick_gl_backend("cpu"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["diffs"] == [0, 0, 0] and result["std"] > 10


def test_closed_camera_refuses_to_render():
    cam = MujocoCamera(TASKS["Isaac-Cartpole-v0"].xml_path, 1, SMALL)
    cam.close()
    with pytest.raises(RuntimeError, match="closed"):
        cam.render(np.zeros((1, 2)))
