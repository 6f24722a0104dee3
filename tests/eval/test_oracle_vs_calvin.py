"""Our tabletop's task oracle against CALVIN's (``calvin_env.envs.tasks.Tasks`` from calvin_env's own
``new_playtable_tasks.yaml``): the same verdicts on the same state changes, over all 34 tasks.

Each case is a (start, end) pair of snapshots in our named ``get_info`` layout; it is translated to
calvin_env's layout (PyBullet uids, link indices, ``block_red`` names, ``current_state`` /
``logical_state`` entries, contact tuples with the other body at [2] and its link at [4]) and both
oracles are asked about every task. The cases cover each task succeeding and narrowly failing.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
from calvin_split import require_calvin_env

from roboflamingo.sim.tasks import TaskOracle

BLOCKS = ("red_block", "blue_block", "pink_block")
UIDS = {"floor": 0, "robot": 1, "table": 2, "red_block": 3, "blue_block": 4, "pink_block": 5}
TABLE_LINKS = {"base_link": -1, "plank_link": 0, "drawer_link": 1, "slide_link": 2, "button_link": 3}
TABLE = ("table", "base_link")
SHELF = ("table", "plank_link")
DRAWER = ("table", "drawer_link")
HAND = ("robot", "panda_leftfinger")


def _quat(yaw):
    return (0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2)))


def world(**blocks):
    """Drawer and door closed, lights off, the three blocks resting on the table apart."""
    info = {
        "robot_info": {"contacts": set()},
        "scene_info": {
            "doors": {"base__slide": 0.0, "base__drawer": 0.0, "base__button": 0.0, "base__switch": 0.0},
            "lights": {"lightbulb": 0, "led": 0},
            "movable_objects": {
                name: {"current_pos": (0.1 * k, -0.1, 0.46), "current_orn": _quat(1.5), "lin_vel": (0, 0, 0),
                       "ang_vel": (0, 0, 0), "contacts": {TABLE}} for k, name in enumerate(BLOCKS)
            },
        },
    }
    for name, change in blocks.items():
        info["scene_info"]["movable_objects"][name].update(change)
    return info


def held(name, z=0.55, **more):
    """``world`` with ``name`` in the gripper (touching only the robot) at height ``z``."""
    info = world(**{name: {"current_pos": (0.0, -0.1, z), "contacts": {HAND}, **more}})
    info["robot_info"]["contacts"] = {(name, "base_link")}
    return info


def moved(info, **updates):
    out = copy.deepcopy(info)
    for path, value in updates.items():
        *keys, last = path.split("/")
        node = out
        for k in keys:
            node = node[k]
        node[last] = value
    return out


def block(info, name, **change):
    out = copy.deepcopy(info)
    out["scene_info"]["movable_objects"][name].update(change)
    return out


def cases():
    base = world()
    out = {}
    for name in BLOCKS:
        pos = base["scene_info"]["movable_objects"][name]["current_pos"]
        for sign, side in ((-1, "right"), (1, "left")):
            out[f"rotate {name} {side} 70deg"] = (base, block(base, name, current_orn=_quat(1.5 + sign * np.radians(70))))
            out[f"rotate {name} {side} 50deg"] = (base, block(base, name, current_orn=_quat(1.5 + sign * np.radians(50))))
            out[f"rotate {name} {side} in hand"] = (base, block(base, name, current_orn=_quat(1.5 + sign * 1.3),
                                                                  contacts={HAND}))
        out[f"rotate {name} and tilt"] = (base, block(base, name, current_orn=(0.3, 0.0, 0.6, 0.74)))
        for dx in (0.12, -0.12, 0.08, -0.08):
            out[f"push {name} {dx:+}"] = (base, block(base, name, current_pos=(pos[0] + dx, pos[1], pos[2])))
        out[f"push {name} lifted"] = (base, block(base, name, current_pos=(pos[0] + 0.12, pos[1], pos[2] + 0.1),
                                                  contacts={HAND}))
        out[f"push {name} off the table"] = (base, block(base, name, current_pos=(pos[0] - 0.12, pos[1], pos[2]),
                                                         contacts={("floor", "base_link")}))
        for surface, link, dz in (("table", TABLE, 0.06), ("slider", SHELF, 0.04), ("drawer", DRAWER, 0.06)):
            start = block(base, name, contacts={link})
            out[f"lift {name} from {surface}"] = (start, held(name, z=pos[2] + dz))
            out[f"lift {name} from {surface} too little"] = (start, held(name, z=pos[2] + 0.02))
        out[f"lift {name} touching the table"] = (base, block(held(name, z=0.52), name, contacts={HAND, TABLE}))
        for where, link in (("slider", SHELF), ("drawer", DRAWER)):
            out[f"place {name} in {where}"] = (held(name), block(base, name, contacts={link}))
            out[f"place {name} in {where}, still held"] = (
                held(name), moved(block(base, name, contacts={link, HAND}),
                                  **{"robot_info/contacts": {(name, "base_link")}}))
        out[f"place {name} not from the hand"] = (base, block(base, name, contacts={SHELF}))
        out[f"push {name} into drawer"] = (base, block(base, name, contacts={DRAWER}))
        out[f"push {name} into drawer by hand"] = (base, block(base, name, contacts={DRAWER, HAND}))
        others = [b for b in BLOCKS if b != name]
        on_top = block(base, name, contacts={(others[0], "base_link")})
        on_top = block(on_top, others[0], contacts={TABLE, (name, "base_link")})
        out[f"stack {name}"] = (base, on_top)
        out[f"stack {name} still moving"] = (base, block(on_top, name, lin_vel=(0, 0, -1.5)))
        out[f"stack {name} touching the table"] = (base, block(on_top, name, contacts={(others[0], "base_link"), TABLE}))
        out[f"unstack {name}"] = (on_top, base)
        out[f"unstack {name} moving"] = (block(on_top, name, ang_vel=(0, 2.0, 0)), base)
    for joint, deltas in (("base__slide", (0.16, -0.16, 0.14)), ("base__drawer", (0.13, -0.13, 0.11))):
        for d in deltas:
            start = moved(base, **{f"scene_info/doors/{joint}": 0.2 if d < 0 else 0.0})
            end = moved(start, **{f"scene_info/doors/{joint}": start["scene_info"]["doors"][joint] + d})
            out[f"{joint} {d:+}"] = (start, end)
    for light in ("lightbulb", "led"):
        for a, b in ((0, 1), (1, 0), (1, 1)):
            out[f"{light} {a}->{b}"] = (moved(base, **{f"scene_info/lights/{light}": a}),
                                       moved(base, **{f"scene_info/lights/{light}": b}))
    out["nothing changes"] = (base, base)
    return out


def to_calvin(info):
    """Our named snapshot in calvin_env's layout (uids and link indices; CALVIN's object names)."""
    def link_id(body, link):
        if body == "table":
            return TABLE_LINKS[link]
        return -1 if link == "base_link" else 9  # any robot link: the checks only compare uids there

    def contacts(items):
        # pybullet getContactPoints tuples: [2] the other body's uid, [4] its link index
        return [(0, 0, UIDS[b], -1, link_id(b, link)) for b, link in sorted(items)]

    scene = info["scene_info"]
    return {
        "robot_info": {"uid": UIDS["robot"], "contacts": contacts(info["robot_info"]["contacts"])},
        "scene_info": {
            "fixed_objects": {"table": {"uid": UIDS["table"], "links": TABLE_LINKS}},
            "movable_objects": {
                "block_" + name.split("_")[0]: {
                    "uid": UIDS[name], "current_pos": o["current_pos"], "current_orn": o["current_orn"],
                    "current_lin_vel": o["lin_vel"], "current_ang_vel": o["ang_vel"], "contacts": contacts(o["contacts"]),
                } for name, o in scene["movable_objects"].items()
            },
            "doors": {j: {"current_state": v} for j, v in scene["doors"].items()},
            "lights": {k: {"logical_state": v} for k, v in scene["lights"].items()},
        },
    }


@pytest.fixture(scope="module")
def calvin_oracle():
    require_calvin_env()
    import calvin_env
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(calvin_env.__file__).resolve().parents[1] / "conf" / "tasks" / "new_playtable_tasks.yaml"
    return instantiate(OmegaConf.load(path))


def test_both_oracles_give_the_same_verdicts_over_all_34_tasks(calvin_oracle):
    ours = TaskOracle.default()
    tasks = set(ours.tasks)
    assert tasks == set(calvin_oracle.tasks) and len(tasks) == 34
    succeeded, failed = set(), set()
    for label, (start, end) in cases().items():
        mine = ours.successful(start, end, tasks)
        theirs = calvin_oracle.get_task_info_for_set(to_calvin(start), to_calvin(end), tasks)
        assert mine == theirs, f"{label}: ours {sorted(mine)}, CALVIN's {sorted(theirs)}"
        succeeded |= mine
        failed |= tasks - mine
    # the table exercises every task both ways, so agreement is not agreement on "never"
    assert succeeded == tasks, sorted(tasks - succeeded)
    assert failed == tasks
