"""Where does the arm go wrong? Closed-loop rollouts of a checkpoint on the tabletop, with geometry.

For the articulated tasks (slider, drawer, LED button, light-bulb switch) the scripted expert's plan,
made at each episode's initial state, gives the *contact point* of every task (where the fingers meet
the knob, handle gap, button or switch: the plan's second waypoint) and the *end point* of its
stroke. A rollout records the TCP path and the joint of every object; each failed episode is then
classified:

- ``wrong_object``: the TCP came within ``--reach`` of another task's contact point first and never of
  its own (for LED on/off, whose contact point is the same button, the LED's toggles tell);
- ``stalled``: it reached no contact point; the final distance to its own and where it stopped moving;
- ``short_stroke``: it reached its own contact point but the joint moved less than the oracle needs;
- ``undone``: the joint got there (or the light toggled) and was moved back (or toggled again).

Each record also counts the sign flips of the TCP roll (``robot_obs[3]``, euler x): pointing down it
sits at +-pi, so a physically negligible rotation flips a policy input by two standard deviations.

    python scripts/diagnose_rollouts.py --checkpoint runs/demo/train/checkpoints/last \\
        --env-config runs/demo/data/validation/env_config.yaml --episodes 10 --ep-len 240 \\
        --out runs/demo/diagnosis.json

The episodes are the demo's single-task episodes (``eval.items.single_task_items``, seed 0) or, with
``--chains N``, the first N of its chains (every subtask reached is diagnosed the same way), instructed
with the evaluation sentences or, with ``--sentences train``, each task's first training sentence (the
same episodes: a task that succeeds only then fails on the unseen wording, not on the motion). One
thread, one process: it is meant to run beside other work on a small machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roboflamingo.robots import calvin as T  # noqa: E402

# Per task: the scene_obs joint it moves, and the signed change the oracle needs (lights: toggles).
JOINTS = {
    "move_slider_left": (T.SLIDING_DOOR, 0.15), "move_slider_right": (T.SLIDING_DOOR, -0.15),
    "open_drawer": (T.DRAWER, 0.12), "close_drawer": (T.DRAWER, -0.12),
    "turn_on_led": (T.GREEN_LIGHT, 1.0), "turn_off_led": (T.GREEN_LIGHT, -1.0),
    "turn_on_lightbulb": (T.LIGHTBULB, 1.0), "turn_off_lightbulb": (T.LIGHTBULB, -1.0),
}
LIGHTS = (T.GREEN_LIGHT, T.LIGHTBULB)


def contact_points(expert, robot_obs, scene_obs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Task -> (contact point, stroke end) of the expert's plan from this state."""
    out = {}
    for task in JOINTS:
        body = expert._plan_task(task, robot_obs, scene_obs)
        out[task] = (body[1].pos.copy(), body[min(2, len(body) - 1)].pos.copy())
    return out


def classify(task: str, success: bool, tcp: np.ndarray, joints: np.ndarray, points, reach: float) -> dict:
    """One subtask's record -> figures and a failure class (see the module docstring)."""
    joint, need = JOINTS[task]
    own_contact = points[task][0]
    dist = {t: np.linalg.norm(tcp - p[0], axis=1) for t, p in points.items()}
    first_reach = {t: int(np.argmax(d < reach)) if (d < reach).any() else None for t, d in dist.items()}
    q = joints[:, joint]
    out = {
        "task": task, "success": success, "steps": len(tcp) - 1,
        "own_min_dist": float(dist[task].min()), "own_min_step": int(dist[task].argmin()),
        "final_dist": float(dist[task][-1]),
        "final_tcp": tcp[-1].round(3).tolist(),
        "moved_last_60": float(np.abs(np.diff(tcp[-61:], axis=0)).sum()) if len(tcp) > 1 else 0.0,
    }
    if joint in LIGHTS:
        toggles = int(np.abs(np.diff(np.round(q))).sum())
        out["toggles"] = toggles
    else:
        progress = (q - q[0]) * np.sign(need)
        out["best_progress"] = float(progress.max() / abs(need))
        out["final_progress"] = float(progress[-1] / abs(need))
    if success:
        out["class"] = "success"
        return out
    reached = {t: s for t, s in first_reach.items() if s is not None}
    shared = [t for t in JOINTS if np.linalg.norm(points[t][0] - own_contact) < 1e-6]  # LED on/off share the button
    if first_reach[task] is None:
        others = sorted((s, t) for t, s in reached.items() if t not in shared)
        if others:
            out["class"], out["went_to"] = "wrong_object", others[0][1]
        else:
            out["class"] = "stalled"
            nearest = min(dist, key=lambda t: dist[t].min())
            out["nearest_contact"] = nearest
    elif joint in LIGHTS:
        out["class"] = {0: "short_stroke"}.get(out["toggles"], "undone" if out["toggles"] % 2 == 0 else "other")
    else:
        out["class"] = "undone" if out["best_progress"] >= 1.0 else "short_stroke"
    return out


