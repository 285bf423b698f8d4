"""`projections.runner.disagreements`: how many violations the read model and the events
disagree on, counting each row (a row copied in the read model is one more violation that
`audit check` lists, and one the events do not have)."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.rules import Violation
from projections.runner import disagreements

AT = datetime(2025, 1, 1, tzinfo=UTC)
A = Violation("after_erasure", "C1", "f-1", AT)
B = Violation("marketing_without_consent", "C2", "f-2", AT)


def test_the_same_violations_agree() -> None:
    assert disagreements([A, B], [B, A]) == 0


def test_one_missing_or_made_up_is_one_disagreement() -> None:
    assert disagreements([A], [A, B]) == 1
    assert disagreements([A, B], [A]) == 1


def test_a_violation_copied_in_the_read_model_is_a_disagreement() -> None:
    assert disagreements([A, A, B], [A, B]) == 1
