"""What each stage of the test command calls, and whether its own install steps provide it.

A stage is a Makefile target's recipe, or a script in scripts/ that a recipe runs (and the
scripts those run, as `scripts/test` runs the suites). It may call, by name, only:
  - what a fresh Debian 12 machine has: Debian's base system (the packages of Priority
    required and important, what the installer and debootstrap lay down), the toolchain
    the README names (gcc, libc6-dev, make, git, python3 with pip; their dependencies), and
    rustup's commands;
  - what its own install steps bring: the Debian packages it passes to `ensure_packages`
    (or, on the host it prepares, to scripts/prepare-host's `install_packages`), with their
    dependencies, and the commands of the pinned tools it puts on PATH (the
    functions of scripts/lib/common.sh whose comment says "Provides: ...").
`cargo build/test/clippy/run/...` of the workspace also needs BUILD_PACKAGES.

What a stage calls is read from the code, not declared by hand: the shell scripts parsed by
shfmt (the commands of its top level and of every function it reaches, in its sourced
libraries too), the pytest suites it runs (`tests/NAME`: the commands their Python hands to
subprocess, `run` helpers and shutil.which, and the scripts they run as `scripts/NAME`),
and the e2e/ suite's child processes. Which Debian package ships a command is asked of
this machine's dpkg: a command that is not on this machine cannot be placed, and is left to
the stage's own run to show.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The README's fresh machine besides Debian's base system.
TOOLCHAIN_PACKAGES = ("gcc", "libc6-dev", "make", "git", "python3", "python3-pip")
RUSTUP_COMMANDS = {"cargo", "rustc", "rustup", "rustfmt", "rustdoc", "cargo-fmt", "cargo-clippy", "clippy-driver"}
# cargo subcommands that compile the workspace, and so need BUILD_PACKAGES.
CARGO_BUILDS = {"build", "b", "test", "t", "clippy", "run", "r", "check", "c", "doc", "bench", "tarpaulin"}
# Commands that run the command named in their arguments.
WRAPPERS = {"exec", "env", "nice", "nohup", "setsid", "sudo", "timeout", "time", "command", "xargs", "stdbuf"}
# Their options that take a value (nice -n 5, env -u NAME, timeout -s KILL, xargs -I {}, ...).
WRAPPER_OPTIONS_WITH_VALUE = {"-n", "-u", "-s", "-k", "-I", "-P", "-L"}
PYTHON_RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "spawn"}
SBIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass
class Use:
    """A command called by name, and where."""

    command: str
    where: str


@dataclass
class ShellFile:
    path: Path
    functions: dict = field(default_factory=dict)  # name -> [Call]
    top: list = field(default_factory=list)  # [Call]
    arrays: dict = field(default_factory=dict)  # name -> [str, or "@NAME" for "${NAME[@]}"]
    scalars: dict = field(default_factory=dict)  # name -> str (first literal value)
    sources: list = field(default_factory=list)  # [Path]
    provides: dict = field(default_factory=dict)  # function name -> {command}


@dataclass
class Call:
    words: list  # each str, or None where it is not literal
    line: int
    text: list  # each word's text with its non-literal parts as "\0"
    arrays: list = field(default_factory=list)  # the arrays it expands whole, "${NAME[@]}"
    runs_its_arguments: bool = False  # its command is "$@"


@dataclass
class Stage:
    name: str
    uses: list = field(default_factory=list)  # [Use]
    packages: set = field(default_factory=set)  # ensured Debian packages
    provided: set = field(default_factory=set)  # commands of pinned tools put on PATH
    needs_packages: dict = field(default_factory=dict)  # package -> where


# ----------------------------------------------------------------------------- shell


def shfmt_json(source: str) -> dict:
    result = subprocess.run(["shfmt", "-ln", "bash", "-tojson"], input=source, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"shfmt cannot parse: {result.stderr.strip()}")
    return json.loads(result.stdout)


def word_text(word: dict, scalars: dict | None = None, hole: str | None = "\0") -> str | None:
    """A word's text; a part that is not literal (nor a known variable) becomes `hole`, or
    makes the whole word None when hole is None."""
    out = []
    for part in word.get("Parts", []):
        kind = part.get("Type")
        if kind in ("Lit", "SglQuoted"):
            out.append(part.get("Value", ""))
        elif kind == "DblQuoted":
            inner = word_text(part, scalars, hole)
            if inner is None:
                return None
            out.append(inner)
        elif kind == "ParamExp" and scalars is not None and set(part) <= {"Type", "Pos", "End", "Dollar", "Rbrace", "Param", "Short"} \
                and part["Param"]["Value"] in scalars:
            out.append(scalars[part["Param"]["Value"]])
        elif hole is None:
            return None
        else:
            out.append(hole)
    return "".join(out)


def _expansion(word: dict) -> dict | None:
    """The parameter expansion a word is made of alone, quoted or not."""
    parts = word.get("Parts", [])
    if len(parts) == 1 and parts[0].get("Type") == "DblQuoted":
        parts = parts[0].get("Parts", [])
    return parts[0] if len(parts) == 1 and parts[0].get("Type") == "ParamExp" else None


def _whole_array(word: dict) -> str | None:
    expansion = _expansion(word)
    index = (expansion or {}).get("Index")
    if index and word_text(index, hole=None) == "@":
        return expansion["Param"]["Value"]
    return None


def parse_shell(path: Path, root: Path, source: str | None = None) -> ShellFile:
    text = path.read_text() if source is None else source
    tree = shfmt_json(text)
    parsed = ShellFile(path)
    lines = text.splitlines()

    def visit(node, calls):
        if isinstance(node, list):
            for item in node:
                visit(item, calls)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("Type")
        if kind == "FuncDecl":
            name = node["Name"]["Value"]
            body: list = []
            parsed.functions[name] = body
            visit(node["Body"], body)
            line = node["Pos"]["Line"]
            comment = []
            for previous in reversed(lines[: line - 1]):
                if not previous.startswith("#"):
                    break
                comment.append(previous)
            found = re.search(r"Provides: ([\w .-]+)", " ".join(comment))
            if found:
                parsed.provides[name] = set(found.group(1).split())
            return
        if isinstance(node.get("Name"), dict) and "Value" in node["Name"] and ("Value" in node or "Array" in node):
            name = node["Name"]["Value"]
            if "Array" in node and node["Array"]:
                for element in node["Array"].get("Elems", []):
                    if element.get("Value"):
                        array = _whole_array(element["Value"])
                        value = f"@{array}" if array else word_text(element["Value"], hole=None)
                        if value:
                            parsed.arrays.setdefault(name, []).append(value)
            elif node.get("Value"):
                value = word_text(node["Value"], parsed.scalars, hole=None)
                if value is not None:
                    parsed.scalars.setdefault(name, value)
        if kind == "CallExpr" and node.get("Args"):
            words = [word_text(w, parsed.scalars, hole=None) for w in node["Args"]]
            texts = [word_text(w, parsed.scalars) for w in node["Args"]]
            first = _expansion(node["Args"][0])
            call = Call(words, node["Pos"]["Line"], texts, [_whole_array(w) for w in node["Args"]],
                        bool(first) and first["Param"]["Value"] == "@")
            calls.append(call)
            if words[0] in ("source", ".") and len(texts) > 1:
                lib = re.search(r"(scripts/)?lib/([\w.-]+)$", texts[1])
                if lib:
                    parsed.sources.append(root / "scripts/lib" / lib.group(2))
            if words[0] == "trap" and len(words) > 1 and words[1]:
                code = words[1]
                if re.fullmatch(r"[\w-]+", code):
                    calls.append(Call([code], call.line, [code]))
                else:
                    calls.extend(parse_shell(path, root, code).top)
        for key, value in node.items():
            if key not in ("Pos", "End") and isinstance(value, (dict, list)):
                visit(value, calls)

    visit(tree, parsed.top)
    return parsed


def expand(arrays: dict, values: list, depth: int = 0) -> set:
    """Array values, an element "@NAME" standing for all of array NAME's."""
    out = set()
    for value in values:
        if value.startswith("@"):
            if depth < 5:
                out |= expand(arrays, arrays.get(value[1:], []), depth + 1)
        else:
            out.add(value)
    return out


