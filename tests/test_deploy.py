"""Deployment files: railway.toml, the Dockerfile and .dockerignore say what we run, and it runs.

No Docker engine is needed: the Dockerfile is parsed into its instructions,
and the commands it and railway.toml name are run here the way the
container would run them.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement

from realtime_bridge.migrate import default_migrations_dir, discover
from realtime_bridge.settings import Settings
from tests.conftest import ROOT
from tests.test_cli import clean_env, free_port, serving

SERVE = "exec realtime-bridge serve --host 0.0.0.0 --port $PORT"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of the arguments, or None for the shell form."""
        if not self.arguments.startswith("["):
            return None
        parsed = json.loads(self.arguments)
        assert isinstance(parsed, list)
        assert all(isinstance(part, str) for part in parsed)
        return parsed


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, `\\` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        assert keyword.isalpha(), f"not an instruction: {logical!r}"
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def healthcheck_command(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK [--option=value ...] CMD <command>: the options and the command."""
    options: dict[str, str] = {}
    rest = instruction.arguments
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD", f"HEALTHCHECK without CMD: {instruction.arguments!r}"
    parsed = Instruction("CMD", command.strip()).exec_form()
    assert parsed is not None, "HEALTHCHECK CMD should use the exec form"
    return options, parsed


def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {pair!r}: use the NAME=value form"
                env[name] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], PurePosixPath]]:
    """(sources, absolute destination) of every COPY, resolving WORKDIR."""
    workdir = PurePosixPath("/")
    found = []
    for instruction in instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.arguments
        elif instruction.keyword == "COPY":
            parts = [p for p in shlex.split(instruction.arguments) if not p.startswith("--")]
            *sources, destination = parts
            found.append((sources, workdir / destination))
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    ignored = False
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negate
    return ignored


def expand(command: str, env: dict[str, str]) -> str:
    """$NAME and ${NAME} as /bin/sh expands them (unset → empty)."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), command
    )


def railway() -> dict[str, Any]:
    with (ROOT / "railway.toml").open("rb") as file:
        return tomllib.load(file)


def shell_wrapped(argv: list[str]) -> str:
    """The script of `/bin/sh -c <script>`."""
    assert argv[:2] == ["/bin/sh", "-c"], f"not wrapped in a shell: {argv}"
    assert len(argv) == 3
    return argv[2]


# railway.toml ------------------------------------------------------------


def test_railway_toml_builds_the_dockerfile_and_checks_health() -> None:
    config = railway()
    assert config["build"]["builder"] == "DOCKERFILE"
    assert (ROOT / config["build"]["dockerfilePath"]).is_file()
    deploy = config["deploy"]
    assert deploy["healthcheckPath"] == "/health"
    assert deploy["healthcheckTimeout"] >= 30
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert deploy["restartPolicyMaxRetries"] >= 1


def test_railway_start_command_serves_on_port_through_a_shell() -> None:
    # A Dockerfile deploy runs startCommand in exec form: without the shell
    # "$PORT" would reach argparse literally and the service would crash-loop.
    argv = shlex.split(railway()["deploy"]["startCommand"])
    assert shell_wrapped(argv) == SERVE


# Dockerfile --------------------------------------------------------------


def test_the_dockerfile_parser_joins_continuations_and_reads_both_forms() -> None:
    parsed = parse_dockerfile(
        '# comment\nFROM x\nRUN a \\\n  # inside\n    && b\nCMD ["p", "q"]\nCMD p q\n'
    )
    assert [(i.keyword, i.arguments) for i in parsed] == [
        ("FROM", "x"),
        ("RUN", "a && b"),
        ("CMD", '["p", "q"]'),
        ("CMD", "p q"),
    ]
    assert parsed[2].exec_form() == ["p", "q"]
    assert parsed[3].exec_form() is None


