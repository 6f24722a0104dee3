"""Opening a CALVIN split never runs code from its pickled annotation file (issue 31 item 7)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.data.layout import LANG_ANN, DatasetError, load_annotations, load_split_index
from roboflamingo.data.safe_pickle import RefusedGlobal, load_pickled_npy, restricted_loads

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "calvin" / "auto_lang_ann.npy"


def test_calvins_own_annotation_file_loads_with_every_field_intact():
    """The fixture was written by CALVIN's annotator code under numpy 1 (scripts/make_calvin_fixtures.py
    --lang-ann), so its pickle names numpy.core.multiarray, as CALVIN's published splits do."""
    assert b"numpy.core.multiarray" in GOLDEN.read_bytes()
    ours = load_pickled_npy(GOLDEN).item()
    theirs = np.load(GOLDEN, allow_pickle=True).item()  # a trusted file, for comparison only
    assert ours["language"]["ann"] == theirs["language"]["ann"] == ["open the drawer", "lift the red block",
                                                                    "turn on the led"]
    assert ours["language"]["task"] == theirs["language"]["task"]
    np.testing.assert_array_equal(ours["language"]["emb"], theirs["language"]["emb"])
    assert ours["language"]["emb"].dtype == np.float32 and ours["language"]["emb"].shape == (3, 1, 384)
    assert ours["info"] == theirs["info"] == {"episodes": [], "indx": [(100, 164), (110, 150), (150, 180)]}
    assert isinstance(ours["info"]["indx"][0][0], np.int64)


def test_a_split_with_calvins_annotation_file_opens(tmp_path):
    split = tmp_path / "training"
    (split / "lang_annotations").mkdir(parents=True)
    shutil.copy(GOLDEN, split / LANG_ANN)
    np.save(split / "ep_start_end_ids.npy", np.array([[100, 199]]))
    # CALVIN's indx ends are exclusive-looking (start + window); ours reads them as inclusive ids
    segments, sentences, tasks = load_annotations(split)
    assert segments.tolist() == [[100, 164], [110, 150], [150, 180]] and tasks[2] == "turn_on_led"
    assert load_split_index(split, check_files=False).instructions == sentences


def test_files_our_writers_make_load_too(root):
    index = load_split_index(root / "training")  # written by data.synthetic under numpy 2
    assert len(index.instructions) == 5


class Payload:
    """What a crafted file does: call a function of its choosing while it is unpickled."""

    def __init__(self, marker: Path, how: str = "system") -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "eval":
            return (eval, (f"open({str(self.marker)!r}, 'w')",))
        return (subprocess.call, (["touch", str(self.marker)],))


def crafted_npy(path: Path, payload) -> None:
    """An auto_lang_ann.npy whose dict holds ``payload`` where CALVIN puts a sentence."""
    ann = {"language": {"ann": [payload], "task": ["t"]}, "info": {"indx": [(0, 3)]}}
    buf = io.BytesIO()
    np.save(buf, np.array(ann, dtype=object), allow_pickle=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("how, name", [("system", "posix.system"), ("eval", "builtins.eval"),
                                       ("call", "subprocess.call")])
def test_a_crafted_annotation_file_is_refused_by_name_and_its_payload_never_runs(tmp_path, how, name):
    marker = tmp_path / "pwned"
    split = tmp_path / "training"
    crafted_npy(split / LANG_ANN, Payload(marker, how))
    np.save(split / "ep_start_end_ids.npy", np.array([[0, 9]]))
    with pytest.raises(DatasetError, match=rf"auto_lang_ann\.npy: refusing to unpickle '{name}'"):
        load_split_index(split, check_files=False)
    assert not marker.exists()


def test_roboflamingo_pack_on_a_crafted_split_refuses_it_and_runs_nothing(tmp_path):
    """The probe of the issue: `roboflamingo pack` on such a split ran the payload and exited 0."""
    marker = tmp_path / "pwned"
    split = tmp_path / "data" / "training"
    crafted_npy(split / LANG_ANN, Payload(marker))
    np.save(split / "ep_start_end_ids.npy", np.array([[0, 9]]))
    proc = subprocess.run([sys.executable, "-m", "roboflamingo.cli", "pack", f"data.root={tmp_path / 'data'}",
                           "splits=[training]", "progress=false"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "refusing to unpickle 'posix.system'" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("blob, match", [
    (pickle.dumps(np.matrix([[1, 2]])), "numpy.matrix"),  # an ndarray subclass
    (pickle.dumps(np.memmap), "numpy.memmap"),
    (pickle.dumps({1, 2}, protocol=2), "builtins.set"),
    (pickle.dumps(print), "builtins.print"),
])
def test_the_unpickler_admits_plain_data_and_numpy_arrays_only(blob, match):
    with pytest.raises(RefusedGlobal, match=rf"refusing to unpickle '{match}'"):
        restricted_loads(blob)
    data = {"a": [1, 2.5, "x", None, True, b"raw", (3, 4)], "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
            "scalar": np.float32(2.5), "obj": np.array(["s", 1], dtype=object)}
    for protocol in (2, 3, 4, 5):
        back = restricted_loads(pickle.dumps(data, protocol=protocol))
        assert back["a"] == data["a"] and back["scalar"] == np.float32(2.5)
        np.testing.assert_array_equal(back["arr"], data["arr"])
        assert back["obj"].tolist() == ["s", 1]


def test_a_pickled_array_cannot_ask_for_a_huge_allocation():
    from roboflamingo.data import safe_pickle

    blob = pickle.dumps(np.zeros(4), protocol=3).replace(b"K\x00\x85", b"J\x00\x00\x00\x40\x85", 1)
    assert blob != pickle.dumps(np.zeros(4), protocol=3)
    with pytest.raises(RefusedGlobal, match="refusing to allocate"):
        safe_pickle.restricted_loads(blob)
