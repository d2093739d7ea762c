"""Every command the README (and docs/) shows, checked without starting anything.

A shell block (```bash, ```sh, ```console, or unlabeled) is read line by line, continuation lines
joined. `python -m X ...`: X exists, every flag is one X takes (its `--help`, or its docstring
where it has no parser), and for the entry points that read their settings with
`drgrpo.config_cli.parse_args`, `--config` and the dotted overrides are validated by it, as the
command itself would before starting anything. `make X`: the Makefile has the target. `ray
...`: the subcommand and its flags exist (Ray's own click commands), and `ray job submit ... --
python -m X` checks the inner command. Any command: a file of this repository it names exists.
Placeholders (`HEAD_IP`, `$VAR`, `<...>`) are left alone where they stand for a value.

Labelled shell blocks are strict (an unknown program is a problem: a typo like `pyhton`); in
unlabeled blocks, which also hold printed output, only lines that start like a command count.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LABELS = {"bash", "sh", "console", "shell", ""}
CHECKED = {"python", "python3", "make", "ray", "docker"}  # what a line of an unlabeled block starts with
OTHER_PROGRAMS = {"source", "pip", "git", "export", "cd", "tensorboard", "wandb", "bash", "for",
                  "do", "done", "cat", "ls", "cp", "mkdir", "nvidia-smi", "uv", "tee"}
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", ">&", "<&", "&>"}
# Paths under these are the user's (outputs, data, caches), not files of this repository.
NOT_REPO = {"runs", "data", ".venv", ".cache"}
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*(?:\.[\w.-]+)?")


# ---------------------------------------------------------------- reading the pages


def shell_blocks(text: str) -> list[tuple[bool, int, str]]:
    """(strict, first line number, body) of every shell block."""
    blocks = []
    for m in re.finditer(r"^```([\w-]*)[ \t]*\n(.*?)^```", text, re.M | re.S):
        if m.group(1) in SHELL_LABELS:
            blocks.append((m.group(1) != "", text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return blocks


def inline_commands(text: str) -> list[str]:
    """Commands quoted in the prose, as `python -m launch.study --config ...`."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    quoted = [m.group(1).split() for m in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", prose)]
    return [" ".join(words) for words in quoted  # not a mere name: `python -m`, `make`
            if words[0] in CHECKED and len(words) > (2 if words[0].startswith("python") else 1)]


def command_lines(body: str) -> list[str]:
    lines = body.replace("\\\n", " ").splitlines()
    return [re.sub(r"^\$ ", "", line).strip() for line in lines if line.strip()]


