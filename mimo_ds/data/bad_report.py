"""The run's bad-record report: every record the loaders skipped, by shard and reason, summed over the ranks.

Each rank's loader counts only what its own workers read; the report is the one place where they are added up, so a
user reads one file (`data_bad_records.json` in the output folder and as an MLflow artifact) and one set of metrics
(`data/bad_<reason>`, `data/bad_records`) for the whole run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mimo_ds.data.ceiling import bad_only, merge

BAD_RECORDS_FILE = "data_bad_records.json"


def bad_record_report(per_rank: list[dict[str, dict[str, int]]], read: list[dict[str, int]]) -> dict[str, Any]:
    """`per_rank[k]`: rank k's shard → reason → count; `read[k]`: its good/borrowed record counts."""
    shards = bad_only(merge_all(per_rank))
    reasons: Counter[str] = Counter()
    for counts in shards.values():
        reasons.update(counts)
    good: Counter[str] = Counter()
    for counts in read:
        good.update(counts)
    return {
        "bad_records": sum(reasons.values()),
        "by_reason": dict(sorted(reasons.items())),
        "by_shard": shards,
        "read": dict(sorted(good.items())),
        "by_rank": [sum(sum(r.values()) for r in rank.values()) for rank in per_rank],
    }


def merge_all(per_rank: list[dict[str, dict[str, int]]]) -> dict[str, Counter[str]]:
    total: dict[str, Counter[str]] = {}
    for counts in per_rank:
        merge(total, counts)
    return total


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as MLflow metrics: the total and one per reason (reasons never seen are not logged)."""
    return {"data/bad_records": float(report["bad_records"]),
            **{f"data/bad_{reason}": float(n) for reason, n in report["by_reason"].items()}}
