"""Build an offline Isaac asset root for Isaac-Ant and Isaac-Cartpole from installed wheels.

Isaac Lab resolves ``{ISAAC_NUCLEUS_DIR}`` to a cloud bucket unless ``ISAACSIM_ASSET_ROOT`` points
at a local directory. Offline (these machines, CI) Isaac-Ant and Isaac-Cartpole need these files under
that root, which this module writes:

- ``Isaac/Robots/IsaacSim/Ant/ant_instanceable.usd``: the ``newton`` wheel's
  ``newton/examples/assets/ant.usda`` (same body and joint names as Isaac's Ant), with the body
  densities raised from 1 to the MJCF's 5 kg/m^3 so its mass matches ``nv_ant.xml`` (0.91 kg),
  and the prims outside its default prim (a light, a physics scene) dropped.
- ``Isaac/IsaacLab/Robots/Classic/Cartpole/cartpole.usd``: the ``newton`` wheel's
  ``cartpole_single_pendulum.usda`` (a flattened copy of Isaac Lab's own cartpole, same joint
  names) with its default prim pointed at the ``/cartpole`` articulation (the file names a
  ``cartPole`` prim that does not exist, so a reference to it would load nothing).
- ``Isaac/IsaacLab/Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda``:
  a small ground plane written from scratch with the prim layout Isaac Lab's
  ``spawn_ground_plane`` edits (collision ``Plane``, ``Environment/Geometry`` mesh, ``Looks``).

Usage: ``python -m dreamer.env.isaac_assets.build_asset_root OUT_DIR [--force]``.
Needs ``pxr`` (usd-core); mujoco (optional) cross-checks the MJCF mass. See README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

ASSET_ROOT_ENV_VAR = "DREAMER_ISAAC_ASSET_ROOT"
ANT_REL = Path("Isaac/Robots/IsaacSim/Ant/ant_instanceable.usd")
CARTPOLE_REL = Path("Isaac/IsaacLab/Robots/Classic/Cartpole/cartpole.usd")
GROUND_REL = Path(
    "Isaac/IsaacLab/Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda"
)
MANIFEST = ".dreamer_asset_root.json"
# Bump when the produced files change, so stale cached roots are rebuilt.
BUILDER_VERSION = 2


def default_asset_root() -> Path:
    """Where :func:`ensure_asset_root` builds the root when no directory is configured."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "dreamer-isaaclab" / f"isaac_asset_root_v{BUILDER_VERSION}"


