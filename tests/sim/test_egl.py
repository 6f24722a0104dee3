"""EGL (Mesa's LLVM) then a policy's imports (triton's LLVM) in one process: issue 15's segfault.

Without ``sim.egl.prepare_egl`` in the env's EGL loader, the child below dies with SIGSEGV (exit
-11/139) at ``import open_clip`` on a machine whose EGL is Mesa's llvmpipe. It runs in a child
process so that a crash fails this test instead of ending the test run.
"""

import subprocess
import sys

import pytest

CHILD = """
from roboflamingo.sim.env import TabletopEnv
env = TabletopEnv(renderer="egl", static_size=32, gripper_size=16)
env.reset(seed=0)
import open_clip  # torchvision -> torch._dynamo -> triton: what a checkpoint policy imports
obs, *_ = env.step(env.action_space.sample())
print("rendered", env.renderer_used, float(obs["rgb_static"].std()))
env.close()
"""


@pytest.mark.slow
def test_a_policy_loaded_after_the_egl_plugin_does_not_crash_the_process():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    if "eglRenderer plugin did not load" in proc.stderr:
        pytest.skip("no EGL on this machine")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    word, renderer, spread = proc.stdout.split()[-3:]
    assert (word, renderer) == ("rendered", "egl") and float(spread) > 0


def test_prepare_egl_loads_triton_first_where_it_is_installed():
    code = ("import sys; from roboflamingo.sim.egl import prepare_egl; prepare_egl(); "
            "import importlib.util; print(importlib.util.find_spec('triton') is None or 'triton' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
