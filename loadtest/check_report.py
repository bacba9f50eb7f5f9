"""Exit non-zero unless a Locust stats CSV shows requests and no failures, and, when given, the
delivery totals (loadtest/delivery.py) show messages received and none lost, duplicated or out of order.

    python loadtest/check_report.py loadtest/reports/soak-promote_stats.csv \
        [loadtest/reports/soak-promote_delivery.json]

`make soak-promote` stops Locust with SIGTERM once promote.sh is done; Locust's exit status
after a signal does not say whether requests failed, so the report decides.
"""

import csv
import json
import sys

MUST_BE_ZERO = ("lost", "duplicated", "out_of_order", "resync_too_old", "resync_ahead")


def check_stats(path):
    with open(path, newline="") as report:
        rows = list(csv.DictReader(report))
    total = next((row for row in rows if row["Name"] == "Aggregated"), None)
    if total is None or int(total["Request Count"]) == 0:
        print(f"{path}: no requests recorded", file=sys.stderr)
        return 1
    failed = [f"{row['Type']} {row['Name']}: {row['Failure Count']}" for row in rows
              if row["Name"] != "Aggregated" and int(row["Failure Count"])]
    closes = {row["Name"]: row["Request Count"] for row in rows if row["Name"].startswith("close ")}
    print(f"{path}: {total['Request Count']} requests, {total['Failure Count']} failed; closes {closes}")
    for line in failed:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def check_delivery(path):
    try:
        with open(path) as report:
            totals = json.load(report)
    except (OSError, ValueError) as exc:
        print(f"{path}: no delivery totals ({exc})", file=sys.stderr)
        return 1
    print(f"{path}: sent {totals['sent']}, received {totals['received']}, lost {totals['lost']}, "
          f"duplicated {totals['duplicated']}, out of order {totals['out_of_order']}; "
          f"{totals['resumes']} resumes replayed {totals['replayed']} (largest {totals['max_replay']}); "
          f"longest handover {totals['max_handover_ms']} ms")
    bad = [f"{name} {totals[name]}" for name in MUST_BE_ZERO if totals[name]]
    if totals["received"] == 0:
        bad.append("no message received")
    for line in bad:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if bad else 0


def main(stats, delivery=None):
    failed = check_stats(stats)
    if delivery is not None:
        failed |= check_delivery(delivery)
    return failed


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
