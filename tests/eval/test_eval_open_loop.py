"""Open-loop action error on held-out demonstrations (``roboflamingo action-error``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from roboflamingo import cli
from roboflamingo.data.layout import frame_path
from roboflamingo.data.synthetic import write_split
from roboflamingo.eval.items import evaluation_sentences
from roboflamingo.eval.open_loop import markdown, open_loop_errors

EPISODES = [(0, 29), (30, 49)]
SEGMENTS = [(0, 9, "open_drawer", "open the drawer"), (10, 19, "close_drawer", "close the drawer"),
            (20, 29, "open_drawer", "pull the drawer open"), (30, 49, "turn_on_led", "switch the led on")]


@pytest.fixture
def split(tmp_path):
    return write_split(tmp_path / "validation", EPISODES, SEGMENTS, (24, 20), (12, 12))


def _rel(split_dir, first, last):
    return np.stack([np.load(frame_path(split_dir, f))["rel_actions"] for f in range(first, last + 1)])


class FixedPolicy:
    """Pose 0.5 for close_drawer's evaluation sentence, 0 for any other; gripper always open. Records
    the history it was given with each frame, to check the reset at every segment's start."""

    def __init__(self):
        self.close = evaluation_sentences()["close_drawer"]
        self.calls: list[tuple[list, list[str]]] = []

    def step_batch(self, observations, instructions, histories):
        self.calls.append((list(histories), list(instructions)))
        actions = np.zeros((len(observations), 7), dtype=np.float32)
        actions[:, 6] = 1.0
        for i, s in enumerate(instructions):
            if s == self.close:
                actions[i, :6] = 0.5
        return actions, [(h or 0) + 1 for h in histories]


def test_errors_are_the_mean_absolute_difference_per_task_with_the_evaluation_sentences(split):
    policy = FixedPolicy()
    result = open_loop_errors(policy, split, contrast=True)
    assert set(result["per_task"]) == {"open_drawer", "close_drawer", "turn_on_led"}
    frames = {t: np.concatenate([_rel(split, a, b) for a, b, task, _ in SEGMENTS if task == t])
              for t in result["per_task"]}
    for task, entry in result["per_task"].items():
        pose = 0.5 if task == "close_drawer" else 0.0
        assert entry["pose_mae"] == pytest.approx(np.abs(pose - frames[task][:, :6]).mean())
        assert entry["gripper_acc"] == pytest.approx((frames[task][:, 6] > 0).mean())
        assert entry["frames"] == len(frames[task])
    assert result["per_task"]["open_drawer"]["segments"] == 2
    # The only sentence that changes the action is close_drawer's: the closest other for open_drawer
    # is the first task in name order whose sentence leaves the action at 0 (turn_on_led).
    opened = result["per_task"]["open_drawer"]
    assert opened["closest_other"] == "turn_on_led" and opened["closest_other_pose_mae"] == pytest.approx(opened["pose_mae"])
    assert result["pose_mae"] == pytest.approx(np.mean([e["pose_mae"] for e in result["per_task"].values()]))
    # Every segment starts from a fresh history, and the first instruction is the evaluation sentence.
    sentences = evaluation_sentences()
    firsts = [c for c in policy.calls if all(h is None for h in c[0])]
    assert len(firsts) == len(SEGMENTS)
    assert [c[1][0] for c in firsts] == [sentences[t] for _, _, t, _ in SEGMENTS]
    assert all(h is not None for c in policy.calls if c not in firsts for h in c[0])


def test_annotation_sentences_and_a_segment_cap(split):
    policy = FixedPolicy()
    result = open_loop_errors(policy, split, sentences="annotation", contrast=False, max_segments_per_task=1)
    assert result["per_task"]["open_drawer"]["segments"] == 1
    assert "closest_other" not in result["per_task"]["open_drawer"]
    assert [c[1] for c in policy.calls if c[0] == [None]] == [[s] for _, _, _, s in SEGMENTS[:2] + SEGMENTS[3:]]
    with pytest.raises(ValueError, match="sentences must be one of"):
        open_loop_errors(policy, split, sentences="mine")


class LookingPolicy(FixedPolicy):
    """Adds the static camera's mean brightness / 255 to every pose dim when ``looks``."""

    def __init__(self, looks: bool):
        super().__init__()
        self.looks = looks

    def step_batch(self, observations, instructions, histories):
        actions, histories = super().step_batch(observations, instructions, histories)
        if self.looks:
            actions[:, :6] += np.array([o["rgb_static"].mean() / 255.0 for o in observations], dtype=np.float32)[:, None]
        return actions, histories


