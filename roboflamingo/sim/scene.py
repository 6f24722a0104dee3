"""Scene files (``envs/scenes/<name>.yaml``): loading, validation, and the desk URDF built from them.

A scene fixes where the furniture stands, its colours and the block sizes; everything the simulator,
the scripted expert and the long-horizon initial states need about the world's geometry comes from
here, so scenes A-D differ only by their YAML file. Errors name the file and the field.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from roboflamingo.io import atomic_write_text
from roboflamingo.robots.calvin import BLOCK_COLORS as BLOCKS
from roboflamingo.robots.calvin import (
    BLOCK_NAMES as BLOCK_NAMES,  # re-exported: sim code names blocks by scene,
)

SURFACES = ("table", "slider_left", "slider_right")
TEXTURES = ("none", "checker", "stripes")

# Fixed furniture dimensions shared by all scenes (the YAML moves and recolours furniture).
TOP_THICKNESS = 0.03
DRAWER_HEIGHT = 0.075  # outer height of the drawer box under the desk top
DRAWER_WALL = 0.01
HANDLE_GAP = 0.035  # room between the drawer front and its handle bar for the closed fingers
HANDLE_DEPTH = 0.09  # how far the handle bar stands in front of the drawer front
BUTTON_SIZE = 0.04
BUTTON_HOUSING = 0.06
SWITCH_KNOB = (0.03, 0.02, 0.04)
DOOR_THICKNESS = 0.02
DOOR_KNOB = (0.03, 0.03, 0.04)
PEDESTAL_DROP = 0.10  # the robot base sits this far below the desk top


def envs_dir() -> Path:
    """The declarative world definitions: ``$ROBOFLAMINGO_ENVS_DIR`` or the package's ``roboflamingo/envs/``."""
    from roboflamingo.resources import ENVS, package_data_dir

    return package_data_dir(ENVS, "ROBOFLAMINGO_ENVS_DIR")


class SceneError(ValueError):
    """A scene file is missing or invalid; the message names the file and the field."""


@dataclass(frozen=True)
class BlockSpec:
    name: str
    size: tuple[float, float, float]
    color: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """A validated scene file. Attribute names follow the YAML keys; ``raw`` keeps the whole file."""

    name: str
    path: str
    raw: dict[str, Any]

    # --- derived geometry used by the env, the expert and the chains ---
    @property
    def table_height(self) -> float:
        return float(self.raw["table"]["height"])

    @property
    def robot_base(self) -> np.ndarray:
        x, y = self.raw["robot"]["base"]
        return np.array([x, y, self.table_height - PEDESTAL_DROP])

    @property
    def neutral_joints(self) -> np.ndarray:
        return np.array(self.raw["robot"]["neutral_joints"], dtype=float)

    @property
    def plank_top(self) -> float:
        return self.table_height + float(self.raw["plank"]["height"])

    @property
    def blocks(self) -> dict[str, BlockSpec]:
        return {
            f"{c}_block": BlockSpec(f"{c}_block", tuple(self.raw["blocks"][c]["size"]), tuple(self.raw["blocks"][c]["color"]))
            for c in BLOCKS
        }

    def surface_z(self, surface: str) -> float:
        """Height of the surface a block rests on (block centre = this + half its height)."""
        return self.plank_top if surface.startswith("slider") else self.table_height

    def drawer_geometry(self) -> dict[str, float]:
        d = self.raw["drawer"]
        front_y = float(self.raw["table"]["y"][0])
        top = self.table_height - TOP_THICKNESS - 0.005
        return {
            "x": float(d["x"]), "width": float(d["width"]), "depth": float(d["depth"]),
            "travel": float(d["travel"]), "front_y": front_y, "top": top,
            "bottom": top - DRAWER_HEIGHT,
            "handle_z": top - 0.035,
            "handle_y": front_y - HANDLE_DEPTH,  # handle bar centre line when closed
        }

    def door_geometry(self) -> dict[str, float]:
        d = self.raw["door"]
        p = self.raw["plank"]
        y = float(p["y"][1]) + DOOR_THICKNESS / 2 + 0.005
        top = self.plank_top + float(d["height"])
        return {
            "x": float(d["x"]), "width": float(d["width"]), "travel": float(d["travel"]), "y": y,
            "top": top, "knob_z": top + DOOR_KNOB[2] / 2,
        }

    def button_geometry(self) -> dict[str, float]:
        b = self.raw["button"]
        t = self.table_height
        return {"x": float(b["pos"][0]), "y": float(b["pos"][1]), "travel": float(b["travel"]),
                "top": t + 0.02 + BUTTON_SIZE / 2}

    def switch_geometry(self) -> dict[str, float]:
        s = self.raw["switch"]
        return {"x": float(s["pos"][0]), "y": float(s["pos"][1]), "travel": float(s["travel"]),
                "knob_z": self.table_height + 0.01 + SWITCH_KNOB[2] / 2}

    def region(self, surface: str) -> tuple[tuple[float, float], tuple[float, float]]:
        (x0, x1), (y0, y1) = self.raw["surfaces"][surface]
        return (x0, x1), (y0, y1)


