"""Read CALVIN's pickled ``.npy`` files (``auto_lang_ann.npy``) without letting them run code.

CALVIN stores each split's language annotations as a pickled dict inside an object ``.npy``::

    {"language": {"ann": [str], "task": [str], "emb": float32 ndarray},
     "info": {"episodes": [], "indx": [(numpy.int64, numpy.int64)]}}

``np.load(allow_pickle=True)`` unpickles whatever the file names, so a crafted file runs any callable
it likes while a split is opened (issue 31). :func:`load_pickled_npy` reads the ``.npy`` header
itself and unpickles the payload with :class:`RestrictedUnpickler`, which resolves only the globals
that format needs: the numpy array and scalar reconstructors, ``numpy.ndarray`` and ``numpy.dtype``
(under numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` names, since CALVIN's published
splits were written with numpy 1). Dicts, lists, tuples, strings, bytes, numbers, booleans and None
need no global at all (protocol 2 spells bytes as ``_codecs.encode(text, "latin1")``, allowed
with that encoding only). Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, a
numpy subclass) is refused by its name, before it is called.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.io import npy_header

# An array rebuilt by ``_reconstruct`` is allocated at the shape the pickle gives before its data is
# set; a real file passes shape (0,). Refusing huge ones keeps a crafted file from exhausting memory.
MAX_RECONSTRUCT_ELEMENTS = 2**28


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set; the message names it."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise RefusedGlobal(f"refusing to rebuild an array of type {subtype!r}; only numpy.ndarray is allowed")
        count = int(np.prod(shape, dtype=np.int64)) if isinstance(shape, tuple) else int(shape)
        if count > MAX_RECONSTRUCT_ELEMENTS:
            raise RefusedGlobal(f"refusing to allocate an array of shape {shape} while unpickling")
        return multiarray._reconstruct(subtype, shape, dtype)

    def latin1(text: str, encoding: str = "utf-8") -> bytes:
        # Protocol 2 pickles spell bytes (an array's data) as _codecs.encode(text, "latin1").
        if encoding != "latin1" or not isinstance(text, str):
            raise RefusedGlobal(f"refusing _codecs.encode with encoding {encoding!r}; only latin1 (bytes) is allowed")
        return text.encode("latin1")

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): latin1}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # protocol 5 pickles of contiguous arrays
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


ALLOWED_GLOBALS = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses every other global by name."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol 2: __builtin__.set) as the default find_class maps them; the tables
        # hold no Python 3 name, so mapping always is the same as mapping only for old protocols.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedGlobal(
                f"refusing to unpickle '{module}.{name}': this file may hold only dicts, lists, strings, "
                "numbers and numpy arrays"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("refusing a persistent id: this file may hold only plain data")


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_pickled_npy(path: str | os.PathLike) -> np.ndarray:
    """The array in a ``.npy`` file, unpickling an object array only through :class:`RestrictedUnpickler`.

    Raises ``RefusedGlobal`` for a forbidden global, ``ValueError``/``pickle.UnpicklingError`` (and
    what ``np.lib.format`` raises) for a malformed file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        shape, fortran, dtype = npy_header(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = RestrictedUnpickler(f).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"the pickled payload is a {type(array).__name__}, not the array the header declares")
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"the pickled array is {array.dtype} {array.shape}, the header declares {dtype} {tuple(shape)}")
    return array
