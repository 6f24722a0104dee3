"""Each of the 34 oracle checks accepts a state change that completes its task and rejects one that does not."""

import copy
import math

import pytest

from roboflamingo.sim.tasks import TaskError, TaskOracle

ORACLE = TaskOracle.default()
TABLE = ("table", "base_link")
FINGER = ("robot", "panda_leftfinger")


def quat_yaw(deg):
    h = math.radians(deg) / 2
    return (0.0, 0.0, math.sin(h), math.cos(h))


def state(**kw):
    blocks = {}
    for i, name in enumerate(("red_block", "blue_block", "pink_block")):
        blocks[name] = {"current_pos": (0.1 * i, -0.1, 0.48), "current_orn": quat_yaw(0), "lin_vel": (0, 0, 0),
                        "ang_vel": (0, 0, 0), "contacts": {TABLE}}
    info = {"robot_info": {"contacts": set()},
            "scene_info": {"doors": {"base__slide": 0.0, "base__drawer": 0.0, "base__button": 0.0, "base__switch": 0.0},
                           "lights": {"lightbulb": 0, "led": 0}, "movable_objects": blocks}}
    return info


def edit(info, block=None, **fields):
    out = copy.deepcopy(info)
    if block is None:
        for k, v in fields.items():
            if k == "robot_contacts":
                out["robot_info"]["contacts"] = set(v)
            elif k in out["scene_info"]["doors"]:
                out["scene_info"]["doors"][k] = v
            else:
                out["scene_info"]["lights"][k] = v
        return out
    obj = out["scene_info"]["movable_objects"][block]
    for k, v in fields.items():
        if k == "dz":
            x, y, z = obj["current_pos"]
            obj["current_pos"] = (x, y, z + v)
        elif k == "dx":
            x, y, z = obj["current_pos"]
            obj["current_pos"] = (x + v, y, z)
        elif k == "yaw":
            obj["current_orn"] = quat_yaw(v)
        else:
            obj[k] = v
    return out


def cases(task):
    """(start, completing end, non-completing end) for ``task``."""
    s = state()
    parts = task.split("_")
    if task.startswith("rotate_"):
        b, sign = f"{parts[1]}_block", (-1 if parts[-1] == "right" else 1)
        return s, edit(s, b, yaw=90 * sign), edit(s, b, yaw=-90 * sign)
    if task.startswith("push_") and task != "push_into_drawer":
        b, sign = f"{parts[1]}_block", (1 if parts[-1] == "right" else -1)
        return s, edit(s, b, dx=0.15 * sign), edit(s, b, dx=-0.15 * sign)
    if task.startswith("move_slider"):
        if task.endswith("left"):
            return s, edit(s, base__slide=0.25), edit(s, base__slide=0.1)
        s = edit(s, base__slide=0.28)
        return s, edit(s, base__slide=0.0), edit(s, base__slide=0.2)
    if task == "open_drawer":
        return s, edit(s, base__drawer=0.2), edit(s, base__drawer=0.05)
    if task == "close_drawer":
        s = edit(s, base__drawer=0.22)
        return s, edit(s, base__drawer=0.0), edit(s, base__drawer=0.15)
    if task.startswith("lift_"):
        b = f"{parts[1]}_block"
        link = {"table": "base_link", "slider": "plank_link", "drawer": "drawer_link"}[parts[-1]]
        start = edit(s, b, contacts={("table", link)})
        return start, edit(start, b, dz=0.1, contacts={FINGER}), edit(start, b, dz=0.01, contacts={FINGER})
    if task in ("place_in_slider", "place_in_drawer"):
        link = "plank_link" if task == "place_in_slider" else "drawer_link"
        held = edit(edit(s, "red_block", contacts={FINGER}, dz=0.1), robot_contacts={("red_block", "base_link")})
        end = edit(edit(held, "red_block", contacts={("table", link)}), robot_contacts=set())
        wrong = edit(edit(held, "red_block", contacts={TABLE}), robot_contacts=set())
        return held, end, wrong
    if task == "push_into_drawer":
        return s, edit(s, "blue_block", contacts={("table", "drawer_link")}, dz=-0.1), edit(s, "blue_block", dx=-0.1)
    if task == "stack_block":
        held = edit(edit(s, "red_block", contacts={FINGER}, dz=0.1), robot_contacts={("red_block", "base_link")})
        end = edit(edit(held, "red_block", contacts={("blue_block", "base_link")}, dz=-0.06), robot_contacts=set())
        still_held = edit(end, "red_block", contacts={("blue_block", "base_link"), FINGER})
        return held, end, still_held
    if task == "unstack_block":
        stacked = edit(s, "red_block", contacts={("blue_block", "base_link")}, dz=0.04)
        return stacked, edit(stacked, "red_block", contacts={TABLE}, dz=-0.04, dx=0.1), stacked
    light = "lightbulb" if task.endswith("lightbulb") else "led"
    on = "turn_on" in task
    s = edit(s, **{light: int(not on)})
    return s, edit(s, **{light: int(on)}), s


def test_there_are_34_tasks():
    assert len(ORACLE.tasks) == 34


@pytest.mark.parametrize("task", ORACLE.tasks)
def test_oracle_accepts_completion_and_rejects_non_completion(task):
    start, done, not_done = cases(task)
    assert ORACLE.successful(start, done, {task}) == {task}
    assert ORACLE.successful(start, not_done, {task}) == set()
    assert ORACLE.successful(start, start, {task}) == set()


def test_lift_needs_the_named_surface_at_start():
    s = state()
    start = edit(s, "red_block", contacts={("table", "plank_link")})
    end = edit(start, "red_block", dz=0.1, contacts={FINGER})
    assert ORACLE.successful(start, end, {"lift_red_block_table", "lift_red_block_slider"}) == {"lift_red_block_slider"}


def test_unknown_task_and_bad_file_are_named(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'open_door'"):
        ORACLE.successful(state(), state(), {"open_door"})
    bad = tmp_path / "tasks.yaml"
    bad.write_text("symbolic_state: {led: [0, 1]}\ntasks:\n  open_drawer:\n    category: 1\n    oracle: {type: spin}\n"
                   "    rules: [{condition: {led: 0}, effect: {led: 1}}]\n")
    with pytest.raises(TaskError, match=r"tasks\.yaml: field 'tasks\.open_drawer\.oracle\.type'"):
        TaskOracle.from_file(bad)


def test_the_default_oracle_is_parsed_once_and_is_the_task_file():
    assert TaskOracle.default() is TaskOracle.default()
    fresh = TaskOracle.from_file()
    assert fresh is not TaskOracle.default()
    assert fresh.specs == TaskOracle.default().specs and fresh.symbolic_state == TaskOracle.default().symbolic_state