def _newton_assets_dir() -> Path:
    # find_spec on a top-level package does not execute it (newton imports warp, which is slow).
    spec = importlib.util.find_spec("newton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The 'newton' wheel is needed to build the Isaac asset root (pip install newton)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "examples" / "assets"
    for name in ("ant.usda", "cartpole_single_pendulum.usda"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found in the installed newton wheel.")
    return path


def _mjcf_geom_density(mjcf: Path) -> float:
    """The default geom density of an MJCF file (MuJoCo's own default is 1000)."""
    root = ET.parse(mjcf).getroot()
    for geom in root.iter("geom"):
        if geom.get("density") is not None and geom.get("name") is None:
            return float(geom.get("density"))
    return 1000.0


def _mjcf_total_mass(mjcf: Path) -> float | None:
    if importlib.util.find_spec("mujoco") is None:
        return None
    import mujoco

    model = mujoco.MjModel.from_xml_path(str(mjcf))
    return float(model.body_mass.sum())


def usd_total_mass(stage) -> float:
    """Mass of all rigid bodies from their collision spheres/capsules and densities (kg)."""
    from pxr import Usd, UsdGeom, UsdPhysics

    total = 0.0
    for prim in stage.Traverse():
        if not prim.HasAPI(UsdPhysics.RigidBodyAPI):
            continue
        density = UsdPhysics.MassAPI(prim).GetDensityAttr().Get() or 0.0
        for child in Usd.PrimRange(prim):
            if not child.HasAPI(UsdPhysics.CollisionAPI):
                continue
            if child.IsA(UsdGeom.Sphere):
                r = UsdGeom.Sphere(child).GetRadiusAttr().Get()
                volume = 4.0 / 3.0 * math.pi * r**3
            elif child.IsA(UsdGeom.Capsule):
                cap = UsdGeom.Capsule(child)
                r, h = cap.GetRadiusAttr().Get(), cap.GetHeightAttr().Get()
                volume = math.pi * r**2 * h + 4.0 / 3.0 * math.pi * r**3
            else:
                raise ValueError(f"Unexpected collision prim type at {child.GetPath()}")
            total += density * volume
    return total


def _build_ant(src: Path, dst: Path, density: float) -> dict[str, float]:
    from pxr import Usd, UsdPhysics

    stage = Usd.Stage.Open(str(src))
    mass_before = usd_total_mass(stage)
    default_prim = stage.GetDefaultPrim()
    # Referencing only brings the default prim in; drop the rest so the file holds just the robot.
    for prim in list(stage.GetPseudoRoot().GetChildren()):
        if prim != default_prim:
            stage.RemovePrim(prim.GetPath())
    for prim in stage.Traverse():
        if prim.HasAPI(UsdPhysics.RigidBodyAPI):
            UsdPhysics.MassAPI.Apply(prim).CreateDensityAttr().Set(density)
    mass_after = usd_total_mass(stage)
    layer = stage.GetRootLayer()
    layer.customLayerData = {
        "dreamer_source": f"newton wheel: newton/examples/assets/{src.name}",
        "dreamer_note": f"body densities set to {density} (nv_ant.xml geom density)",
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    layer.Export(str(dst))
    return {"usd_mass_source_kg": mass_before, "usd_mass_built_kg": mass_after}


def _build_cartpole(src: Path, dst: Path) -> None:
    from pxr import Usd

    stage = Usd.Stage.Open(str(src))
    # Keep the top-level "over" prims: the bodies' instanceable collision prims reference them.
    stage.SetDefaultPrim(stage.GetPrimAtPath("/cartpole"))
    layer = stage.GetRootLayer()
    layer.customLayerData = {
        "dreamer_source": f"newton wheel: newton/examples/assets/{src.name}",
        "dreamer_note": "default prim set to /cartpole",
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    layer.Export(str(dst))


def _build_ground(dst: Path) -> None:
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdPhysics, UsdShade, Vt

    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/GroundPlane")
    stage.SetDefaultPrim(root.GetPrim())
    # Collision: an infinite plane; spawn_ground_plane binds its physics material to the first
    # child prim of type "Plane".
    plane = UsdGeom.Plane.Define(stage, "/GroundPlane/CollisionPlane")
    plane.CreateAxisAttr(UsdGeom.Tokens.z)
    plane.CreateWidthAttr(100.0)
    plane.CreateLengthAttr(100.0)
    plane.CreatePurposeAttr(UsdGeom.Tokens.guide)
    UsdPhysics.CollisionAPI.Apply(plane.GetPrim())
    # Visual: a 100 m quad under Environment, which spawn_ground_plane scales to cfg.size/100 and
    # whose "st" primvar it rescales (it expects both to exist).
    env = UsdGeom.Xform.Define(stage, "/GroundPlane/Environment")
    env.AddScaleOp().Set(Gf.Vec3f(1.0, 1.0, 1.0))
    mesh = UsdGeom.Mesh.Define(stage, "/GroundPlane/Environment/Geometry")
    h = 50.0
    mesh.CreatePointsAttr(Vt.Vec3fArray([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)]))
    mesh.CreateFaceVertexCountsAttr([4])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 2, 3])
    mesh.CreateNormalsAttr(Vt.Vec3fArray([(0, 0, 1)] * 4))
    mesh.CreateExtentAttr(Vt.Vec3fArray([(-h, -h, 0), (h, h, 0)]))
    mesh.CreateDisplayColorAttr(Vt.Vec3fArray([(0.35, 0.37, 0.40)]))
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar(
        "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex
    )
    st.Set(Vt.Vec2fArray([(-25, -25), (25, -25), (25, 25), (-25, 25)]))
    # Looks/theGrid/Shader: spawn_ground_plane writes inputs:diffuse_tint there when cfg.color is set.
    material = UsdShade.Material.Define(stage, "/GroundPlane/Looks/theGrid")
    shader = UsdShade.Shader.Define(stage, "/GroundPlane/Looks/theGrid/Shader")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(0.35, 0.37, 0.40))
    material.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
    stage.GetRootLayer().customLayerData = {"dreamer_source": "written by build_asset_root.py"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    stage.GetRootLayer().Export(str(dst))


def _is_complete(root: Path) -> bool:
    manifest = root / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("builder_version") == BUILDER_VERSION and all(
        (root / rel).is_file() for rel in (ANT_REL, CARTPOLE_REL, GROUND_REL)
    )


def build_asset_root(out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the Isaac-Ant and Isaac-Cartpole asset files under ``out_dir`` (no-op when already built); returns it."""
    root = Path(out_dir).expanduser().resolve()
    if not force and _is_complete(root):
        return root
    if importlib.util.find_spec("pxr") is None:
        raise ImportError("Building the Isaac asset root needs pxr (pip install usd-core).")
    assets = _newton_assets_dir()
    mjcf = assets / "nv_ant.xml"
    density = _mjcf_geom_density(mjcf)
    info = _build_ant(assets / "ant.usda", root / ANT_REL, density)
    _build_cartpole(assets / "cartpole_single_pendulum.usda", root / CARTPOLE_REL)
    _build_ground(root / GROUND_REL)
    info.update(
        builder_version=BUILDER_VERSION,
        mjcf_mass_kg=_mjcf_total_mass(mjcf),
        mjcf_geom_density=density,
        files=[str(ANT_REL), str(CARTPOLE_REL), str(GROUND_REL)],
    )
    (root / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    return root


def ensure_asset_root(root: str | os.PathLike | None = None) -> Path:
    """The configured asset root (``DREAMER_ISAAC_ASSET_ROOT`` or the cache default), built if needed."""
    if root is None:
        root = os.environ.get(ASSET_ROOT_ENV_VAR) or default_asset_root()
    return build_asset_root(root)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=None, help="default: the cache location")
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    root = build_asset_root(args.out_dir or default_asset_root(), force=args.force)
    print(f"asset root: {root}")
    print((root / MANIFEST).read_text())


if __name__ == "__main__":
    main()