def segments(line: str) -> list[list[str]]:
    """The simple commands of a line: comments, redirections and VAR=value prefixes removed."""
    # <your model> stands for a value; to a shell it would be two redirections.
    line = re.sub(r"<[\w][\w .:/-]*>", "PLACEHOLDER", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out, current, tokens = [], [], list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in SEPARATORS:
            out.append(current)
            current = []
        elif token in REDIRECTS:
            if current and current[-1].isdigit():  # the 2 of 2>&1
                current.pop()
            i += 1  # and its target
        else:
            current.append(token)
        i += 1
    out.append(current)
    stripped = []
    for seg in out:
        while seg and re.fullmatch(r"[A-Za-z_]\w*=.*", seg[0]):
            seg = seg[1:]
        if seg:
            stripped.append(seg)
    return stripped


# ---------------------------------------------------------------- what exists


def placeholder(value: str) -> bool:
    return any(mark in value for mark in ("$", "PLACEHOLDER", "HEAD_IP")) or bool(
        re.fullmatch(r"[A-Z][A-Z0-9_]*", value))  # FILE, RUN_DIR, N


def repo_path_problems(tokens: list[str]) -> list[str]:
    """A token that names a file of this repository (its first part is a top-level entry of the
    checkout, not an output or data folder) must exist."""
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - NOT_REPO
    problems = []
    for token in tokens:
        value = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
        if placeholder(value) or value.startswith(("/", "~", "-")) or "/" not in value:
            continue
        if value.split("/")[0] in top and not (ROOT / value).exists():
            problems.append(f"{value}: no such file in the repository")
    return problems


@functools.cache
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([\w.%/ -]+?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return frozenset(targets)


@functools.cache
def module_source(module: str) -> str | None:
    """The module's source as `python -m` finds it from the repository's root, "" when it has
    none to read, None when there is no such module."""
    if str(ROOT) not in sys.path:  # the pages' commands run from the root, whatever pytest's cwd
        sys.path.insert(0, str(ROOT))
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # its package is missing
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None if spec is None else ""
    return Path(spec.origin).read_text()


def reads_config(module: str) -> bool:
    source = module_source(module) or ""
    return module == "drgrpo.config_cli" or bool(
        re.search(r"from drgrpo\.config(?:_cli)? import[^\n]*\bparse_args\b", source))


@functools.cache
def module_flags(module: str) -> frozenset[str]:
    """The flags a module takes: those its --help prints (run only where it has a parser, so no
    module treats `--help` as an argument) and those its docstring shows."""
    source = module_source(module) or ""
    text = ast.get_docstring(ast.parse(source)) or "" if source else ""
    if "argparse" in source or reads_config(module):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, timeout=60,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"python -m {module} --help: {proc.stderr[-2000:]}"
        text += proc.stdout + proc.stderr
    return frozenset(f for f in FLAG.findall(text) if "." not in f)


def setting_exists(dotted: str) -> bool:
    from pydantic import BaseModel

    from drgrpo.config import Config

    model = Config
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return True  # inside a dict setting (data.eval_paths.NAME): any key
        if part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def config_problems(module: str, argv: list[str]) -> list[str]:
    """What `parse_args` says of `--config` and the overrides, as the command would say it."""
    from drgrpo.config_cli import parse_args

    checked, problems, i = [], [], 0
    while i < len(argv):
        flag, _, value = argv[i].partition("=")
        if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        i += 1
        if placeholder(value) or (flag == "--config" and not (ROOT / value).exists()
                                  and not Path(value).is_absolute()):
            if flag != "--config" and not setting_exists(flag[2:]):
                problems.append(f"{flag}: no such setting")
            if flag == "--config" and not placeholder(value):
                problems.append(f"--config {value}: no such file in the repository")
            continue
        checked += [flag, str(ROOT / value) if flag == "--config" else value]
    if "--config" not in checked:  # the module's own default config: check the names only
        return problems + [f"{f}: no such setting" for f in checked[::2] if not setting_exists(f[2:])]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_args(checked, prog=f"python -m {module}")
        except SystemExit:
            problems += [line for line in err.getvalue().splitlines() if line.startswith("error")]
    return problems


def python_problems(args: list[str]) -> list[str]:
    if not args or args[0] == "-c":
        return []
    if args[0] != "-m":
        return repo_path_problems(args[:1])
    if len(args) < 2:
        return ["python -m: no module named"]
    module, rest = args[1], args[2:]
    if module_source(module) is None:
        return [f"python -m {module}: no such module"]
    problems = [f"python -m {module}: problem with {p}" for p in repo_path_problems(rest)]
    flags, settings, i = module_flags(module), [], 0
    config = reads_config(module)
    while i < len(rest):
        token = rest[i]
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            takes_value = "=" not in token and i + 1 < len(rest) and not rest[i + 1].startswith("--")
            if config and (name == "--config" or "." in name[2:]):
                settings += rest[i:i + 1 + takes_value]
            elif name not in flags:
                problems.append(f"python -m {module}: unknown flag {name}")
            i += takes_value
        i += 1
    if config:
        problems += [f"python -m {module}: {p}" for p in config_problems(module, settings)]
    return problems


@functools.cache
def ray_options(path: tuple[str, ...]) -> frozenset[str] | None:
    """The options of `ray <path>` from Ray's own click commands (nothing is run), or None."""
    import click

    with warnings.catch_warnings():  # Ray's own pydantic deprecations, not ours
        warnings.simplefilter("ignore")
        from ray.scripts.scripts import cli

    command, ctx = cli, click.Context(cli)
    for part in path:
        command = command.get_command(ctx, part) if isinstance(command, click.Group) else None
        if command is None:
            return None
    return frozenset(o for p in command.params for o in p.opts)


def ray_problems(args: list[str]) -> list[str]:
    inner = args.index("--") if "--" in args else len(args)
    words = [a for a in args[:inner] if not a.startswith("-")]
    path = tuple(words[:2]) if words[:1] == ["job"] else tuple(words[:1])
    options = ray_options(path)
    if options is None:
        return [f"ray {' '.join(path)}: no such ray command"]
    problems = [f"ray {' '.join(path)}: unknown flag {a.split('=')[0]}"
                for a in args[:inner] if a.startswith("-") and a.split("=")[0] not in options]
    problems += repo_path_problems(args[:inner])
    if inner < len(args):
        problems += command_problems(args[inner + 1:], strict=True)
    return problems


def command_problems(tokens: list[str], strict: bool) -> list[str]:
    program = tokens[0].rsplit("/", 1)[-1]
    if program in ("python", "python3"):
        return python_problems(tokens[1:])
    if program == "make":
        return [f"make {t}: no such target in the Makefile" for t in tokens[1:]
                if not t.startswith("-") and "=" not in t and t not in make_targets()]
    if program == "ray":
        return ray_problems(tokens[1:])
    if program == "docker" or program in OTHER_PROGRAMS:
        return repo_path_problems(tokens[1:])
    return [f"{tokens[0]}: not a command these pages use (a typo?)"] if strict else []


def problems(text: str) -> list[str]:
    """Every problem of every command in a page's shell blocks and its prose's `quotes`."""
    found = []
    lines = [(strict, line) for strict, _, body in shell_blocks(text) for line in command_lines(body)]
    for strict, line in lines + [(False, line) for line in inline_commands(text)]:
        try:
            segs = segments(line)
        except ValueError as e:  # unbalanced quotes: printed output, or a broken command
            if strict:
                found.append(f"{line}: {e}")
            continue
        for seg in segs:
            if strict or seg[0].rsplit("/", 1)[-1] in CHECKED:
                found += [f"{p}  (in: {line[:120]})" for p in command_problems(seg, strict)]
    return found


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_on_the_page_is_valid(page):
    assert problems(page.read_text()) == []


def test_the_readme_shows_the_main_commands():
    """The README's first screen and its GPU section are the commands a user runs, so the test
    above would check little were they gone."""
    text = (ROOT / "README.md").read_text()
    lines = [line for _, _, body in shell_blocks(text) for line in command_lines(body)]
    starts = {" ".join(seg[:3]) for line in lines for seg in segments(line)}
    for command in ("make demo", "make test", "python -m launch.data", "docker build -f",
                    "docker run -d", "ray start --head", "ray start --address",
                    "python -m launch.plan"):
        assert command in starts, command
    assert any("launch.train" in line and "ray job submit" in line for line in lines)
    assert any("launch.doctor" in line and "ray job submit" in line for line in lines)


@pytest.mark.parametrize("command, expected", [
    ("python -m launch.trian --config launch/configs/demo_cpu.yaml",
     "python -m launch.trian: no such module"),
    ("python -m launch.train --config launch/configs/demo_cpu.yaml --trainer.max_stepz 3",
     "trainer.max_stepz"),
    ("python -m launch.train --config launch/configs/demo_cpu.yaml --trainer.max_steps many",
     "trainer.max_steps"),
    ("python -m launch.train --config launch/configs/demo_cpu.yaml --cluster.colocate true "
     "--cluster.num_generators 2", "cluster.colocate"),
    ("python -m launch.plan --config launch/configs/qwen2.5-math-7b.yaml --gpu-memory 40",
     "python -m launch.plan: unknown flag --gpu-memory"),
    ("python -m launch.study --config launch/configs/study_cpu.yaml --method grpo",
     "python -m launch.study: unknown flag --method"),
    ("python -m launch.data --input x.jsonl --outptu y.jsonl",
     "python -m launch.data: unknown flag --outptu"),
    ("python -m launch.train --config launch/configs/demo.yaml",
     "--config launch/configs/demo.yaml: no such file in the repository"),
    ("python -m launch.train --config <your.yaml> --trainer.max_stepz <N>",
     "--trainer.max_stepz: no such setting"),
    ("make tests", "make tests: no such target in the Makefile"),
    ("pyhton -m launch.train", "pyhton: not a command these pages use"),
    ("docker build -f docker/Dockerfil -t drgrpo .", "docker/Dockerfil: no such file"),
    ("ray start --head --num-cpu 4", "ray start: unknown flag --num-cpu"),
    ("ray strat --head", "ray strat: no such ray command"),
    ("RAY_AUTH_MODE=token ray job submit --working-dir . -- \\\n"
     "    python -m launch.train --config launch/configs/qwen2.5-math-7b.yaml --trainer.max_stepz 3",
     "trainer.max_stepz"),
])
def test_the_checker_rejects_a_broken_command(command, expected):
    found = problems(f"```bash\n{command}\n```\n")
    assert any(expected in p for p in found), found


def test_the_checker_accepts_placeholders_and_unlabeled_output():
    text = ("```bash\n"
            "RAY_AUTH_MODE=token RAY_ADDRESS=http://HEAD_IP:8265 ray job submit --working-dir . -- \\\n"
            "    python -m launch.train --config launch/configs/qwen2.5-math-7b.yaml \\\n"
            "    --model.path <your model> --trainer.output_dir \"$SHARED/runs/7b\" # a comment\n"
            "make bench BENCH_ARGS=--quick 2>&1 | tee bench.log\n"
            "```\n\n```\nready: 8 checks passed (65 s)\n```\n")
    assert problems(text) == []
