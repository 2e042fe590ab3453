"""Every code example in README.md and docs/*.md runs.

A ```python block runs in a subprocess in a temporary folder (the repository on
``PYTHONPATH``). A ```bash / ```console block is checked without running it: each
``fedtitan ...`` command parses with fedtitan's own argument parser (subcommand and flags),
and each ``python -m MODULE`` names a module that exists.

Conventions, as an HTML comment on the line just before a block (invisible once rendered):

- ``<!-- no-test: WHY -->``: the block is not run (it needs a GPU, a network, a Jetson, hours,
  or it is a fragment of a class shown above). Keep these few, and say why.
- ``<!-- slow-test -->``: the block runs only with the slow tests (a real simulation).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*(no-test|slow-test)\s*:?\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str  # "", "no-test" or "slow-test"
    why: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, each with the marker comment just before it."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        prev = lines[start - 1] if start > 0 else ""
        mk = MARK.match(prev.strip())
        out.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         mk.group(1) if mk else "", mk.group(2) if mk else ""))
        i = j + 1
    return out


ALL = [b for p in DOCS for b in blocks(p)]
PYTHON = [b for b in ALL if b.lang == "python"]
SHELL = [b for b in ALL if b.lang in ("bash", "console", "sh", "shell")]


def _param(b: Block) -> object:
    marks: list[pytest.MarkDecorator] = []
    if b.mark == "no-test":
        marks.append(pytest.mark.skip(reason=f"no-test: {b.why}"))
    elif b.mark == "slow-test":
        marks.append(pytest.mark.slow)
    return pytest.param(b, id=b.id, marks=marks)


def test_markers_are_justified() -> None:
    """A no-test block says why, and the exceptions stay few."""
    skipped = [b for b in ALL if b.mark == "no-test"]
    for b in skipped:
        assert b.why, f"{b.id}: <!-- no-test: WHY --> needs a reason"
    assert len(skipped) <= 12, [b.id for b in skipped]


def test_every_block_is_seen() -> None:
    assert PYTHON and SHELL
    for b in ALL:  # every fence is closed: no block swallows a section
        assert "\n## " not in "\n" + b.code, b.id


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    script = tmp_path / "block.py"
    script.write_text(block.code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stderr ---\n{proc.stderr[-4000:]}"


# ---------------------------------------------------------------------------------------- shell


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments and prompts
    dropped, split at ``&&``, ``||``, ``;`` and ``|``. A usage synopsis's optional parts
    (``[--out DIR]``, ``...``) count as given, and shell variables stand for ``1``."""
    text = re.sub(r"\\\n\s*", " ", code)
    text = re.sub(r"\$\(\([^)]*\)\)|\$\{?[A-Za-z_]\w*\}?", "1", text)
    text = re.sub(r"\[([^\]\n]*)\]", r"\1", text).replace(" ...", "")
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            tokens = list(lex)
        except ValueError:
            continue
        cmd: list[str] = []
        for tok in tokens:
            if tok in ("&&", "||", ";", "|", "&", "(", ")"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


def _strip_env(cmd: list[str]) -> list[str]:
    """Without leading ``VAR=value`` assignments, ``sudo`` and ``timeout N``."""
    while cmd and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]) or cmd[0] in ("sudo", "exec", "env")):
        cmd = cmd[1:]
    if cmd and cmd[0] == "timeout" and len(cmd) > 1:
        cmd = cmd[2:]
    return cmd


def test_commands_parser() -> None:
    assert commands("a --x 1 \\\n   --y 2  # note\nb && c | d") == [["a", "--x", "1", "--y", "2"], ["b"], ["c"], ["d"]]
    assert commands("fedtitan run [P] [--set k=v ...] --port $((9 + i)) --key k-$i") == [
        ["fedtitan", "run", "P", "--set", "k=v", "--port", "1", "--key", "k-1"]]


def _check_config_keys(block: Block, cmd: list[str], args: object) -> None:
    """A ``fedtitan run``/``sweep`` of a named preset: its ``--set`` and ``--grid`` values make a
    valid config (each grid at its first value). Placeholders (``RUN_DIR``, a TOML file) are not checked."""
    from fedtitan.config import load_config, preset_names
    from fedtitan.errors import FedtitanError

    if getattr(args, "cmd", None) not in ("run", "sweep") or getattr(args, "preset", None) not in preset_names():
        return
    overrides = [*getattr(args, "set", [])]
    overrides += [g.split(",")[0] for g in getattr(args, "grid", None) or []]
    if any("=" not in o or o.split("=", 1)[1].isupper() for o in overrides):
        return  # key=VALUE placeholders
    try:
        load_config(args.preset, overrides)  # type: ignore[attr-defined]
    except FedtitanError as exc:
        pytest.fail(f"{block.id}: `{shlex.join(cmd)}`: {exc}")


@pytest.mark.parametrize("block", [_param(b) for b in SHELL])
def test_shell_block_parses(block: Block) -> None:
    from simulations.cli import build_parser

    for raw in commands(block.code):
        cmd = _strip_env(raw)
        if not cmd:
            continue
        if cmd[0] == "fedtitan":
            parser = build_parser()
            parser.exit_on_error = False
            try:
                args = parser.parse_args(cmd[1:])
            except SystemExit as exc:  # argparse's error() exits even without exit_on_error
                pytest.fail(f"{block.id}: `{shlex.join(cmd)}` does not parse (exit {exc.code})")
            _check_config_keys(block, cmd, args)
        elif cmd[0] in ("python", "python3") and len(cmd) > 2 and cmd[1] == "-m":
            module = cmd[2]
            assert importlib.util.find_spec(module) is not None, f"{block.id}: no module {module!r}"


def test_a_misspelled_config_key_in_a_shell_block_fails() -> None:
    bad = Block(ROOT / "README.md", 1, "bash", "fedtitan run quickstart --set run.roundz=3\n", "", "")
    with pytest.raises(pytest.fail.Exception, match="run.roundz"):
        test_shell_block_parses(bad)
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        test_shell_block_parses(Block(ROOT / "README.md", 1, "bash", "fedtitan run --no-such-flag\n", "", ""))
    test_shell_block_parses(Block(ROOT / "README.md", 1, "bash", "fedtitan run quickstart --set run.rounds=3\n", "", ""))


def test_the_readme_main_job_has_seeds_and_its_table_reads_as_the_tool_reads_it() -> None:
    """README's main job runs enough seeds for a verdict (3 or more per method), and the table
    and verdict it quotes agree: the verdict line is what :func:`verdict` says of that table."""
    import io

    import pandas as pd

    from fedtitan.results.analysis import verdict

    readme = blocks(ROOT / "README.md")
    (job,) = [b for b in readme if b.lang == "bash" and "fedtitan sweep" in b.code and "--out runs/first" in b.code]
    seeds = re.search(r"--seeds\s+(\d+)", job.code)
    assert seeds and int(seeds.group(1)) >= 3, "README's main job must run 3 or more seeds per method"
    (shown,) = [b for b in readme if b.lang == "text" and "tta_s" in b.code]
    lines = shown.code.strip().splitlines()
    table = pd.read_csv(io.StringIO("\n".join(lines[:-1])), sep=r"\s+")
    assert (table.runs >= int(seeds.group(1))).all()
    assert verdict(table, ["selection.method"], target=float(re.search(r"target accuracy ([\d.]+)", lines[-1])
                                                                 .group(1))) == lines[-1]
