"""Static checks of observability/: promtool on the Prometheus configuration, rules and rule tests,
and the Grafana provisioning and dashboards (the e2e tier evaluates every panel's query)."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import DASHBOARDS, ROOT, dashboard_queries, require_command

PROMETHEUS = Path(ROOT, "observability", "prometheus")
GRAFANA = Path(ROOT, "observability", "grafana")


def promtool(*args):
    tool = require_command("promtool", "the Prometheus configuration is checked with promtool")
    result = subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_check_config_and_rules():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", "rules.yml")


def test_promtool_rule_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", "tests.yml")


def test_one_app_job_finds_both_colors_and_labels_each_with_its_color():
    """As Prometheus applies the relabel (an anchored regex, replacement $1) to each DNS name."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"] if "dns_sd_configs" in job}
    # app: every replica of both colors; nginx: every edge's Nginx (tasks.wsapp_nginx); Alertmanager.
    assert sorted(jobs) == ["alertmanager", "app", "nginx"]
    assert [name for sd in jobs["nginx"]["dns_sd_configs"] for name in sd["names"]] == ["tasks.wsapp_nginx"]
    names = [name for sd in jobs["app"]["dns_sd_configs"] for name in sd["names"]]
    assert names == ["tasks.wsapp-blue_app", "tasks.wsapp-green_app"]
    (relabel,) = jobs["app"]["relabel_configs"]
    assert relabel["source_labels"] == ["__meta_dns_name"] and relabel["target_label"] == "color"
    assert relabel.get("replacement", "$1") == "$1"
    colors = [re.fullmatch(relabel["regex"], name)[1] for name in names]
    assert colors == ["blue", "green"]


def test_every_alert_has_a_for_clause_a_severity_and_a_summary():
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "WsappNoReadyReplicaOfActiveColor", "WsappReplicaTargetDown", "WsappServerErrorRatioHigh",
        "WsappBroadcastDelayHigh", "WsappConnectionsNearLimit",
    }
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert
        assert alert["labels"]["severity"] in ("warning", "critical"), alert
        assert alert["annotations"]["summary"], alert


def test_datasource_and_provider_have_fixed_uids_and_paths():
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in datasources["datasources"]] == ["wsapp-prometheus"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/provider.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_is_valid_with_fixed_uids(path):
    dashboard = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "wsapp-prometheus", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "wsapp-prometheus", panel["title"]
    for where, expr in dashboard_queries(dashboard):
        assert expr.strip() and "$" not in expr, f"{where}: no Grafana variables, so the e2e tier can run it"


def test_every_dashboard_is_mounted_by_the_infra_stack():
    infra = yaml.safe_load(Path(ROOT, "stack/infra.yml").read_text())
    files = {c["file"] for c in infra["configs"].values()}
    targets = {c["target"] for c in infra["services"]["grafana"]["configs"]}
    for path in DASHBOARDS:
        assert f"../observability/grafana/dashboards/{path.name}" in files
        assert f"/var/lib/grafana/dashboards/{path.name}" in targets


def alerts_section_tables():
    """The tables of docs/operations.md's "### Alerts" section, each a list of rows (lists of cells)."""
    text = Path(ROOT, "docs", "operations.md").read_text()
    section = text.split("\n### Alerts\n", 1)[1].split("\n### ", 1)[0]
    tables, rows = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            tables.append(rows[2:])  # without the header and the |---| line
            rows = []
    return tables


def test_the_docs_alert_tables_list_every_alert_with_its_for_and_severity():
    """docs/operations.md: the conditions table (alert, condition, for, severity) and the what-to-do
    table (alert, meaning, action) name exactly the alerts of rules.yml, with their `for` and severity."""
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
    conditions, actions = alerts_section_tables()[:2]
    documented = {row[0].strip("`"): row for row in conditions}
    assert sorted(documented) == sorted(rules)
    for name, row in documented.items():
        assert row[2].replace(" ", "") == rules[name]["for"], name
        assert row[3] == rules[name]["labels"]["severity"], name
    assert sorted(row[0].strip("`") for row in actions) == sorted(rules)
    assert all(row[1] and row[2] for row in actions)


def test_every_alert_points_to_the_docs():
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    text = Path(ROOT, "docs", "operations.md").read_text()
    for rule in (rule for group in groups for rule in group["rules"] if "alert" in rule):
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), rule["alert"]
        anchor = url.split("#", 1)[1]
        headings = [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                    for h in re.findall(r"(?m)^#+ (.+)$", text)]
        assert anchor in headings, (rule["alert"], anchor)
