"""The demo's effective recipe, pinned: `make demo`'s figures depend on every value its stages receive,
so an edit to configs/ or to a dataclass default that changes one of them must fail here (and be
measured again, docs/demo.md)."""

from dataclasses import asdict
from pathlib import Path

import pytest

from roboflamingo import demo
from roboflamingo.config import ConfigError, load
from roboflamingo.models.config import ChunkingConfig

TASKS = ["move_slider_left", "move_slider_right", "open_drawer", "close_drawer", "turn_on_led", "turn_off_led",
         "turn_on_lightbulb", "turn_off_lightbulb"]
ENV = {"scene": "D", "static_size": 64, "gripper_size": 64, "renderer": "tiny", "render": True,
       "max_episode_steps": 360, "control_freq": 30, "physics_freq": 240}


@pytest.fixture(scope="module")
def job() -> demo.Job:
    return load("demo", demo.Job, [])


def test_the_demo_generates_what_it_was_measured_with(job):
    gen = asdict(job.generate_job(Path("runs/demo/data")))
    assert gen == {"root": "runs/demo/data", "train_scenes": ["D"], "val_scenes": ["D"], "mode": "both",
                   "tasks": TASKS, "episodes_per_task": 40, "val_episodes_per_task": 3, "chains_per_scene": 0,
                   "val_chains_per_scene": 0, "noise": 0.01, "dart": 0.3, "handover": 0.3, "handover_home": False,
                   "workers": 2, "seed": 0, "progress": True, "env": ENV}


@pytest.mark.parametrize("mode, videos", [("chains", 2), ("single_task", 0)])
def test_the_demo_evaluates_with_the_protocol_it_was_measured_with(job, mode, videos):
    cfg = asdict(job.eval_config(mode, videos=mode == "chains"))
    assert cfg == {"mode": mode, "num_chains": 50, "sequences": "auto", "chain_seed": 0, "ep_len": 240,
                   "episodes_per_task": 10, "tasks": TASKS, "workers": 2, "batch_size": 0, "batch_groups": 1,
                   "precision": "fp32", "start_method": "spawn", "torch_threads": 1, "num_videos": videos,
                   "failure_videos": 1, "video_fps": 30, "video_stride": 1, "progress": True, "overwrite": False,
                   "calvin_dataset": None, "calvin_tasks_config": None, "calvin_instructions": None,
                   "dist_timeout_min": 1440}
    assert asdict(job.env) == ENV and job.seed == 0


def test_the_demo_trains_the_recipe_it_was_measured_with(job):
    m, d, t = job.model, job.data, job.train
    assert (m.name, m.window, m.act_steps, m.use_state, m.lm.cross_attn_every_n_layers) == ("tiny_minilm", 1, 10, True, 6)
    assert (m.vision.image_size, m.vision.width, m.vision.layers, m.lm.family) == (64, 128, 2, "bert")
    assert (job.head.type, job.head.num_layers, job.head.dropout) == ("lstm", 4, 0.1)
    assert (d.window, d.act_steps, d.batch_size, d.num_workers, d.image_size, d.augment.shift) == (1, 10, 32, 1, None, True)
    # instructions drawn per sample from the demonstration's own and CALVIN's training sentences
    assert (d.paraphrase, d.paraphrase_file) == (True, "package:roboflamingo/envs/instructions/calvin_train.yaml")
    assert (t.steps, t.lr, t.warmup_steps, t.schedule, t.val_every, t.checkpoint_every, t.grad_clip) == \
        (5000, 1e-3, 20, "cosine", 1000, 1000, 1.0)
    assert (t.weight_decay, t.betas, t.precision, t.val_batches) == (0.1, [0.9, 0.999], "auto", 4)
    # A fixed thread count: torch's CPU sums change with it, so the figures would follow the load.
    assert t.threads == 1
    # A chunk of 10 predicted per frame, executed with ACT's temporal ensembling weighted to the newest
    # chunks; one training seed.
    assert job.head.chunking == ChunkingConfig(ensemble=True, ensemble_decay=-0.5) and (job.seed, job.seeds) == (0, 1)


def test_abc_to_d_spreads_the_demonstrations_over_three_scenes():
    job = load("demo", demo.Job, ["+experiment=abc_to_d"])
    gen = job.generate_job(Path("d"))
    assert (gen.train_scenes, gen.val_scenes, gen.episodes_per_task, gen.val_episodes_per_task) == (["A", "B", "C"], ["D"], 14, 2)
    assert (gen.handover, gen.chains_per_scene, job.run_dir) == (0.3, 0, "runs/abc_to_d")


def test_all_tasks_can_demonstrate_and_evaluate_every_one_of_the_34_tasks():
    """Every task gets its handover episodes and its single-task episodes, the 7 that no initial state
    allows included (the experiment stopped at generation, and its evaluation would have, before)."""
    import numpy as np

    from roboflamingo.eval.items import build_items
    from roboflamingo.sim.rollout import sample_handover
    from roboflamingo.sim.tasks import TaskOracle

    job = load("demo", demo.Job, ["+experiment=all_tasks"])
    oracle = TaskOracle.default()
    assert sorted(job.tasks) == sorted(oracle.tasks) and job.generate_job(Path("d")).handover == 0.3
    rng = np.random.default_rng(0)
    for task in job.tasks:
        assert sample_handover(task, rng, oracle, list(job.tasks)).tasks[-1] == task
    items = build_items(job.eval_config("single_task", videos=False))
    assert [it.tasks[0] for it in items[::10]] == list(job.tasks) and len(items) == 340
    assert {it.tasks[0] for it in items if it.setup} == {
        "lift_red_block_drawer", "lift_blue_block_drawer", "lift_pink_block_drawer", "place_in_slider",
        "place_in_drawer", "stack_block", "unstack_block"}


@pytest.mark.parametrize("override, match", [
    ("generate.seed=3", "generate.seed is set by the demo"),
    ("eval.workers=4", "eval.workers is set by the demo"),
    ("data.window=4", "data.window \\(4\\) must equal model.window \\(1\\)"),
])
def test_a_value_the_demo_shares_or_a_mismatched_window_is_refused(override, match):
    assert load("demo", demo.Job, ["model.window=4"]).data.window == 4  # data follows the model's window
    with pytest.raises(ConfigError, match=match):
        load("demo", demo.Job, [override])
