"""The wheel a user would install: built from a copy of the sources, checked for what it holds,
installed into a bare folder and imported from outside the source tree.

Where the running interpreter can build it without isolation (setuptools >= 70.1 or the
``wheel`` package, numpy and scipy-openblas32 installed) it does: no network, a few seconds of
compiling. Otherwise (e.g. the setuptools 65 of a fresh Python 3.11 venv, as ``make test``
makes) it builds in an isolated environment from the package index, which also checks that
``[build-system] requires`` is complete. ``LTT_TEST_WHEEL_ISOLATED=1`` forces the isolated
build, ``=0`` the build in place.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ISOLATED = os.environ.get("LTT_TEST_WHEEL_ISOLATED")  # "1", "0" or unset (choose)


def _copy_sources(dest: Path) -> None:
    """What the build needs, without build outputs: no compiled extension, no build/ folder."""
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("*.so", "*.o", "*.pyd", "__pycache__", "*.egg-info",
                                    "test_core", "test_core_vg")
    shutil.copytree(ROOT / "csrc", dest / "csrc", ignore=ignore)
    shutil.copytree(ROOT / "ltt", dest / "ltt", ignore=ignore)


def _can_build_in_place() -> str | None:
    """Why a build without isolation cannot work here, or None."""
    for module in ("setuptools", "numpy", "scipy_openblas32"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the 'wheel' package to build wheels"
    return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _build_command(src: Path, dist: Path, isolated: bool) -> list[str]:
    use_build = _has_module("build.__main__")  # the build package, not a stray build/ folder
    if isolated:
        if use_build:
            return [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)]
        return [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)]
    if use_build:
        # -x: the build requirements are checked above ("wheel" is only needed by old setuptools)
        return [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-x", "--outdir", str(dist), str(src)]
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    reason = _can_build_in_place()
    if ISOLATED == "0" and reason:
        pytest.skip(f"cannot build the wheel without isolation: {reason}")
    isolated = ISOLATED == "1" or (ISOLATED != "0" and reason is not None)
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    _copy_sources(src)
    start = time.perf_counter()
    env = dict(os.environ, LTT_NATIVE="0")  # a wheel is never -march=native
    proc = subprocess.run(_build_command(src, dist, isolated), capture_output=True, text=True, cwd=tmp,
                          env=env, timeout=600)
    print(f"wheel built in {time.perf_counter() - start:.1f} s ({'isolated' if isolated else 'in place'})")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(dist.glob("ltt-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    return wheels[0]


def test_wheel_contents(wheel):
    assert wheel.name.startswith("ltt-0.1.0-cp3"), wheel.name  # a platform wheel: it holds C code
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"ltt", "ltt-0.1.0.dist-info"}, top  # no tests/, csrc/, benchmarks/, notebooks/
    core = [n for n in names if n.startswith("ltt/_core.") and n.endswith((".so", ".pyd"))]
    assert len(core) == 1, names
    static = {n for n in names if n.startswith("ltt/widget/static/")}
    assert any(n.endswith(".js") for n in static) and any(n.endswith(".css") for n in static), static
    source_static = {f"ltt/widget/static/{p.name}" for p in (ROOT / "ltt" / "widget" / "static").iterdir()
                     if p.is_file()}
    assert source_static <= static, source_static - static
    page = {f"ltt/widget/static/page/{p.name}" for p in (ROOT / "ltt" / "widget" / "static" / "page").glob("*.js")}
    assert page and page <= static, page - static  # the page's modules, which bundle.script() joins
    for module in ("__init__", "cli", "trace", "buffers", "scores", "graph", "nodes", "checks", "interpret/__init__",
                   "kernels", "_reference/__init__", "routes/__init__", "models/model", "models/unembedding",
                   "report", "models/__init__", "models/families", "models/embedded", "widget/__init__"):
        assert f"ltt/{module}.py" in names, module
    unwanted = [n for n in names if n.endswith((".o", ".c", ".h", ".pyc")) or "/tests/" in n
                or n.startswith("tests/") or "__pycache__" in n]
    assert not unwanted, unwanted
    meta = zipfile.ZipFile(wheel).read("ltt-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: numpy" in meta and "Requires-Dist: scipy-openblas32" in meta
    entry = zipfile.ZipFile(wheel).read("ltt-0.1.0.dist-info/entry_points.txt").decode()
    assert "ltt = ltt.cli:main" in entry


def test_extension_finds_openblas_next_to_it(wheel, tmp_path):
    """The extension's run path points at the scipy-openblas32 wheel in the same site-packages,
    the layout pip gives a user (it must not depend on this build machine's folders alone)."""
    if shutil.which("readelf") is None or not sys.platform.startswith("linux"):
        pytest.skip("needs readelf on Linux")
    zipfile.ZipFile(wheel).extractall(tmp_path)
    so = next((tmp_path / "ltt").glob("_core.*.so"))
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    assert "$ORIGIN/../scipy_openblas32/lib" in dyn, dyn


IMPORT_CHECK = r"""
import os, sys
import numpy as np
import ltt
from ltt import _core

site = os.path.realpath(sys.argv[1])
for mod in (ltt, _core):
    assert os.path.realpath(mod.__file__).startswith(site + os.sep), (mod.__name__, mod.__file__)
parts = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]], dtype=np.float32)
c = ltt.contributions(parts, parts.sum(axis=0))
assert c.shape == (3,) and abs(float(c.sum()) - 1.0) < 1e-6, c
from ltt import _reference
assert np.allclose(c, _reference.contributions(parts, parts.sum(axis=0)), atol=1e-6)
from importlib import resources
assert resources.files("ltt.widget").joinpath("static").is_dir()
from ltt.widget import bundle
assert os.path.realpath(bundle.PAGE).startswith(site + os.sep), bundle.PAGE
assert "export function render(" in bundle.script()  # the page joined from the wheel's own modules
print("build_info:", _core.build_info())
print("contributions:", c.tolist())
print("ltt from:", ltt.__file__)
"""


def test_installed_wheel_imports_outside_the_tree(wheel, tmp_path):
    """``pip install --no-deps --target`` into an empty folder, then ``import ltt`` with that folder
    first on the path and the working directory outside the source tree: the contributions
    primitive and the build report come from the wheel's own extension."""
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (site / "ltt" / "widget" / "static").is_dir()
    assert not (site / "tests").exists()
    # scipy-openblas32 beside ltt, as pip lays out a real install (here: a link to ours)
    import scipy_openblas32

    (site / "scipy_openblas32").symlink_to(Path(scipy_openblas32.__file__).parent, target_is_directory=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    script = work / "check.py"
    script.write_text(IMPORT_CHECK)
    proc = subprocess.run([sys.executable, str(script), str(site)], capture_output=True, text=True,
                          cwd=work, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    assert "build_info:" in proc.stdout and str(site) in proc.stdout
