"""Append-only chain results: what makes an evaluation resumable.

Each process that evaluates chains (one per ``torchrun`` rank) appends one JSON line per finished
chain to its own file ``<run_dir>/records/rank-<r>.jsonl``, flushed and fsynced before the next chain
starts, so a crash loses at most the chain in flight. A rerun reads every record file, skips the
chains already there and counts each chain index once (the first record wins), whatever world size
the earlier run had. A crash can leave a half-written last line: readers ignore it and the owning
writer cuts it off before appending, so the next record starts on a fresh line.

Every line carries the evaluation's fingerprint (policy, environment and protocol settings), so
results of a different evaluation in the same directory are refused instead of silently merged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from roboflamingo.eval.metrics import ChainResult

RECORDS_DIR = "records"


def fingerprint(spec: dict[str, Any]) -> str:
    """A short stable hash of everything that changes what an evaluation measures."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file; a broken *last* line (a crash mid-write) is dropped, any other is an error."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    out = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        is_tail = number == len(lines) and not complete
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            if is_tail:
                continue
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); remove the line to resume") from e
        if is_tail:
            # Written without its newline: the writer died before finishing the line, so the chain
            # is not known to be complete. Treat it as not done.
            continue
        if not isinstance(record, dict) or "index" not in record:
            raise ValueError(f"{path}:{number}: expected a chain record with an 'index', got {raw[:80]!r}")
        out.append((number, record))
    return out


class ResultStore:
    """The record files of one run directory, seen from one rank."""

    def __init__(self, run_dir: str | os.PathLike, fingerprint: str, rank: int = 0):
        self.dir = Path(run_dir) / RECORDS_DIR
        self.fingerprint = fingerprint
        self.path = self.dir / f"rank-{rank}.jsonl"
        self._file = None

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("rank-*.jsonl")) if self.dir.is_dir() else []

    def foreign_fingerprints(self) -> set[str]:
        """Fingerprints of records that belong to a different evaluation."""
        found = set()
        for path in self.files():
            for _, record in _read_lines(path):
                if record.get("fingerprint") != self.fingerprint:
                    found.add(str(record.get("fingerprint")))
        return found

    def clear(self) -> None:
        for path in self.files():
            path.unlink()

    def load(self) -> dict[int, ChainResult]:
        """Finished chains by index, each counted once (the first record wins)."""
        done: dict[int, ChainResult] = {}
        for path in self.files():
            for number, record in _read_lines(path):
                if record.get("fingerprint") != self.fingerprint:
                    raise ValueError(
                        f"{path}:{number}: record of a different evaluation (fingerprint "
                        f"{record.get('fingerprint')} != {self.fingerprint}); use another run_dir or "
                        "eval.overwrite=true"
                    )
                index = int(record["index"])
                if index not in done:
                    done[index] = ChainResult.from_record(record)
        return done

    def _open(self):
        if self._file is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                data = self.path.read_bytes()
                if data and not data.endswith(b"\n"):
                    # Cut the half-written line a crash left behind; otherwise the next record would
                    # be glued onto it and both would be lost.
                    keep = data.rfind(b"\n") + 1
                    with open(self.path, "rb+") as f:
                        f.truncate(keep)
                        os.fsync(f.fileno())
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open for the whole run)
        return self._file

    def append(self, result: ChainResult) -> None:
        record = {"fingerprint": self.fingerprint, **result.to_record()}
        f = self._open()
        f.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
