"""``EvalConfig``: how closed-loop evaluation runs (the ``eval/`` config group).

The defaults are CALVIN's published protocol (``calvin_agent/evaluation/evaluate_policy.py``):
1000 chains of 5 subtasks, 360 control steps (12 s at 30 Hz) per subtask. Everything else (workers,
videos, progress bar) changes how fast and how visibly the evaluation runs, never what it measures,
so only the protocol fields enter the resume fingerprint (see ``runner.evaluate_items``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roboflamingo.config import require_choice, require_positive

MODES = ("chains", "single_task")
START_METHODS = ("spawn", "forkserver")
SEQUENCES = ("auto", "calvin", "sampled")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class EvalConfig:
    """Closed-loop evaluation settings.

    Args:
        mode: ``chains`` runs CALVIN's long-horizon protocol (chains of 5 subtasks, stop at the first
            failure); ``single_task`` runs ``episodes_per_task`` independent one-subtask episodes per
            task, each from an initial state where the task is feasible.
        num_chains: chains sampled from the sequence generator (CALVIN: 1000).
        sequences: where chains come from: ``calvin`` is exactly CALVIN's
            ``get_sequences(num_chains)``, in its order (no ``tasks``, ``chain_seed`` 0); ``sampled``
            is our generator (same distribution, seeded by ``chain_seed``, task subsets allowed);
            ``auto`` is ``calvin`` when ``calvin_dataset`` is set, else ``sampled``.
        chain_seed: seed of the sequence generator; the same seed gives the same chains.
        ep_len: control steps allowed per subtask (CALVIN's ``EP_LEN``).
        episodes_per_task: single-task mode only: episodes per task.
        tasks: the tasks to evaluate; empty means all tasks of the oracle. In chains mode the chains
            are drawn from these tasks only (at least 5; see ``sim.chains.sample_chains``).
        workers: processes on this machine, each with its own environment and policy. ``1`` runs in
            the calling process. Under ``torchrun`` every rank starts this many.
        batch_size: 0 runs the layout above (each worker its own policy at batch 1). B > 0 runs the
            policy once per rank in the main process and B simulator processes, stepping all B
            episodes in one batched forward per control step (``workers`` is then unused).
        batch_groups: with ``batch_size``: G groups of B simulators (B x G processes); a group's
            forward runs while the other groups' simulators step, so on a CPU the policy and the
            simulators use the cores at the same time instead of taking turns.
        precision: the frozen towers' (vision encoder, LM) inference precision for a checkpoint
            policy: ``fp32``, or ``bf16``/``fp16`` (meant for a GPU; it enters the resume
            fingerprint, since actions change slightly).
        start_method: multiprocessing start method for the workers. ``fork`` is not offered: a forked
            child inherits pybullet/EGL/CUDA state that is not fork-safe.
        torch_threads: intra-op threads per worker for a checkpoint policy; 0 splits the cores other
            processes leave free at start evenly between the workers so they do not oversubscribe the
            machine (batched: all of them, since the simulators wait while the policy runs; with
            ``batch_groups=G``, 1/G of them).
        num_videos: rollout videos for the first K chains (by chain index); 0 disables them.
        failure_videos: per task, videos of its first K failures (by chain index; a chain's failure is
            its first failed subtask's), under ``videos/failures/`` and listed per task in the
            summary's ``failure_videos``: where to look first when a task fails. Every chain is then
            recorded and the successful ones discarded. 0 disables them.
        video_fps: frame rate of the videos (the simulator runs at 30 Hz).
        video_stride: keep every n-th control step in the video.
        progress: show a tqdm bar with the running success rates.
        overwrite: discard results of an earlier, different evaluation in the same run directory
            instead of refusing to mix them.
        calvin_dataset: a CALVIN dataset split directory (``.../validation``) holding
            ``.hydra/merged_config.yaml``. When set, the real ``calvin_env`` is used (it must be
            installed) with CALVIN's own task oracle, instead of the built-in tabletop.
        calvin_tasks_config: CALVIN's task-oracle config (``new_playtable_tasks.yaml``); empty looks
            for it next to the installed ``calvin_env`` package (``conf/tasks/``).
        calvin_instructions: a YAML file ``{task: [sentence, ...]}`` with the evaluation sentences;
            empty uses ``envs/instructions/eval.yaml``, which holds CALVIN's own
            (``new_playtable_validation.yaml``) verbatim, none of them a training sentence.
        dist_timeout_min: how long ranks under ``torchrun`` wait for each other at the final merge.
    """

    mode: str = "chains"
    num_chains: int = 1000
    sequences: str = "auto"
    chain_seed: int = 0
    ep_len: int = 360
    episodes_per_task: int = 10
    tasks: list[str] = field(default_factory=list)
    workers: int = 1
    batch_size: int = 0
    batch_groups: int = 1
    precision: str = "fp32"
    start_method: str = "spawn"
    torch_threads: int = 0
    num_videos: int = 0
    failure_videos: int = 0
    video_fps: int = 30
    video_stride: int = 1
    progress: bool = True
    overwrite: bool = False
    calvin_dataset: str | None = None
    calvin_tasks_config: str | None = None
    calvin_instructions: str | None = None
    dist_timeout_min: int = 24 * 60

    def __post_init__(self) -> None:
        require_choice("eval.mode", self.mode, MODES)
        require_choice("eval.start_method", self.start_method, START_METHODS)
        require_choice("eval.sequences", self.sequences, SEQUENCES)
        require_positive("eval.num_chains", self.num_chains)
        require_positive("eval.ep_len", self.ep_len)
        require_positive("eval.episodes_per_task", self.episodes_per_task)
        require_positive("eval.workers", self.workers)
        require_positive("eval.batch_size", self.batch_size, allow_zero=True)
        require_positive("eval.batch_groups", self.batch_groups)
        require_choice("eval.precision", self.precision, PRECISIONS)
        require_positive("eval.torch_threads", self.torch_threads, allow_zero=True)
        require_positive("eval.num_videos", self.num_videos, allow_zero=True)
        require_positive("eval.failure_videos", self.failure_videos, allow_zero=True)
        require_positive("eval.video_fps", self.video_fps)
        require_positive("eval.video_stride", self.video_stride)
        require_positive("eval.dist_timeout_min", self.dist_timeout_min)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"eval.tasks must not repeat a task, got {list(self.tasks)}")
        if self.mode == "chains" and 0 < len(self.tasks) < 5:
            raise ValueError(f"eval.tasks: chains of 5 need at least 5 tasks, got {list(self.tasks)}")
        if self.calvin_sequences and (self.tasks or self.chain_seed != 0):
            raise ValueError("eval.sequences: CALVIN's sequences have no task subset and no seed (got eval.tasks="
                             f"{list(self.tasks)}, eval.chain_seed={self.chain_seed}); set eval.sequences=sampled")

    @property
    def calvin_sequences(self) -> bool:
        """Whether chains are CALVIN's ``get_sequences`` rather than our generator's."""
        return self.sequences == "calvin" or (self.sequences == "auto" and bool(self.calvin_dataset))
