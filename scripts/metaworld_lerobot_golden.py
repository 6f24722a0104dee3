"""Record what LeRobot's own Meta-World env produces, as golden data for tests/metaworld.

    git clone https://github.com/huggingface/lerobot /tmp/lerobot
    python scripts/metaworld_lerobot_golden.py --lerobot-src /tmp/lerobot/src [--commit <sha>]

LeRobot's ``src/lerobot/envs/metaworld.py`` imports only ``lerobot.lerobot_types.RobotObservation``
(a type alias) and ``lerobot.envs.utils._LazyAsyncVectorEnv`` (for its vector-env factory) from the
rest of LeRobot, whose dependencies our environment cannot take (see scripts/lerobot_interop.py). So
this script loads that file unchanged, beside its ``metaworld_config.json``, in a throwaway package
where those two names are stubs, runs LeRobot's ``MetaworldEnv`` (``obs_type=pixels_agent_pos``, its
480x480 ``corner2`` images), and writes to ``tests/metaworld/fixtures/``:

- ``lerobot_metaworld_config.json``: LeRobot's task table, unchanged;
- ``lerobot_metaworld_frames.json``: per (task, seed): the object/goal positions drawn, ``agent_pos`` after ``reset(seed=...)`` and
  after 5 fixed actions, and each image as a 48x48 block mean (10x10 pixels each, rounded; uint8 bytes in
  base64), with the image's sha256, which ``tests/metaworld/test_env.py`` compares with ``MetaWorldEnv(render=lerobot,
  size=480)``.

The last line printed is JSON naming the files and the LeRobot commit.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "metaworld" / "fixtures"
CASES = (("drawer-open-v3", 0), ("drawer-open-v3", 7), ("pick-place-v3", 3))
ACTIONS = [[0.5, -0.3, -0.2, 1.0], [-0.4, 0.6, 0.1, -1.0], [1.0, 1.0, 1.0, 0.0], [0.0, -1.0, 0.5, 1.0],
           [0.2, 0.2, -1.0, -0.5]]
BLOCK = 10  # 480 px / 10 = a 48x48 thumbnail


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Block means of BLOCK x BLOCK pixels, rounded to uint8."""
    h, w, c = image.shape
    blocks = image.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).astype(np.float64).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)


def _stub_package(root: Path, lerobot_src: Path) -> None:
    pkg = root / "lerobot"
    (pkg / "envs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lerobot_types.py").write_text("RobotObservation = dict\n")
    (pkg / "envs" / "__init__.py").write_text("")
    (pkg / "envs" / "utils.py").write_text("class _LazyAsyncVectorEnv:  # stub: only the vector factory uses it\n"
                                           "    pass\n")
    for name in ("metaworld.py", "metaworld_config.json"):
        shutil.copy(lerobot_src / "lerobot" / "envs" / name, pkg / "envs" / name)


def record(lerobot_src: Path) -> dict:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    out: dict = {"cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        _stub_package(Path(tmp), lerobot_src)
        sys.path.insert(0, tmp)
        module = importlib.import_module("lerobot.envs.metaworld")
        for task, seed in CASES:
            env = module.MetaworldEnv(task=task, obs_type="pixels_agent_pos")
            obs, _ = env.reset(seed=seed)
            rand_vec = np.asarray(env._env._last_rand_vec).tolist()  # the object/goal positions drawn
            frames = [obs]
            for a in ACTIONS:
                obs, *_ = env.step(np.asarray(a, dtype=np.float32))
                frames.append(obs)
            env.close()
            out["cases"].append({
                "task": task, "seed": seed, "actions": ACTIONS, "rand_vec": rand_vec,
                "agent_pos": [np.asarray(frames[0]["agent_pos"]).tolist(), np.asarray(frames[-1]["agent_pos"]).tolist()],
                "image_sha256": [hashlib.sha256(np.ascontiguousarray(f["pixels"]).tobytes()).hexdigest()
                                 for f in (frames[0], frames[-1])],
                "thumbnail_b64": [base64.b64encode(thumbnail(f["pixels"]).tobytes()).decode()
                                  for f in (frames[0], frames[-1])],
                "thumbnail_shape": list(thumbnail(frames[0]["pixels"]).shape),
                "shape": list(frames[0]["pixels"].shape),
            })
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lerobot-src", required=True, help="a LeRobot checkout's src/ directory")
    parser.add_argument("--commit", default="", help="the LeRobot commit checked out (recorded in the fixture)")
    parser.add_argument("--out", default=str(FIXTURES))
    args = parser.parse_args()
    src = Path(args.lerobot_src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = record(src)
    from importlib.metadata import version

    frames["written_by"] = (f"scripts/metaworld_lerobot_golden.py: LeRobot {args.commit or '(commit not given)'} "
                            f"src/lerobot/envs/metaworld.py MetaworldEnv; metaworld {version('metaworld')}, "
                            f"mujoco {version('mujoco')}")
    shutil.copy(src / "lerobot" / "envs" / "metaworld_config.json", out / "lerobot_metaworld_config.json")
    (out / "lerobot_metaworld_frames.json").write_text(json.dumps(frames) + "\n")
    print(json.dumps({"config": str(out / "lerobot_metaworld_config.json"),
                      "frames": str(out / "lerobot_metaworld_frames.json"), "commit": args.commit,
                      "cases": len(frames["cases"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