def test_swapped_images_tell_a_policy_that_looks_from_one_that_does_not(split):
    blind = open_loop_errors(LookingPolicy(looks=False), split, contrast=False, swap_images=True)
    assert blind["image_effect"] == 0.0 and all(e["image_effect"] == 0.0 for e in blind["per_task"].values())
    # The extra replay does not change the errors themselves.
    plain = open_loop_errors(LookingPolicy(looks=False), split, contrast=False)
    assert [e["pose_mae"] for e in blind["per_task"].values()] == [e["pose_mae"] for e in plain["per_task"].values()]
    assert "image_effect" not in plain

    policy = LookingPolicy(looks=True)
    looking = open_loop_errors(policy, split, contrast=False, swap_images=True)
    # Segment k is replayed with segment k+1's images (same offset, clamped to its last frame).
    expected: dict[str, list[float]] = {}
    for k, (first, last, task, _) in enumerate(SEGMENTS):
        o_first, o_last = SEGMENTS[(k + 1) % len(SEGMENTS)][:2]
        for offset, frame in enumerate(range(first, last + 1)):
            own = np.load(frame_path(split, frame))["rgb_static"].mean() / 255.0
            other = np.load(frame_path(split, min(o_first + offset, o_last)))["rgb_static"].mean() / 255.0
            expected.setdefault(task, []).append(abs(np.float32(own) - np.float32(other)))
    for task, entry in looking["per_task"].items():
        assert entry["image_effect"] == pytest.approx(np.mean(expected[task]), rel=1e-4)
        assert entry["image_effect"] > 0
    assert "image effect" in markdown(looking)


def test_the_command_replays_a_checkpoint_and_writes_its_figures(split, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from model_helpers import make_stats, micro_config, micro_head

    from roboflamingo.models.policy import RoboFlamingoPolicy

    RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats()).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "errors.json"
    assert cli.main(["action-error", f"checkpoint={tmp_path / 'ckpt'}", f"split_dir={split}", f"out={out}",
                     "torch_threads=1", "device=cpu"]) == 0
    result = json.loads(out.read_text())
    assert set(result["per_task"]) == {"open_drawer", "close_drawer", "turn_on_led"}
    assert all(np.isfinite(e["pose_mae"]) and 0 <= e["gripper_acc"] <= 1 for e in result["per_task"].values())
    assert "| open_drawer | 2 |" in capsys.readouterr().out
    assert cli.main(["action-error", f"checkpoint={tmp_path / 'ckpt'}", f"split_dir={tmp_path / 'nowhere'}"]) == 2
    assert cli.main(["action-error", f"checkpoint={tmp_path / 'none'}", f"split_dir={split}"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_meta_world_split_is_read_as_its_robot_json_names_it_with_meta_world_sentences(tmp_path):
    from roboflamingo.metaworld.tasks import task_table
    from roboflamingo.robots import load_robot

    robot = load_robot("metaworld_sawyer")
    split = write_split(tmp_path / "validation", [(0, 19)],
                        [(0, 9, "drawer-open-v3", "Open a drawer"), (10, 19, "reach-v3", "Reach a goal position")],
                        robot=robot, image_sizes={"corner2": (16, 16)})
    sentences = task_table().eval
    seen: list[tuple[set, list[str]]] = []

    class Sawyer:
        """0.25 on every dim for drawer-open's evaluation sentence, else 0; records what it was given."""

        def step_batch(self, observations, instructions, histories):
            seen.append((set(observations[0]), list(instructions)))
            actions = np.zeros((len(observations), 4), dtype=np.float32)
            actions[[s == sentences["drawer-open-v3"] for s in instructions]] = 0.25
            return actions, histories

    result = open_loop_errors(Sawyer(), split, contrast=True)
    assert result["robot"] == "metaworld_sawyer" and result["gripper_acc"] is None
    assert all(keys == {"corner2", "state"} for keys, _ in seen)
    assert seen[0][1][0] == sentences["drawer-open-v3"] and seen[10][1][0] == sentences["reach-v3"]
    target = np.stack([np.load(frame_path(split, f))["action"] for f in range(20)])
    assert result["per_task"]["drawer-open-v3"]["pose_mae"] == pytest.approx(np.abs(0.25 - target[:10]).mean())
    assert result["per_task"]["reach-v3"]["pose_mae"] == pytest.approx(np.abs(target[10:]).mean())
    assert result["per_task"]["reach-v3"]["closest_other_pose_mae"] == pytest.approx(np.abs(0.25 - target[10:]).mean())
    with pytest.raises(ValueError, match="no evaluation sentence for tasks"):
        open_loop_errors(Sawyer(), write_split(tmp_path / "odd", [(0, 3)], [(0, 3, "juggle", "juggle")],
                                                robot=robot, image_sizes={"corner2": (16, 16)}))