def rollout(env, policy, expert_cls, scene, item, ep_len: int, reach: float) -> list[dict]:
    obs = env.reset_to(item.initial_state, seed=item.index)
    records = []
    for task, instruction in zip(item.tasks, item.instructions):
        expert = expert_cls(scene)
        points = contact_points(expert, np.asarray(obs[T.ROBOT_OBS], float), np.asarray(obs[T.SCENE_OBS], float))
        start_info = env.info()
        policy.reset()
        tcp, joints, actions = [obs[T.ROBOT_OBS][T.TCP_POS].copy()], [obs[T.SCENE_OBS].copy()], []
        rolls = [float(obs[T.ROBOT_OBS][T.TCP_ORN][0])]
        success = False
        for _ in range(ep_len):
            action = np.asarray(policy.step(obs, instruction), dtype=np.float32)
            obs = env.step(action)
            actions.append(action)
            tcp.append(obs[T.ROBOT_OBS][T.TCP_POS].copy())
            joints.append(obs[T.SCENE_OBS].copy())
            rolls.append(float(obs[T.ROBOT_OBS][T.TCP_ORN][0]))
            if env.successful(start_info, task):
                success = True
                break
        rec = classify(task, success, np.asarray(tcp), np.asarray(joints), points, reach) if task in JOINTS else {
            "task": task, "success": success, "class": "success" if success else "unclassified"}
        rec["item"] = item.index
        # The TCP points down: its roll (euler x) sits at +-pi, and its sign flips with tiny rotations.
        rec["roll_sign_flips"] = int(np.abs(np.diff(np.sign(rolls))).sum() // 2)
        rec["mean_abs_action"] = np.abs(np.asarray(actions)[:, :6]).mean(axis=0).round(3).tolist()
        records.append(rec)
        if not success:
            break
    return records


def summarize(records: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in records:
        entry = out.setdefault(r["task"], {"episodes": 0, "success": 0, "classes": Counter(), "went_to": Counter(),
                                           "own_min_dist": [], "best_progress": [], "toggles": []})
        entry["episodes"] += 1
        entry["success"] += r["success"]
        entry["classes"][r["class"]] += 1
        if "went_to" in r:
            entry["went_to"][r["went_to"]] += 1
        if not r["success"] and "own_min_dist" in r:
            entry["own_min_dist"].append(r["own_min_dist"])
            for key in ("best_progress", "toggles"):
                if key in r:
                    entry[key].append(r[key])
    for entry in out.values():
        entry["classes"], entry["went_to"] = dict(entry["classes"]), dict(entry["went_to"])
        for key in ("own_min_dist", "best_progress", "toggles"):
            vals = entry.pop(key)
            if vals:
                entry[f"failed_{key}_median"] = float(np.median(vals))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--env-config", required=True, help="the data's env_config.yaml (scene, cameras, renderer)")
    parser.add_argument("--tasks", nargs="*", default=list(JOINTS))
    parser.add_argument("--episodes", type=int, default=10, help="single-task episodes per task")
    parser.add_argument("--chains", type=int, default=0, help="diagnose the first N chains instead")
    parser.add_argument("--ep-len", type=int, default=240)
    parser.add_argument("--reach", type=float, default=0.03, help="how close counts as reaching a contact point (m)")
    parser.add_argument("--sentences", choices=("eval", "train"), default="eval",
                        help="instruct with the evaluation sentences (unseen in training), or with each task's "
                        "first training sentence: a task that fails only with the first is a language failure")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from roboflamingo.config import load_yaml
    from roboflamingo.eval.envs import EnvSpec, make_env
    from roboflamingo.eval.items import chain_items, evaluation_sentences, single_task_items
    from roboflamingo.models.policy import RoboFlamingoPolicy
    from roboflamingo.sim.config import EnvConfig
    from roboflamingo.sim.expert import ScriptedExpert

    env_cfg = load_yaml(args.env_config, EnvConfig)
    env = make_env(EnvSpec("tabletop", env_cfg))
    policy = RoboFlamingoPolicy.from_pretrained(args.checkpoint)
    if args.sentences == "train":
        from roboflamingo.sim.instructions import load_instructions

        sentences = {task: s[0] for task, s in load_instructions("train").items()}
    else:
        sentences = evaluation_sentences()
    if args.chains:
        items = chain_items(args.chains, 0, sentences, args.tasks)
    else:
        items = single_task_items(args.tasks, args.episodes, 0, sentences)
    records = []
    for item in items:
        recs = rollout(env, policy, ScriptedExpert, env_cfg.scene, item, args.ep_len, args.reach)
        records += recs
        print(json.dumps({"item": item.index, "subtasks": [(r["task"], r["class"]) for r in recs]}), flush=True)
    summary = summarize(records)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    for task, entry in summary.items():
        print(json.dumps({"task": task, **entry}))


if __name__ == "__main__":
    main()
