"""``MetaWorldConfig``: how to build a Meta-World environment (``configs/env/metaworld.yaml``).

Rendering dominates the cost of a rendered step on a CPU: MuJoCo's offscreen defaults in Meta-World
draw a 4096 shadow map and 4x multisampling, ~80 CPU-ms per 96 px frame under Mesa's llvmpipe,
against ~6 with shadows, reflections and multisampling off (``scripts/bench_env.py`` measures both
and the pixel difference). Both presets keep everything else identical: the scene, the camera and
LeRobot's flips.
"""

from __future__ import annotations

from dataclasses import dataclass

from roboflamingo.config import require_choice, require_positive

RENDER_MODES = ("fast", "lerobot", "off")
STATES = ("hand", "full")


@dataclass
class MetaWorldConfig:
    """Meta-World settings: the camera the policy sees and how it is drawn.

    Args:
        camera: the Meta-World camera the policy sees; ``corner2`` (LeRobot's) is moved to LeRobot's
            position and its image flipped on both axes as LeRobot does; other cameras are as
            Meta-World defines them. The name is the observation key (the Sawyer description's camera).
        size: square image size in pixels, rendered directly at this resolution (LeRobot records 480;
            the policy's resolution is enough, and much cheaper).
        render: ``fast`` (shadows, reflections and multisampling off, the skybox kept: about 10x
            faster on a CPU renderer), ``lerobot`` (Meta-World's own settings, the images LeRobot
            records, for policies trained on LeRobot's MT50 images) or ``off`` (no images, all zeros:
            for rollouts of the scripted experts, which read state only).
        state: what the policy reads as the robot's state: ``hand`` (LeRobot's: the first 4 of
            Meta-World's 39 observation entries, hand xyz and gripper opening; the image is all that
            says where the objects and the goal are) or ``full`` (all 39: also both objects' poses,
            the previous step's, and the goal, which MT1 and MT10 leave observable; privileged, as
            Meta-World's state-based benchmarks use it, and not comparable with image-based results).
        benchmark_seed: seed of ``metaworld.MT1`` whose first training task fixes each task's
            parameters (LeRobot: 42); object and goal positions are drawn per episode from its seed.
    """

    camera: str = "corner2"
    size: int = 96
    render: str = "fast"
    state: str = "hand"
    benchmark_seed: int = 42

    def __post_init__(self) -> None:
        if not isinstance(self.camera, str) or not self.camera:
            raise ValueError(f"env.camera must name a Meta-World camera (LeRobot: corner2), got {self.camera!r}")
        require_positive("env.size", self.size)
        require_choice("env.render", self.render, RENDER_MODES)
        require_choice("env.state", self.state, STATES)
