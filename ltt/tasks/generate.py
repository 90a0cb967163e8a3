"""The task generators of :mod:`ltt.tasks` (see there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NAMES = ["Mary", "John", "Anna", "Paul", "Tom", "Kate", "James", "Sarah", "David", "Emma", "Mark", "Lisa",
         "Peter", "Laura", "Daniel", "Alice", "Robert", "Susan", "Michael", "Jane", "Chris", "Helen", "Steve",
         "Grace", "Adam", "Rachel", "Brian", "Emily", "Kevin", "Julia", "Frank", "Amy", "George", "Claire",
         "Jack", "Lucy", "Henry", "Rose", "Oscar", "Nina"]
PLACES = ["store", "park", "school", "office", "beach", "market", "station", "garden", "library", "restaurant",
          "museum", "hospital"]
OBJECTS = ["drink", "book", "ring", "ball", "letter", "gift", "key", "bag", "pen", "flower", "cake", "ticket"]
IOI_TEMPLATES = [
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "After {A} and {B} arrived at the {P}, {B} handed a {O} to",
    "Then, {A} and {B} had a long day at the {P}. {B} gave a {O} to",
    "While {A} and {B} were working at the {P}, {B} passed a {O} to",
]
COUNTRIES = [  # (country, capital, language)
    ("France", "Paris", "French"), ("Italy", "Rome", "Italian"), ("Spain", "Madrid", "Spanish"),
    ("Germany", "Berlin", "German"), ("Japan", "Tokyo", "Japanese"), ("Russia", "Moscow", "Russian"),
    ("Egypt", "Cairo", "Arabic"), ("Greece", "Athens", "Greek"), ("Portugal", "Lisbon", "Portuguese"),
    ("Poland", "Warsaw", "Polish"), ("Austria", "Vienna", "German"), ("England", "London", "English"),
    ("China", "Beijing", "Chinese"), ("Ireland", "Dublin", "English"), ("Norway", "Oslo", "Norwegian"),
    ("Sweden", "Stockholm", "Swedish"), ("Finland", "Helsinki", "Finnish"), ("Turkey", "Ankara", "Turkish"),
    ("Kenya", "Nairobi", "Swahili"), ("Peru", "Lima", "Spanish"), ("Cuba", "Havana", "Spanish"),
    ("Hungary", "Budapest", "Hungarian"), ("Denmark", "Copenhagen", "Danish"), ("Iran", "Tehran", "Persian"),
    ("Thailand", "Bangkok", "Thai"), ("Korea", "Seoul", "Korean"), ("Canada", "Ottawa", "English"),
    ("Belgium", "Brussels", "French"), ("Netherlands", "Amsterdam", "Dutch"), ("India", "Delhi", "Hindi"),
]
FACT_TEMPLATES = [("The capital of {C} is", 1), ("People in {C} speak", 2)]


@dataclass
class Pair:
    """One clean/counterfactual pair: prompts (strings, or token id lists for induction), the
    answer and counterfactual answer token ids, and equal token lengths."""

    prompt: Any
    counterfactual: Any
    answer: int
    cf_answer: int

    @property
    def tokens(self) -> list[int]:
        return [self.answer, self.cf_answer]


@dataclass
class TaskSet:
    """A named list of :class:`Pair` s and how many candidates were ``skipped`` (unequal token
    lengths or an answer of several tokens)."""

    name: str
    pairs: list[Pair] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"TaskSet({self.name!r}, pairs={len(self.pairs)}, skipped={self.skipped})"


def _one(model: Any, text: str) -> int | None:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def _first(model: Any, text: str) -> int:
    return int(model.tokenizer.encode(text, add_special_tokens=False)[0])


def _add(ts: TaskSet, model: Any, prompt: str, cf: str, answer: int | None, cf_answer: int | None) -> None:
    if answer is None or cf_answer is None or answer == cf_answer:
        ts.skipped += 1
        return
    if len(model._encode(prompt)) != len(model._encode(cf)):
        ts.skipped += 1
        return
    ts.pairs.append(Pair(prompt, cf, answer, cf_answer))


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def ioi(model: Any, n: int = 60, seed: int = 0) -> TaskSet:
    """IOI pairs (module docstring of :mod:`ltt.tasks`): clean ``A, B ... B gave ... to`` -> A;
    counterfactual with two other names ``C, D ... D gave ... to`` -> C."""
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    ts = TaskSet("ioi")
    for _ in range(n * 20):
        if len(ts.pairs) >= n:
            break
        a, b, c, d = rng.choice(len(NAMES), 4, replace=False)
        tpl = IOI_TEMPLATES[rng.integers(len(IOI_TEMPLATES))]
        p, o = PLACES[rng.integers(len(PLACES))], OBJECTS[rng.integers(len(OBJECTS))]
        clean = tpl.format(A=NAMES[a], B=NAMES[b], P=p, O=o)
        cf = tpl.format(A=NAMES[c], B=NAMES[d], P=p, O=o)
        _add(ts, model, clean, cf, _one(model, " " + NAMES[a]), _one(model, " " + NAMES[c]))
    return ts


def greater_than(model: Any, n: int = 60, seed: int = 0) -> TaskSet:
    """Greater-than pairs: ``"... from the year 17YY to the year 17"`` -> the first token of
    ``YY + 1``; the counterfactual's start year is in another decade."""
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    ts = TaskSet("greater-than")
    nouns = ["war", "drought", "expedition", "strike", "treaty talks", "famine", "reign", "project"]
    for _ in range(n * 20):
        if len(ts.pairs) >= n:
            break
        century = int(rng.integers(11, 20))
        yy, zz = (int(v) for v in rng.integers(10, 98, 2))
        if yy // 10 == zz // 10:
            continue
        noun = nouns[rng.integers(len(nouns))]
        tpl = "The {N} lasted from the year {C}{Y:02d} to the year {C}"
        clean, cf = tpl.format(N=noun, C=century, Y=yy), tpl.format(N=noun, C=century, Y=zz)
        _add(ts, model, clean, cf, _first(model, f"{yy + 1:02d}"), _first(model, f"{zz + 1:02d}"))
    return ts


