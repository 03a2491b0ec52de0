"""The README and docs/*.md say what runs: every documented command of ours parses, every link and path resolves.

A command in a ```bash / ```sh / ```console block that invokes our CLI (`nanochat-hf <stage> ...`,
`python -m nanochat_hf.X ...`, `accelerate launch ... -m nanochat_hf.X ...` or a script path) goes through
that stage's own argument parser, with the `--config` recipe it names, without running the job: a
misspelt or removed flag fails here, not in a user's terminal. Documentation conventions are read as a
user reads them: `[--flag value]` is an optional part (checked as if given), `<what>` and `$VAR` stand for
a value, `N` for a number.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from nanochat_hf.cli import STAGES

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
# Stages whose arguments come through TRL's TrlParser (recipe.parse_stage_args): each module's own
# `parse_args` is the parse step of its `main`, so it is called alone.
TRL_PARSED = {
    "nanochat_hf.pretrain:main": ("nanochat_hf.pretrain:parse_args", {}),
    "nanochat_hf.sft:main": ("nanochat_hf.sft:parse_args", {}),
    "nanochat_hf.sft:main_mid": ("nanochat_hf.sft:parse_args", {"stage": "mid"}),
    "nanochat_hf.rl:main": ("nanochat_hf.rl:parse_args", {}),
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def fenced_blocks(path: Path):
    """(language, line number of the first line, lines) of every fenced code block."""
    lang, start, body = None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "text", number + 1, []
            else:
                yield lang, start, body
                lang = None
        elif lang is not None:
            body.append(line)


def shell_commands(path: Path):
    """(line number, argv) of every command in the page's shell blocks, split at `&&`, `;` and `|`."""
    for lang, start, body in fenced_blocks(path):
        if lang not in SHELL:
            continue
        logical, first = "", None
        for number, line in enumerate(body, start):
            if lang == "console" and first is None:
                if not line.startswith("$ "):
                    continue  # program output
                line = line[2:]
            first = number if first is None else first
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            text = re.sub(r"\[(-[^\[\]]*)\]", r"\1", logical + line)  # an optional `[--flag value]`
            text = re.sub(r"<([^<>|]+)>", lambda m: re.sub(r"\W+", "_", m[1]).strip("_"), text)  # `<what>`
            argv = [re.sub(r"^(\$\{?\w+\}?|N)$", "0", t) for t in shlex.split(text, comments=True)]
            command: list[str] = []
            for token in [*argv, ";"]:
                if token in ("&&", "||", ";", "|"):
                    if command:
                        yield first, command
                    command = []
                else:
                    command.append(token)
            logical, first = "", None


def our_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """(`module:function` that runs it, its arguments) when `argv` invokes our CLI, else None."""
    while argv and re.match(r"^\w+=", argv[0]):
        argv = argv[1:]  # VAR=value before the program
    if argv[:1] == ["nanochat-hf"] or argv[:3] in (["python", "-m", "nanochat_hf"], ["python3", "-m", "nanochat_hf"]):
        rest = argv[1:] if argv[0] == "nanochat-hf" else argv[3:]
        assert rest and rest[0] in STAGES, f"unknown stage in {shlex.join(argv)}; stages: {', '.join(STAGES)}"
        return STAGES[rest[0]][0], rest[1:]
    if argv[:1] in (["python"], ["python3"]) and argv[1:2] == ["-m"] and argv[2].startswith("nanochat_hf."):
        return _module_main(argv[2]), argv[3:]
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = _parse_or_fail(lambda: launch_command_parser().parse_args(argv[2:]), argv)
        if launch.config_file:
            assert (REPO / launch.config_file).is_file(), f"{launch.config_file} does not exist"
        script, args = launch.training_script, list(launch.training_script_args)
        if launch.module:
            return (_module_main(script), args) if script.startswith("nanochat_hf.") else None
        assert (REPO / script).is_file(), f"{script} does not exist"
        if script.startswith("nanochat_hf/"):
            return _module_main(script.removesuffix(".py").replace("/", ".")), args
        if args and args[0].startswith("nanochat_hf."):
            return _module_main(args[0]), args[1:]  # a wrapper script (tests/fsdp_on_cpu.py) takes the module first
    return None


