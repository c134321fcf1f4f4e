"""Language schedules as the objectives declare them: exact balance, determinism, MIMO == XLCO, and the LaKDA /
InfoNCE constraints."""

from collections import Counter
from itertools import permutations

import pytest

from mimo_ds.objectives.schedules import ordered_pairs
from mimo_ds.objectives import objective_class

LANGS = "ar de nl en es fr hi id it ja pt ru vi zh".split()


def schedule(kind: str, languages, seed: int):
    return objective_class(kind).schedule(languages, seed)


def test_ordered_pairs_count_and_order_invariance():
    pairs = ordered_pairs(LANGS)
    assert len(pairs) == 182 == len(set(pairs))
    assert set(pairs) == set(permutations(LANGS, 2))
    assert ordered_pairs(list(reversed(LANGS))) == pairs


def test_mimo_pairs_balanced_over_any_prefix():
    s = schedule("mimo", LANGS, seed=42)
    n = 182 * 3 + 50
    got = [(a["query"], a["passage"]) for a in map(s, range(n))]
    counts = Counter(got)
    assert len(counts) == 182
    assert sorted(Counter(counts.values()).items()) == [(3, 132), (4, 50)]  # ⌊N/P⌋ or ⌈N/P⌉, exactly 50 extra
    assert all(a != b for a, b in got)
    assert set(got[:182]) == set(ordered_pairs(LANGS))  # each cycle is a permutation of all pairs
    assert got[:182] != got[182:364]  # and each cycle is shuffled afresh
    # any prefix is balanced too (the schedule is dealt in cycles)
    prefix = Counter(got[:400])
    assert max(prefix.values()) - min(prefix.values()) <= 1


def test_deterministic_and_seeded():
    a = [schedule("mimo", LANGS, 42)(i) for i in range(500)]
    b = [schedule("mimo", LANGS[::-1], 42)(i) for i in range(500)]
    c = [schedule("mimo", LANGS, 43)(i) for i in range(500)]
    assert a == b and a != c
    # random access equals sequential access
    s = schedule("mimo", LANGS, 42)
    assert [s(i) for i in (499, 3, 250, 0)] == [a[499], a[3], a[250], a[0]]


def test_mimo_equals_xlco():
    m, x = schedule("mimo", LANGS, 7), schedule("xlco", LANGS, 7)
    assert all(m(i) == x(i) for i in range(1000))


def test_infonce_same_language_balanced():
    s = schedule("infonce", LANGS, 42)
    got = [s(i) for i in range(14 * 5 + 3)]
    assert all(a["query"] == a["passage"] for a in got)
    assert sorted(Counter(Counter(a["query"] for a in got).values()).items()) == [(5, 11), (6, 3)]


def test_lakda_triples():
    s, m = schedule("lakda", LANGS, 42), schedule("mimo", LANGS, 42)
    got = [s(i) for i in range(182 * 2)]
    assert all(a["query"] != a["query_b"] for a in got)
    assert Counter((a["query"], a["query_b"]) for a in got) == Counter({p: 2 for p in ordered_pairs(LANGS)})
    assert [(a["query"], a["query_b"]) for a in got] == [tuple(m(i).values()) for i in range(364)]
    assert set(Counter(a["passage"] for a in got).values()) == {26}  # 364 / 14


def test_bad_arguments():
    with pytest.raises(ValueError, match="two languages"):
        schedule("mimo", ["en"], 1)
    assert schedule("distill", LANGS, 1) is None  # stage-1 pairs carry their own language
    with pytest.raises(ValueError, match="objective"):
        schedule("bogus", LANGS, 1)
