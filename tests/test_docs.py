"""README.md and docs/*.md stay true to the code: every relative link (and #anchor) resolves, and every
``roboflamingo ...`` command they quote parses as the CLI would take it (checked as ``--help``, which
composes the config with the command's overrides: unknown keys, group options, positional arguments,
flags and value types are all refused there, while input paths need not exist)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from roboflamingo import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *PAGES]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


SHELL_FENCES = ("", "bash", "sh", "shell", "console", "zsh")


def _split(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(prose lines, shell code-block lines)``, each as (line number, text); other code (Python,
    YAML) is in neither."""
    prose, code, fence = [], [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if m:
            fence = line.strip()[3:].strip().lower() if fence is None else None
            continue
        if fence is None:
            prose.append((n, line))
        elif fence in SHELL_FENCES:
            code.append((n, line))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _split(path.read_text())[0]:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for n, line in _split(path.read_text())[0]:
        line = SPAN.sub("", line)  # `[x](y)` inside code is not a link
        out += [(n, m.group(1)) for m in LINK.finditer(line)]
    return out


def _joined_code(code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Code lines with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in code:
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (n, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        out.append(pending)
        pending = None
    if pending is not None:
        out.append(pending)
    return out


# What a shell would hand the CLI for the variables the docs use ($PWD/..., $HOME/..., $W/...). A `~`
# is left alone: bash expands `key=~/x`, zsh does not, and Hydra refuses it, so the docs write $HOME.
SHELL_VARS = {"PWD": "/work/repo", "HOME": "/home/user", "W": "/work/repo/weights"}
VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
RUNNERS = {"nice", "time", "exec", "&&", ";", "|", "(", "then", "do"}


def _command_in(tokens: list[str]) -> list[str] | None:
    """The arguments after ``roboflamingo`` (or ``-m roboflamingo.cli``) when ``tokens`` run it."""
    for i, token in enumerate(tokens):
        if token == "-m" and tokens[i + 1:i + 2] == ["roboflamingo.cli"]:
            return tokens[i + 2:]
        before = tokens[:i]
        # the command word: first, or after a runner, or after VAR=value assignments
        if token == "roboflamingo" and (not before or before[-1] in RUNNERS or
                                        all(re.match(r"^[A-Z_][A-Z0-9_]*=", t) for t in before)):
            return tokens[i + 1:]
    return None


def _argv(text: str) -> list[str]:
    expand = lambda m: SHELL_VARS.get(m.group(1) or m.group(2), "/" + (m.group(1) or m.group(2)).lower())  # noqa: E731
    args = [VAR.sub(expand, a) for a in shlex.split(text, comments=True)]
    while args and args[-1] in ("&", "&&", ";"):
        args.pop()
    return args


def commands(path: Path) -> list[tuple[int, list[str]]]:
    """Every ``roboflamingo <command> ...`` in shell code blocks (also after ``torchrun ... -m
    roboflamingo.cli``) and in inline code spans, as (line number, its arguments as a shell splits them)."""
    prose, code = _split(path.read_text())
    found = []
    for n, line in _joined_code(code):
        if "roboflamingo" not in line:
            continue
        args = _command_in(_argv(line))
        if args:
            found.append((n, args))
    for n, line in prose:
        for span in SPAN.finditer(line):
            text = span.group(2).strip()
            if text.startswith("roboflamingo "):
                found.append((n, _argv(text)[1:]))
    return found


CASES = [(f"{_rel(p)}:{n}", args) for p in FILES for n, args in commands(p)]
LINKS = [(p, n, target) for p in FILES for n, target in links(p)]


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) < 200, "README.md is for a newcomer's first five minutes: move detail to docs/"
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in links(README)}
    unlinked = [_rel(p) for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"docs pages no README link reaches: {unlinked}"
    for snippet in ("make demo", "make test", "roboflamingo train", "roboflamingo eval", "roboflamingo serve",
                    "from roboflamingo import RoboFlamingoPolicy"):
        assert snippet in text


def test_the_link_and_command_collectors_see_what_they_should(tmp_path):
    """The checks below only mean something if these find the links and commands in the files."""
    assert len(LINKS) >= 30 and len(CASES) >= 40
    assert {c[0] for _, c in CASES} >= {"train", "eval", "serve", "ros", "pack", "generate", "convert",
                                                 "export-lerobot", "demo", "plot", "env", "inspect"}
    page = tmp_path / "page.md"
    page.write_text("# A `code` heading: yes\n\n```bash\nroboflamingo eval checkpoint=x \\\n    eval.workers=2   # two\n"
                    "torchrun --nproc_per_node 2 -m roboflamingo.cli train model=tiny\n# roboflamingo not a command\n"
                    "pip install roboflamingo   # nor this\n```\n```python\nfrom roboflamingo import X\n```\n"
                    "see `roboflamingo plot RUN` and [a link](other.md#part) but not `[x](y)`\n")
    assert commands(page) == [(4, ["eval", "checkpoint=x", "eval.workers=2"]), (6, ["train", "model=tiny"]),
                              (13, ["plot", "RUN"])]
    assert links(page) == [(13, "other.md#part")]
    assert anchors(page) == {"a-code-heading-yes"}
    assert slug("Deployment: `openpi` and vla-eval clients") == "deployment-openpi-and-vla-eval-clients"
    assert slug("ABC -> D") == "abc---d"


@pytest.mark.parametrize("path, line, target", LINKS, ids=[f"{_rel(p)}:{n}" for p, n, _ in LINKS])
def test_every_relative_link_resolves(path, line, target):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.exists(), f"{_rel(path)}:{line}: link to {target}: {file_part} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{_rel(path)}:{line}: #{anchor} on a file that is not Markdown"
        assert anchor in anchors(dest), (f"{_rel(path)}:{line}: {_rel(dest)} has no heading for #{anchor} "
                                         f"(it has {sorted(anchors(dest))})")


@pytest.mark.parametrize("where, args", CASES, ids=[w for w, _ in CASES])
def test_every_quoted_command_parses(where, args, monkeypatch):
    names = list(cli.COMMANDS) if args[0] == "<command>" else [args[0]]  # "roboflamingo <command> --help"
    for name in names:
        assert name in cli.COMMANDS, f"{where}: `roboflamingo {' '.join(args)}`: no command '{name}'"
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([name, *args[1:], "--help"])
        assert code == 0, f"{where}: `roboflamingo {' '.join(args)}` does not parse:\n{err.getvalue()}"
        assert out.getvalue().startswith(f"usage: roboflamingo {name}")
