"""deploy/grafana/compute-node.json asks only for metrics (and labels) the node exports, and shows all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from node.ops.metrics import NodeMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "compute-node.json"
_METRIC = re.compile(r"\bcompute_node_[a-z0-9_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Labels Prometheus adds to every scraped series.
SCRAPE_LABELS = {"instance", "job"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every series name in the node's /metrics text, with its label names (histograms: `le` too)."""
    metrics = NodeMetrics()
    body, _ = metrics.render()
    # A labelled metric with no series yet shows no labels in the text: read them off the metric itself.
    collectors = metrics.registry._names_to_collectors  # noqa: SLF001 - prometheus_client has no public lookup
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name.endswith("_created"):
            continue  # the creation time of each counter and histogram, not something to chart
        labels = set(collectors[family.name]._labelnames)  # noqa: SLF001
        for suffix in _SUFFIXES[family.type]:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_query_names_only_exported_metrics_and_their_labels() -> None:
    names = exported()
    assert "compute_node_tasks_completed_total" in names and "compute_node_task_latency_seconds_bucket" in names
    for target in targets():
        expr = target["expr"]
        used = _METRIC.findall(expr)
        assert used, f"query names no compute_node metric: {expr}"
        unknown = [m for m in used if m not in names]
        assert not unknown, f"query names metrics the node does not export: {unknown} in {expr}"
        labels = set().union(*(names[m] for m in used)) | SCRAPE_LABELS
        grouped = {label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()}
        assert grouped <= labels, f"query groups by labels its metrics lack: {grouped - labels} in {expr}"
        shown = set(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
        assert shown <= grouped | SCRAPE_LABELS, f"legend shows labels the query drops: {shown - grouped} in {expr}"


def test_every_exported_metric_has_a_panel() -> None:
    used = {m for target in targets() for m in _METRIC.findall(target["expr"])}
    families = {name.removesuffix("_bucket") for name in exported() if not name.endswith(("_sum", "_count"))}
    missing = {f for f in families if not any(u == f or u == f + "_bucket" for u in used)}
    assert not missing, f"exported metrics no panel shows: {sorted(missing)}"


def test_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