def command_of(call: Call) -> tuple[str | None, list]:
    """The command a call runs, past wrappers such as env, nice and exec, and the words
    after it; (None, []) when it only probes (command -v) or cannot be read."""
    words, index = call.words, 0
    while index < len(words):
        word = words[index]
        if word is None:
            return None, []
        if word in WRAPPERS:
            if word == "command" and index + 1 < len(words) and words[index + 1] in ("-v", "-V"):
                return None, []
            index += 1
            while index < len(words) and words[index] is not None and (
                    words[index].startswith("-") or re.fullmatch(r"\w+=.*", words[index])
                    or (word == "timeout" and re.fullmatch(r"[\d.]+[smhd]?", words[index]))):
                index += 2 if words[index] in WRAPPER_OPTIONS_WITH_VALUE else 1
            continue
        return word, words[index + 1:]
    return None, []


# ----------------------------------------------------------------------------- python


def python_commands(path: Path, root: Path) -> tuple[list, list]:
    """The commands a Python file spawns by name, and the scripts it runs: "scripts/NAME"
    run, or joined onto a folder (ROOT / "scripts/NAME")."""
    tree = ast.parse(path.read_text())
    uses, scripts, paths = [], [], []  # paths: the strings run, or joined onto a folder

    def first_string(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            return first_string(node.elts[0])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = getattr(func.value, "id", None)
                name = func.attr if owner in ("subprocess", "shutil") else None
            else:
                name = getattr(func, "id", None)
            if (name in PYTHON_RUNNERS or name == "which") and node.args:
                command = first_string(node.args[0])
                if command and re.fullmatch(r"[\w.+-]+", command):
                    uses.append(Use(command, f"{path.relative_to(root)}:{node.lineno}"))
                elif name in PYTHON_RUNNERS:
                    paths.append(command)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined = first_string(node.right)
            left = node.left
            if isinstance(left, ast.BinOp) and isinstance(left.op, ast.Div) and first_string(left.right) == "scripts":
                joined = f"scripts/{joined}"
            paths.append(joined)
    for path in paths:
        found = re.fullmatch(r"scripts/((lib/)?[\w.-]+)", path or "")
        if found:
            scripts.append(found.group(1))
    return uses, scripts


def node_commands(path: Path, root: Path) -> list:
    uses = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for command in re.findall(r"\b(?:spawn|spawnSync|execFile|execFileSync)\(\s*'([\w.+-]+)'", line):
            uses.append(Use(command, f"{path.relative_to(root)}:{number}"))
    return uses


# ----------------------------------------------------------------------------- stages


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.shell_cache: dict = {}

    def shell(self, path: Path) -> ShellFile:
        if path not in self.shell_cache:
            self.shell_cache[path] = parse_shell(path, self.root)
        return self.shell_cache[path]

    def with_sources(self, path: Path) -> list:
        """The file and every library it sources, in order, each once."""
        seen, order = set(), []

        def add(p):
            if p in seen or not p.exists():
                return
            seen.add(p)
            order.append(p)
            for lib in self.shell(p).sources:
                add(lib)

        add(path)
        return [self.shell(p) for p in order]

    def script_path(self, name: str) -> Path:
        return self.root / "scripts" / name

    def stages(self) -> list:
        """Each Makefile target's recipe, and every script the recipes run, directly or
        through a script they run."""
        recipes: dict = {}
        target = None
        for line in (self.root / "Makefile").read_text().splitlines():
            found = re.match(r"^([\w-]+):", line)
            if found:
                target = found.group(1)
                recipes[target] = []
            elif line.startswith("\t") and target:
                recipes[target].append(line.strip())
        stages, scripts = [], []
        for target, lines in recipes.items():
            recipe = parse_shell(self.root / "Makefile", self.root, "\n".join(lines))
            stages.append(self.stage(f"make {target}", [recipe]))
            scripts.extend(self.called_scripts([recipe]))
        seen = set()
        while scripts:
            name = scripts.pop(0)
            if name in seen or "/" in name:
                continue
            seen.add(name)
            files = self.with_sources(self.script_path(name))
            stages.append(self.stage(f"scripts/{name}", files))
            scripts.extend(self.called_scripts(files))
        return stages

    def reachable_calls(self, files: list) -> tuple[list, dict]:
        """(file, call) of the top level of files[0] and of every function it reaches; and
        the functions of all files, by name."""
        functions = {}
        for parsed in reversed(files):
            for name, body in parsed.functions.items():
                functions[name] = (parsed, body)
        todo = [(files[0], call) for call in files[0].top]
        out, done = [], set()
        while todo:
            parsed, call = todo.pop()
            out.append((parsed, call))
            for word in call.words:
                if word in functions and word not in done:
                    done.add(word)
                    owner, body = functions[word]
                    todo.extend((owner, c) for c in body)
        return out, functions

    def called_scripts(self, files: list) -> list:
        names = []
        for _, call in self.reachable_calls(files)[0]:
            found = re.fullmatch(r"(?:.*/)?scripts/([\w.-]+)", call.text[0] or "")
            if found and self.script_path(found.group(1)).is_file():
                names.append(found.group(1))
        return names

    def stage(self, name: str, files: list) -> Stage:
        stage = Stage(name)
        self.add_shell(stage, files, set())
        return stage

    def add_shell(self, stage: Stage, files: list, seen: set) -> None:
        """Adds what a script (files[0], with the libraries it sources) calls and installs,
        and what the suites and scripts it runs call; seen: the suites and scripts added."""
        calls, functions = self.reachable_calls(files)
        library_functions = self.library_functions()
        arrays: dict = {}
        for parsed in files:
            for array, values in parsed.arrays.items():
                arrays.setdefault(array, []).extend(values)
        build_packages = self.build_packages()
        runners = {n for n, (_, body) in functions.items() if any(c.runs_its_arguments for c in body)}
        for parsed, call in calls:
            where = f"{parsed.path.relative_to(self.root)}:{call.line}"
            command, args = command_of(call)
            if command is None:
                continue
            if command in runners:
                nested = [a for a in args if a and not a.startswith("-") and not a.isdigit()]
                if nested and nested[0] not in functions and nested[0] not in library_functions:
                    stage.uses.append(Use(nested[0], where))
            # ensure_packages, and prepare-host's own apt step on the host it prepares.
            if command in ("ensure_packages", "install_packages"):
                stage.packages.update(word for word in call.words[1:] if word)
                stage.packages.update(expand(arrays, [f"@{a}" for a in call.arrays[1:] if a]))
            for parsed_file in files:
                if command in parsed_file.provides:
                    stage.provided |= parsed_file.provides[command]
            if command == "cargo" and args and args[0] in CARGO_BUILDS:
                for package in build_packages:
                    stage.needs_packages.setdefault(package, where)
            if command in functions or command in library_functions or "/" in command:
                continue
            stage.uses.append(Use(command, where))
        # The pytest suites and the e2e suite that the script runs, and the scripts they run.
        suites, e2e = set(), False
        for _, call in calls:
            command, args = command_of(call)
            runs_pytest = [i for i, t in enumerate(call.text) if t and re.search(r"(^|/)pytest$", t)]
            if command == "cd" or runs_pytest:
                words = [t for t in call.text[(runs_pytest or [0])[0] + 1:] if t]
                suites |= {m for w in words for m in re.findall(r"(?:^|/)(tests/\w+(?:/\w+\.py)?)", w)}
                e2e = e2e or (command == "cd" and "e2e" in words)
        for suite in sorted(suites):
            if suite in seen or not (self.root / suite).exists():
                continue
            seen.add(suite)
            for source in self.suite_sources(self.root / suite):
                uses, scripts = python_commands(source, self.root)
                stage.uses.extend(uses)
                for script in scripts:
                    if script not in seen and self.script_path(script).is_file():
                        seen.add(script)
                        self.add_shell(stage, self.with_sources(self.script_path(script)), seen)
        if any(command_of(call)[0] == "pre-commit" for _, call in calls):
            self.add_pre_commit_hooks(stage, seen)
        if e2e and "e2e" not in seen:
            seen.add("e2e")
            for source in sorted((self.root / "e2e").rglob("*.js")):
                if "node_modules" not in source.parts:
                    stage.uses.extend(node_commands(source, self.root))

    def add_pre_commit_hooks(self, stage: Stage, seen: set) -> None:
        """What the hooks of .pre-commit-config.yaml call, for a stage that runs pre-commit:
        each hook's entry is a command line; a script of scripts/ that runs its arguments
        (`exec "$@"`, as scripts/hook) runs the command named after it."""
        config = self.root / ".pre-commit-config.yaml"
        if "pre-commit" in seen or not config.is_file():
            return
        seen.add("pre-commit")
        entries = re.findall(r"^\s+entry:\s*(.+?)\s*$", config.read_text(), re.M)
        for call in parse_shell(config, self.root, "\n".join(entries)).top:
            command, args = command_of(call)
            where = f".pre-commit-config.yaml: entry {' '.join(w or '?' for w in call.words)}"
            found = re.fullmatch(r"scripts/([\w.-]+)", command or "")
            if found and self.script_path(found.group(1)).is_file():
                script = self.script_path(found.group(1))
                if found.group(1) not in seen:
                    seen.add(found.group(1))
                    self.add_shell(stage, self.with_sources(script), seen)
                if not (args and 'exec "$@"' in script.read_text()):
                    continue
                command, args = args[0], args[1:]
            if command is None:
                continue
            if command == "cargo" and args and args[0] in CARGO_BUILDS:
                for package in self.build_packages():
                    stage.needs_packages.setdefault(package, where)
            stage.uses.append(Use(command, where))

    def suite_sources(self, suite: Path) -> list:
        """The Python files a pytest suite (a folder, or one file of it) runs, and the modules
        they import from its folder or from the folders they put on sys.path."""
        folders = [suite if suite.is_dir() else suite.parent]
        sources = sorted(folders[0].glob("*.py")) if suite.is_dir() else [suite]
        index = 0
        while index < len(sources):
            text = sources[index].read_text()
            # Folders put on sys.path, as ROOT / "tests/k8s" or Path(...) / "lib".
            for inserted in re.findall(r"sys\.path\.insert\(.*?\"((?:tests/)?\w+)\"\)*$", text, re.M):
                folder = self.root / inserted if inserted.startswith("tests/") else self.root / "tests" / inserted
                if folder.is_dir() and folder not in folders:
                    folders.append(folder)
            for module in re.findall(r"^(?:from|import) (\w+)", text, re.M):
                for folder in folders:
                    found = folder / f"{module}.py"
                    if found.is_file() and found not in sources:
                        sources.append(found)
            index += 1
        return sources

    @functools.cache
    def build_packages(self) -> tuple:
        return tuple(self.shell(self.root / "scripts/lib/common.sh").arrays.get("BUILD_PACKAGES", []))

    @functools.cache
    def library_functions(self) -> frozenset:
        """Every function of scripts/lib: some are reached through a library that is chosen
        at run time (the deploy drivers)."""
        names = set()
        for path in sorted((self.root / "scripts/lib").iterdir()):
            if path.is_file() and re.search(r"^#!/usr/bin/env bash|^# shellcheck shell=bash", path.read_text(), re.M):
                names |= set(self.shell(path).functions)
        return frozenset(names)


# ----------------------------------------------------------------------------- this machine


@functools.cache
def shell_builtins() -> frozenset:
    out = subprocess.run(["bash", "-c", "compgen -b; compgen -k"], capture_output=True, text=True, check=True).stdout
    return frozenset(out.split())


# What apt-cache and dpkg said, for the machines the tests make.
_GRAPH: dict = {}
_OWNERS: dict = {}


def dependency_graph(packages) -> dict:
    """package -> the packages it depends on (Depends, Pre-Depends; virtual names as they
    are), for the given packages and everything they depend on: one apt-cache call for the
    packages not asked about before."""
    packages = sorted(set(packages) - set(_GRAPH))
    if not packages:
        return _GRAPH
    graph = _GRAPH
    graph.update({package: set() for package in packages})
    out = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *packages],
        capture_output=True, text=True).stdout
    current = None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.strip("<>").split(":")[0]
            graph.setdefault(current, set())
            continue
        found = re.match(r"^\s*\|?(?:PreDepends|Depends): <?([^\s>]+)>?", line)
        if found and current:
            graph[current].add(found.group(1).split(":")[0])
        elif current and re.match(r"^\s+[^\s:]+$", line):
            # The packages that provide a virtual name are listed under it.
            graph[current].add(line.strip().split(":")[0])
    return graph