def induction(model: Any, n: int = 60, seed: int = 0, length: int = 6) -> TaskSet:
    """Induction pairs on random ordinary tokens (ids that decode to a word and encode back to
    themselves): ``x1..xn x1..x(n-1)`` -> ``xn``; counterfactual ``y1..yn x1..x(n-1)`` -> ``yn``."""
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    tok = model.tokenizer
    pool: list[int] = []
    for i in rng.permutation(min(model.vocab_size, 20000)):
        text = tok.decode([int(i)])
        if text.startswith(" ") and text[1:].isalpha() and len(text) > 3 and _one(model, text) == int(i):
            pool.append(int(i))
        if len(pool) >= 400:
            break
    ts = TaskSet("induction")
    if len(pool) < 2 * length:
        ts.skipped = n
        return ts
    bos = [] if getattr(tok, "bos_token_id", None) is None or not model._encode("a")[0] == tok.bos_token_id \
        else [int(tok.bos_token_id)]
    while len(ts.pairs) < n:
        pick = rng.choice(len(pool), 2 * length, replace=False)
        x, y = [pool[i] for i in pick[:length]], [pool[i] for i in pick[length:]]
        ts.pairs.append(Pair(bos + x + x[:-1], bos + y + x[:-1], x[-1], y[-1]))
    return ts


def factual(model: Any, n: int = 60, seed: int = 0) -> TaskSet:
    """Factual recall pairs (capital cities, languages; written here): ``"The capital of France
    is"`` -> `` Paris``; the counterfactual names another country (-> its capital)."""
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    ts = TaskSet("factual")
    cand = [(tpl, k, i, j) for tpl, k in FACT_TEMPLATES for i in range(len(COUNTRIES))
            for j in range(len(COUNTRIES)) if i != j and COUNTRIES[i][k] != COUNTRIES[j][k]]
    for c in rng.permutation(len(cand)):
        if len(ts.pairs) >= n:
            break
        tpl, k, i, j = cand[c]
        _add(ts, model, tpl.format(C=COUNTRIES[i][0]), tpl.format(C=COUNTRIES[j][0]),
             _one(model, " " + COUNTRIES[i][k]), _one(model, " " + COUNTRIES[j][k]))
    return ts


TASKS = {"ioi": ioi, "greater-than": greater_than, "induction": induction, "factual": factual}


def task(name: str, model: Any, n: int = 60, seed: int = 0) -> TaskSet:
    """The task set ``name`` (one of :data:`TASKS`) for ``model``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name](model, n=n, seed=seed)
