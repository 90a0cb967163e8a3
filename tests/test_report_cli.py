"""The command line's report and version: ``ltt --version``; ``ltt trace ... --out`` writes the
all-target report, ``--max-targets`` limits it."""

from __future__ import annotations

import subprocess
import sys

import ltt


def test_version():
    proc = subprocess.run([sys.executable, "-m", "ltt.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ltt {ltt.__version__}"
