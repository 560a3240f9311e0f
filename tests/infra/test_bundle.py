"""The functions' source bundle: its contents, and that it imports in a fresh virtualenv holding
only its requirements.txt, as the Cloud Functions Python runtime builds it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from pitstop.package import (DEV_ONLY_REQUIREMENTS, EXCLUDED, PACKAGE_DATA, build_bundle, requirement_name,
                             runtime_requirements)

ROOT = Path(__file__).resolve().parents[2]
_install_seconds: list[float] = []  # reported by the cold-start test, for humans


_DECORATORS = {"functions_framework.cloud_event": "cloudevent", "functions_framework.http": "http"}


def _entry_points(main_py: Path) -> dict[str, str]:
    """Each function main.py deploys, and its signature type (cloudevent or http)."""
    tree = ast.parse(main_py.read_text())
    return {n.name: _DECORATORS[ast.unparse(d)] for n in tree.body if isinstance(n, ast.FunctionDef)
            for d in n.decorator_list if ast.unparse(d) in _DECORATORS}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "functions"
    # Through the module's command line, as `python -m pitstop.package OUT_DIR` is documented.
    subprocess.run([sys.executable, "-m", "pitstop.package", str(out)], check=True, cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def fresh_python(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv (no system site-packages) with only the bundle's requirements installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    started = time.perf_counter()
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # --no-compile: what is imported compiles as it is imported; compiling every installed module up front
    # (the Google clients' generated code) tripled the install's time and tests nothing.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                    "-r", str(bundle / "requirements.txt")], check=True)
    _install_seconds.append(time.perf_counter() - started)
    return python


def test_bundle_layout(bundle: Path) -> None:
    assert (bundle / "main.py").read_text() == (ROOT / "functions" / "main.py").read_text()
    assert (bundle / "pitstop" / "__init__.py").is_file()
    assert not list(bundle.rglob("__pycache__"))
    assert not list(bundle.rglob("*.pyc"))
    assert "surfaces/openapi.json" in PACKAGE_DATA
    for data in PACKAGE_DATA:  # read at run time: the API serves its OpenAPI document
        assert (bundle / "pitstop" / data).read_bytes() == (ROOT / "shared" / "pitstop" / data).read_bytes(), data
    # Exactly the excluded paths are missing: every other file of the package is shipped.
    source = ROOT / "shared" / "pitstop"

    def excluded(relative: Path) -> bool:
        return any(relative.as_posix() == e or relative.as_posix().startswith(e + "/") for e in EXCLUDED)

    files = {p.relative_to(source) for p in source.rglob("*") if p.is_file()
             and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    for path in EXCLUDED:
        assert not (bundle / "pitstop" / path).exists(), path
    shipped = {p.relative_to(bundle / "pitstop") for p in (bundle / "pitstop").rglob("*") if p.is_file()}
    assert shipped == {p for p in files if not excluded(p)}
    assert {"surfaces/api.py", "surfaces/rows.py", "surfaces/audit.py"} <= {p.as_posix() for p in shipped}


def test_requirements_are_the_runtime_dependencies(bundle: Path) -> None:
    lines = [line for line in (bundle / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    names = {requirement_name(line) for line in lines}
    assert names.isdisjoint(requirement_name(r) for r in DEV_ONLY_REQUIREMENTS)
    assert {"functions-framework", "google-cloud-firestore", "pydantic"} <= names
    assert lines == runtime_requirements(ROOT / "pyproject.toml")


def test_rebuild_replaces_an_old_bundle_but_never_a_foreign_directory(tmp_path: Path) -> None:
    out = build_bundle(tmp_path / "b")
    (out / "pitstop" / "stale.py").write_text("")
    build_bundle(out)
    assert not (out / "pitstop" / "stale.py").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="does not look like a pitstop bundle"):
        build_bundle(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def _imports(path: Path) -> set[str]:
    """Absolute modules a file imports, late imports included, `if TYPE_CHECKING:` blocks excluded."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                found.add(node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found - {"__future__"}


def test_every_import_in_the_bundle_resolves_in_a_fresh_venv(bundle: Path, fresh_python: Path) -> None:
    # Module-level imports are exercised below; this also covers imports inside functions,
    # which only run on the first event in production.
    modules = sorted(set().union(*(_imports(p) for p in bundle.rglob("*.py"))))
    script = ("import importlib.util, json, sys\n"
              f"missing = [m for m in {modules!r} if importlib.util.find_spec(m) is None]\n"
              "print(json.dumps(missing))")
    result = subprocess.run([str(fresh_python), "-c", script], cwd=bundle, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# Dev-only modules: the CLI's distributions, the laptop stack, and the CLI's own modules the bundle leaves out.
_FORBIDDEN = tuple(sorted({requirement_name(r) for r in DEV_ONLY_REQUIREMENTS}))
_FORBIDDEN_PITSTOP = tuple(sorted("pitstop." + e.removesuffix(".py").replace("/", ".") for e in EXCLUDED))

_COLD_START = f"""
import json, sys, time
started = time.perf_counter()
from functions_framework import create_app
app = create_app(target=sys.argv[1], source="main.py", signature_type=sys.argv[2])
loaded = time.perf_counter() - started
first = None
if sys.argv[1] == "api":
    # main.api imports the API on its first request: serve one that needs no token, nor Google, to load it all.
    started = time.perf_counter()
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.get_json()["openapi"], response.get_data(as_text=True)[:2000]
    assert "pitstop.surfaces.api" in sys.modules
    first = time.perf_counter() - started
print(json.dumps({{
    "seconds": loaded, "first_request": first,
    "forbidden": sorted(m for m in sys.modules if m.split(".")[0] in {_FORBIDDEN!r}
                        or any(m == p or m.startswith(p + ".") for p in {_FORBIDDEN_PITSTOP!r})),
}}))
"""


def test_each_entry_point_loads_without_dev_modules(bundle: Path, fresh_python: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    entry_points = _entry_points(bundle / "main.py")
    assert entry_points, "main.py has no functions_framework entry point"
    assert entry_points.get("api") == "http" and "cloudevent" in entry_points.values(), entry_points
    timings = {}
    for target, signature in entry_points.items():
        # One process per entry point: each deployed function starts cold with only its target.
        result = subprocess.run([str(fresh_python), "-c", _COLD_START, target, signature],
                                cwd=bundle, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{target} failed to load:\n{result.stderr[-3000:]}"
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["forbidden"] == [], f"{target} imports dev-only modules {report['forbidden']}"
        timings[target] = (report["seconds"], report["first_request"])
    with capsys.disabled():
        print(f"\n[bundle] fresh venv + pip install -r requirements.txt: {_install_seconds[0]:.1f} s")
        print("[bundle] cold start (import main.py + functions-framework app), seconds:")
        for target, (seconds, first) in timings.items():
            extra = f"   + first request (imports the API) {first:.2f}" if first is not None else ""
            print(f"  {target:<12} {seconds:.2f}{extra}")
