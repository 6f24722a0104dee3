"""The RoboFlamingo policy: frozen OpenFlamingo-style backbone + history-aware action head.

Entry points: ``policy.build_policy`` / ``policy.RoboFlamingoPolicy`` (forward, reset/step,
save_pretrained/from_pretrained). Only the config classes are imported here, so reading a config
never pulls in torch, open_clip or transformers.
"""

from roboflamingo.models.config import HeadConfig, ModelConfig, PolicyConfig

__all__ = ["HeadConfig", "ModelConfig", "PolicyConfig"]
