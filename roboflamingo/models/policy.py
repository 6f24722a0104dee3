"""The RoboFlamingo policy: a frozen OpenFlamingo-style backbone plus a history-aware action head.

Training sees windows of W frames (``forward(batch) -> (loss, logs)``); inference sees one frame at a
time (``reset()``, ``step(obs, instruction) -> action``) and runs the backbone once per step: each
frame's feature is computed once and the head carries its own history (see ``heads.py``). Which of
the A predicted actions is executed is ``head.chunking``'s business (``chunking.py``).
Shapes: B windows, T frames, A = ``act_steps`` future actions, N = B*T frames through the backbone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from roboflamingo.models import checkpoint
from roboflamingo.models.backbone import FlamingoBackbone
from roboflamingo.models.chunking import ChunkExecutor, step_chunked
from roboflamingo.models.config import ChunkingConfig, HeadConfig, ModelConfig
from roboflamingo.models.heads import build_head
from roboflamingo.models.normalization import Normalizer
from roboflamingo.models.text import tokenize
from roboflamingo.robot import RobotDescription
from roboflamingo.transforms import preprocess_images
from roboflamingo.types import ACTION_MASK, ACTIONS, INSTRUCTION

_TEXT_CACHE_SIZE = 4096
# Inference precisions of the frozen towers (``eval.precision``).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RoboFlamingoPolicy(nn.Module):
    """The policy for one robot (``robot``: its cameras feed the image slots in order, its state the
    head, its action the outputs; CALVIN's Franka when not given)."""

    def __init__(self, model_config: ModelConfig, head_config: HeadConfig, load_weights: bool = True,
                 robot: RobotDescription | None = None):
        super().__init__()
        if robot is None:
            from roboflamingo.robots.calvin import CALVIN

            robot = CALVIN
        self.robot = robot
        self.backbone = FlamingoBackbone(model_config, load_weights=load_weights)
        self.model_config = model_config
        self.head_config = head_config.resolved(self.backbone.lm_dim)
        feature_dim = self.backbone.lm_dim + len(robot.camera_names) * 2 * model_config.keypoints
        self.action_head = build_head(
            self.head_config, feature_dim, model_config.act_steps, model_config.window,
            len(robot.state.used) if model_config.use_state else None,
            (len(robot.action.continuous), len(robot.action.grippers)),
        )
        self.normalizer = Normalizer(robot)
        # Per action dim: the range predictions are clipped to, and which dims are binary grippers.
        low = torch.tensor(robot.action.low, dtype=torch.float32)
        high = torch.tensor(robot.action.high, dtype=torch.float32)
        self._clip = (self.normalizer.continuous(low), self.normalizer.continuous(high))
        self._grippers = torch.tensor(robot.action.grippers, dtype=torch.long)
        self._tokens: dict[str, torch.Tensor] = {}
        self._head_cache: Any = None
        self._chunked: Any = None  # step()'s episode under head.chunking (roboflamingo.models.chunking)
        self.set_chunking(self.head_config.chunking)
        self._precision = torch.float32
        self._freeze()

    # -- freezing -----------------------------------------------------------------------------------

    def trainable_modules(self) -> dict[str, nn.Module | nn.Parameter]:
        """What training updates, by the config's freezing options (the original's recipe by default)."""
        cfg, bb = self.model_config, self.backbone
        parts: dict[str, nn.Module | nn.Parameter] = {
            "gated_cross_attn_layers": bb.gated_cross_attn_layers,
            "action_head": self.action_head,
        }
        if not cfg.freeze_resampler:
            parts["perceiver"] = bb.perceiver
        if bb.keypoints is not None:
            parts["keypoints"] = bb.keypoints
        if cfg.train_embeddings:
            parts["lm_input_embeddings"] = bb.lang_encoder.get_input_embeddings().weight
        if cfg.unfreeze_vision:
            parts["vision_encoder"] = bb.vision_encoder
        return parts

    def _freeze(self) -> None:
        self.requires_grad_(False)
        expected: dict[int, int] = {}
        for part in self.trainable_modules().values():
            params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
            for p in params:
                p.requires_grad_(True)
                expected[id(p)] = p.numel()
        proj = self.backbone.vision_encoder.proj  # open_clip's pooled projection, or None
        if isinstance(proj, nn.Parameter) and proj.requires_grad:
            # The pooled CLIP projection never reaches the policy; a trainable unused parameter
            # would make DDP need find_unused_parameters.
            proj.requires_grad_(False)
            expected.pop(id(proj))
        self.backbone.train_vision = self.model_config.unfreeze_vision
        actual = self.num_trainable_parameters()
        if actual != sum(expected.values()):
            raise RuntimeError(
                f"freezing left {actual} trainable parameters, expected {sum(expected.values())} "
                f"({list(self.trainable_modules())})"
            )

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> RoboFlamingoPolicy:
        super().train(mode)
        # Frozen towers stay in eval mode (no dropout, fixed norms) even while the rest trains.
        self.backbone.lang_encoder.eval()
        if not self.model_config.unfreeze_vision:
            self.backbone.vision_encoder.eval()
        return self

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the cross-attention weight matrices only (not gates, norms, biases)."""
        decay = [p for p in self.backbone.gated_cross_attn_layers.parameters() if p.requires_grad and p.ndim >= 2]
        decay_ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in decay_ids]
        groups = [
            {"name": "xattn_weights", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": rest, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    # -- normalization ------------------------------------------------------------------------------

    def set_normalization(self, stats: Mapping[str, Any]) -> None:
        self.normalizer.set(stats)

    def normalization(self) -> dict[str, np.ndarray]:
        return self.normalizer.stats()

    # -- shared pieces of forward and step ----------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.normalizer.action_mean.device

    @property
    def image_size(self) -> int:
        return self.model_config.vision.image_size

    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B instructions -> input_ids, attention_mask (B, L), each instruction tokenized once."""
        tok = self.backbone.tokenizer
        if tok is None:
            raise RuntimeError("this policy was built without a tokenizer (set model.lm.tokenizer or model.lm.path)")
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise TypeError(f"instructions must be a list of str, got {instructions!r:.80}")
        rows = []
        for s in instructions:
            ids = self._tokens.get(s)
            if ids is None:
                if len(self._tokens) >= _TEXT_CACHE_SIZE:
                    self._tokens.clear()
                ids = self._tokens[s] = tokenize(tok, [s], self.model_config.lm.max_text_length)[0][0]
            rows.append(ids)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return input_ids.to(self.device), mask.to(self.device)

    def _images(self, images: Any, key: str, lead: int) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device)
        if x.ndim != lead + 3 or 3 not in (x.shape[-3], x.shape[-1]):
            raise ValueError(
                f"{key} must have shape {'(B, T, 3, H, W)' if lead == 2 else '(H, W, 3)'} "
                f"(uint8, or float preprocessed to {self.image_size}px), got {tuple(x.shape)}"
            )
        try:
            return preprocess_images(x, self.image_size, resize=self.model_config.vision.resize)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from e

    # -- training -----------------------------------------------------------------------------------

    def _state_key(self) -> tuple[str, ...]:
        return (self.robot.state.key,) if self.model_config.use_state else ()

    def predict(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of windows -> continuous (B, T, A, C) normalized, gripper logits (B, T, A, G, 2)."""
        self.normalizer.check()
        for key in (*self.robot.camera_names, INSTRUCTION, *self._state_key()):
            if key not in batch:
                raise KeyError(f"batch is missing '{key}' (expected the batch schema of roboflamingo.robot for "
                               f"{self.robot.summary()})")
        cams = [self._images(batch[name], name, lead=2) for name in self.robot.camera_names]
        first = self.robot.camera_names[0]
        b, t = cams[0].shape[:2]
        for name, cam in zip(self.robot.camera_names, cams):
            if cam.shape[:2] != (b, t):
                raise ValueError(f"{name} has (B, T) = {tuple(cam.shape[:2])}, {first} has {(b, t)}")
        instructions = list(batch[INSTRUCTION])
        if len(instructions) != b:
            raise ValueError(f"batch['{INSTRUCTION}'] must hold B={b} strings, got {len(instructions)}")
        ids, mask = self.tokenize(instructions)
        feats = self.backbone(
            [c.flatten(0, 1) for c in cams], ids.repeat_interleave(t, 0), mask.repeat_interleave(t, 0)
        ).unflatten(0, (b, t))  # (B, T, D)
        state = None
        if self.model_config.use_state:
            key, dim = self.robot.state.key, self.robot.state.dim
            values = torch.as_tensor(batch[key], dtype=torch.float32, device=self.device)
            if values.shape != (b, t, dim):
                raise ValueError(f"{key} must have shape {(b, t, dim)} for {self.robot.summary()}, "
                                 f"got {tuple(values.shape)}")
            state = self.normalizer.normalize_state(values)
        return self.action_head(feats, state)

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a batch of windows: MSE on the normalized continuous dims + cross-entropy on each
        binary gripper."""
        pose, grip = self.predict(batch)
        b, t, a = pose.shape[:3]
        dim = self.robot.action.dim
        if ACTIONS not in batch:
            raise KeyError(f"batch is missing '{ACTIONS}' (expected (B, T, A, {dim}))")
        actions = torch.as_tensor(batch[ACTIONS], dtype=torch.float32, device=self.device)
        if actions.shape != (b, t, a, dim):
            raise ValueError(f"batch['{ACTIONS}'] must have shape {(b, t, a, dim)} "
                             f"(model.act_steps={a}) for {self.robot.summary()}, got {tuple(actions.shape)}")
        if ACTION_MASK in batch:
            valid = torch.as_tensor(batch[ACTION_MASK], device=self.device).bool()
            if valid.shape != (b, t, a):
                raise ValueError(f"batch['{ACTION_MASK}'] must have shape {(b, t, a)}, got {tuple(valid.shape)}")
        else:
            valid = torch.ones((b, t, a), dtype=torch.bool, device=self.device)
        weight = valid.float()
        count = weight.sum().clamp(min=1.0)
        hc = self.head_config
        names, figures = ["loss"], []
        loss = pose.new_zeros(())
        if pose.shape[-1]:
            target = self.normalizer.normalize_continuous(self.normalizer.continuous(actions))
            pose_loss = (((pose - target) ** 2).mean(dim=-1) * weight).sum() / count
            loss = loss + hc.pose_loss_weight * pose_loss
            names.append("pose_loss")
            figures.append(pose_loss)
        if grip.shape[-2]:
            g = grip.shape[-2]
            grip_target = self._gripper_classes(actions)  # (B, T, A, G), class 1 = open
            ce = F.cross_entropy(grip.reshape(-1, 2), grip_target.reshape(-1), reduction="none").view(b, t, a, g)
            grip_loss = (ce.mean(dim=-1) * weight).sum() / count
            loss = loss + hc.gripper_loss_weight * grip_loss
            with torch.no_grad():
                acc = (((grip.argmax(-1) == grip_target).float().mean(dim=-1)) * weight).sum() / count
            names += ["gripper_loss", "gripper_acc"]
            figures += [grip_loss, acc]
        # Whether the policy can see at all: a gate that stays near 0 leaves the action blind to the
        # cameras (docs/model.md, "Is the policy looking?").
        names.append("attn_gate")
        figures.append(self.backbone.attn_gate_openness().to(loss.device))
        with torch.no_grad():
            # One device-to-host transfer for all the figures.
            values = torch.stack([loss, *figures]).tolist()
        return loss, dict(zip(names, values))

    def _gripper_classes(self, actions: torch.Tensor) -> torch.Tensor:
        """Binary gripper dims of actions (..., action dim) -> class (..., G): 1 where open."""
        spec = self.robot.action
        values = actions.index_select(-1, self._grippers.to(actions.device))
        opened = values > spec.gripper_threshold if spec.open_is_greater else values < spec.gripper_threshold
        return opened.long()

    # -- inference ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the history and any stored action chunk (call at the start of every subtask)."""
        self._head_cache = self._chunked = None

    def set_chunking(self, chunking: ChunkingConfig) -> None:
        """How predicted chunks are executed from now on (``head.chunking``; ``policy.chunking``)."""
        self.head_config.chunking = chunking
        spec = self.robot.action
        self._executor = (ChunkExecutor(chunking, self.model_config.act_steps, spec.grippers, spec.close, spec.open)
                          if chunking.active else None)
        # A head with history sees every frame even on steps that execute a stored action (chunking.py).
        cfg, hc = self.model_config, self.head_config
        self._head_sees_every_frame = hc.type != "mlp" and (cfg.window > 1 or hc.lstm_history == "running")
        self.reset()

    def _frame_features(self, observations: Sequence[Mapping[str, np.ndarray]],
                        instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B observations (one frame each) -> backbone features (B, D) and normalized state (B, S)."""
        self._check_inputs(observations, instructions)
        cams = [self._camera(observations, name) for name in self.robot.camera_names]
        ids, mask = self.tokenize(list(instructions))
        with self._precision_context():
            feat = self.backbone(cams, ids, mask).float()  # (B, D)
        state = None
        if self.model_config.use_state:
            key = self.robot.state.key
            values = torch.as_tensor(np.stack([np.asarray(o[key], dtype=np.float32) for o in observations]),
                                     device=self.device)
            state = self.normalizer.normalize_state(values)
        return feat, state

    def _check_inputs(self, observations: Sequence[Mapping[str, np.ndarray]], instructions: Sequence[str]) -> None:
        if self.training:
            raise RuntimeError("call policy.eval() before step(): dropout would make actions random")
        self.normalizer.check()
        keys = (*self.robot.camera_names, *self._state_key())
        if len(observations) != len(instructions):
            raise ValueError(f"{len(observations)} observations but {len(instructions)} instructions")
        batched = len(observations) > 1  # name the row only when there is more than one
        for i, (obs, instruction) in enumerate(zip(observations, instructions)):
            try:
                self.robot.check_observation(obs, keys)
            except ValueError as e:
                raise ValueError(f"observation {i}: {e}" if batched else str(e)) from e
            if not isinstance(instruction, str):
                which = f"instruction {i}" if batched else "instruction"
                raise TypeError(f"{which} must be a str, got {type(instruction).__name__}")

    def _camera(self, observations: Sequence[Mapping[str, np.ndarray]], key: str) -> torch.Tensor:
        """One camera of B observations -> (B, 3, S, S); frames of one size are resized in one call."""
        # Camera frames may be flipped views (negative strides), which torch cannot wrap.
        frames = [np.ascontiguousarray(o[key]) for o in observations]
        if all(f.shape == frames[0].shape for f in frames):
            return self._images(np.stack(frames), key, lead=1)
        return torch.cat([self._images(f[None], key, lead=1) for f in frames])

    def step_outputs(self, obs: Mapping[str, np.ndarray], instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame -> raw head outputs for it: continuous (A, C) normalized, gripper logits (A, G, 2)."""
        feat, state = self._frame_features([obs], [instruction])  # (1, D)
        (pose, grip), self._head_cache = self.action_head.step(feat, state, self._head_cache)
        return pose[0], grip[0]

    def _to_actions(self, pose: torch.Tensor, grip: torch.Tensor) -> np.ndarray:
        """The first of A predictions per row: continuous (B, A, C), logits (B, A, G, 2) -> actions
        (B, action dim) in the robot's units."""
        spec = self.robot.action
        action = torch.empty((pose.shape[0], spec.dim), dtype=torch.float32, device=pose.device)
        low, high = (x.to(pose.device) for x in self._clip)
        values = self.normalizer.unnormalize_continuous(pose[:, 0]).clamp(low, high)
        if self.head_config.float16_actions:
            # The original casts its actions to float16 before returning them (eval_utils.py).
            values = values.half().float()
        cont = self.normalizer._continuous
        if isinstance(cont, slice):
            action[:, cont] = values
        else:
            action[:, cont.to(pose.device)] = values
        if spec.grippers:
            opened = grip[:, 0].argmax(-1) == 1  # (B, G)
            action[:, self._grippers.to(pose.device)] = torch.where(opened, spec.open, spec.close)
        return action.cpu().numpy()

    def _to_chunks(self, pose: torch.Tensor, grip: torch.Tensor) -> np.ndarray:
        """All A predictions per row -> chunks (B, A, action dim): continuous dims as ``_to_actions``
        makes them, each binary gripper as its probability of open (``chunking.ChunkState.step``)."""
        spec = self.robot.action
        chunk = torch.empty((*pose.shape[:2], spec.dim), dtype=torch.float32, device=pose.device)
        low, high = (x.to(pose.device) for x in self._clip)
        values = self.normalizer.unnormalize_continuous(pose).clamp(low, high)
        cont = self.normalizer._continuous
        chunk[..., cont if isinstance(cont, slice) else cont.to(pose.device)] = values
        if spec.grippers:
            chunk[..., self._grippers.to(pose.device)] = grip.float().softmax(-1)[..., 1]
        return chunk.cpu().numpy()

    @torch.inference_mode()
    def step(self, obs: Mapping[str, np.ndarray], instruction: str) -> np.ndarray:
        """One observation of the robot -> one action in its units (float32; continuous dims clipped to
        the description's bounds, binary grippers exactly close or open).

        The first of the A predicted actions is executed, as in the original, unless ``head.chunking``
        says otherwise; then this is ``step_batch`` on one episode.
        """
        if self._executor is not None:
            actions, (self._chunked,) = self.step_batch([obs], [instruction], [self._chunked])
            return actions[0]
        return self.step_from_outputs(*self.step_outputs(obs, instruction))

    def step_from_outputs(self, pose: torch.Tensor, grip: torch.Tensor) -> np.ndarray:
        """Head outputs of one frame (:meth:`step_outputs`) -> the executed action."""
        return self._to_actions(pose[None], grip[None])[0]

    @torch.inference_mode()
    def step_batch(self, observations: Sequence[Mapping[str, np.ndarray]], instructions: Sequence[str],
                   histories: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        """B independent episodes, one frame each, through one backbone forward.

        ``histories[i]`` is episode i's history as returned by the previous call (``None`` starts a
        new episode: that is the per-episode reset). Returns actions (B, action dim) as ``step`` makes them
        and the new histories; the policy itself keeps no state, so episodes never mix.
        """
        if len(histories) != len(observations):
            raise ValueError(f"{len(observations)} observations but {len(histories)} histories")
        if self._executor is not None:
            def predict(rows, caches):
                pose, grip, new = self._head_step([observations[i] for i in rows], [instructions[i] for i in rows], caches)
                return self._to_chunks(pose, grip), new

            actions, new = step_chunked(histories, self._executor, self._head_sees_every_frame, predict,
                                        lambda rows: self._check_inputs([observations[i] for i in rows],
                                                                        [instructions[i] for i in rows]))
            if self.head_config.float16_actions:
                cont = list(self.robot.action.continuous)
                actions[:, cont] = actions[:, cont].astype(np.float16)
            return actions, new
        pose, grip, new = self._head_step(observations, instructions, histories)
        return self._to_actions(pose, grip), new

    def _head_step(self, observations, instructions, histories) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        """B frames through one backbone forward and the head, each row with its own head cache."""
        feat, state = self._frame_features(observations, instructions)  # (B, D), (B, S)
        head = self.action_head
        groups: dict[Any, list[int]] = {}
        for i, cache in enumerate(histories):
            groups.setdefault(head.cache_group(cache), []).append(i)
        pose = grip = None
        new: list[Any] = [None] * len(histories)
        for rows in groups.values():
            index = torch.tensor(rows, device=feat.device) if len(groups) > 1 else None
            f = feat if index is None else feat.index_select(0, index)
            s = state if state is None or index is None else state.index_select(0, index)
            (p, g), cache = head.step(f, s, head.stack_caches([histories[i] for i in rows]))
            if index is None:
                pose, grip = p, g
            else:
                if pose is None:
                    pose = p.new_empty((len(histories), *p.shape[1:]))
                    grip = g.new_empty((len(histories), *g.shape[1:]))
                pose[index], grip[index] = p, g
            for i, c in zip(rows, head.split_cache(cache, len(rows))):
                new[i] = c
        return pose, grip, new

    # -- inference precision ------------------------------------------------------------------------

    def set_precision(self, precision: str) -> None:
        """Run the frozen towers (vision encoder, LM) in ``fp32``, ``bf16`` or ``fp16`` for inference.

        Their weights are cast (half the memory) and the backbone runs under autocast, so the trained
        parts (resampler, cross-attention, head) keep fp32 weights and the head sees fp32 features.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{precision}'")
        dtype = PRECISIONS[precision]
        for tower in (self.backbone.vision_encoder, self.backbone.lang_encoder):
            tower.to(dtype)
        self._precision = dtype

    def _precision_context(self):
        if self._precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._precision)

    # -- checkpoints --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                        bundle: bool = False) -> None:
        """Write the policy directory (``config.json``, ``model.safetensors``; see ``models/checkpoint.py``),
        a layout ``huggingface_hub.upload_folder`` can push as is.

        ``state_dict``: take the tensors from this full state dict (e.g. gathered from FSDP shards)
        instead of from the module's own parameters. ``bundle``: copy the frozen towers (vision
        weights, LM directory) in, so the directory needs nothing else to load.
        """
        checkpoint.save_policy(self, directory, state_dict=state_dict, bundle=bundle)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, map_location: str | torch.device = "cpu",
                        revision: str | None = None) -> RoboFlamingoPolicy:
        """The policy a saved directory holds, in eval mode; loading is strict.

        ``path_or_hub_id``: a policy directory, a training checkpoint or run directory, or a Hub id
        (``org/name``, ``revision`` optional) read from the local Hugging Face cache, offline. Frozen
        towers are found by identity through the search path (``models/towers.py``).
        """
        saved = checkpoint.read_saved(checkpoint.hub_resolve(path_or_hub_id, revision))
        policy = cls(checkpoint.locate_towers(saved), saved.config.head, robot=saved.robot)
        checkpoint.load_weights(policy, saved.directory, saved)
        return policy.to(map_location).eval()

    @classmethod
    def from_config(cls, model: ModelConfig, head: HeadConfig, stats: Mapping[str, Any] | None = None,
                    device: str | torch.device | None = None, robot: RobotDescription | None = None
                    ) -> RoboFlamingoPolicy:
        """A fresh policy (in eval mode) for ``robot`` (CALVIN's by default), normalized by ``stats``.
        ``device="meta"`` builds shapes only, reading no weight files."""
        if device is not None and torch.device(device).type == "meta":
            with torch.device("meta"):
                policy = cls(model, head, load_weights=False, robot=robot)
        else:
            policy = cls(model, head, robot=robot)
            if device is not None:
                policy.to(device)
        if stats is not None:
            policy.set_normalization(stats)
        return policy.eval()
