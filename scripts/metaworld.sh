#!/usr/bin/env bash
# Meta-World on a CPU (issue 27): the scripted experts' demonstrations, a small policy trained on
# 2 cores, then seeded episodes per task with the evaluation sentences (never a training one).
#   scripts/metaworld.sh [run_dir] [training seed] [state] [train overrides...]
# The defaults are the MT10 recipe; the task set and budget come from the environment:
#   TASKS (mt10; a group such as easy, or all), EPISODES (demonstrations per task, 100),
#   EVAL_EPISODES (per task, 20), STEPS (training steps, 12000), THREADS (training threads, 1),
#   SIZE (camera and policy image size in px, 64; the model's vision.image_size follows it).
#   The 50-task table: TASKS=all EPISODES=50 EVAL_EPISODES=10 STEPS=24000 THREADS=2.
# state: hand (LeRobot's 4-d state; the image says where objects and goal are) or full (Meta-World's
# 39-d observation, objects and goal included: privileged, not comparable with image-based results).
# Stages are kept under run_dir and skipped on a rerun (delete a stage's folder to redo it); the last
# line is the evaluation's JSON headline. Further arguments go to `train` (e.g. model.lm.pooling=mean).
# Figures and timings: README and docs/metaworld.md.
set -euo pipefail
RUN=${1:-runs/metaworld_${TASKS:-mt10}}
SEED=${2:-0}
STATE=${3:-hand}
TASKS=${TASKS:-mt10}
EPISODES=${EPISODES:-100}
EVAL_EPISODES=${EVAL_EPISODES:-20}
STEPS=${STEPS:-12000}
THREADS=${THREADS:-1}
SIZE=${SIZE:-64}
shift $(( $# < 3 ? $# : 3 ))
PY=${PYTHON:-.venv/bin/python}
RF="$PY -m roboflamingo.cli"
DATA=$RUN/data
mkdir -p "$RUN"

# EPISODES demonstrations per task (LeRobot's MT50 set has 50), object and goal positions drawn anew each
# episode, each annotated with LeRobot's description or one of our paraphrases. SIZE px, fast renderer.
if [ ! -f "$DATA/manifest.json" ]; then
  $RF generate env=metaworld root="$DATA" "tasks=[$TASKS]" episodes_per_task="$EPISODES" val_episodes_per_task=2 \
    env.size="$SIZE" env.state="$STATE" workers=2 progress=false
fi
if [ ! -f "$DATA/validation/packed/manifest.json" ]; then
  $RF pack data=metaworld data.root="$DATA" progress=false
fi

# The demo's model (tiny vision, MiniLM with one cross-attention block, one frame plus the state):
# 12000 steps of batch 32 on one thread (about 55 min beside a second such training on the other core).
if [ ! -e "$RUN/train/checkpoints/last" ] || [ ! -f "$RUN/train/done" ]; then
  $RF train data=metaworld data.root="$DATA" model=tiny_minilm head=lstm train=tiny \
    model.window=1 model.use_state=true model.vision.image_size="$SIZE" model.lm.cross_attn_every_n_layers=6 \
    data.batch_size=32 data.num_workers=1 train.threads="$THREADS" train.steps="$STEPS" train.val_every=3000 \
    train.checkpoint_every=3000 train.progress=false seed="$SEED" run_dir="$RUN/train" "$@"
  touch "$RUN/train/done"
fi

$RF eval env=metaworld checkpoint="$RUN/train/checkpoints/last" "eval.tasks=[$TASKS]" eval.episodes_per_task="$EVAL_EPISODES" \
  env.size="$SIZE" env.state="$STATE" eval.workers=2 eval.failure_videos=1 eval.progress=false run_dir="$RUN/eval"
