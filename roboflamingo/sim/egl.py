"""What must happen before PyBullet's EGL plugin loads in a process that may also run a policy.

On machines without an NVIDIA EGL, the plugin renders through Mesa (llvmpipe), which loads Mesa's
LLVM into the process. A checkpoint policy's import chain (open_clip -> torchvision -> torch._dynamo
-> triton) later loads triton's own, statically linked LLVM; with Mesa's already there, that import
dies with SIGSEGV (issue 15). In the reverse order both coexist. So every place that loads the EGL
plugin, ours (``TabletopEnv``) and calvin_env's (``CalvinEnv`` builds it), calls ``prepare_egl()``
first: this covers evaluation inline and in workers, ``sim-robot`` and ``generate`` alike, whatever
the caller imports afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util


def prepare_egl() -> None:
    """Load triton (and with it its LLVM) now, before Mesa's, where triton is installed.

    Costs ~0.2 s once per process; a process without triton has nothing to conflict with.
    """
    if importlib.util.find_spec("triton") is None:
        return
    try:
        importlib.import_module("triton")
    except ImportError:
        pass  # a triton that cannot be imported is not loaded by torch either: nothing to conflict with
