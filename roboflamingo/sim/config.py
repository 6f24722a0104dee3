"""``EnvConfig``: how to build the tabletop simulator (group ``configs/env/``)."""

from __future__ import annotations

from dataclasses import dataclass

from roboflamingo.config import require_choice, require_positive

RENDERERS = ("auto", "egl", "tiny")


@dataclass
class EnvConfig:
    """The PyBullet tabletop simulator: scene, cameras, renderer, timing.

    Args:
        scene: a scene name from ``envs/scenes/`` (A, B, C, D) or a path to a scene YAML file.
        static_size, gripper_size: square camera resolutions (CALVIN: 200 and 84).
        renderer: ``tiny`` (PyBullet's CPU TinyRenderer, the default: identical images on every
            machine), ``egl`` (the EGL plugin: Mesa's llvmpipe in software, or a GPU; about 3x faster
            than the TinyRenderer on a 2-core CPU, drawn without cast shadows) or ``auto`` (EGL where
            the plugin loads, TinyRenderer otherwise; what ``scripts/bench_env.py`` measures as the
            default). The renderers draw different images and policies trained on one do worse on
            the other (calvin_env#3), so a dataset records the one it used (``env_config.yaml``) and
            evaluation should use the same.
        render: false skips the cameras (images are all zeros): for scripted rollouts that read
            state only.
        max_episode_steps: steps before ``truncated`` (CALVIN's EP_LEN).
        control_freq, physics_freq: 30 Hz actions over 240 Hz physics, as CALVIN.
    """

    scene: str = "D"
    static_size: int = 200
    gripper_size: int = 84
    renderer: str = "tiny"
    render: bool = True
    max_episode_steps: int = 360
    control_freq: int = 30
    physics_freq: int = 240

    def __post_init__(self) -> None:
        if not isinstance(self.scene, str) or not self.scene:
            raise ValueError(f"env.scene must be a scene name (A, B, C, D) or a YAML path, got {self.scene!r}")
        require_choice("env.renderer", self.renderer, RENDERERS)
        require_positive("env.static_size", self.static_size)
        require_positive("env.gripper_size", self.gripper_size)
        require_positive("env.max_episode_steps", self.max_episode_steps)
        require_positive("env.control_freq", self.control_freq)
        if self.physics_freq % self.control_freq != 0:
            raise ValueError(f"env.physics_freq ({self.physics_freq}) must be a multiple of env.control_freq "
                             f"({self.control_freq})")
