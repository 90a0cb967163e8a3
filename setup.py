"""Builds ltt._core, the C attribution core, and probes the features it can use.

Metadata lives in pyproject.toml. Environment variables:

* ``LTT_BLAS``: ``scipy_openblas32`` (default; the OpenBLAS of the scipy-openblas32 wheel,
  prefixed symbols) or ``system`` (an OpenBLAS found with ``pkg-config openblas``).
* ``LTT_NATIVE=1``: add ``-march=native`` (local builds only, never wheels).
* ``LTT_OPENMP=0``: build without OpenMP even when the compiler has it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = [
    "csrc/binding.c",
    "csrc/status.c",
    "csrc/simd.c",
    "csrc/gemm.c",
    "csrc/contrib.c",
    "csrc/attn.c",
    "csrc/ffn.c",
    "csrc/graph.c",
    "csrc/check.c",
]
HEADERS = ["csrc/ltt_core.h", "csrc/ltt_internal.h", "csrc/ltt_blas.h", "csrc/vec.h", "csrc/simd_kernels.h"]


class BuildError(RuntimeError):
    pass


def _blas_scipy() -> dict:
    try:
        import scipy_openblas32 as sob
    except ImportError as exc:
        raise BuildError(
            "ltt needs OpenBLAS. The default build links the scipy-openblas32 wheel: "
            "`pip install scipy-openblas32==0.3.34.481.3` (or build with LTT_BLAS=system "
            "and a system OpenBLAS, e.g. `apt-get install libopenblas-dev pkg-config`)."
        ) from exc
    lib_dir = sob.get_lib_dir()
    # An installed wheel finds the library beside it in site-packages; an editable install
    # (extension in the source tree) has ltt/__init__.py load it from the scipy_openblas32
    # package first. No absolute path of the build machine goes into the extension.
    rpaths = ["$ORIGIN/../scipy_openblas32/lib"]
    return {
        "name": "scipy_openblas32 " + sob.__version__,
        "include_dirs": [sob.get_include_dir()],
        "library_dirs": [lib_dir],
        "libraries": [sob.get_library()],
        "macros": [("LTT_BLAS_SCIPY", "1")],
        "link_args": [f"-Wl,-rpath,{r}" for r in rpaths],
    }


def _pkg_config(*args: str) -> str:
    return subprocess.run(
        ["pkg-config", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _blas_system() -> dict:
    for pkg in ("openblas", "cblas"):
        try:
            version = _pkg_config("--modversion", pkg)
            cflags = shlex.split(_pkg_config("--cflags", pkg))
            libs = shlex.split(_pkg_config("--libs", pkg))
        except (OSError, subprocess.CalledProcessError):
            continue
        libdirs = [a[2:] for a in libs if a.startswith("-L")]
        return {
            "name": f"system {pkg} {version}",
            "include_dirs": [a[2:] for a in cflags if a.startswith("-I")],
            "library_dirs": libdirs,
            "libraries": [a[2:] for a in libs if a.startswith("-l")],
            "macros": [("LTT_BLAS_SYSTEM", "1")],
            "link_args": [f"-Wl,-rpath,{d}" for d in libdirs],
        }
    raise BuildError(
        "LTT_BLAS=system but pkg-config finds no OpenBLAS (tried 'openblas', 'cblas'). "
        "Install it (Debian/Ubuntu: `apt-get install libopenblas-dev pkg-config`), or unset "
        "LTT_BLAS to use the scipy-openblas32 wheel."
    )


def _compiles(compiler, flags: list[str], code: str) -> bool:
    """Whether ``code`` compiles and links with ``flags`` (a feature probe)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


class LttBuildExt(build_ext):
    def build_extensions(self):
        ext = self.extensions[0]
        choice = os.environ.get("LTT_BLAS", "scipy_openblas32").strip().lower()
        if choice in ("", "scipy_openblas32", "scipy-openblas32", "default"):
            blas = _blas_scipy()
        elif choice == "system":
            blas = _blas_system()
        else:
            raise BuildError(f"LTT_BLAS={choice!r}: expected 'scipy_openblas32' or 'system'")

        cflags = ["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra",
                  "-Wno-unused-parameter", "-Wno-unknown-pragmas"]
        if os.environ.get("LTT_NATIVE") == "1":
            cflags.append("-march=native")
        openmp = False
        if os.environ.get("LTT_OPENMP", "1") != "0":
            openmp = _compiles(self.compiler, ["-fopenmp"], OPENMP_PROBE)
        if openmp:
            cflags.append("-fopenmp")
        print(f"ltt: BLAS = {blas['name']}; OpenMP = {openmp}; flags = {' '.join(cflags)}")

        ext.include_dirs += blas["include_dirs"]
        ext.library_dirs += blas["library_dirs"]
        ext.libraries += blas["libraries"]
        ext.extra_compile_args += cflags
        ext.extra_link_args += blas["link_args"] + (["-fopenmp"] if openmp else [])
        ext.define_macros += blas["macros"] + [
            ("LTT_BLAS_NAME", '"' + blas["name"] + '"'),
            ("LTT_CFLAGS", '"' + " ".join(cflags) + '"'),
            ("NPY_NO_DEPRECATED_API", "NPY_1_23_API_VERSION"),
        ]
        super().build_extensions()


try:
    setup(
        ext_modules=[
            Extension(
                "ltt._core",
                sources=SOURCES,
                depends=HEADERS,
                include_dirs=["csrc", np.get_include()],
            )
        ],
        cmdclass={"build_ext": LttBuildExt},
    )
except BuildError as exc:
    sys.exit(f"error: {exc}")
