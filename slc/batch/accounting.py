"""Every input accounted for: the ids a run listed are exactly the ids of its
outcome rows (accepted and rejected), each once; and the vocabulary of reasons.

A reason is transient when trying again may succeed (a network or permission
error, a worker that failed) and permanent when the file itself is at fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

TRANSIENT_REASONS = frozenset({"unreadable", "failed"})


class AccountingError(RuntimeError):
    """A run that lost, repeated or invented inputs: a bug, never bad input."""


def reconcile(listed: Iterable[str], outcome: Iterable[str], what: str) -> None:
    """Check that `outcome` (the ids of every accepted and rejected row) holds
    each of the `listed` ids exactly once and nothing else; raise
    AccountingError saying what `what` (e.g. "labelling") lost, repeated or
    added otherwise."""
    listed_ids = set(listed)
    counts = Counter(outcome)
    problems = []
    for name, ids in (
        ("lost", listed_ids - counts.keys()),
        ("repeated", {i for i, n in counts.items() if n > 1}),
        ("not listed but in the outcome", counts.keys() - listed_ids),
    ):
        if ids:
            problems.append(f"{len(ids)} {name} (e.g. {min(ids)})")
    if problems:
        raise AccountingError(
            f"{what} does not account for its inputs: {len(listed_ids)} listed, "
            f"{sum(counts.values())} outcome rows; " + "; ".join(problems)
        )


def is_transient(reason: str | None) -> bool:
    """True for a reason worth trying again."""
    return reason in TRANSIENT_REASONS


def by_reason(reasons: Iterable[str | None]) -> dict[str, int]:
    """Rows per reason (None, an accepted row, left out), sorted by reason."""
    return dict(sorted(Counter(r for r in reasons if r).items()))


def split_by_permanence(reasons: Iterable[str | None]) -> dict[str, int]:
    """`{"failed_transient": n, "failed_permanent": m}` over the rejected rows."""
    rejected = [r for r in reasons if r]
    transient = sum(map(is_transient, rejected))
    return {"failed_transient": transient, "failed_permanent": len(rejected) - transient}
