"""The READMEs name only what exists, and `make help` lists every target.

Parsed from README.md and benchmarks/README.md: every `curation` command line (sub-commands and flags,
against the real argument parser), `make` call (targets and variables against the Makefile, `ARGS`
flags against the command the target runs), benchmark script and flag (against the script's
argparse), `curation.toml` table and key (against the typed option tables), `CURATION_*` variable,
module and repository path; and every relative link between the two files, anchors included.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shlex
import subprocess
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

from curation import cli, options
from curation.errors import CurationError
from curation.sources import WEB_SOURCES

DOCS = (REPO / "README.md", REPO / "benchmarks" / "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# make target -> the `curation` command its recipe runs (where ARGS go)
MAKE_COMMANDS = {
    "crawl": ["crawl"],
    "filter": ["filter"],
    "dedup": ["dedup"],
    "status": ["status"],
    "annotate": ["annotate", "serve"],
    "release": ["release"],
    "eval": ["eval"],
    "report": ["report"],
}
FLAG = re.compile(r"-{1,2}[A-Za-z][\w-]*")
REPO_PATH = re.compile(r"(curation|benchmarks|tests|data/classes|db/migrations)/[\w./-]*")
SCRIPT = re.compile(r"(?:.*/)?(benchmarks/\w+\.py)")


# --------------------------------------------------------------------------- what exists


@cache
def top_parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags_of(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Option string -> whether it takes a value."""
    return {flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings}


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [parser, *(p for sub in subcommands(parser).values() for p in all_parsers(sub))]


@cache
def makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and variables."""
    targets, variables = set(), set()
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(("\t", "#")):
            continue
        if rule := re.match(r"([^\s:=#][^:=]*):(?!=)", line):
            targets.update(t for t in rule.group(1).split() if "$" not in t)
        elif variable := re.match(r"([A-Za-z_]\w*)\s*(?::=|\?=|\+=|=)", line):
            variables.add(variable.group(1))
    return targets, variables


@cache
def script_flags(script: str) -> frozenset[str]:
    """The option strings a benchmark script's argparse declares."""
    tree = ast.parse((REPO / script).read_text())
    return frozenset(
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")
    )