def _module_main(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    runs = spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
    assert runs, f"`python -m {module}` cannot run: a package without __main__.py"
    return f"{module}:main"


def _parse_or_fail(parse, argv):
    """What `parse()` returns; the parser's own error message as the test failure otherwise."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse()
    except SystemExit as exit_:
        pytest.fail(f"{shlex.join(argv)}\nis refused by its parser (exit {exit_.code}):\n{stderr.getvalue()}")
    except (ValueError, FileNotFoundError) as err:  # TrlParser: unused arguments; recipe.check_recipe: bad keys
        pytest.fail(f"{shlex.join(argv)}\nis refused by its parser: {err}")


class _Parsed(Exception):
    """Raised in place of running the job, once a stage's argparse parser has accepted the arguments."""


def parse_only(target: str, argv: list[str], monkeypatch) -> None:
    """Put `argv` through the parser of the stage `target` names, and stop there."""
    original_init, original_parse = argparse.ArgumentParser.__init__, argparse.ArgumentParser.parse_args

    def init(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False  # a flag's prefix is a misspelling here, though argparse would take it
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", init)
    argv = list(argv)
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
        if not (REPO / config).is_file():
            assert not config.startswith("recipes/"), f"{config} does not exist"
            del argv[argv.index("--config"):argv.index("--config") + 2]  # the user's own file: flags alone
    environ = dict(os.environ)  # a recipe's `env:` block sets variables
    try:
        if target in TRL_PARSED:
            parse, kwargs = TRL_PARSED[target]
            _parse_or_fail(lambda: _load(parse)(argv, **kwargs), argv)
            return

        def parse_then_stop(self, args=None, namespace=None):
            raise _Parsed(original_parse(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        try:
            _parse_or_fail(lambda: _load(target)(argv), argv)
        except _Parsed:
            return
        pytest.fail(f"{target} returned without going through ArgumentParser.parse_args; add its parse step to "
                    "TRL_PARSED")
    finally:
        os.environ.clear()
        os.environ.update(environ)


def invokes_ours(argv: list[str]) -> bool:
    """Whether `argv` calls our CLI (decided from its words alone, so that collecting never fails)."""
    while argv and re.match(r"^\w+=", argv[0]):
        argv = argv[1:]
    python_m = argv[:1] in (["python"], ["python3"]) and argv[1:2] == ["-m"] and argv[2:3] != []
    return (argv[:1] == ["nanochat-hf"] or (python_m and argv[2].startswith("nanochat_hf"))
            or (argv[:2] == ["accelerate", "launch"] and any(t.startswith("nanochat_hf") for t in argv)))


COMMANDS = [pytest.param(argv, id=f"{page.relative_to(REPO)}:{number}")
            for page in PAGES for number, argv in shell_commands(page) if invokes_ours(argv)]


def test_the_docs_show_commands_of_every_kind():
    """The extraction above finds what the pages hold (else the parse test below would pass on nothing)."""
    targets = {our_command(p.values[0])[0] for p in COMMANDS}
    assert len(COMMANDS) >= 40
    assert {"nanochat_hf.pretrain:main", "nanochat_hf.sft:main", "nanochat_hf.sft:main_mid", "nanochat_hf.rl:main",
            "nanochat_hf.speedrun:main", "nanochat_hf.evaluation.run:main", "nanochat_hf.plan:main"} <= targets


@pytest.mark.parametrize("argv", COMMANDS)
def test_documented_command_parses(argv, monkeypatch):
    monkeypatch.chdir(REPO)
    found = our_command(argv)
    assert found, f"{shlex.join(argv)} names no stage of ours"
    parse_only(*found, monkeypatch)


@pytest.mark.parametrize("command", [
    "nanochat-hf speedrun --preset tiny --dry-rnu",  # argparse
    "nanochat-hf speedrun --preset tiny --dry",  # a prefix argparse would accept
    "nanochat-hf tokenizer train --vocab-sise 4096",  # argparse, in a sub-command
    "accelerate launch -m nanochat_hf.pretrain --config recipes/tiny/pretrain.yaml --depht 6",  # TrlParser
    "nanochat-hf sft --config recipes/tiny/sft.yaml --max_step 100",  # TrlParser, a prefix
    "nanochat-hf mid --config recipes/tiny/mids.yaml",  # a recipe that does not exist
    "accelerate launch --config_file recipes/accelerate_configs/multi_gpus.yaml -m nanochat_hf.rl",
])
def test_a_misspelt_flag_or_path_fails(command, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises((pytest.fail.Exception, AssertionError)):
        found = our_command(shlex.split(command))
        parse_only(*found, monkeypatch)


def anchors(page: Path) -> set[str]:
    """GitHub's ids of the page's headings (code blocks skipped)."""
    in_code, seen = False, {}
    for line in page.read_text(encoding="utf-8").splitlines():
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"^#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            seen[f"{slug}-{seen[slug]}" if seen[slug] else slug] = 0
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto
        file, _, anchor = link.partition("#")
        target = (page.parent / file).resolve() if file else page
        assert target.is_file(), f"{page.name}: link {link} points to no file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: link {link}: no such heading in {target.name}"
    if page.name == "README.md":
        docs = {(page.parent / link).resolve() for link in links if link.startswith("docs/")}
        assert set(PAGES[1:]) <= docs, "every docs/ page is linked from the README"


PATH = re.compile(r"(?<![\w./-])((?:nanochat_hf|tests|recipes|benchmarks|dev|docs|\.ci)/[\w./-]*)(?:::([\w*]+))?")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_files_and_tests_exist(page):
    """Each repository path a page names exists, and each `tests/x.py::test_name` is a test in that file."""
    for path, test in PATH.findall(page.read_text(encoding="utf-8")):
        path = path.rstrip(".")
        assert (REPO / path).exists(), f"{page.name} names {path}, which does not exist"
        if test:
            names = re.findall(r"^def (test_\w+)", (REPO / path).read_text(encoding="utf-8"), re.M)
            assert fnmatch.filter(names, test), f"{page.name} names {path}::{test}, which is not a test there"


def test_the_readme_layout_names_real_modules():
    """The README's layout (the table and the paragraph under it) names modules of the package as they are."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`([\w/]+(?:\.py|\.jinja|/))`", layout)
    names = [n for n in names if not n.startswith(("recipes/", "nanochat_hf/"))]
    assert len(names) > 20
    for name in names:
        assert (REPO / "nanochat_hf" / name).exists(), f"README layout names nanochat_hf/{name}, which does not exist"
