"""Time every click answer of the explorer on the embedded model at T=256 tokens.

Each answer (edge -> heads, FFN node -> top neurons, node -> top tokens, head -> maps, promoted
tokens of a head or a neuron) should come back within 100 ms once the trace is attributed. The
one-off costs (trace, attribution of every layer) are printed separately.

    python benchmarks/bench_interpret.py [--tokens 256] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

TARGET_MS = 100.0
TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. The store was on the "
    "corner of a busy street in the old part of the city, next to a bakery and a small "
    "bookshop that sold maps, postcards and second-hand novels. "
)


def prompt_of(model, n_tokens: int) -> str:
    """A prompt that the model's tokenizer turns into exactly ``n_tokens`` tokens."""
    tok = model.tokenizer
    text = TEXT
    while len(tok(text)["input_ids"]) < n_tokens + 8:
        text += TEXT
    ids = tok(text)["input_ids"]
    for cut in range(n_tokens, n_tokens - 16, -1):
        candidate = tok.decode(ids[:cut], skip_special_tokens=True)
        if len(tok(candidate)["input_ids"]) == n_tokens:
            return candidate
    words = text.split(" ")
    while len(tok(" ".join(words))["input_ids"]) > n_tokens:
        words.pop()
    return " ".join(words)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm: first-call caches (decoded strings, frozen norm) are not what a click costs
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    import ltt
    from ltt import interpret
    from ltt.scores import attribute

    t0 = time.perf_counter()
    model = ltt.load(args.model)
    load_s = time.perf_counter() - t0
    prompt = prompt_of(model, args.tokens)
    t0 = time.perf_counter()
    trace = model.trace(prompt)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribute(trace)
    attr_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    interpret.output_head(trace)
    head_s = time.perf_counter() - t0

    T, L = trace.n_tokens, trace.n_layers
    F = trace.layers[0].act.shape[1]
    l, t, s, h = L // 2, T - 1, T // 3, 2
    i = int(np.argmax(np.abs(trace.layers[l].act[t])))
    print(f"model {model!r}")
    print(f"T={T} tokens; one-off: load {load_s:.2f} s, trace {trace_s:.2f} s, attribute "
          f"{attr_s:.2f} s, output head {head_s * 1e3:.0f} ms")
    info = ltt._core.build_info()
    print(f"core: simd {info.get('simd')}, blas {info.get('blas', {}).get('name')}, "
          f"openmp {info.get('openmp')}")

    answers = [
        ("edge -> heads (edge_heads)", lambda: interpret.edge_heads(trace, l, t, s)),
        ("edge -> head shares [H]", lambda: interpret.head_shares(trace, l, t, s)),
        ("FFN node -> top neurons (k=10)", lambda: interpret.top_neurons(trace, l, t, k=10)),
        ("FFN node -> neuron shares [F]", lambda: interpret.neuron_shares(trace, l, t)),
        ("I node -> top tokens (norm)", lambda: interpret.top_tokens(trace, f"I{l}_{t}", k=10)),
        ("A node -> top tokens (no norm)",
         lambda: interpret.top_tokens(trace, f"A{l}_{t}", k=10, normalize=False)),
        ("head -> maps + output (head_view)", lambda: interpret.head_view(trace, l, h, target=t)),
        ("head -> contribution map (C core)", lambda: interpret.head_map(trace, l, h)),
        ("promoted tokens of a head", lambda: interpret.promoted(trace, l, t, "attn", head=h)),
        ("promoted tokens of a neuron", lambda: interpret.promoted(trace, l, t, "ffn", neuron=i)),
        ("promoted tokens of the FFN block", lambda: interpret.promoted(trace, l, t, "ffn")),
    ]
    name_w = max(len(n) for n, _ in answers)
    print(f"\n{'answer':<{name_w}}  {'median ms':>9}  {'target':>7}  ok   (layer {l}, target {t}, "
          f"source {s}, head {h}, neuron {i} of {F}; {args.repeats} repeats)")
    worst = 0.0
    for name, fn in answers:
        ms = median_ms(fn, args.repeats)
        worst = max(worst, ms)
        print(f"{name:<{name_w}}  {ms:9.2f}  {TARGET_MS:5.0f}ms  {'yes' if ms <= TARGET_MS else 'NO'}")
    print(f"\nslowest answer: {worst:.2f} ms (target {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