@cache
def source_text() -> str:
    return "\n".join(p.read_text() for p in (REPO / "curation").rglob("*.py"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings (a repeated heading gets -1, -2, ...)."""
    found, seen = set(), Counter()
    for heading in re.findall(r"^#{1,6} +(.+)$", FENCE.sub("", text), re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


# --------------------------------------------------------------------------- what a README names


def code_of(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Fenced blocks (language, body) and inline code spans (one may wrap a line)."""
    prose = FENCE.sub("", text)
    return FENCE.findall(text), [" ".join(s.split()) for s in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", prose)]


def command_lines(blocks: list[tuple[str, str]], spans: list[str]) -> list[list[str]]:
    """Every shell command named, as tokens: block lines and code spans, cut at && | ; and comments."""
    lines = [line for lang, body in blocks if lang not in ("toml", "python") for line in body.splitlines()]
    commands = []
    for line in [*lines, *spans]:
        line = line.replace("\\|", "|").replace("[", " ").replace("]", " ").lstrip("$ ")
        for segment in re.split(r" && | \| |; ", line):
            try:
                tokens = shlex.split(segment, comments=True)
            except ValueError:
                continue  # prose in a code span, not a command
            while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
                tokens = tokens[1:]
            if tokens:
                commands.append(tokens)
    return commands


def check_curation(tokens: list[str], where: str) -> list[str]:
    """`curation [global flags] COMMAND [SUB ...] [flags]` against the real parser."""
    top = top_parser()
    problems, i = [], 1
    while i < len(tokens) and tokens[i].startswith("-"):
        flag = tokens[i].split("=")[0]
        if flag not in flags_of(top):
            problems.append(f"{where}: curation has no global flag {flag}")
        i += 2 if flags_of(top).get(flag) and "=" not in tokens[i] else 1
    current, path = [top], "curation"
    while i < len(tokens) and not tokens[i].startswith("-"):
        choices = {name: sub for parser in current for name, sub in subcommands(parser).items()}
        if not choices:
            break
        names = tokens[i].split("|")
        unknown = [n for n in names if n not in choices]
        if unknown:
            return [*problems, f"{where}: `{path}` has no sub-command {unknown[0]}"]
        current, path, i = [choices[n] for n in names], f"{path} {tokens[i]}", i + 1
    known = {flag for parser in current for flag in flags_of(parser)}
    for token in tokens[i:]:
        if FLAG.fullmatch(token.split("=")[0]) and token.split("=")[0] not in known:
            problems.append(f"{where}: `{path}` has no flag {token.split('=')[0]}")
    return problems


def check_script(script: str, args: list[str], where: str) -> list[str]:
    if not (REPO / script).is_file():
        return [f"{where}: no benchmark script {script}"]
    unknown = [a.split("=")[0] for a in args if FLAG.fullmatch(a.split("=")[0])]
    return [f"{where}: {script} has no flag {flag}" for flag in unknown if flag not in script_flags(script)]


def check_make(tokens: list[str], where: str) -> list[str]:
    targets, variables = makefile()
    problems, named, extra = [], [], []
    for token in tokens[1:]:
        if assignment := re.fullmatch(r"([A-Za-z_]\w*)=(.*)", token):
            if assignment.group(1) not in variables:
                problems.append(f"{where}: the Makefile has no variable {assignment.group(1)}")
            if assignment.group(1) == "ARGS":
                extra = shlex.split(assignment.group(2))
        elif not token.startswith("-"):
            named.append(token)
            if token not in targets:
                problems.append(f"{where}: the Makefile has no target {token}")
    for target in named if extra else []:
        if target in MAKE_COMMANDS:
            problems += check_curation(["curation", *MAKE_COMMANDS[target], *extra], f"{where} (ARGS)")
        elif target.startswith("bench-"):
            problems += check_script(f"benchmarks/{target.removeprefix('bench-')}.py", extra, f"{where} (ARGS)")
    return problems


def check_command(tokens: list[str], where: str) -> list[str]:
    problems = []
    if tokens[0] == "curation" or tokens[0].endswith("/curation"):
        problems += check_curation(tokens, where)
    elif tokens[0] == "make":
        problems += check_make(tokens, where)
    for i, token in enumerate(tokens[:2]):
        if script := SCRIPT.fullmatch(token):
            problems += check_script(script.group(1), tokens[i + 1 :], where)
    if "-m" in tokens[:-1] and tokens[tokens.index("-m") + 1].startswith("curation"):
        problems += check_module(tokens[tokens.index("-m") + 1], where)
    problems += [f"{where}: no file {t}" for t in tokens if REPO_PATH.fullmatch(t) and not (REPO / t).exists()]
    return problems


def check_module(name: str, where: str) -> list[str]:
    return [] if importlib.util.find_spec(name) is not None else [f"{where}: no module {name}"]


def check_table_key(table: str, key: str | None, where: str, source_keys: dict | None = None) -> list[str]:
    if table.startswith("sources."):
        name = table.removeprefix("sources.")
        if name not in WEB_SOURCES:
            return [f"{where}: no source [{table}]"]
        module = (REPO / "curation" / "sources" / f"{name}.py").read_text()
        api = (REPO / "curation" / "sources" / "api.py").read_text()
        return [
            f"{where}: [{table}] has no key {k}"
            for k in ([key] if key else list(source_keys or ()))
            if f'config.get("{k}"' not in module + api
        ]
    try:
        options.check_tables({table: {key: None} if key else {}}, where)
    except CurationError as exc:
        return [str(exc)]
    return []


def check_config(blocks: list[tuple[str, str]], spans: list[str], where: str) -> list[str]:
    problems = []
    for lang, body in blocks:
        if lang != "toml":
            continue
        parsed = tomllib.loads(body)
        for name, keys in parsed.pop("sources", {}).items():
            problems += check_table_key(f"sources.{name}", None, where, keys)
        try:
            options.check_tables(parsed, f"{where} (toml block)")
        except CurationError as exc:
            problems.append(str(exc))
    for span in spans:
        if named := re.fullmatch(r"\[([\w.]+)\](?: (\w+)(?: = .*)?)?", span):
            problems += check_table_key(named.group(1), named.group(2), f"{where}: `{span}`")
        elif variable := re.fullmatch(r"(CURATION_[A-Z0-9_]+)(=.*)?", span):
            problems += check_variable(variable.group(1), where)
    return problems


def check_variable(name: str, where: str) -> list[str]:
    """A variable the code reads by name, or ``CURATION_<TABLE>_<KEY>`` of a declared key."""
    if re.search(rf"\b{name}\b", source_text()):
        return []
    for table in options.TABLES:
        prefix = f"CURATION_{table.upper()}_"
        if name.startswith(prefix) and name.removeprefix(prefix).lower() in options.known_keys(table):
            return []
    return [f"{where}: nothing reads the variable {name}"]


def check_links(path: Path, text: str) -> tuple[list[str], set[Path]]:
    """Problems with the relative links of a README's ``text``, and the files they point to."""
    problems, targets = [], set()
    prose = FENCE.sub("", text)
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        targets.add(resolved)
        if not resolved.exists():
            problems.append(f"{path.name}: link to a missing file {target}")
        elif anchor and anchor not in anchors(resolved.read_text() if file else text):
            problems.append(f"{path.name}: link to a missing heading {target}")
    return problems, targets


def problems_of(path: Path, text: str) -> list[str]:
    """Everything a README names that does not exist."""
    blocks, spans = code_of(text)
    where = path.name if path.parent == REPO else str(path.relative_to(REPO))
    problems = []
    for tokens in command_lines(blocks, spans):
        problems += check_command(tokens, f"{where}: `{' '.join(tokens)}`")
    problems += check_config(blocks, spans, where)
    parsers = all_parsers(top_parser())
    known_flags = {flag for parser in parsers for flag in flags_of(parser)}
    known_flags |= {
        f for script in (REPO / "benchmarks").glob("*.py") for f in script_flags(f"benchmarks/{script.name}")
    }
    for span in spans:
        flag = span.split(" ")[0].split("=")[0]
        if FLAG.fullmatch(flag) and flag.startswith("--") and flag not in known_flags:
            problems.append(f"{where}: no command or benchmark has the flag {flag}")
        elif re.fullmatch(r"curation(\.\w+)+", span) and span != "curation.toml":
            problems += check_module(span, where)
        elif REPO_PATH.fullmatch(span) and not (REPO / span).exists():
            problems.append(f"{where}: no file {span}")
    problems += check_links(path, text)[0]
    return problems


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_names_only_commands_targets_keys_and_links_that_exist(path):
    assert problems_of(path, path.read_text()) == []


def test_readme_documents_every_sub_command_and_the_two_readmes_link_each_other():
    readme, bench = DOCS
    text = readme.read_text()
    blocks, spans = code_of(text)
    named = {t for tokens in command_lines(blocks, spans) if tokens[0] == "curation" for t in tokens[1:]}
    assert set(subcommands(top_parser())) <= named
    assert bench.resolve() in check_links(readme, text)[1]
    assert readme.resolve() in check_links(bench, bench.read_text())[1]


def test_the_check_finds_what_does_not_exist():
    """Each kind of mistake a README could make is reported (so the tests above can fail)."""
    bad = {
        "`curation filter --no-such-flag`": "has no flag --no-such-flag",
        "`curation --no-global crawl`": "no global flag --no-global",
        "`curation dedup referense add X Y`": "has no sub-command referense",
        "```sh\ncuration annotate serve --hots 0.0.0.0   # typo\n```": "has no flag --hots",
        "`make crawl filtre`": "no target filtre",
        "`make demo DEMO_REVEIW=serve`": "no variable DEMO_REVEIW",
        '`make filter ARGS="--checkpont w.pth"`': "has no flag --checkpont",
        '`make bench-crawl ARGS="--threds 4"`': "benchmarks/crawl.py has no flag --threds",
        "`python benchmarks/dedup.py --rerun 10 --stres`": "has no flag --stres",
        "`python benchmarks/nothing.py`": "no benchmark script benchmarks/nothing.py",
        "```toml\n[filter]\nbatchsize = 3\n```": "unknown key [filter] batchsize",
        "```toml\n[sources.flickr]\napi_kee = 1\n```": "[sources.flickr] has no key api_kee",
        "`[dedup] max_distanse`": "unknown key [dedup] max_distanse",
        "`[crawler]`": "unknown table [crawler]",
        "`CURATION_FILTER_BATCHSIZE=8`": "nothing reads the variable CURATION_FILTER_BATCHSIZE",
        "`--max-distanse`": "no command or benchmark has the flag --max-distanse",
        "`curation.no_module`": "no module curation.no_module",
        "`curation/nothing.py`": "no file curation/nothing.py",
        "[x](benchmarks/README.md#no-such-heading)": "missing heading",
        "[x](NOTHING.md)": "missing file",
    }
    for text, expected in bad.items():
        found = problems_of(REPO / "README.md", f"# Title\n\n{text}\n")
        assert any(expected in problem for problem in found), (text, found)
    good = "`curation filter --model a --keep any-wrong`\n`make crawl filter`\n`[dedup] max_distance`\n[x](#title)\n"
    assert problems_of(REPO / "README.md", f"# Title\n\n{good}") == []


def test_make_help_lists_every_target_once_without_installing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "--no-print-directory", "help", f"VENV={venv}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not venv.exists()  # help does not depend on the install
    listed = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert all(len(parts) == 2 for parts in listed), result.stdout
    names = [name for name, _ in listed]
    phony = (REPO / "Makefile").read_text().split(".PHONY:", 1)[1].split("\n", 1)[0].split()
    assert sorted(names) == sorted(phony)
    assert set(names) <= makefile()[0]
