"""Closed-loop evaluation with CALVIN's long-horizon protocol (``roboflamingo eval``).

- ``protocol``: the rollout rules (``chain_steps``, ``rollout_chain``) and the ``EvalEnv`` interface;
- ``batching``: one policy, many episode slots, one forward per tick (batched eval and the server);
- ``metrics``: average length, success after 1..5 tasks, per-task success;
- ``runner``: in-process, multi-process and ``torchrun`` execution, resumable (``evaluate_chains``);
- ``store``: the append-only JSONL records that make a rerun resume;
- ``items``: chains from the sequence generator, single-task episodes;
- ``policies`` / ``envs``: picklable specs and factories for what is evaluated and where;
- ``calvin_adapter``: the real ``calvin_env`` with CALVIN's own task oracle;
- ``report`` / ``video``: results.json, results.md, results.png and mp4 rollouts;
- ``run``: the command (``Job``, ``run``).

A policy is seen only through ``reset()`` / ``step(obs, instruction)``, or batched through
``step_batch(observations, instructions, histories)``.
"""