def test_dockerfile_runs_the_same_serve_command_as_railway() -> None:
    instructions = dockerfile()
    assert only(instructions, "FROM").arguments == "python:3.11-slim"
    cmd = only(instructions, "CMD").exec_form()
    assert cmd is not None, "CMD should use the exec form (signals reach the process)"
    assert cmd == shlex.split(railway()["deploy"]["startCommand"])
    assert image_env(instructions)["PORT"] == "8000"  # the default where no host sets PORT


def test_dockerfile_runs_as_a_non_root_user_created_in_the_image() -> None:
    instructions = dockerfile()
    user = only(instructions, "USER").arguments
    assert user not in ("root", "0", "")
    assert any(
        i.keyword == "RUN"
        and any(re.search(rf"useradd\b.*\b{user}$", c.strip()) for c in i.arguments.split("&&"))
        for i in instructions
    ), f"user {user} is never created"
    keywords = [i.keyword for i in instructions]
    # Nothing runs as root after the switch, and the service starts after it.
    assert keywords.index("USER") > max(n for n, k in enumerate(keywords) if k == "RUN")
    assert keywords.index("USER") < keywords.index("CMD")


def test_dockerfile_healthcheck_hits_health_on_port() -> None:
    options, command = healthcheck_command(only(dockerfile(), "HEALTHCHECK"))
    assert command[:2] == ["python", "-c"]
    assert "/health" in command[2]
    assert "PORT" in command[2]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


def test_dockerfile_env_names_real_settings_and_points_at_copied_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instructions = dockerfile()
    env = image_env(instructions)
    setting_names = {name.upper() for name in Settings.model_fields}
    ours = {k for k in env if not k.startswith(("PYTHON", "PIP_"))}
    # Settings ignores unknown variables, so a typo here would pass silently.
    assert ours <= setting_names, ours - setting_names
    for name in ours:
        monkeypatch.setenv(name, env[name])
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    destinations = {str(sources[0]): str(dest) for sources, dest in copies(instructions)}
    assert destinations["supabase/migrations"] == str(settings.migrations_dir)
    assert destinations["plugins"] in [str(p) for p in settings.plugin_paths]


