"""Static checks of observability/: promtool on the Prometheus configuration, rules and rule tests,
and the Grafana provisioning and dashboards (the e2e tier evaluates every panel's query)."""

import importlib.util
import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
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
    # app: every replica of both colors; nginx: every edge's Nginx (tasks.wsapp_nginx); edge: the
    # exporter beside every Nginx; Alertmanager.
    assert sorted(jobs) == ["alertmanager", "app", "edge", "nginx"]
    assert [name for sd in jobs["nginx"]["dns_sd_configs"] for name in sd["names"]] == ["tasks.wsapp_nginx"]
    edge_names = [name for sd in jobs["edge"]["dns_sd_configs"] for name in sd["names"]]
    assert edge_names == ["tasks.wsapp_edge-exporter"]
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


def test_the_edge_exporter_counts_the_files_nginx_appends_to_where_nginx_writes_them():
    """nginx.conf appends one byte per response (an empty format: the newline alone), buffered, to
    exactly the files the exporter counts, the 429s and 5xx by their maps, in the directory of the
    volume both services mount, placed on the same nodes, as the same user; Prometheus scrapes the
    exporter's port."""
    conf = Path(ROOT, "nginx", "nginx.conf").read_text()
    assert re.search(r"^\s*log_format edge_count '';$", conf, re.M)
    logs = re.findall(r"^\s*access_log (\S+) edge_count buffer=64k flush=1s(?: if=\$(\w+))?;$", conf, re.M)
    exporter_module = load_edge_exporter()
    names = [name for name, _, _ in exporter_module.COUNTERS]
    assert [Path(path).name for path, _ in logs] == names == ["responses", "rate_limited", "server_error"]
    directories = {str(Path(path).parent) for path, _ in logs}
    assert directories == {"/run/edge-counts"}
    conditions = [condition for _, condition in logs]
    assert conditions == ["", "edge_rate_limited", "edge_server_error"]
    assert re.search(r"map \$status \$edge_rate_limited \{\s*429\s+1;\s*default 0;\s*\}", conf)
    assert re.search(r"map \$status \$edge_server_error \{\s*~\^5\s+1;\s*default 0;\s*\}", conf)
    stack = yaml.safe_load(Path(ROOT, "stack", "infra.yml").read_text())
    nginx, exporter = stack["services"]["nginx"], stack["services"]["edge-exporter"]
    (directory,) = directories
    assert f"edge_counts:{directory}" in nginx["volumes"]
    assert exporter["volumes"] == [f"edge_counts:{directory}"]
    assert exporter["environment"]["EDGE_COUNTS_DIR"] == directory
    assert stack["volumes"]["edge_counts"]["driver_opts"]["type"] == "tmpfs"
    assert exporter["deploy"]["mode"] == nginx["deploy"]["mode"] == "global"
    assert exporter["deploy"]["placement"] == nginx["deploy"]["placement"]
    assert exporter["user"] == nginx["user"], "the exporter must be allowed to free the files Nginx creates"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "edge"]
    port = int(exporter["environment"]["EDGE_EXPORTER_PORT"])
    assert {sd["port"] for sd in job["dns_sd_configs"]} == {port}


def load_edge_exporter():
    path = Path(ROOT, "observability", "edge-exporter", "edge_exporter.py")
    spec = importlib.util.spec_from_file_location("edge_exporter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_edge_exporter_counts_by_size_and_frees_what_it_counted_without_losing_a_count(tmp_path):
    """A burst of a million responses appended the way Nginx does (O_APPEND, in 64 KiB writes) is
    counted whole, the memory of the counted pages is freed while the count stays, appends after a
    free add to it, and a file Nginx has not made yet counts 0 and is not created."""
    edge = load_edge_exporter()
    fd = os.open(tmp_path / "rate_limited", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(1_000_000 // 65536):
            os.write(fd, b"\n" * 65536)
        os.write(fd, b"\n" * (1_000_000 % 65536))
        assert edge.count(tmp_path, "rate_limited") == 1_000_000
        assert edge.held_bytes(tmp_path, "rate_limited") >= 1_000_000
        edge.punch(tmp_path, "rate_limited")
        assert edge.count(tmp_path, "rate_limited") == 1_000_000
        assert edge.held_bytes(tmp_path, "rate_limited") <= 2 * edge.PAGE
        os.write(fd, b"\n" * 7)
    finally:
        os.close(fd)
    edge.punch(tmp_path, "server_error")
    assert not (tmp_path / "server_error").exists()
    text = edge.metrics(tmp_path).decode()
    assert "\nnginx_responses_rate_limited_total 1000007\n" in text
    assert "\nnginx_responses_server_error_total 0\n" in text and "\nnginx_responses_total 0\n" in text
    assert not edge._reported, edge._reported


def test_the_edge_exporter_serves_its_counters_over_http(tmp_path, monkeypatch):
    edge = load_edge_exporter()
    (tmp_path / "responses").write_bytes(b"\n" * 12)
    (tmp_path / "server_error").write_bytes(b"\n" * 3)
    monkeypatch.setattr(edge, "DIRECTORY", str(tmp_path))
    server = edge.ThreadingHTTPServer(("127.0.0.1", 0), edge.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "/", timeout=5)
        missing.value.close()
    finally:
        server.shutdown()
        server.server_close()
    assert missing.value.code == 404
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples["nginx_responses_total"] == "12" and samples["nginx_responses_server_error_total"] == "3"
    assert samples["nginx_responses_rate_limited_total"] == "0"
