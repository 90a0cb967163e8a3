"""ltt.tasks on the embedded SmolLM2 tokenizer: at least 50 pairs per task set, every pair of equal
token length with one-token answers that differ, deterministic by seed, skipped pairs counted,
bad arguments named."""

from __future__ import annotations

import pytest

import ltt
import ltt.tasks as T
from ltt.tasks.generate import COUNTRIES, TaskSet, _add


@pytest.fixture(scope="module")
def smol():
    return ltt.load("smollm2-135m")


@pytest.mark.parametrize("name", list(T.TASKS))
def test_fifty_pairs_of_equal_length(smol, name):
    ts = T.task(name, smol, n=60)
    assert len(ts) == len(ts.pairs) >= 50, ts
    assert ts.skipped >= 0 and repr(ts).startswith(f"TaskSet({name!r}")
    tok = smol.tokenizer
    prompts = set()
    for p in ts.pairs:
        a, b = (smol._encode(x) if isinstance(x, str) else list(x) for x in (p.prompt, p.counterfactual))
        assert len(a) == len(b) and a != b, p
        assert p.answer != p.cf_answer and p.tokens == [p.answer, p.cf_answer]
        for t in p.tokens:  # each answer is one token of the vocabulary
            assert 0 <= t < smol.vocab_size and tok.decode([t])
        prompts.add((tuple(a), tuple(b)))
    assert len(prompts) == len(ts.pairs)  # generated, no pair repeated
    again = T.task(name, smol, n=60)
    assert [p.prompt for p in again.pairs] == [p.prompt for p in ts.pairs]  # the seed fixes the set


def test_task_answers_are_the_tasks_answers(smol):
    ioi = T.ioi(smol, n=5).pairs[0]
    name = smol.tokenizer.decode([ioi.answer]).strip()
    first = ioi.prompt.split(" and ")[0].split()[-1]
    assert name == first  # the indirect object is the first-named person
    ind = T.induction(smol, n=3).pairs[0]
    assert ind.prompt[-5:] == ind.counterfactual[-5:]  # the second halves are the same tokens
    assert ind.answer not in ind.counterfactual and ind.cf_answer in ind.counterfactual
    gt = T.greater_than(smol, n=3).pairs[0]
    yy = int(gt.prompt.split("the year ")[1][2:4])
    head = smol.tokenizer.decode([gt.answer])
    assert head and f"{yy + 1:02d}".startswith(head)  # the first token of the next year's digits
    for p in T.factual(smol, n=20).pairs:  # the answer is the named country's capital or language
        country = next(c for c in COUNTRIES if f" {c[0]} " in f" {p.prompt} ")
        want = country[1] if "capital" in p.prompt else country[2]
        assert smol.tokenizer.decode([p.answer]) == " " + want, p


def test_a_pair_of_unequal_length_is_skipped_and_counted(smol):
    ts = TaskSet("x")
    a = smol.tokenizer.encode(" Mary", add_special_tokens=False)[0]
    b = smol.tokenizer.encode(" John", add_special_tokens=False)[0]
    _add(ts, smol, "When Mary went", "When Mary and Johnathan Smithson went", a, b)
    _add(ts, smol, "When Mary went", "When John went", None, b)  # an answer of several tokens
    _add(ts, smol, "When Mary went", "When John went", a, a)  # the same answer
    assert ts.pairs == [] and ts.skipped == 3
    _add(ts, smol, "When Mary went", "When John went", a, b)
    assert len(ts.pairs) == 1 and ts.skipped == 3


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "acdc"}, "task must be one of.*'acdc'"),
    ({"n": 0}, "n must be a positive integer, got 0"),
    ({"n": 2.5}, "n must be a positive integer, got 2.5"),
    ({"n": True}, "n must be a positive integer, got True"),
])
def test_bad_task_arguments_are_named(smol, kwargs, words):
    kw = dict({"name": "ioi", "n": 5}, **kwargs)
    with pytest.raises(ValueError, match=words):
        T.task(kw["name"], smol, n=kw["n"])
