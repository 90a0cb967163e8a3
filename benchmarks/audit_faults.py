"""Audit: other-thread forwards during traces and interrupts at random moments of a trace's
clean-up (issue 24). Bounded; prints a table of cases tried / failing.

    .venv/bin/python benchmarks/audit_faults.py [--forwards 120] [--interrupts 300] [--seed 0]

Runs on a tiny randomly initialised Llama (tests/conftest.py). Works against any checkout of
ltt (``PYTHONPATH=<checkout>``): it only uses ``ltt.load``, ``trace`` / ``faithfulness`` and the
fault hook ``ltt.models.record.FAULT``.

* **forwards**: a thread traces (or runs ``faithfulness``) in a loop while the main thread runs
  plain ``hf_model(ids)`` forwards of prompts of the trace's length and of other lengths; a case
  fails when the user's logits are not ``torch.equal`` to the untraced model's, the user's
  forward raises, or a trace (faithfulness result) differs from the single-thread one.
* **interrupts**: at the trace's ``forward-done`` point a timer thread is armed that calls
  ``_thread.interrupt_main()`` after a random delay (0 to 1 ms: mostly inside the clean-up); a case
  fails when the model is not as found afterwards (hooks, every config's attention
  implementation, modes, owner entry) or the next trace is not exact.
"""

from __future__ import annotations

import _thread
import argparse
import os
import random
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import ltt  # noqa: E402
from ltt.models import record  # noqa: E402
from conftest import PROMPT, build_tiny  # noqa: E402

PROMPTS = [PROMPT, "Hello there, a different", "One two", "A much longer prompt than the trace's own, "
           "with many more tokens in it than before"]


def _state(hf):
    hooks = sum(len(getattr(m, n)) for m in hf.modules() for n in (
        "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"))
    configs = {id(hf.config): hf.config}
    for m in hf.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation_internal"):
            configs.setdefault(id(c), c)
    impls = [c.__dict__.get("_attn_implementation_internal") for c in configs.values()]
    return hooks, impls, [m.training for m in hf.modules()]


def _owners():
    try:
        from ltt.models import instrument
        return dict(instrument._OWNERS)
    except ImportError:  # main before the instrument: two owners maps
        from ltt import interventions
        return {**record._owners, **interventions._OWNERS}


def _edges(trace):
    return [(e.source, e.target, e.weight) for e in trace.graph().edges]


def audit_forwards(model, n, rng, faith=False):
    hf = model.hf_model
    ids = {p: [int(i) for i in model.tokenizer(p)["input_ids"]] for p in PROMPTS}
    with torch.no_grad():
        want = {p: hf(input_ids=torch.tensor([ids[p]])).logits for p in PROMPTS}
    ref = model.trace(PROMPT)
    g = ref.graph(threshold=0.05)
    ref_out = ref.faithfulness(g, baselines=1).to_dict() if faith else _edges(ref)
    stop, bad_runs, runs = threading.Event(), [], [0]

    def loop():
        while not stop.is_set():
            try:
                got = ref.faithfulness(g, baselines=1).to_dict() if faith else _edges(model.trace(PROMPT))
                if got != ref_out:
                    bad_runs.append("mixed result")
            except Exception as exc:  # noqa: BLE001 - counted
                bad_runs.append(f"{type(exc).__name__}: {exc}"[:120])
            runs[0] += 1

    t = threading.Thread(target=loop)
    t.start()
    failing, messages = 0, {}
    for _ in range(n):
        p = rng.choice(PROMPTS)
        try:
            with torch.no_grad():
                out = hf(input_ids=torch.tensor([ids[p]])).logits
            ok = torch.equal(out, want[p])
            msg = None if ok else "logits differ"
        except Exception as exc:  # noqa: BLE001 - counted
            ok, msg = False, f"{type(exc).__name__}: {exc}"[:120]
        if not ok:
            failing += 1
            messages[msg] = messages.get(msg, 0) + 1
        time.sleep(rng.random() * 0.002)
    stop.set()
    t.join()
    for m in bad_runs:
        messages[m] = messages.get(m, 0) + 1
    return n + runs[0], failing + len(bad_runs), messages


def audit_interrupts(model, n, rng):
    hf = model.hf_model
    ref = model.trace(PROMPT)
    before = _state(hf)
    failing, messages = 0, {}

    timers = []

    def arm(name):
        if name == "forward-done":
            timers.append(threading.Timer(rng.random() * 0.001, _thread.interrupt_main))
            timers[-1].start()

    def settle():  # wait for the timer; an interrupt that fires after the trace lands here
        while True:
            try:
                for t in timers:
                    t.join()
                time.sleep(0.02)
                return
            except KeyboardInterrupt:
                pass

    for _ in range(n):
        record.FAULT = arm
        try:
            model.trace(PROMPT)
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - counted
            messages[type(exc).__name__] = messages.get(type(exc).__name__, 0) + 1
        finally:
            record.FAULT = None
        settle()
        timers.clear()
        problems = []
        if _state(hf) != before:
            problems.append("model changed")
        if _owners():
            problems.append("owner entry left")
        if not problems:
            try:
                tr = model.trace(PROMPT)
                if not np.array_equal(tr.logits, ref.logits) or _edges(tr) != _edges(ref):
                    problems.append("next trace differs")
            except Exception as exc:  # noqa: BLE001 - counted
                problems.append(f"next trace raised {type(exc).__name__}: {exc}"[:120])
        if problems:
            failing += 1
            for p in problems:
                messages[p] = messages.get(p, 0) + 1
            hf.eval()  # repair for the next case, as far as a user could
    return n, failing, messages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--forwards", type=int, default=120)
    ap.add_argument("--interrupts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    hf, tok = build_tiny("llama")
    model = ltt.load(hf, tokenizer=tok)
    rows = [("other-thread forwards during traces", *audit_forwards(model, a.forwards, rng)),
            ("other-thread forwards during faithfulness", *audit_forwards(model, a.forwards, rng, faith=True))]
    hf2, tok2 = build_tiny("llama")
    rows.append(("interrupts inside a trace's clean-up", *audit_interrupts(ltt.load(hf2, tokenizer=tok2), a.interrupts, rng)))
    print(f"ltt at {os.path.dirname(ltt.__file__)}")
    print(f"| case | tried | failing | what failed |\n|---|---|---|---|")
    for name, tried, failing, msgs in rows:
        what = "; ".join(f"{k} x{v}" for k, v in sorted(msgs.items(), key=lambda kv: -kv[1])[:3]) or "-"
        print(f"| {name} | {tried} | {failing} | {what} |")


if __name__ == "__main__":
    main()
