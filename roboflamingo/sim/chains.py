"""CALVIN-style long-horizon chains: symbolic initial states and 5-task sequences.

Follows calvin_agent/evaluation/multistep_sequences.py: the 192 symbolic initial states (1-2 blocks
on the table, at most one block on each side of the shelf, 16 door/drawer/light combinations), and
for state ``i`` a RandomState seeded with ``i`` (plus ``1000 * seed``) draws 5 distinct task names
until the sequence is valid: every task matches exactly one rule of ``envs/tasks.yaml`` and the 5
tasks come from 5 different categories. The chains are then shuffled with ``seed``.
``calvin_sequences`` makes exactly CALVIN's 1000 chains instead (its draws, one at a time).
``initial_state_to_obs`` turns a symbolic state into (robot_obs, scene_obs) with CALVIN's fixed slots,
shuffled with pyhash's FNV-1 32-bit hash of the state (``fnv1_32``, reimplemented: no pyhash).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roboflamingo.io import atomic_write_text
from roboflamingo.robots import calvin as T
from roboflamingo.sim.scene import BLOCK_NAMES, Scene, load_scene
from roboflamingo.sim.tasks import TaskOracle

SEQUENCE_LENGTH = 5
BLOCK_YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)
SHELF_YAW_RANGE = (np.pi / 2 - np.pi / 6, np.pi / 2 + np.pi / 6)
DOOR_LEFT, DRAWER_OPEN, SWITCH_ON = 0.28, 0.22, 0.088
# The variables of CALVIN's symbolic state in ``get_sequences``'s order: the layout seed hashes
# ``str(state.values())``, so the order is part of the result.
CALVIN_STATE_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")


@dataclass
class Chain:
    initial_state: dict
    tasks: list[str] = field(default_factory=list)


def fnv1_32(data: bytes | str) -> int:
    """``pyhash.fnv1_32()(data)``, the hash CALVIN seeds its block layouts with.

    Not textbook FNV-1: pyhash starts from 0, not the offset basis 0x811C9DC5, and hashes a ``str``
    as its UTF-16-LE code units (pyhash's ``Hash.h``: ``PyUnicode_AsUTF16String`` minus the BOM).
    pyhash itself does not build on Python 3.11 (calvin.md pitfall 7), hence this copy of it.
    """
    if isinstance(data, str):
        data = data.encode("utf-16-le")
    h = 0
    for byte in data:
        h = ((h * 0x01000193) & 0xFFFFFFFF) ^ byte
    return h


def calvin_block_layout(state: dict, keys: tuple[str, ...] | list[str] = CALVIN_STATE_KEYS
                        ) -> list[tuple[str, int | None, float]]:
    """Where CALVIN's ``get_env_state_for_initial_condition`` puts each block, and its yaw.

    One ``(surface, table_slot, yaw)`` per block of ``BLOCK_NAMES``: ``table_slot`` indexes the two
    fixed table slots as listed (None off the table). The draws are CALVIN's: a generator seeded with
    ``fnv1_32(str(state.values()))`` (values in ``keys`` order) shuffles the two table slots, then
    draws the three yaws. The red block takes the first shuffled slot, the blue one the second if the
    red one is on the table too, the pink one always the second.
    """
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"initial state is missing {missing} (expected keys {list(keys)})")
    values = {k: state[k].item() if isinstance(state[k], np.generic) else state[k] for k in keys}
    det = np.random.RandomState(fnv1_32(str(values.values())))
    order = det.permutation(2)  # the same draws as CALVIN's np.random.shuffle of its 2-slot list
    red_on_table = state[BLOCK_NAMES[0]] == "table"
    shuffled_index = {BLOCK_NAMES[0]: 0, BLOCK_NAMES[1]: 1 if red_on_table else 0, BLOCK_NAMES[2]: 1}
    layout = []
    for name in BLOCK_NAMES:
        surface = state[name]
        slot = int(order[shuffled_index[name]]) if surface == "table" else None
        layout.append((surface, slot, float(det.uniform(*BLOCK_YAW_RANGE))))
    return layout


def initial_states(oracle: TaskOracle | None = None) -> list[dict]:
    """CALVIN's symbolic initial states, in itertools.product order (192 with the default variables)."""
    oracle = oracle or TaskOracle.default()
    space = oracle.symbolic_state
    keys = list(space)
    states = []
    for values in itertools.product(*space.values()):
        state = dict(zip(keys, values))
        blocks = [state[b] for b in BLOCK_NAMES]
        if blocks.count("table") in (1, 2) and blocks.count("slider_right") < 2 and blocks.count("slider_left") < 2:
            states.append(state)
    return states


def sample_initial_state(rng: np.random.Generator, oracle: TaskOracle | None = None,
                         tasks: list[str] | None = None) -> dict:
    """A uniform draw over CALVIN's initial states (with ``tasks``: those that start a chain of them)."""
    states = chain_start_states(oracle, tasks)
    return dict(states[int(rng.integers(len(states)))])


def chain_start_states(oracle: TaskOracle | None = None, tasks: list[str] | None = None) -> list[dict]:
    """CALVIN's initial states; with ``tasks``, only those from which a chain of those tasks exists."""
    oracle = oracle or TaskOracle.default()
    states = initial_states(oracle)
    return [st for st in states if _has_sequence(st, tasks, oracle)] if tasks else states


def _matches(state: dict, condition: dict) -> bool:
    for k, v in condition.items():
        if isinstance(v, list):
            if state[k] not in v:
                return False
        elif state[k] != v:
            return False
    return True


def next_states(state: dict, task: str, oracle: TaskOracle | None = None) -> list[dict]:
    """Symbolic states after ``task`` from ``state``: one per rule whose condition holds."""
    oracle = oracle or TaskOracle.default()
    out = []
    for rule in oracle.specs[task].rules:
        if _matches(state, rule["condition"]):
            nxt = copy.deepcopy(state)
            nxt.update(rule["effect"])
            out.append(nxt)
    return out


# The longest sequence of other tasks searched for a state in which a task is valid.
MAX_PREFIX = 3


def shortest_prefix(state: dict, task: str, oracle: TaskOracle, rng: np.random.Generator,
                    ends_with: Callable[[str], bool] | None = None) -> list[str] | None:
    """The shortest task sequence after which ``task`` is valid (ties broken by ``rng``), or None.
    With ``ends_with``, only a non-empty sequence whose last task it accepts."""
    queue: deque[tuple[dict, list[str]]] = deque([(state, [])])
    names = oracle.tasks
    while queue:
        cur, path = queue.popleft()
        if len(next_states(cur, task, oracle)) == 1 and (ends_with is None or (path and ends_with(path[-1]))):
            return path
        if len(path) >= MAX_PREFIX:
            continue
        for i in rng.permutation(len(names)):
            nxt = next_states(cur, names[i], oracle)
            if len(nxt) == 1 and names[i] != task:
                queue.append((nxt[0], [*path, names[i]]))
    return None


def single_task_episodes(tasks: list[str], episodes: int, seed: int, oracle: TaskOracle | None = None
                         ) -> list[tuple[str, dict, list[str]]]:
    """(task, initial state, setup) of ``episodes`` single-task episodes per task, task by task:
    generator states in which the task is valid, drawn per task (its position ``t`` in ``tasks``) with
    ``RandomState(seed * 1000 + t)``, so the same arguments always give the same episodes; ``setup``
    is empty. A task that no generator state allows (``place_in_drawer`` needs a block in the hand,
    ``unstack_block`` a stack) starts from a drawn state after ``setup``, the shortest sequence of
    other tasks that leads to it, for the scripted expert to perform first (CALVIN's chains reach
    these tasks the same way)."""
    oracle = oracle or TaskOracle.default()
    oracle.check_names(list(tasks), source="tasks")
    states = initial_states(oracle)
    out = []
    for t, task in enumerate(tasks):
        feasible = [s for s in states if len(next_states(s, task, oracle)) == 1]
        if feasible:
            rng = np.random.RandomState(seed * 1000 + t)
            picks = rng.choice(len(feasible), size=episodes, replace=episodes > len(feasible))
            out += [(task, feasible[p], []) for p in picks]
            continue
        gen = np.random.default_rng(seed * 1000 + t)
        for _ in range(episodes):
            state, setup = sample_setup(task, gen, oracle)
            if setup is None:
                raise ValueError(f"tasks: no sequence of at most {MAX_PREFIX} tasks from a generator state "
                                 f"leads to '{task}'")
            out.append((task, state, setup))
    return out


def sample_setup(task: str, rng: np.random.Generator, oracle: TaskOracle) -> tuple[dict, list[str] | None]:
    """A random generator state and the shortest prefix after which ``task`` is valid from it (100
    draws at most; the prefix is None if none of them has one)."""
    states = initial_states(oracle)
    for _ in range(100):
        state = states[int(rng.integers(len(states)))]
        prefix = shortest_prefix(state, task, oracle, rng)
        if prefix is not None:
            return state, prefix
    return state, None


def check_sequence(state: dict, tasks: list[str], oracle: TaskOracle | None = None) -> bool:
    oracle = oracle or TaskOracle.default()
    for task in tasks:
        nxt = next_states(state, task, oracle)
        if len(nxt) != 1:
            return False
        state = nxt[0]
    categories = [oracle.specs[t].category for t in tasks]
    return len(set(categories)) == len(categories)


class _Transitions:
    """Symbolic transition table over every state reachable from the initial states.

    ``table[s, t]`` is the state after task ``t`` from state ``s``, or the dead row (index
    ``len(states)``) when no rule or more than one rule applies; this lets the rejection sampler
    check thousands of candidate sequences at once in numpy.
    """

    def __init__(self, oracle: TaskOracle):
        self.names = oracle.tasks
        self.cats = np.array([oracle.specs[t].category for t in self.names])
        keys = list(oracle.symbolic_state)
        ids: dict[tuple, int] = {}
        frontier = [tuple(st[k] for k in keys) for st in initial_states(oracle)]
        for st in frontier:
            ids.setdefault(st, len(ids))
        edges: dict[tuple[int, int], tuple] = {}
        while frontier:
            new = []
            for st in frontier:
                sd = dict(zip(keys, st))
                for t, name in enumerate(self.names):
                    nxt = next_states(sd, name, oracle)
                    if len(nxt) == 1:
                        ns = tuple(nxt[0][k] for k in keys)
                        if ns not in ids:
                            ids[ns] = len(ids)
                            new.append(ns)
                        edges[(ids[st], t)] = ns
            frontier = new
        dead = len(ids)
        self.table = np.full((dead + 1, len(self.names)), dead, dtype=np.int64)
        for (sid, t), ns in edges.items():
            self.table[sid, t] = ids[ns]
        self.dead = dead
        self.ids = ids
        self.keys = keys

    def state_id(self, state: dict) -> int:
        return self.ids[tuple(state[k] for k in self.keys)]


_TRANSITIONS: dict[int, _Transitions] = {}


def _transitions(oracle: TaskOracle) -> _Transitions:
    if id(oracle) not in _TRANSITIONS:
        _TRANSITIONS[id(oracle)] = _Transitions(oracle)
    return _TRANSITIONS[id(oracle)]


def sequences_for_state(state: dict, num: int, rng_seed: int, oracle: TaskOracle | None = None,
                        tasks: list[str] | None = None) -> list[list[str]]:
    """CALVIN's get_sequences_for_state2: uniform draws of 5 distinct tasks until ``num`` are valid.

    Draws are made 4096 at a time (argsort of uniform keys gives uniform random permutations) and
    checked in numpy through the transition table; CALVIN's one-draw-at-a-time loop takes minutes
    for 1000 chains.

    ``tasks`` restricts the draws to a subset (a demo's task set). A subset that spans fewer than 5
    categories cannot satisfy CALVIN's 5-distinct-categories rule, so there the rule becomes: 5
    distinct tasks, no two consecutive ones of the same category.
    """
    oracle = oracle or TaskOracle.default()
    tr = _transitions(oracle)
    pool = _task_pool(tr, tasks)
    distinct_categories = len(set(tr.cats[pool].tolist())) >= SEQUENCE_LENGTH
    rng = np.random.RandomState(rng_seed)
    start = tr.state_id(state)
    out: list[list[str]] = []
    for _ in range(10_000):
        if len(out) >= num:
            break
        draws = pool[np.argsort(rng.random_sample((4096, len(pool))), axis=1)[:, :SEQUENCE_LENGTH]]
        if distinct_categories:
            c = np.sort(tr.cats[draws], axis=1)
        else:
            c = tr.cats[draws]
        ok = np.all(c[:, 1:] != c[:, :-1], axis=1)
        s = np.full(len(draws), start)
        for k in range(SEQUENCE_LENGTH):
            s = tr.table[s, draws[:, k]]
        ok &= s != tr.dead
        for idx in draws[ok][: num - len(out)]:
            out.append([tr.names[i] for i in idx])
    if len(out) < num:
        raise ValueError(f"no valid 5-task sequence of tasks {tasks} starts from state {state}")
    return out


def _task_pool(tr: _Transitions, tasks: list[str] | None) -> np.ndarray:
    if not tasks:
        return np.arange(len(tr.names))
    unknown = [t for t in tasks if t not in tr.names]
    if unknown:
        raise ValueError(f"chain tasks: unknown task names {unknown} (see envs/tasks.yaml)")
    if len(set(tasks)) < SEQUENCE_LENGTH:
        raise ValueError(f"chain tasks: need at least {SEQUENCE_LENGTH} distinct tasks, got {list(tasks)}")
    return np.array(sorted({tr.names.index(t) for t in tasks}))


def sample_chains(num: int, seed: int = 0, oracle: TaskOracle | None = None,
                  tasks: list[str] | None = None, calvin: bool = False) -> list[Chain]:
    """``num`` chains spread over the initial states (np.array_split), deterministic for ``seed``.

    With ``tasks``, chains use only those tasks and start only from initial states where such a
    chain exists. With ``calvin``, they are exactly CALVIN's ``get_sequences(num)`` instead
    (``calvin_sequences``; no ``tasks``, ``seed`` 0).
    """
    oracle = oracle or TaskOracle.default()
    if calvin and (tasks or seed != 0):
        raise ValueError(f"CALVIN's sequences have no task subset and no seed (got tasks={tasks}, seed={seed}); "
                         "use the built-in generator for those")
    digest = hashlib.sha1(Path(oracle.path).read_bytes()).hexdigest()[:12]
    subset = "" if not tasks else "_" + hashlib.sha1(",".join(sorted(tasks)).encode()).hexdigest()[:8]
    kind = "calvin_" if calvin else ""
    cache = _cache_dir() / "chains" / f"{kind}{digest}_{num}_{seed}{subset}.json"
    if cache.is_file():
        try:
            return [Chain(c["initial_state"], c["tasks"]) for c in json.loads(cache.read_text())]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is recomputed below
    chains = calvin_sequences(num, oracle) if calvin else _sample_chains(num, seed, oracle, tasks)
    with contextlib.suppress(OSError):
        atomic_write_text(cache, json.dumps([{"initial_state": c.initial_state, "tasks": c.tasks} for c in chains]))
    return [Chain(dict(c.initial_state), list(c.tasks)) for c in chains]


def calvin_sequences(num: int = 1000, oracle: TaskOracle | None = None) -> list[Chain]:
    """CALVIN's ``multistep_sequences.get_sequences(num)``: the same chains in the same order.

    Its draws, one at a time: for state ``i``, ``np.random.seed(i)`` then
    ``np.random.choice(task names, 5, replace=False)`` until ``check_sequence`` passes (each task
    matches exactly one rule; 5 categories); then the (state, chain) list is shuffled under seed 0.
    Checking a draw through the transition table instead of CALVIN's rule matching makes this take
    about 20 s on one core (CALVIN's takes minutes on several); ``sample_chains`` caches the result. Task names and categories come from ``oracle``, whose
    task order must be CALVIN's (``envs/tasks.yaml`` is; tests compare with CALVIN's output).
    """
    if num <= 0:
        raise ValueError(f"calvin_sequences: num must be > 0, got {num}")
    oracle = oracle or TaskOracle.default()
    tr = _transitions(oracle)
    table, cats, dead, n_tasks = tr.table.tolist(), tr.cats.tolist(), tr.dead, len(tr.names)
    states = initial_states(oracle)
    counts = [len(part) for part in np.array_split(np.arange(num), len(states))]
    chains = []
    for i, (state, n) in enumerate(zip(states, counts)):
        rng = np.random.RandomState(i)
        start, found = tr.state_id(state), 0
        while found < n:
            # choice(n, 5, replace=False) is permutation(n)[:5] in the legacy generator, same draws
            draw = rng.permutation(n_tasks)[:SEQUENCE_LENGTH].tolist()
            s = start
            for t in draw:
                s = table[s][t]
                if s == dead:
                    break
            if s != dead and len({cats[t] for t in draw}) == SEQUENCE_LENGTH:
                chains.append(Chain(dict(state), [tr.names[t] for t in draw]))
                found += 1
    order = np.random.RandomState(0).permutation(len(chains))  # CALVIN's np.random.shuffle under seed 0
    return [chains[i] for i in order]


def _cache_dir() -> Path:
    return Path(os.environ.get("ROBOFLAMINGO_CACHE", Path(tempfile.gettempdir()) / f"roboflamingo-{os.getuid()}"))


def _sample_chains(num: int, seed: int, oracle: TaskOracle | None, tasks: list[str] | None = None) -> list[Chain]:
    if num <= 0:
        raise ValueError(f"sample_chains: num must be > 0, got {num}")
    oracle = oracle or TaskOracle.default()
    states = chain_start_states(oracle, tasks)
    counts = [len(part) for part in np.array_split(np.arange(num), len(states))]
    chains = []
    for i, (state, n) in enumerate(zip(states, counts)):
        if n:
            chains += [Chain(dict(state), seq)
                       for seq in sequences_for_state(state, n, 1000 * seed + i, oracle, tasks)]
    order = np.random.RandomState(seed).permutation(len(chains))
    return [chains[i] for i in order]


def _has_sequence(state: dict, tasks: list[str], oracle: TaskOracle) -> bool:
    """Whether some valid 5-task chain of ``tasks`` starts from ``state`` (depth-first search)."""
    tr = _transitions(oracle)
    pool = _task_pool(tr, tasks).tolist()
    distinct_categories = len({int(tr.cats[t]) for t in pool}) >= SEQUENCE_LENGTH

    def extend(sid: int, used: list[int]) -> bool:
        if len(used) == SEQUENCE_LENGTH:
            return True
        for t in pool:
            if t in used or tr.table[sid, t] == tr.dead:
                continue
            cats = [int(tr.cats[u]) for u in used]
            if (distinct_categories and int(tr.cats[t]) in cats) or (cats and cats[-1] == int(tr.cats[t])):
                continue
            if extend(int(tr.table[sid, t]), [*used, t]):
                return True
        return False

    return extend(tr.state_id(state), [])


def neutral_robot_obs(scene: Scene) -> np.ndarray:
    """The fixed robot start of every chain: neutral joints, gripper open (TCP fields precomputed)."""
    tcp = scene.raw["robot"].get("neutral_tcp", [0.0] * 6)
    return np.array([*tcp, 0.08, *scene.neutral_joints, 1.0], dtype=np.float64)


def furniture_obs(initial_state: dict) -> np.ndarray:
    """A scene_obs with CALVIN's door, drawer and switch positions and the lights of a symbolic state
    (the blocks' poses still zero)."""
    scene_obs = np.zeros(T.SCENE_OBS_DIM)
    scene_obs[T.SLIDING_DOOR] = DOOR_LEFT if initial_state["slider"] == "left" else 0.0
    scene_obs[T.DRAWER] = DRAWER_OPEN if initial_state["drawer"] == "open" else 0.0
    scene_obs[T.SWITCH] = SWITCH_ON if initial_state["lightbulb"] == 1 else 0.0
    scene_obs[T.LIGHTBULB] = float(initial_state["lightbulb"])
    scene_obs[T.GREEN_LIGHT] = float(initial_state["led"])
    return scene_obs


def initial_state_to_obs(initial_state: dict, scene: Scene | str, rng: np.random.Generator | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs, scene_obs) for a symbolic state.

    Without ``rng`` this is CALVIN's deterministic mapping (``calvin_block_layout``) onto this
    scene's slots. With ``rng`` (random resets, demonstration
    data) blocks are placed anywhere on their surface with any yaw and the joints get small jitter.
    """
    scene = load_scene(scene) if isinstance(scene, str) else scene
    robot_obs = neutral_robot_obs(scene)
    scene_obs = furniture_obs(initial_state)
    table_slots = [np.array(s, dtype=float) for s in scene.raw["slots"]["table"]]
    layout = calvin_block_layout(initial_state, list(TaskOracle.default().symbolic_state)) if rng is None else None
    if rng is not None:
        travel = np.array([scene.raw["door"]["travel"], scene.raw["drawer"]["travel"]])
        jitter = rng.uniform(0.0, 0.03, size=2)
        scene_obs[T.DOORS] = np.where(scene_obs[T.DOORS] > 0, travel - jitter, jitter)
        scene_obs[T.SWITCH] = (scene.raw["switch"]["travel"] - rng.uniform(0, 0.02) if scene_obs[T.LIGHTBULB]
                               else rng.uniform(0, 0.02))
    placed: list[np.ndarray] = []
    for k, name in enumerate(BLOCK_NAMES):
        where = initial_state[name]
        size = scene.blocks[name].size
        # half a millimetre into the surface, as a resting block settles: touching at exactly zero
        # distance is no contact for PyBullet, and the oracle needs the block's start contacts
        z = scene.surface_z(where) + size[2] / 2 - 0.0005
        if layout is not None:
            _, slot, yaw = layout[k]
            xy = table_slots[slot] if where == "table" else np.array(scene.raw["slots"][where], dtype=float)
        else:
            xy = _sample_free(rng, scene, where, placed)
            # on the shelf the long side faces the robot, as in CALVIN's initial states: the hand
            # then reaches the block without touching the door behind it
            yaw = rng.uniform(-np.pi, np.pi) if where == "table" else rng.uniform(*SHELF_YAW_RANGE)
        placed.append(xy)
        scene_obs[T.block_pose(k)] = [xy[0], xy[1], z, 0.0, 0.0, yaw]
    return robot_obs, scene_obs


def _sample_free(rng: np.random.Generator, scene: Scene, surface: str, placed: list[np.ndarray]) -> np.ndarray:
    (x0, x1), (y0, y1) = scene.region(surface)
    xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    for _ in range(1000):  # rejection sampling so that no two blocks touch, as calvin_env's reset
        if all(np.linalg.norm(xy - q) > 0.1 for q in placed):
            break
        xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    return xy
