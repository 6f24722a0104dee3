"""Simulator speed: the tabletop with both CALVIN cameras, and Meta-World at a policy's resolution.

Prints one final JSON line:
  env_steps_per_s       both cameras at CALVIN sizes (200 / 84), default renderer (EGL where it loads)
  env_steps_per_s_tiny  the same with PyBullet's TinyRenderer
  physics_steps_per_s   env steps without rendering (8 physics substeps, IK, contacts, state)
  render_ms_static / render_ms_gripper   one camera image with the default renderer
  metaworld_steps_per_s           Meta-World drawer-open-v3, one process, corner2 rendered at 96 px with
                                  the fast preset (shadows, reflections, multisampling off), the
                                  scripted expert acting (target >= 100, issue 27)
  metaworld_steps_per_s_lerobot   the same with Meta-World's own render settings (LeRobot's images)
  metaworld_steps_per_s_lerobot_480   LeRobot's images at LeRobot's 480 px
  metaworld_physics_steps_per_s   without rendering
  metaworld_render_cpu_ms_fast / _lerobot / _fast_no_skybox   CPU-ms of one 96 px image (CPU time:
                                  wall time on a shared machine measures the other jobs too)
  metaworld_pixel_mad_fast / _fast_no_skybox   mean absolute difference (0-255) of the fast images
                                  from the default render of the same states (fidelity), and with
                                  the skybox off too (a black background: why the fast preset keeps it)
  *_per_cpu_s           the same per CPU second of this process (EGL's Mesa threads included):
                        what one uncontended core would give, when other jobs share the machine
The machine is shared, so compare figures from one run rather than across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from roboflamingo.sim.config import EnvConfig
from roboflamingo.sim.env import TabletopEnv


def steps_per_s(env: TabletopEnv, steps: int, seed: int = 0) -> tuple[float, float]:
    """(steps per wall-clock second, steps per CPU second of this process)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(3):  # warm-up: first frames build GL state / caches
        env.step(rng.uniform(-1, 1, 7))
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
        if i % 60 == 59:  # keep the arm inside the workspace instead of pinned at a bound
            env.reset(seed=seed + i)
        env.step(rng.uniform(-1, 1, 7))
    return steps / (time.perf_counter() - t), steps / (time.process_time() - c)


def render_ms(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return 1000 * (time.perf_counter() - t) / n


def render_cpu_ms(fn, n: int) -> float:
    fn()
    c = time.process_time()
    for _ in range(n):
        fn()
    return 1000 * (time.process_time() - c) / n


def metaworld_steps_per_s(env, steps: int, seed: int = 0) -> tuple[float, float]:
    """(steps per wall-clock second, per CPU second) of the scripted expert on ``env``'s task."""
    from roboflamingo.metaworld.expert import MetaWorldExpert

    expert = MetaWorldExpert(env.task)
    obs, _ = env.reset(seed=seed)
    obs, *_ = env.step(expert.step(obs, env.task))  # warm-up: the first frame builds the GL context
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
        obs, _, success, truncated, _ = env.step(expert.step(obs, env.task))
        if success or truncated:
            obs, _ = env.reset(seed=seed + i + 1)
    return steps / (time.perf_counter() - t), steps / (time.process_time() - c)


def metaworld_figures(steps: int, size: int, task: str = "drawer-open-v3") -> dict:
    """Meta-World's speed with each render preset and the fast preset's pixel difference."""
    import importlib.util

    if importlib.util.find_spec("metaworld") is None:
        return {"metaworld": "not installed (pip install -e '.[metaworld]')"}
    import mujoco

    from roboflamingo.metaworld.env import MetaWorldEnv
    from roboflamingo.metaworld.expert import MetaWorldExpert

    out: dict = {"metaworld_size": size}
    envs = {p: MetaWorldEnv(task, render=p, size=size) for p in ("fast", "lerobot", "off")}
    out["metaworld_steps_per_s"], out["metaworld_steps_per_cpu_s"] = metaworld_steps_per_s(envs["fast"], steps)
    out["metaworld_steps_per_s_lerobot"], out["metaworld_steps_per_cpu_s_lerobot"] = metaworld_steps_per_s(
        envs["lerobot"], max(steps // 5, 20))
    out["metaworld_physics_steps_per_s"], out["metaworld_physics_steps_per_cpu_s"] = metaworld_steps_per_s(
        envs["off"], steps * 4)
    big = MetaWorldEnv(task, render="lerobot", size=480)
    out["metaworld_steps_per_s_lerobot_480"], _ = metaworld_steps_per_s(big, 20)
    big.close()
    # Fidelity: both presets on the same states (the same seed and actions: MuJoCo is deterministic).
    expert = MetaWorldExpert(task)
    fast, default = envs["fast"], envs["lerobot"]
    diffs, diffs_sky = [], []
    for seed in range(3):
        a, _ = fast.reset(seed=seed)
        b, _ = default.reset(seed=seed)
        for _ in range(40):
            diffs.append(np.abs(a["corner2"].astype(np.float64) - b["corner2"]).mean())
            action = expert.step(a, task)
            a, *_ = fast.step(action)
            b, *_ = default.step(action)
    out["metaworld_render_cpu_ms_fast"] = render_cpu_ms(fast.render, 30)
    out["metaworld_render_cpu_ms_lerobot"] = render_cpu_ms(default.render, 10)
    viewer = fast._env.mujoco_renderer._get_viewer("rgb_array")
    viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
    for seed in range(3):
        a, _ = fast.reset(seed=seed)
        b, _ = default.reset(seed=seed)
        diffs_sky.append(np.abs(a["corner2"].astype(np.float64) - b["corner2"]).mean())
    out["metaworld_render_cpu_ms_fast_no_skybox"] = render_cpu_ms(fast.render, 30)
    out["metaworld_pixel_mad_fast"] = float(np.mean(diffs))
    out["metaworld_pixel_mad_fast_no_skybox"] = float(np.mean(diffs_sky))
    for env in envs.values():
        env.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--scene", default="D")
    parser.add_argument("--metaworld-steps", type=int, default=300)
    parser.add_argument("--metaworld-size", type=int, default=96)
    args = parser.parse_args()

    default = TabletopEnv(EnvConfig(scene=args.scene, renderer="auto"))
    result = {"renderer": default.renderer_used}
    result["env_steps_per_s"], result["env_steps_per_cpu_s"] = steps_per_s(default, args.steps)
    result["render_ms_static"] = render_ms(default.render_static, 30)
    result["render_ms_gripper"] = render_ms(default.render_gripper, 30)
    default.close()

    tiny = TabletopEnv(EnvConfig(scene=args.scene, renderer="tiny"))
    result["env_steps_per_s_tiny"], result["env_steps_per_cpu_s_tiny"] = steps_per_s(tiny, args.steps)
    result["render_ms_static_tiny"] = render_ms(tiny.render_static, 10)
    result["render_ms_gripper_tiny"] = render_ms(tiny.render_gripper, 10)
    tiny.close()

    blind = TabletopEnv(EnvConfig(scene=args.scene, render=False))
    result["physics_steps_per_s"], result["physics_steps_per_cpu_s"] = steps_per_s(blind, args.steps * 4)
    blind.close()
    result.update(metaworld_figures(args.metaworld_steps, args.metaworld_size))
    result["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