def test_everything_the_dockerfile_copies_exists_and_is_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [s for found, _ in copies(dockerfile()) for s in found]
    assert {*PACKAGE_SOURCES, "realtime_bridge", "plugins"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    # The matcher itself: these must stay out of the build context.
    for unwanted in (".venv/bin/python", ".git/HEAD", "realtime_bridge/__pycache__/x.pyc"):
        assert dockerignored(unwanted, patterns), unwanted
    # And the image finds the same migrations as a source checkout.
    shipped = discover(ROOT / "supabase" / "migrations")
    assert [m.path.name for m in shipped] == [
        m.path.name for m in discover(default_migrations_dir())
    ]


# The files the Dockerfile copies before `pip install .` (the image's build context).
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` builds from what the Dockerfile copies (once per session)."""
    build = tmp_path_factory.mktemp("wheel")
    source = build / "source"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        shutil.copy(ROOT / name, source / name)
    for folder in ("migrations", "demo"):
        shutil.copytree(ROOT / "supabase" / folder, source / "supabase" / folder)
    client = Path("clients", "python", "src")  # the server's wheel carries the client's package
    shutil.copytree(ROOT / client, source / client, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "realtime_bridge",
        source / "realtime_bridge",
        symlinks=True,  # realtime_bridge/migrations is a link, as in the repository
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", "dist"],
        cwd=build,
        check=True,
        timeout=300,
        capture_output=True,
    )
    (found,) = (build / "dist").glob("realtime_bridge-*.whl")
    return found


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel installed WITHOUT extras, as the image has it; its bin/."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return venv / "bin"


def test_the_wheel_carries_the_migrations_and_an_installed_bridge_finds_them(
    wheel: Path, tmp_path: Path
) -> None:
    expected = {p.name: p.read_bytes() for p in (ROOT / "supabase" / "migrations").glob("*.sql")}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            name.rpartition("/")[2]: archive.read(name)
            for name in archive.namelist()
            if name.startswith("realtime_bridge/migrations/")
        }
        archive.extractall(tmp_path / "installed")
    assert shipped == expected
    # Installed (no source tree around it), the package finds its own copy.
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from realtime_bridge.migrate import default_migrations_dir, discover;"
            "d = default_migrations_dir(); print(d); print(len(discover(d)))",
        ],
        cwd=tmp_path,
        env={**clean_env(), "PYTHONPATH": str(tmp_path / "installed")},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert found == [
        str(tmp_path / "installed" / "realtime_bridge" / "migrations"),
        str(len(expected)),
    ]


def test_the_wheel_carries_the_mit_license(wheel: Path) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the realtime-bridge authors" in license_text
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        licenses = [n for n in names if ".dist-info/" in n and n.endswith("LICENSE")]
        assert licenses, names
        assert archive.read(licenses[0]).decode() == license_text
        assert "MIT" in archive.read(metadata).decode()


def top_level_imports(package: Path) -> dict[str, set[str]]:
    """Each absolutely imported top-level module of `package` and the files importing it."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def runtime_requirements() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    return {canonical(Requirement(r).name) for r in project["dependencies"]}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_in_the_package_is_a_runtime_dependency() -> None:
    # Static: `pip install .` (the image) has only [project.dependencies], so a
    # module imported only through a dev extra breaks the container at start.
    declared = runtime_requirements()
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    # The client's package ships inside the server's wheel (clients/python/src).
    shipped = {"realtime_bridge", "realtime_bridge_client"}
    imports = top_level_imports(ROOT / "realtime_bridge")
    for module, files in top_level_imports(ROOT / "clients/python/src").items():
        imports.setdefault(module, set()).update(files)
    for module, files in imports.items():
        if module in sys.stdlib_module_names or module in shipped:
            continue
        owners = {canonical(d) for d in distributions.get(module, [])}
        if not owners & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"


def test_the_installed_wheel_without_extras_runs_help_and_keys(
    installed: Path, tmp_path: Path
) -> None:
    env = clean_env(DATA_DIR=str(tmp_path / "data"))
    env.pop("VIRTUAL_ENV", None)
    helped = subprocess.run(
        [str(installed / "realtime-bridge"), "--help"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    keys = subprocess.run(
        [str(installed / "realtime-bridge"), "keys"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert keys.returncode == 0, keys.stderr
    assert keys.stdout.startswith("SUPABASE_ANON_KEY=")
    assert "SUPABASE_SERVICE_KEY=" in keys.stdout


async def test_the_installed_wheel_without_extras_serves_until_healthy(
    installed: Path, tmp_path: Path, dsn: str
) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    env = clean_env(DATABASE_URL=dsn)
    env.pop("VIRTUAL_ENV", None)
    async with serving(tmp_path, env, program=[str(installed / "realtime-bridge")]) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/health")
        assert response.status_code == 200
        assert response.json()["database"] == "external"


# running the commands ------------------------------------------------------


async def test_the_start_command_honours_port_and_the_healthcheck_passes(
    tmp_path: Path, dsn: str
) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    port = str(free_port())
    env = clean_env(PORT=port, DATABASE_URL=dsn)
    script = shell_wrapped(shlex.split(railway()["deploy"]["startCommand"]))
    argv = shlex.split(expand(script, env))
    assert argv[:3] == ["exec", "realtime-bridge", "serve"]
    # Loopback instead of 0.0.0.0: a test should not listen on every interface.
    args = ["127.0.0.1" if a == "0.0.0.0" else a for a in argv[3:]]
    assert args == ["--host", "127.0.0.1", "--port", port]

    _, check = healthcheck_command(only(dockerfile(), "HEALTHCHECK"))
    check = [sys.executable, *check[1:]]
    async with serving(tmp_path, env, *args) as url:
        assert url == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/health")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        passed = subprocess.run(check, env=env, capture_output=True, text=True, timeout=10)
        assert passed.returncode == 0, passed.stderr
        closed = {**env, "PORT": str(free_port())}
        failed = subprocess.run(check, env=closed, capture_output=True, text=True, timeout=10)
        assert failed.returncode != 0
