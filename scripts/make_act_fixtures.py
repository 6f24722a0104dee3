"""Golden temporal ensembling for the tests, produced by LeRobot's own ``ACTTemporalEnsembler``.

Writes ``tests/fixtures/act/temporal_ensemble.json``: random action chunks fed one per step to
LeRobot's ``ACTTemporalEnsembler`` (``lerobot/policies/act/modeling_act.py``, ACT's temporal
ensembling, Zhao et al. 2023, Algorithm 2: weights ``exp(-m * i)`` with i = 0 the oldest prediction)
and the action it returned at each step, for several m. ``tests/models/test_models_chunking.py``
feeds the same chunks to ``roboflamingo.models.chunking``.

``modeling_act.py`` imports all of LeRobot (its policy base class, torchvision, einops); the ensembler
class needs only torch, so its source is taken from the file and run as it is, unchanged:

    git clone https://github.com/huggingface/lerobot /tmp/lerobot
    python scripts/make_act_fixtures.py --modeling-act /tmp/lerobot/src/lerobot/policies/act/modeling_act.py
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "act" / "temporal_ensemble.json"


def load_ensembler(path: Path) -> type:
    """LeRobot's ``ACTTemporalEnsembler`` class, executed from its own source."""
    import torch

    source = path.read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "ACTTemporalEnsembler")
    namespace = {"torch": torch, "Tensor": torch.Tensor}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace["ACTTemporalEnsembler"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modeling-act", required=True, type=Path, help="LeRobot's policies/act/modeling_act.py")
    parser.add_argument("--commit", default="", help="the LeRobot commit the file is from (recorded)")
    args = parser.parse_args()
    import torch

    ensembler_cls = load_ensembler(args.modeling_act)
    gen = torch.Generator().manual_seed(0)
    horizon, dim, steps = 5, 3, 14
    chunks = torch.randn((steps, 1, horizon, dim), generator=gen, dtype=torch.float64)
    cases = []
    for m in (0.01, 0.0, 0.5, -0.3):
        ensembler = ensembler_cls(temporal_ensemble_coeff=m, chunk_size=horizon)
        actions = [ensembler.update(chunks[t]).squeeze(0).tolist() for t in range(steps)]
        cases.append({"coeff": m, "actions": actions})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": "lerobot/policies/act/modeling_act.py:ACTTemporalEnsembler",
                               "commit": args.commit, "chunk_size": horizon,
                               "chunks": chunks.squeeze(1).tolist(), "cases": cases}, indent=1) + "\n")
    print(json.dumps({"out": str(OUT), "cases": len(cases), "steps": steps}))


if __name__ == "__main__":
    main()