def closure(graph: dict, packages) -> frozenset:
    seen, todo = set(), list(packages)
    while todo:
        package = todo.pop()
        if package not in seen:
            seen.add(package)
            todo.extend(graph.get(package, ()))
    return frozenset(seen)


def candidates(command: str) -> list:
    """Every file on this machine that `command` may run, on PATH or in the sbin folders."""
    folders = [*os.environ.get("PATH", "").split(os.pathsep), *SBIN_DIRS]
    found = []
    for folder in dict.fromkeys(folders):
        path = Path(folder) / command
        if folder and path.is_file() and os.access(path, os.X_OK):
            found.append(path)
    return found


def file_owners(paths) -> dict:
    """path -> the Debian packages that ship it (or the file its links end at): one dpkg call."""
    asked: dict = {}  # a file, or the file links end at -> the paths it stands for
    for path in map(str, paths):
        if path not in _OWNERS:
            _OWNERS[path] = set()
            asked.setdefault(path, set()).add(path)
            asked.setdefault(os.path.realpath(path), set()).add(path)
    if asked:
        out = subprocess.run(["dpkg-query", "-S", *asked], capture_output=True, text=True).stdout
        for line in out.splitlines():
            names, _, shipped = line.partition(": ")
            for path in asked.get(shipped, ()):
                _OWNERS[path] |= {name.strip().split(":")[0] for name in names.split(",")}
    return {str(path): _OWNERS[str(path)] for path in paths}