def workspace_bounds(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Where the target TCP may go: above the desk and in front of it, down into the open drawer."""
    t = scene.table_height
    (x0, x1), (y0, y1) = scene.raw["table"]["x"], scene.raw["table"]["y"]
    return np.array([x0, y0 - 0.40, t - 0.10]), np.array([x1, y1, t + 0.45])


def _fail(path: str, field: str, msg: str) -> SceneError:
    return SceneError(f"{path}: field '{field}' {msg}")


def _num_list(path: str, field: str, value: Any, n: int) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise _fail(path, field, f"must be a list of {n} numbers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise _fail(path, field, f"must be a list of {n} numbers, got {value!r}")


def _positive(path: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(path, field, f"must be a number > 0, got {value!r}")


def _get(path: str, raw: dict, field: str) -> Any:
    node: Any = raw
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            raise _fail(path, field, "is missing")
        node = node[part]
    return node


def validate_scene(raw: Any, path: str) -> Scene:
    """Check every field the simulator reads; raise a SceneError naming the file and the field."""
    if not isinstance(raw, dict):
        raise SceneError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    name = _get(path, raw, "name")
    if not isinstance(name, str) or not name:
        raise _fail(path, "name", f"must be a non-empty string, got {name!r}")
    for field in ("table.height", "plank.height", "door.width", "door.height", "door.travel", "drawer.width",
                  "drawer.depth", "drawer.travel", "button.travel", "switch.travel"):
        _positive(path, field, _get(path, raw, field))
    for field in ("table.x", "table.y", "robot.base", "plank.x", "plank.y", "button.pos", "led.pos",
                  "switch.pos", "lightbulb.pos"):
        _num_list(path, field, _get(path, raw, field), 2)
    _num_list(path, "robot.neutral_joints", _get(path, raw, "robot.neutral_joints"), 7)
    for field in ("table.color", "table.leg_color", "floor_color", "plank.color", "door.color", "drawer.color",
                  "button.color", "switch.color"):
        _num_list(path, field, _get(path, raw, field), 4)
    for field in ("door.x", "drawer.x"):
        v = _get(path, raw, field)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(path, field, f"must be a number, got {v!r}")
    texture = _get(path, raw, "table.texture")
    if texture not in TEXTURES:
        raise _fail(path, "table.texture", f"must be one of {list(TEXTURES)}, got {texture!r}")
    for c in BLOCKS:
        _num_list(path, f"blocks.{c}.size", _get(path, raw, f"blocks.{c}.size"), 3)
        _num_list(path, f"blocks.{c}.color", _get(path, raw, f"blocks.{c}.color"), 4)
        size = _get(path, raw, f"blocks.{c}.size")
        if min(size) <= 0 or size[1] > 0.07:
            raise _fail(path, f"blocks.{c}.size", f"must be positive with a width (middle value) <= 0.07 m "
                        f"so the Panda can grasp it, got {size!r}")
    for s in SURFACES:
        region = _get(path, raw, f"surfaces.{s}")
        if not isinstance(region, list) or len(region) != 2:
            raise _fail(path, f"surfaces.{s}", f"must be [[x0, x1], [y0, y1]], got {region!r}")
        for axis, r in zip("xy", region):
            _num_list(path, f"surfaces.{s}", r, 2)
            if not r[0] <= r[1]:
                raise _fail(path, f"surfaces.{s}", f"{axis} range must be increasing, got {r!r}")
    table_slots = _get(path, raw, "slots.table")
    if not isinstance(table_slots, list) or len(table_slots) != 2:
        raise _fail(path, "slots.table", f"must be two [x, y] positions, got {table_slots!r}")
    for xy in table_slots:
        _num_list(path, "slots.table", xy, 2)
    for s in ("slider_left", "slider_right"):
        _num_list(path, f"slots.{s}", _get(path, raw, f"slots.{s}"), 2)
    cam = _get(path, raw, "cameras.static")
    for key in ("look_from", "look_at", "up"):
        _num_list(path, f"cameras.static.{key}", _get(path, raw, f"cameras.static.{key}"), 3)
    _positive(path, "cameras.static.fov", cam.get("fov"))
    return Scene(name=name, path=path, raw=raw)


_CACHE: dict[str, Scene] = {}


def scene_path(scene: str) -> Path:
    """``scene`` is a name from ``envs/scenes/`` (A, B, C, D) or a path to a YAML file."""
    p = Path(scene)
    if p.suffix in (".yaml", ".yml"):
        return p
    return envs_dir() / "scenes" / f"{scene}.yaml"


def available_scenes() -> list[str]:
    return sorted(p.stem for p in (envs_dir() / "scenes").glob("*.yaml"))


def load_scene(scene: str) -> Scene:
    path = scene_path(scene)
    key = str(path.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not path.is_file():
        raise SceneError(f"{path}: scene file not found (field 'scene' = {scene!r}; "
                         f"available: {available_scenes()})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SceneError(f"{path}: not valid YAML ({e})") from e
    spec = validate_scene(raw, str(path))
    _CACHE[key] = spec
    return spec


# --------------------------------------------------------------------------------------------------
# Desk URDF. Every movable part is a prismatic joint of one multibody named like CALVIN's
# (base__slide, base__drawer, base__button, base__switch), so contacts name (table, <link>) pairs.
# --------------------------------------------------------------------------------------------------


def _box(xyz, size, rgba=None, collision=True) -> str:
    pos = " ".join(f"{v:.5f}" for v in xyz)
    sz = " ".join(f"{v:.5f}" for v in size)
    out = ""
    if rgba is not None:
        color = " ".join(f"{v:.3f}" for v in rgba)
        out += (f'<visual><origin xyz="{pos}"/><geometry><box size="{sz}"/></geometry>'
                f'<material name="m{zlib.crc32((pos + sz + color).encode())}"><color rgba="{color}"/></material></visual>')
    if collision:
        out += f'<collision><origin xyz="{pos}"/><geometry><box size="{sz}"/></geometry></collision>'
    return out


def _sphere(xyz, r, rgba) -> str:
    pos = " ".join(f"{v:.5f}" for v in xyz)
    color = " ".join(f"{v:.3f}" for v in rgba)
    return (f'<visual><origin xyz="{pos}"/><geometry><sphere radius="{r:.4f}"/></geometry>'
            f'<material name="s{zlib.crc32((pos + color).encode())}"><color rgba="{color}"/></material></visual>')


def _link(name: str, body: str, mass: float = 0.5) -> str:
    inertia = '<inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.001"/>'
    return f'<link name="{name}"><inertial><mass value="{mass}"/>{inertia}</inertial>{body}</link>'


def _joint(name: str, child: str, kind: str, axis=(0, 0, 0), upper: float = 0.0) -> str:
    ax = " ".join(str(a) for a in axis)
    limit = f'<limit lower="0" upper="{upper:.4f}" effort="1000" velocity="10"/>' if kind == "prismatic" else ""
    axis_tag = f'<axis xyz="{ax}"/>' if kind == "prismatic" else ""
    return (f'<joint name="{name}" type="{kind}"><parent link="base_link"/><child link="{child}"/>'
            f'<origin xyz="0 0 0"/>{axis_tag}{limit}</joint>')


def desk_urdf(scene: Scene) -> str:
    """The desk with its shelf, sliding door, drawer, button, LED, switch and light bulb."""
    r = scene.raw
    t = scene.table_height
    (x0, x1), (y0, y1) = r["table"]["x"], r["table"]["y"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top = t - TOP_THICKNESS / 2
    leg = 0.04
    legs = "".join(
        _box((x, y, (t - TOP_THICKNESS) / 2), (leg, leg, t - TOP_THICKNESS), r["table"]["leg_color"])
        for x in (x0 + leg / 2, x1 - leg / 2) for y in (y0 + leg / 2, y1 - leg / 2)
    )
    base = _box((cx, cy, top), (x1 - x0, y1 - y0, TOP_THICKNESS), r["table"]["color"]) + legs
    # the back panel gives the door something to slide along and the static camera a background
    base += _box((cx, y1 - 0.01, t + 0.09), (x1 - x0, 0.02, 0.18), [0.9, 0.9, 0.88, 1.0])
    b = scene.button_geometry()
    base += _box((b["x"], b["y"], t + 0.01), (BUTTON_HOUSING, BUTTON_HOUSING, 0.02), [0.3, 0.3, 0.3, 1.0])
    s = scene.switch_geometry()
    base += _box((s["x"], s["y"] + s["travel"] / 2, t + 0.005), (0.05, s["travel"] + 0.06, 0.01), [0.3, 0.3, 0.3, 1])
    lx, ly = r["lightbulb"]["pos"]
    base += _box((lx, ly, t + 0.05), (0.02, 0.02, 0.10), [0.3, 0.3, 0.3, 1.0])

    p = r["plank"]
    plank = _box(((p["x"][0] + p["x"][1]) / 2, (p["y"][0] + p["y"][1]) / 2, t + p["height"] / 2),
                 (p["x"][1] - p["x"][0], p["y"][1] - p["y"][0], p["height"]), p["color"])

    d = scene.door_geometry()
    door_h = r["door"]["height"]
    door = _box((d["x"], d["y"], scene.plank_top + door_h / 2), (d["width"], DOOR_THICKNESS, door_h), r["door"]["color"])
    door += _box((d["x"], d["y"], d["knob_z"]), DOOR_KNOB, [0.2, 0.2, 0.2, 1.0])

    g = scene.drawer_geometry()
    w, dep, hgt, wall = g["width"], g["depth"], DRAWER_HEIGHT, DRAWER_WALL
    zc = g["bottom"] + hgt / 2
    col = r["drawer"]["color"]
    fy = g["front_y"]
    drawer = _box((g["x"], fy + dep / 2, g["bottom"] + wall / 2), (w, dep, wall), col)
    drawer += _box((g["x"], fy + wall / 2, zc), (w, wall, hgt), col)  # front
    drawer += _box((g["x"], fy + dep - wall / 2, zc), (w, wall, hgt), col)  # back
    drawer += _box((g["x"] - w / 2 + wall / 2, fy + dep / 2, zc), (wall, dep, hgt), col)
    drawer += _box((g["x"] + w / 2 - wall / 2, fy + dep / 2, zc), (wall, dep, hgt), col)
    # U-shaped handle: a bar in front of the drawer, held by two posts, with a gap for the fingers
    bar_y = g["handle_y"]
    drawer += _box((g["x"], bar_y, g["handle_z"]), (0.12, 0.012, 0.02), [0.2, 0.2, 0.2, 1.0])
    for side in (-1, 1):
        drawer += _box((g["x"] + side * 0.055, (bar_y + fy) / 2, g["handle_z"]), (0.01, fy - bar_y, 0.02),
                       [0.2, 0.2, 0.2, 1.0])

    button = _box((b["x"], b["y"], b["top"] - BUTTON_SIZE / 4), (BUTTON_SIZE, BUTTON_SIZE, BUTTON_SIZE / 2),
                  r["button"]["color"])
    switch = _box((s["x"], s["y"], s["knob_z"]), SWITCH_KNOB, r["switch"]["color"])
    ledx, ledy = r["led"]["pos"]
    led = _box((ledx, ledy, t + 0.004), (0.04, 0.04, 0.008), [1, 1, 1, 1], collision=False)
    light = _sphere((lx, ly, t + 0.12), 0.03, [1, 1, 1, 1])

    links = [
        _link("base_link", base, mass=0.0),
        _link("plank_link", plank, 0.1), _link("slide_link", door), _link("drawer_link", drawer),
        _link("button_link", button, 0.1), _link("switch_link", switch, 0.1),
        _link("led_link", led, 0.01), _link("light_link", light, 0.01),
    ]
    joints = [
        _joint("base__plank", "plank_link", "fixed"),
        _joint("base__slide", "slide_link", "prismatic", (-1, 0, 0), r["door"]["travel"]),
        _joint("base__drawer", "drawer_link", "prismatic", (0, -1, 0), r["drawer"]["travel"]),
        _joint("base__button", "button_link", "prismatic", (0, 0, -1), r["button"]["travel"]),
        _joint("base__switch", "switch_link", "prismatic", (0, 1, 0), r["switch"]["travel"]),
        _joint("base__led", "led_link", "fixed"),
        _joint("base__light", "light_link", "fixed"),
    ]
    return f'<?xml version="1.0"?><robot name="table">{"".join(links)}{"".join(joints)}</robot>'


def block_urdf(spec: BlockSpec) -> str:
    body = _box((0, 0, 0), spec.size, spec.color)
    inertia = '<inertia ixx="0.0001" ixy="0" ixz="0" iyy="0.0001" iyz="0" izz="0.0001"/>'
    link = (f'<link name="base_link"><contact><lateral_friction value="1.0"/><spinning_friction value="0.001"/>'
            f'</contact><inertial><mass value="0.2"/>{inertia}</inertial>{body}</link>')
    return f'<?xml version="1.0"?><robot name="{spec.name}">{link}</robot>'


def write_urdf(text: str) -> str:
    """Write a generated URDF once into a per-user cache (content-addressed, so processes can share it)."""
    root = Path(os.environ.get("ROBOFLAMINGO_CACHE", Path(tempfile.gettempdir()) / f"roboflamingo-{os.getuid()}"))
    path = root / "urdf" / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.urdf"
    if not path.is_file():
        atomic_write_text(path, text)
    return str(path)


def _png(img: np.ndarray) -> bytes:
    """A minimal RGB PNG encoder (PyBullet's texture loader takes PNG, not PPM)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_texture(kind: str, color) -> str:
    """A 64x64 PNG desk texture, checker or stripes, in two shades of the desk colour."""
    base = np.array(color[:3]) * 255
    dark = base * 0.7
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    mask = ((i // 8 + j // 8) % 2 == 0) if kind == "checker" else ((j // 6) % 2 == 0)
    data = _png(np.where(mask[..., None], base, dark).astype(np.uint8))
    root = Path(os.environ.get("ROBOFLAMINGO_CACHE", Path(tempfile.gettempdir()) / f"roboflamingo-{os.getuid()}"))
    path = root / "textures" / f"{kind}_{hashlib.sha1(data).hexdigest()[:12]}.png"
    if not path.is_file():
        from roboflamingo.io import atomic_write_bytes

        atomic_write_bytes(path, data)
    return str(path)
