#!/usr/bin/env python3
"""Lint the Grafana dashboard(s) in monitoring/grafana/dashboards, optionally
running every panel query against a live Prometheus.

    python3 monitoring/check_dashboard.py                       # static checks
    python3 monitoring/check_dashboard.py --prometheus http://localhost:9090

Static checks: valid JSON, fixed uid/title, the `variant` template variable, the
provisioned datasource uid on every panel and target, `$__rate_interval` as the
window of every rate()/increase(), a `job` matcher on every abgate family (router
and model-server series must never be added together) and latency quantiles of the
form histogram_quantile(q, sum by (le, variant) (rate(..._bucket{job="..."}[...]))).

Live mode replaces $__rate_interval by 1m and $variant by .* and fails if a query
errors or returns no series (run it with traffic on both arms).
Standard library only.
"""

import argparse
import json
import pathlib
import re
import sys
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARDS = HERE / "grafana" / "dashboards"
DATASOURCE_UID = "abgate-prometheus"
EXPECTED = {"ab-testing.json": ("abgate-ab", "A/B Testing Performance")}
# Families exported by both the router and the model servers: a query on them
# without a job matcher would add client-side and arm-side numbers together.
SHARED = ("predictions_total", "prediction_duration_seconds", "prediction_errors_total",
          "feedback_total", "system_cpu_percent", "system_memory_percent",
          "abgate_build_info", "process_")
RANGE_FN = re.compile(r"\b(rate|irate|increase)\(\s*([^()\[]*?)\[([^\]]+)\]")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
QUANTILE = re.compile(
    r"histogram_quantile\(\s*[0-9.]+\s*,\s*sum by \(le, variant\) \(rate\("
    r"prediction_duration_seconds_bucket\{job=\"(router|model-server)\"[^}]*\}\[\$__rate_interval\]\)\)\)")


def targets(dash):
    for panel in dash.get("panels", []):
        for sub in [panel] + panel.get("panels", []):
            for t in sub.get("targets", []):
                yield sub, t


def lint(path):
    errors = []
    dash = json.loads(path.read_text())
    uid, title = EXPECTED.get(path.name, (None, None))
    if uid and dash.get("uid") != uid:
        errors.append(f"uid is {dash.get('uid')!r}, expected {uid!r}")
    if title and dash.get("title") != title:
        errors.append(f"title is {dash.get('title')!r}, expected {title!r}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    var = variables.get("variant")
    if var is None:
        errors.append("no `variant` template variable")
    else:
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if query != 'label_values(predictions_total{job="router"}, variant)':
            errors.append(f"variant variable query is {query!r}")
        if not (var.get("multi") and var.get("includeAll")):
            errors.append("variant variable must be multi-value and include All")
    ids = [p.get("id") for p in dash.get("panels", [])]
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        errors.append(f"duplicate panel id {dup}")
    for panel in dash.get("panels", []):
        if panel.get("type") != "row" and not panel.get("targets"):
            errors.append(f"panel {panel.get('title')!r} has no targets")
    for panel, t in targets(dash):
        where = f"panel {panel.get('title')!r} target {t.get('refId')}"
        for obj in (panel, t):
            if (obj.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                errors.append(f"{where}: datasource uid must be {DATASOURCE_UID!r}")
        expr = t.get("expr", "")
        if not expr.strip():
            errors.append(f"{where}: empty expr")
            continue
        for fn, _, window in RANGE_FN.findall(expr):
            if window != "$__rate_interval":
                errors.append(f"{where}: {fn}() window is [{window}], use [$__rate_interval]")
        for name, matchers in SELECTOR.findall(expr):
            if name.startswith(SHARED) and "job" not in (matchers or ""):
                errors.append(f"{where}: {name} without a job matcher")
            if name in ("abgate_arm_weight", "abgate_arm_up", "abgate_assignments_total",
                        "abgate_failovers_total", "predictions_total", "prediction_errors_total",
                        "feedback_total") and matchers and "variant" in matchers \
                    and "$variant" not in matchers and "variant!=" not in matchers:
                errors.append(f"{where}: {name} filters variant without $variant")
        if "histogram_quantile" in expr and "prediction_duration_seconds" in expr:
            n = expr.count("histogram_quantile")
            if len(QUANTILE.findall(expr)) != n:
                errors.append(f"{where}: latency quantile not of the form histogram_quantile(q, "
                              f"sum by (le, variant) (rate(prediction_duration_seconds_bucket"
                              f"{{job=\"...\"}}[$__rate_interval])))")
    return dash, errors


def live(dash, base):
    errors = []
    for panel, t in targets(dash):
        expr = t["expr"].replace("$__rate_interval", "1m").replace("$variant", ".*")
        url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except Exception as e:  # noqa: BLE001 - report any failure
            errors.append(f"panel {panel.get('title')!r} {t.get('refId')}: {e}")
            continue
        n = len(body.get("data", {}).get("result", []))
        print(f"  {n:3d} series  {panel.get('title')} [{t.get('legendFormat', '')}]")
        if body.get("status") != "success" or n == 0:
            errors.append(f"panel {panel.get('title')!r} {t.get('refId')}: no data for {expr}")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", help="base URL of a Prometheus scraping a stack with traffic")
    args = ap.parse_args()
    failed = False
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        print(f"no dashboards in {DASHBOARDS}")
        return 1
    for path in files:
        dash, errors = lint(path)
        if args.prometheus:
            errors += live(dash, args.prometheus)
        n = sum(1 for _ in targets(dash))
        if errors:
            failed = True
            print(f"FAILED {path.relative_to(HERE.parent)} ({n} queries)")
            for e in errors:
                print(f"  - {e}")
        else:
            print(f"OK {path.relative_to(HERE.parent)} ({n} queries)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
