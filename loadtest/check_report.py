"""Exit non-zero unless a Locust stats CSV shows requests and no failures.

    python loadtest/check_report.py loadtest/reports/soak-promote_stats.csv

`make soak-promote` stops Locust with SIGTERM once promote.sh is done; Locust's exit status
after a signal does not say whether requests failed, so the report decides.
"""

import csv
import sys


def main(path):
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
