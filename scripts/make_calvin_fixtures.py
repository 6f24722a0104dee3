"""Golden CALVIN data for the tests, produced by CALVIN's own evaluation code (not ours).

Writes ``tests/fixtures/calvin/``:

- ``initial_states.json``: the 192 symbolic initial states of ``multistep_sequences.get_sequences``
  in CALVIN's order, each with the ``robot_obs``/``scene_obs`` that
  ``evaluation.utils.get_env_state_for_initial_condition`` gives (seeded through the real
  ``pyhash.fnv1_32``);
- ``sequences.json``: ``get_sequences(1000)``, in order, as (index of the initial state, 5 tasks);
- ``pyhash.json``: ``pyhash.fnv1_32()`` of a few strings and bytes;
- with ``--lang-ann``: only ``auto_lang_ann.npy``, a small language-annotation file written by
  CALVIN's own annotator code (``automatic_lang_annotator_mp``: ``Annotator.label_seq`` fills the
  dict, ``merge_data`` joins two ranks' parts, ``save_and_postprocess`` adds the embeddings and
  ``np.save``s it), for the restricted unpickler that reads it (``data.safe_pickle``). Run it with
  numpy 1.x, as CALVIN's published splits were written (their pickles name ``numpy.core``)::

      python -m venv /tmp/np1 && /tmp/np1/bin/pip install "numpy<2"
      /tmp/np1/bin/python scripts/make_calvin_fixtures.py --calvin /tmp/calvin --lang-ann
- ``new_playtable_validation.yaml`` and ``new_playtable.yaml``: CALVIN's evaluation and training
  sentences, copied byte for byte from ``calvin_models/conf/annotations/``
  (``envs/instructions/eval.yaml`` and ``calvin_train.yaml`` must give the same sentences).

It must run where ``pyhash`` builds, which is not Python 3.11 (calvin.md pitfall 7):

    python3.10 -m venv /work/venvs/calvin
    /work/venvs/calvin/bin/pip install "setuptools<58" wheel
    /work/venvs/calvin/bin/pip install numpy pyhash hydra-core omegaconf
    git clone ../shared/vendor/calvin.bundle /tmp/calvin      # or github.com/mees/calvin
    /work/venvs/calvin/bin/python scripts/make_calvin_fixtures.py --calvin /tmp/calvin

``calvin_agent.evaluation.utils`` imports torch, cv2, the MCIL model and plotting helpers at module
level; the two functions used here touch none of them, so where those are not installed they are
replaced by empty modules before the import (CALVIN's functions themselves run unchanged).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "calvin"
VALIDATION_SENTENCES = "new_playtable_validation.yaml"
TRAINING_SENTENCES = "new_playtable.yaml"
HASH_INPUTS = ["", "test", "dict_values([0, 1, 'right', 'open', 'table', 'slider_left', 'table', 0])", "é€😀"]


def _stub_unused_imports() -> None:
    import importlib.util

    for name in ("torch", "cv2"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    mcil = types.ModuleType("calvin_agent.models.mcil")
    mcil.MCIL = object
    helpers = types.ModuleType("calvin_agent.utils.utils")
    helpers.add_text = helpers.format_sftp_path = None
    sys.modules.setdefault("calvin_agent.models.mcil", mcil)
    sys.modules.setdefault("calvin_agent.utils.utils", helpers)


def _stub_annotator_imports() -> None:
    """The annotator module imports torch, lightning, hydra and omegaconf at module level for its
    training loop; ``label_seq`` and ``merge_data`` use none of them."""

    def module(name: str, **attrs) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules.setdefault(name, m)

    module("calvin_agent.training", log_rank_0=print)
    module("hydra", main=lambda **_: (lambda f: f), utils=types.SimpleNamespace(instantiate=None))
    module("omegaconf", DictConfig=dict, OmegaConf=None)
    module("pytorch_lightning", Callback=object, LightningModule=object, seed_everything=None, Trainer=object)
    module("pytorch_lightning.strategies", DDPStrategy=None)
    module("pytorch_lightning.utilities", rank_zero_only=lambda f: f)
    module("pytorch_lightning.utilities.types", STEP_OUTPUT=object)
    module("torch", distributed=None)
    module("torch.distributed")
    module("torch.nn", Linear=object)


def lang_ann_fixture() -> None:
    """``auto_lang_ann.npy`` through CALVIN's annotator functions (see the module docstring)."""
    import numpy as np
    from calvin_agent.utils import automatic_lang_annotator_mp as annotator

    instructions = {"open_drawer": ["open the drawer", "pull the handle"], "lift_red_block_table": ["lift the red block"],
                    "turn_on_led": ["turn on the led"]}
    fake = types.SimpleNamespace(cfg=types.SimpleNamespace(train_instructions=instructions))
    # The dataset's episode_lookup maps a window index to its first frame id (an int64 array, so the
    # ids CALVIN stores are numpy scalars).
    dataset = types.SimpleNamespace(episode_lookup=np.arange(100, 200, dtype=np.int64))
    np.random.seed(0)
    parts = []
    for windows in ([(0, 64, "open_drawer"), (10, 40, "lift_red_block_table")], [(50, 30, "turn_on_led")]):
        data = {"language": {"ann": [], "task": [], "emb": []}, "info": {"episodes": [], "indx": []}}
        for idx, length, task in windows:
            data = annotator.Annotator.label_seq(fake, data, dataset, length, idx, task)
        parts.append(data)
    merged = annotator.merge_data(parts)
    # save_and_postprocess: the sentence embeddings (CALVIN's MiniLM gives (n, 1, 384) float32)
    merged["language"]["emb"] = np.random.default_rng(0).standard_normal((len(merged["language"]["ann"]), 1, 384)).astype(np.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "auto_lang_ann.npy", merged)
    print(json.dumps({"auto_lang_ann": len(merged["language"]["ann"]), "numpy": np.__version__, "out": str(OUT)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calvin", required=True, help="a checkout of mees/calvin")
    parser.add_argument("--num-sequences", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lang-ann", action="store_true", help="write only auto_lang_ann.npy (see above)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.calvin) / "calvin_models"))
    if args.lang_ann:
        _stub_annotator_imports()
        lang_ann_fixture()
        return
    _stub_unused_imports()
    import numpy as np
    import pyhash
    from calvin_agent.evaluation import multistep_sequences as ms
    from calvin_agent.evaluation.utils import get_env_state_for_initial_condition

    # get_sequences builds its 192 states inline; with 1000 sequences each state starts at least 5,
    # so they are collected here in order of first appearance and sequences refer to them by index.
    seqs = ms.get_sequences(args.num_sequences, num_workers=args.workers)
    states: list[dict] = []
    for state, _ in seqs:
        if state not in states:
            states.append(state)
    assert len(states) == 192, len(states)
    initial = []
    for state in states:
        robot_obs, scene_obs = get_env_state_for_initial_condition(state)
        initial.append({"state": {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in state.items()},
                        "robot_obs": [float(x) for x in robot_obs], "scene_obs": [float(x) for x in scene_obs]})
    sequences = [[states.index(state), list(tasks)] for state, tasks in seqs]
    hasher = pyhash.fnv1_32()
    hashes = {"text": {s: hasher(s) for s in HASH_INPUTS}, "bytes": {"test": hasher(b"test")}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "initial_states.json").write_text(json.dumps(initial, indent=0) + "\n")
    (OUT / "sequences.json").write_text("[\n" + ",\n".join(json.dumps(s) for s in sequences) + "\n]\n")
    (OUT / "pyhash.json").write_text(json.dumps(hashes, indent=1, ensure_ascii=False) + "\n")
    for sentences in (VALIDATION_SENTENCES, TRAINING_SENTENCES):
        shutil.copyfile(Path(args.calvin) / "calvin_models" / "conf" / "annotations" / sentences, OUT / sentences)
    print(json.dumps({"initial_states": len(initial), "sequences": len(sequences), "out": str(OUT)}))


if __name__ == "__main__":
    main()
