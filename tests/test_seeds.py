"""The statistics of ``compare --seeds`` (dualmeta.seeds): the Student t distribution computed without SciPy,
Welch's test, and the across-seed summary."""
from __future__ import annotations

import math

import pytest

from dualmeta import seeds


@pytest.mark.parametrize("t, df, expected", [
    (2.0, 10, 0.036694017385370),   # tables of Student's t (e.g. SciPy's t.sf)
    (1.0, 1, 0.25),                 # Cauchy: 1/2 - atan(1)/pi
    (0.0, 3.3, 0.5),
    (3.0, 2, 0.5 - 3 / (2 * math.sqrt(2 + 9))),  # closed form for df = 2
])
def test_student_t_tail(t, df, expected):
    assert seeds.student_t_sf(t, df) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("p, df, expected", [(0.975, 10, 2.228138851986274), (0.975, 2, 4.302652729749464),
                                             (0.5, 7, 0.0)])
def test_student_t_quantile(p, df, expected):
    assert seeds.student_t_quantile(p, df) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_student_t_is_symmetric():
    for t, df in ((1.5, 3.7), (0.3, 1.2), (4.0, 30.0)):
        assert seeds.student_t_sf(-t, df) == pytest.approx(1 - seeds.student_t_sf(t, df), abs=1e-14)


def test_welch_matches_the_textbook_case_and_detects_a_gap():
    same = seeds.welch([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert same["df"] == pytest.approx(4.0) and same["t"] == pytest.approx(-0.6123724356957945)
    assert same["p"] == pytest.approx(0.5733922538253553, rel=1e-9)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    gap = seeds.welch([2.0, 2.01, 1.99], [1.0, 1.01, 0.99])
    assert gap["p"] < 1e-4 and gap["ci95"][0] > 0.9
    assert seeds.welch([1.0, 1.0], [1.0, 1.0])["p"] == 1.0 and seeds.welch([2.0, 2.0], [1.0, 1.0])["p"] == 0.0
    with pytest.raises(ValueError, match="--seeds >= 2"):
        seeds.welch([1.0], [1.0, 2.0])


def _report(verdict, torch_acc, tf_acc):
    return {"verdict": verdict, "max_rel_loss_diff": 1e-9,
            "backends": {"torch": {"evaluation": {"accuracy": {"mean": torch_acc}}},
                         "tf": {"evaluation": {"accuracy": {"mean": tf_acc}}}}}


def test_summary_says_differ_when_the_gap_exceeds_the_seed_spread():
    agree = seeds.seeds_summary({0: _report("pass", 0.90, 0.91), 1: _report("pass", 0.93, 0.92),
                                 2: _report("pass", 0.95, 0.95)}, "accuracy")
    assert agree["agree"] and agree["parity"] == "pass"
    assert agree["backends"]["torch"]["mean"] == pytest.approx(0.9266666666666667)
    differ = seeds.seeds_summary({0: _report("pass", 0.90, 0.80), 1: _report("fail", 0.91, 0.81),
                                  2: _report("pass", 0.92, 0.79)}, "accuracy")
    assert not differ["agree"] and differ["parity"] == "fail"
    text = seeds.seeds_markdown(differ, {"learner": "maml", "tasks": "omniglot", "dtype": "float32"})
    assert "**Backends differ**" in text and "FAILED" in text and seeds.STATISTIC in text
