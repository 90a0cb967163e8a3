"""How ltt._core was built: build_info() is complete and the SIMD variant is one that runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ltt
from ltt import _core
from ltt import _reference
from ltt.kernels import build_info


def test_build_info_fields():
    info = build_info()
    print("ltt build_info:", info)
    assert set(info) >= {"blas", "openmp", "numpy", "cflags", "simd"}
    assert info["blas"]["name"]
    assert isinstance(info["openmp"]["enabled"], bool)
    assert info["openmp"]["max_threads"] >= 1
    assert info["numpy"] == np.__version__
    assert "-O3" in info["cflags"]
    assert "-ffast-math" not in info["cflags"]
    if os.environ.get("LTT_NATIVE") != "1":
        assert "-march=native" not in info["cflags"]
    assert info["simd"] in ("avx512", "avx2", "scalar")


def test_simd_variant_matches_cpu():
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    want = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags and " fma" in flags else "scalar"
    if os.environ.get("LTT_SIMD") in ("scalar", "avx2"):
        want = min(want, os.environ["LTT_SIMD"], key=["scalar", "avx2", "avx512"].index)
    assert build_info()["simd"] == want


@pytest.mark.parametrize("variant", ["scalar", "avx2"])
def test_simd_override_lowers_variant(variant):
    code = "import ltt._core as c; print(c.build_info()['simd'])"
    env = dict(os.environ, LTT_SIMD=variant)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in (variant, "scalar")


def test_package_exports():
    assert ltt.contributions([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]).tolist() == [0.5, 0.5]
    for name in (*_reference.KERNELS, "build_info", "set_num_threads", "get_num_threads"):
        assert callable(getattr(_core, name))
