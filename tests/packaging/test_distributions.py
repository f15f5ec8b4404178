"""The built sdist and wheel: contents, metadata, and every imported third-party module declared.

The distributions are built once per session with ``uv build`` (or ``python -m build``), or taken
from ``$STABLECOG_DIST_DIR`` when CI has built them already (``.ci/matrix`` does).
"""

from __future__ import annotations

import ast
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_provider_stablecog"
DIST_NAME = "airflow-provider-stablecog"

# modules whose third-party imports may come from an extra, by path prefix (else: core dependencies)
EXTRA_MODULES = {
    f"{PACKAGE}/emulator/": ("emulator",),  # the emulator's server side
    f"{PACKAGE}/testing/": ("emulator", "test"),  # harnesses for the tests and the demo
}
# modules imported only where their user already has them: the pytest plugin runs under pytest
PROVIDED_BY_CALLER = {f"{PACKAGE}/emulator/pytest_plugin.py": {"pytest", "_pytest"}}
# imports that Airflow itself provides (apache-airflow pulls in core and the task SDK)
AIRFLOW_DISTS = {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"}
# what the sdist must carry for its own tests: the folders the tests read, and the legal files
SDIST_REQUIRED_FOLDERS = ("airflow_provider_stablecog", "tests", "example_dags", "benchmarks")
SDIST_REQUIRED_FILES = ("pyproject.toml", "README.md", "SECURITY.md", "LICENSE")


pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree (pyproject.toml)"
)