@functools.cache
def installed_packages() -> dict:
    """package -> Priority, of the packages installed here."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}\t${Package}\t${Priority}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {f[1]: f[2] for f in (line.split("\t") for line in out.splitlines()) if f[0] == "installed"}


class Machine:
    """What this machine knows: which package ships each command the stages call, and what
    each package depends on."""

    def __init__(self, stages: list):
        self.installed = installed_packages()
        self.graph = dependency_graph({p for s in stages for p in s.packages} | set(TOOLCHAIN_PACKAGES))
        base = {name for name, priority in self.installed.items() if priority in ("required", "important")}
        # Debian's base system as installed here, and the README's toolchain.
        self.fresh = frozenset(base) | closure(self.graph, TOOLCHAIN_PACKAGES)
        builtins = shell_builtins()
        commands = {u.command for s in stages for u in s.uses} - builtins
        self.paths = {command: candidates(command) for command in commands}
        self.owners = file_owners([p for paths in self.paths.values() for p in paths])

    def check(self, stage: Stage, stand_ins: dict) -> tuple[list, list]:
        """(problems, notes): a problem is a command or package the stage needs that neither
        a fresh machine nor the stage's own install steps provide; a note, a command that
        this machine cannot place (not here, or from no package while some of the stage's
        packages are not installed here)."""
        problems, notes = [], []
        provided = closure(self.graph, stage.packages)
        not_installed = sorted(p for p in stage.packages if p not in self.installed)
        for package, where in sorted(stage.needs_packages.items()):
            if package not in provided and package not in self.fresh:
                problems.append(f"{where}: builds the workspace, which needs the package {package}, "
                                f"but no install step of {stage.name} installs it")
        reported = set(shell_builtins()) | stage.provided | RUSTUP_COMMANDS
        for use in stage.uses:
            command = use.command
            if command in reported:
                continue
            if any(use.where.startswith(prefix) for prefix in stand_ins.get(command, ())):
                continue
            reported.add(command)
            paths = self.paths.get(command) or []
            if not paths:
                notes.append(f"{use.where}: {command} is not on this machine, so its package is not known here")
                continue
            shipped_by = set().union(*(self.owners[str(p)] for p in paths))
            if shipped_by & (provided | self.fresh):
                continue
            if not shipped_by and not_installed:
                notes.append(f"{use.where}: {command} ({', '.join(map(str, paths))}) belongs to no package; "
                             f"{', '.join(not_installed)}, not installed here, may ship it")
                continue
            origin = f"the package {', '.join(sorted(shipped_by))}" if shipped_by else \
                f"no Debian package ({', '.join(map(str, paths))})"
            problems.append(f"{use.where}: {stage.name} calls {command}, which comes from {origin} on this "
                            f"machine, but no install step of {stage.name} provides it (ensure_packages, or a "
                            f"pinned tool of scripts/lib/common.sh that provides it)")
        return problems, notes
