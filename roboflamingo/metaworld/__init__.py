"""Meta-World (50 Sawyer tasks, MuJoCo) as a second benchmark, with LeRobot's conventions.

- ``tasks``: names, difficulty groups, MT10, training (LeRobot's) and evaluation sentences;
- ``config``: ``MetaWorldConfig`` (camera, size, render preset), the ``env=metaworld`` group;
- ``env``: ``MetaWorldEnv``, the Gymnasium wrapper (observations keyed by the Sawyer's description);
- ``expert``: Meta-World's scripted policies behind our ``Policy`` protocol;
- ``expert_check``, ``generate``, ``evaluate``: ``roboflamingo expert-check|generate|eval env=metaworld``.

Importing this package needs no MuJoCo; the modules that step the simulator import ``metaworld``
when they run (``pip install -e '.[metaworld]'``).
"""
