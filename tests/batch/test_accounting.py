"""Accounting: the outcome holds every listed id once, and nothing else."""

from __future__ import annotations

import pytest

from slc.batch.accounting import AccountingError, by_reason, reconcile, split_by_permanence


def test_an_outcome_of_every_listed_id_once_reconciles():
    reconcile(["a", "b", "c"], ["c", "a", "b"], "labelling")


@pytest.mark.parametrize(
    "outcome, message",
    [
        (["a", "b"], "1 lost \\(e.g. c\\)"),
        (["a", "b", "c", "c"], "1 repeated \\(e.g. c\\)"),
        (["a", "b", "c", "z"], "1 not listed but in the outcome \\(e.g. z\\)"),
        (["a", "a", "z"], "2 lost .*1 repeated .*1 not listed"),
    ],
)
def test_lost_repeated_or_foreign_ids_are_refused(outcome, message):
    with pytest.raises(AccountingError, match=f"ingest does not account for its inputs: 3 listed.*{message}"):
        reconcile(["a", "b", "c"], outcome, "ingest")


def test_reasons_are_counted_and_split_into_transient_and_permanent():
    reasons = [None, "unreadable", "failed", "undecodable", "no_audio", "undecodable", None]
    assert by_reason(reasons) == {"failed": 1, "no_audio": 1, "undecodable": 2, "unreadable": 1}
    assert split_by_permanence(reasons) == {"failed_transient": 2, "failed_permanent": 3}
