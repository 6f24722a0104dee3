"""Tabletop simulator speed: env steps per second with both CALVIN cameras, and the parts of a step.

Prints one final JSON line:
  env_steps_per_s       both cameras at CALVIN sizes (200 / 84), default renderer (EGL where it loads)
  env_steps_per_s_tiny  the same with PyBullet's TinyRenderer
  physics_steps_per_s   env steps without rendering (8 physics substeps, IK, contacts, state)
  render_ms_static / render_ms_gripper   one camera image with the default renderer
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--scene", default="D")
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
    result["load_average_1min"] = os.getloadavg()[0]
    blind.close()
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