def _build(out: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv:
        command = [uv, "build", "--quiet", "--out-dir", str(out), str(ROOT)]
    else:  # pragma: no cover - ./dev installs uv into the venv
        command = [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    given = os.environ.get("STABLECOG_DIST_DIR")
    folder = Path(given) if given else tmp_path_factory.mktemp("dist")
    if not given:
        _build(folder)
    wheels = sorted(folder.glob("airflow_provider_stablecog-*.whl"))
    sdists = sorted(folder.glob("airflow_provider_stablecog-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {folder}"
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="session")
def wheel_names(dists: dict[str, Path]) -> list[str]:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        return whl.namelist()


@pytest.fixture(scope="session")
def metadata(dists: dict[str, Path], wheel_names: list[str]) -> email.message.Message:
    name = next(n for n in wheel_names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(dists["wheel"]) as whl:
        return email.message_from_bytes(whl.read(name))


@pytest.fixture(scope="session")
def sdist_names(dists: dict[str, Path]) -> list[str]:
    with tarfile.open(dists["sdist"]) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    return [n[len(top) + 1 :] for n in names if n.startswith(top + "/")]


def _source_files(folder: str) -> list[str]:
    """Files of ``folder`` as git tracks them (else as on disk, caches left out)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", folder], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if not out:
        out = [
            str(p.relative_to(ROOT))
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
        ]
    return sorted(f for f in out if (ROOT / f).is_file())


# -- wheel -----------------------------------------------------------------------------------------


def test_wheel_has_every_module_and_data_file(wheel_names: list[str]) -> None:
    missing = [f for f in _source_files(PACKAGE) if f not in wheel_names]
    assert not missing, f"in the source tree but not in the wheel: {missing}"
    assert f"{PACKAGE}/py.typed" in wheel_names
    assert f"{PACKAGE}/compat.py" in wheel_names


def test_wheel_has_no_tests_or_dev_files(wheel_names: list[str]) -> None:
    stray = [
        n
        for n in wheel_names
        if n.split("/")[0] in {"tests", "example_dags", "benchmarks", ".ci", "build", "dist"}
        or "__pycache__" in n
        or n.endswith(".pyc")
    ]
    assert not stray, stray


def test_wheel_ships_the_license(wheel_names: list[str], dists: dict[str, Path]) -> None:
    licenses = [n for n in wheel_names if re.search(r"\.dist-info/licenses/LICENSE$", n)]
    assert licenses, "LICENSE is not in the wheel's .dist-info/licenses/"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        text = whl.read(licenses[0]).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_wheel_entry_points(dists: dict[str, Path], wheel_names: list[str]) -> None:
    name = next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(dists["wheel"]) as whl:
        text = whl.read(name).decode()
    assert "[apache_airflow_provider]" in text
    assert f"provider_info = {PACKAGE}.get_provider_info:get_provider_info" in text
    assert f"stablecog-emulator = {PACKAGE}.emulator.cli:main" in text


# -- metadata --------------------------------------------------------------------------------------


def _requirements(metadata: email.message.Message) -> list[Requirement]:
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def _core_requirements(metadata: email.message.Message) -> dict[str, Requirement]:
    return {_norm(r.name): r for r in _requirements(metadata) if r.marker is None}


def _extra_requirements(metadata: email.message.Message, extra: str) -> dict[str, Requirement]:
    return {
        _norm(r.name): r
        for r in _requirements(metadata)
        if r.marker is not None and r.marker.evaluate({"extra": extra})
    }


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_metadata_license_python_and_urls(metadata: email.message.Message) -> None:
    assert metadata["Name"] == DIST_NAME
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    # the emulator uses asyncio.timeout (3.11); nothing older is tested
    assert metadata["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    # Airflow 3.3's providers page links the package name to the "Documentation" URL
    assert urls.get("Documentation", "").startswith("https://")
    classifiers = metadata.get_all("Classifier") or []
    assert "Framework :: Apache Airflow :: Provider" in classifiers
    # PEP 639: the license is License-Expression; license classifiers are deprecated (uv warns)
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_supports_airflow_3_1_to_3_3(metadata: email.message.Message) -> None:
    airflow = _core_requirements(metadata)["apache-airflow"]
    for version in ("3.1.0", "3.1.8", "3.2.2", "3.3.2"):
        assert airflow.specifier.contains(version), f"apache-airflow{airflow.specifier} excludes {version}"
    assert not airflow.specifier.contains("3.0.6")


def test_emulator_dependencies_are_an_extra(metadata: email.message.Message) -> None:
    core = _core_requirements(metadata)
    emulator = _extra_requirements(metadata, "emulator")
    for name in ("fastapi", "uvicorn", "python-multipart"):
        assert name in emulator, f"{name} missing from the emulator extra"
        assert name not in core, f"{name} is only for the emulator: not a hard dependency"
    test = _extra_requirements(metadata, "test")
    assert any(r.name == DIST_NAME and "emulator" in r.extras for r in test.values()) or set(emulator) <= set(
        test
    ), "the test extra must bring the emulator extra"


def _third_party_imports(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {PACKAGE, "__future__"}}


def test_every_imported_distribution_is_declared(metadata: email.message.Message) -> None:
    """Each third-party module imported anywhere in the package comes from a declared dependency."""
    dists_of = importlib.metadata.packages_distributions()
    core = set(_core_requirements(metadata))
    undeclared = []
    for file in _source_files(PACKAGE):
        if not file.endswith(".py"):
            continue
        declared = set(core)
        for prefix, extras in EXTRA_MODULES.items():
            if file.startswith(prefix):
                for extra in extras:
                    declared |= set(_extra_requirements(metadata, extra))
        for module in sorted(_third_party_imports(ROOT / file) - PROVIDED_BY_CALLER.get(file, set())):
            owners = {_norm(d) for d in dists_of.get(module, [])}
            if not owners:
                undeclared.append(f"{file}: {module} (not installed: which distribution?)")
            elif module == "airflow":
                if not owners & AIRFLOW_DISTS or "apache-airflow" not in core:
                    undeclared.append(f"{file}: airflow")
            elif not owners & declared:
                undeclared.append(f"{file}: {module} (from {', '.join(sorted(owners))})")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)


# -- sdist -----------------------------------------------------------------------------------------


def test_sdist_has_what_its_tests_need(sdist_names: list[str]) -> None:
    for name in SDIST_REQUIRED_FILES:
        assert name in sdist_names, f"{name} missing from the sdist"
    missing = [f for folder in SDIST_REQUIRED_FOLDERS for f in _source_files(folder) if f not in sdist_names]
    assert not missing, f"tracked files missing from the sdist: {missing}"


def test_sdist_has_no_local_clutter(sdist_names: list[str]) -> None:
    clutter = [
        n
        for n in sdist_names
        if n.split("/")[0] in {".venv", "build", "dist", "demo-output", ".demo", ".git"}
        or "/.work/" in f"/{n}"
        or "__pycache__" in n
        or n.endswith(".pyc")
    ]
    assert not clutter, clutter
