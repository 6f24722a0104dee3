"""roboflamingo: RoboFlamingo-style vision-language-state policies for robot manipulation."""

__version__ = "0.1.0"
