"""roboflamingo: RoboFlamingo-style vision-language-state policies for robot manipulation.

The Python API::

    from roboflamingo import RoboFlamingoPolicy

    policy = RoboFlamingoPolicy.from_pretrained("runs/x/checkpoints/last")  # or a Hub id
    policy.reset()
    action = policy.step(obs, "open the drawer")

``RoboFlamingoPolicy`` is imported on first use, so ``import roboflamingo`` stays light (no torch).
"""

from roboflamingo._version import __version__

# Before anything imports torch: its OpenMP threads then sleep instead of spinning while they wait,
# which is what keeps a CPU job usable on a shared machine (see roboflamingo/threads.py).
from roboflamingo.threads import set_passive_waiting  # noqa: E402

set_passive_waiting()

__all__ = ["RoboFlamingoPolicy", "__version__"]


def __getattr__(name: str):
    if name == "RoboFlamingoPolicy":
        from roboflamingo.models.policy import RoboFlamingoPolicy

        return RoboFlamingoPolicy
    raise AttributeError(f"module 'roboflamingo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), "RoboFlamingoPolicy"])
