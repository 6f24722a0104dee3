"""One rank of the distributed test: evaluate the counter chains under RANK/WORLD_SIZE and report."""

import json
import sys

from eval_fakes import Chains, CounterEnvFactory, PushPolicyFactory

from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.runner import evaluate_items

if __name__ == "__main__":
    run_dir, out = sys.argv[1], sys.argv[2]
    cfg = EvalConfig(ep_len=6, progress=False, dist_timeout_min=2)
    lengths = [5, 0, 2, 5, 3, 1, 4, 5]
    summary = evaluate_items(Chains(lengths).items(), PushPolicyFactory(), CounterEnvFactory(), cfg, run_dir, {"t": 1})
    with open(out, "w") as f:
        json.dump(summary, f)
