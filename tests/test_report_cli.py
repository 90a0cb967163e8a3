"""The command line's report and version: ``ltt --version``; ``ltt trace ... --out`` writes the
all-target report, ``--max-targets`` limits it."""

from __future__ import annotations

import os
import subprocess
import sys

import ltt


def test_version():
    proc = subprocess.run([sys.executable, "-m", "ltt.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ltt {ltt.__version__}"


def _report_store(path):
    """The data of a written report, unpacked the way the page's loadStore does."""
    import base64
    import json
    import re
    import zlib

    text = open(path, encoding="utf-8").read()
    data = re.search(r'<script type="application/octet-stream" id="ltt-data"[^>]*>([^<]*)</script>', text).group(1)
    return json.loads(zlib.decompress(base64.b64decode(data)))


def test_trace_out_writes_the_all_target_report_and_report_targets_limits_it(tiny_dir, tmp_path):
    env = dict(os.environ, LTT_QUIET="1", HF_HUB_OFFLINE="1")
    prompt = "When Mary and John went to the store, John gave a drink to"
    runs = {}
    for name, extra in (("all", []), ("few", ["--report-targets", "2"])):
        out = tmp_path / f"{name}.html"
        proc = subprocess.run([sys.executable, "-m", "ltt.cli", "trace", "--model", tiny_dir("llama"),
                               "--prompt", prompt, "--out", str(out), *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[name] = _report_store(out)
    T = runs["all"]["n_tokens"]
    assert runs["all"]["exported"]["carried"] == list(range(T))
    assert runs["few"]["exported"]["carried"] == [T - 2, T - 1]
    assert runs["all"]["exported"]["targets"] == [T - 1]
    bad = subprocess.run([sys.executable, "-m", "ltt.cli", "trace", "--model", tiny_dir("llama"), "--prompt", prompt,
                          "--report-targets", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "--report-targets must be a positive integer, got 0" in bad.stderr


def test_trace_out_carries_the_printed_faithfulness_without_a_second_rerun(tiny_dir, tmp_path, capsys, monkeypatch):
    from ltt import cli
    from ltt import faithfulness as F

    monkeypatch.setenv("LTT_QUIET", "1")
    calls = []
    real = F.faithfulness
    monkeypatch.setattr(F, "faithfulness", lambda *a, **k: calls.append(k.get("baselines")) or real(*a, **k))
    out = tmp_path / "r.html"
    assert cli.main(["trace", "--model", tiny_dir("llama"), "--prompt", "When Mary and John went to the store, "
                     "John gave a drink to", "--baselines", "4", "--out", str(out)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("faithfulness: ")]
    assert calls == [4] and len(printed) == 1  # one rerun, the one the CLI printed
    state = _report_store(out)["state"]
    assert state["faithfulness"] == f"at threshold 0.04: {printed[0][len('faithfulness: '):]}"
