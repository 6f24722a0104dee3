"""roboflamingo: RoboFlamingo-style vision-language-state policies for robot manipulation."""

__version__ = "0.1.0"

# Before anything imports torch: its OpenMP threads then sleep instead of spinning while they wait,
# which is what keeps a CPU job usable on a shared machine (see roboflamingo/threads.py).
from roboflamingo.threads import set_passive_waiting  # noqa: E402

set_passive_waiting()
