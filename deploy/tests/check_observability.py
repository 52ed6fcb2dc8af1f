#!/usr/bin/env python3
"""Checks of the Grafana dashboard and the Prometheus alert rules (stdlib only).

Driven by deploy/tests/check-observability.sh, which starts the worker and Prometheus:

  structure  the dashboard JSON: template variables, unique panel ids, a layout without
             overlaps, and on every target an expression on ${datasource} over
             [$__rate_interval], filtered by $job or $queue, naming only metrics that the
             worker, RabbitMQ or Prometheus export; and a panel for each view the dashboard owes
  wait       polls a running Prometheus, under a deadline, until the targets are up and the
             load is scraped (--before-load: until the series exist at all)
  live       against that Prometheus: the metric names really exported, every dashboard
             expression and every loaded alert rule evaluated through the HTTP API (an error,
             or a panel without a series, fails), alert states and panel values against the
             known load
"""

import argparse
import datetime
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Contract section 6 (the histogram as its three series). The live check compares this set
# with the names Prometheus scraped from the worker, both ways.
WORKER_METRICS = {
    "signup_events_total", "signup_conflicts_total", "signup_retries_total",
    "signup_founding_exhausted_total", "signup_founding_capacity", "signup_founding_assigned",
    "signup_founding_remaining", "signup_founding_burned", "signup_founding_pooled",
    "signup_founding_reclaimed_total", "signup_processing_duration_seconds_bucket",
    "signup_processing_duration_seconds_sum", "signup_processing_duration_seconds_count",
}
# rabbitmq_prometheus at /metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count,
# labelled {vhost, queue} (checked against the live scrape).
RABBITMQ_METRICS = {
    "rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked",
    "rabbitmq_detailed_queue_messages", "rabbitmq_detailed_queue_consumers",
}
KNOWN = WORKER_METRICS | RABBITMQ_METRICS | {"up"}
W = 'job="signup-worker"'

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
VARIABLE = re.compile(r"\$\{?(__rate_interval|__interval|__range|job|queue|datasource)\}?")

FAILURES = []


def check(cond, msg):
    if cond:
        print(f"  ok   {msg}")
    else:
        FAILURES.append(msg)
        print(f"  FAIL {msg}")
    return cond


def all_ok(problems, summary):
    for msg in problems:
        check(False, msg)
    return check(not problems, summary)


def metric_names(expr):
    """Metric names a PromQL expression selects (a lexical scan, enough for our queries)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    s = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", s)  # label matchers, range windows
    s = re.sub(GROUPING, " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]*", " ", s)
    return {m[0] for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s)
            if not s[m.end():].lstrip().startswith("(") and m[0].lower() not in PROMQL_KEYWORDS}


def panels(dash):
    """Every panel, rows' nested panels included."""
    stack = list(reversed(dash.get("panels", [])))
    while stack:
        p = stack.pop()
        yield p
        stack.extend(reversed(p.get("panels", [])))


def ds_ok(ds):
    return (ds.get("uid") if isinstance(ds, dict) else ds) in ("${datasource}", "$datasource")


# ---------------------------------------------------------------------------------- structure


def structure(args):
    print(f"dashboard structure: {args.dashboard}")
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    if not check(all(k in dash for k in ("uid", "title", "schemaVersion", "panels", "templating")),
                 "dashboard has uid, title, schemaVersion, panels, templating"):
        return
    var = {v.get("name"): v for v in dash["templating"].get("list", [])}
    ds, job, queue = var.get("datasource", {}), var.get("job", {}), var.get("queue", {})
    job_query = job.get("query")
    job_query = job_query.get("query") if isinstance(job_query, dict) else job_query
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus", "variable datasource: any Prometheus data source")
    check(job.get("type") == "query" and job_query == "label_values(signup_events_total, job)" and ds_ok(job.get("datasource"))
          and job.get("current", {}).get("value") == "signup-worker",
          "variable job: label_values(signup_events_total, job) on ${datasource}, default signup-worker")
    check(queue.get("type") in ("textbox", "custom") and queue.get("current", {}).get("value") == "tenant.signups",
          "variable queue: free text, default tenant.signups")

    ps = list(panels(dash))
    ids = [p.get("id") for p in ps]
    check(all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"{len(ps)} panels (rows included), integer ids, unique")
    cells, layout = {}, []
    for p in ps:
        gp = p.get("gridPos") or {}
        if not (all(isinstance(gp.get(k), int) for k in "hwxy") and gp["x"] + gp["w"] <= 24):
            layout.append(f"panel {p.get('id')}: gridPos {gp} not within the 24 columns")
            continue
        mine = {(x, y) for x in range(gp["x"], gp["x"] + gp["w"]) for y in range(gp["y"], gp["y"] + gp["h"])}
        if overlap := {cells[c] for c in mine if c in cells}:
            layout.append(f"panel {p.get('id')} overlaps panels {sorted(overlap)}")
        cells.update(dict.fromkeys(mine, p.get("id")))
    all_ok(layout, "layout: every panel within the grid, no overlaps")

    exprs, problems = [], []
    for p in ps:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        targets = p.get("targets") or []
        if p.get("type") == "row":
            problems += [f"{where}: a row with targets"] if targets else []
            continue
        refs = [t.get("refId") for t in targets]
        if not (p.get("title") and targets and all(refs) and len(set(refs)) == len(refs)):
            problems.append(f"{where}: needs a title and targets with unique refIds")
        for t in targets:
            expr = t.get("expr") or ""
            exprs.append((p.get("type"), expr))
            names = metric_names(expr)
            problems += [f"{where}: {msg}: {expr}" for bad, msg in (
                (not expr.strip(), "no expression"),
                (not ds_ok(t.get("datasource") or p.get("datasource")), "data source is not ${datasource}"),
                (any(w != "$__rate_interval" for w in re.findall(r"\[([^\]]*)\]", expr)), "a range other than [$__rate_interval]"),
                (names - KNOWN, f"metrics nobody exports {sorted(names - KNOWN)}"),
                (names & WORKER_METRICS and not re.search(r'job=~?"\$job"', expr), 'worker series not filtered by job=~"$job"'),
                (names & RABBITMQ_METRICS and not re.search(r'queue="\$queue(\.retry|\.dlq)?"', expr),
                 'RabbitMQ series not filtered by queue="$queue..."'),
            ) if bad]
    all_ok(problems, f"{len(exprs)} targets: expression, ${{datasource}}, [$__rate_interval], job/queue filter, known metric names")

    # The views the dashboard owes (the issue that asked for it).
    wanted = [(None, s) for s in (
        "by (outcome) (rate(signup_events_total", "by (kind) (rate(signup_conflicts_total",
        "by (reason) (rate(signup_retries_total", 'outcome=~"invalid|dead_lettered"', "sum(up{",
        "histogram_quantile(0.50", "histogram_quantile(0.95", "histogram_quantile(0.99",
        'rabbitmq_detailed_queue_messages_ready{queue="$queue"}', 'rabbitmq_detailed_queue_messages_unacked{queue="$queue"}',
        '{queue="$queue.retry"}', '{queue="$queue.dlq"}', "signup_founding_exhausted_total",
    )] + [("gauge", "signup_founding_remaining")]
    wanted += [("timeseries", f"signup_founding_{m}") for m in ("capacity", "assigned", "remaining")]
    missing = [f"{want or 'any'} panel with {part}" for want, part in wanted
               if not any(want in (None, t) and part in e for t, e in exprs)]
    check(not missing, f"a panel for each of the {len(wanted)} views owed (missing: {missing})")


# ---------------------------------------------------------------------------- Prometheus API


def api(prom, path, **params):
    url = f"{prom}{path}" + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400/422 carry the PromQL error as JSON
        try:
            return json.load(e)
        except ValueError:
            return {"status": "error", "error": f"HTTP {e.code}"}


def query(prom, expr):
    """(error or None, result list)."""
    body = api(prom, "/api/v1/query", query=expr)
    if body.get("status") != "success":
        return f"{body.get('errorType', '')}: {body.get('error', body)}", []
    data = body["data"]
    return None, ([{"metric": {}, "value": data["result"]}] if data["resultType"] == "scalar" else data["result"])


def scalar(prom, expr):
    err, res = query(prom, expr)
    return None if err or not res else float(res[0]["value"][1])


def rules(prom):
    return [r for g in api(prom, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]


def wait(args):
    prom, q, m = args.prom, args.queue, "rabbitmq_detailed_queue_messages"
    conditions = [(f"all {args.targets} scrape targets up",
                   lambda: scalar(prom, "count(up == 1)") == args.targets == scalar(prom, "count(up)"))]
    if args.before_load:
        conditions.append(("the latency histogram is scraped (warm-up events processed)",
                           lambda: query(prom, f"signup_processing_duration_seconds_count{{{W}}}")[1] != []))
        if args.rabbitmq:
            conditions.append((f"RabbitMQ series for {q}, {q}.retry and {q}.dlq",
                               lambda: scalar(prom, f'count({m}{{queue=~"{q}|{q}.retry|{q}.dlq"}})') == 3))
    else:
        since = time.time()
        conditions += [
            (f"Prometheus has scraped all {args.count} events",
             lambda: (scalar(prom, f"sum(signup_events_total{{{W}}})") or 0) >= args.count),
            (f"rate() over [{args.rate_interval}] has samples",
             lambda: query(prom, f"rate(signup_processing_duration_seconds_count{{{W}}}[{args.rate_interval}])")[1] != []),
            ("every rule evaluated on the scraped load",
             lambda: all(r.get("health") == "ok" and rfc3339(r.get("lastEvaluation", "")) > since for r in rules(prom))),
        ]
        if args.rabbitmq:
            conditions.append((f"RabbitMQ shows {q} drained and {q}.dlq filled",
                               lambda: scalar(prom, f'sum({m}{{queue="{q}"}})') == 0
                               and (scalar(prom, f'sum({m}{{queue="{q}.dlq"}})') or 0) > 0))
    deadline = time.monotonic() + args.timeout
    for label, cond in conditions:
        while not poll(cond):
            if time.monotonic() > deadline:
                return check(False, f"timed out after {args.timeout:.0f}s waiting until: {label}")
            time.sleep(0.5)
        check(True, label)


def poll(cond):
    try:
        return cond()
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def rfc3339(ts):
    """Unix time of Prometheus's RFC 3339 timestamps (nanoseconds, which Python cannot read)."""
    try:
        return datetime.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def live(args):
    prom, q = args.prom, args.queue
    values = {"__rate_interval": args.rate_interval, "__interval": "1s", "__range": "5m",
              "job": "signup-worker", "queue": q, "datasource": "prometheus"}

    print("metric names Prometheus scraped:")
    def names(job):
        return set(api(prom, "/api/v1/label/__name__/values", **{"match[]": f'{{job="{job}"}}'})["data"])

    worker = {n for n in names("signup-worker") if n.startswith("signup_")}
    check(worker == WORKER_METRICS, f"the worker exports exactly the {len(WORKER_METRICS)} signup_* series of the contract "
          f"(missing {sorted(WORKER_METRICS - worker)}, unexpected {sorted(worker - WORKER_METRICS)})")
    if args.rabbitmq:
        missing = RABBITMQ_METRICS - names("rabbitmq-queues")
        check(not missing, f"RabbitMQ's /metrics/detailed exports the queue series the dashboard reads (missing {sorted(missing)})")

    print(f"dashboard queries ($job=signup-worker, $queue={q}, $__rate_interval={args.rate_interval}):")
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    for p in panels(dash):
        for t in p.get("targets") or []:
            label = f"[{p['id']}] {VARIABLE.sub(lambda m: values[m[1]], p.get('title', ''))} / {t.get('legendFormat') or t['refId']}"
            if metric_names(t["expr"]) & RABBITMQ_METRICS and not args.rabbitmq:
                print(f"  skip {label}: RabbitMQ metrics not scraped")
                continue
            err, res = query(prom, VARIABLE.sub(lambda m: values[m[1]], t["expr"]))
            shown = ", ".join(",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())) + f"={s['value'][1]}" for s in res[:4])
            check(not err and res, f"{label}: {err or (f'{len(res)} series ({shown})' if res else 'no series')}")
    jobs = api(prom, "/api/v1/label/job/values", **{"match[]": "signup_events_total"}).get("data", [])
    check("signup-worker" in jobs, f"variable job: label_values(signup_events_total, job) = {jobs}")

    print(f"alert rules as loaded by Prometheus (queue names rewritten to {q}):")
    loaded = rules(prom)
    check(len(loaded) == args.rules, f"Prometheus loaded {len(loaded)} rules, the file has {args.rules}")
    for r in loaded:
        err, res = query(prom, r["query"])
        unknown = metric_names(r["query"]) - KNOWN
        check(not err and r.get("health") == "ok" and not unknown,
              f"{r['name']}: {err or r.get('lastError') or ''} health {r.get('health')}, state {r.get('state')}, "
              f"{len(res)} series now{f', unknown metrics {sorted(unknown)}' if unknown else ''}")

    print("alert states after the load (capacity 20 exhausted, invalid events dead-lettered):")
    expected = {"SignupFoundingExhausted": "active", "SignupWorkerDown": "inactive", "SignupFoundingNearlyExhausted": "inactive",
                "SignupFoundingNumberConflict": "inactive", "SignupFoundingNumbersStuckBurned": "inactive"}
    if args.rabbitmq:
        expected |= {"SignupDLQGrowing": "active", "SignupNoReadyReplica": "inactive"}

    def state(s):
        return "active" if s in ("pending", "firing") else s

    # A rule is evaluated at a timestamp aligned to the evaluation interval, which can precede
    # the last scrape: poll until the states settle, under a deadline.
    deadline = time.monotonic() + 20
    while True:
        got = {r["name"]: r.get("state") for r in rules(prom)}
        if all(state(got.get(n)) == want for n, want in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name, want in expected.items():
        check(state(got.get(name)) == want, f"{name} is {got.get(name)} (expected {want})")
    for name in sorted(set(got) - set(expected)):
        print(f"  info {name} is {got[name]} (not asserted: depends on the machine)")

    print("panel values against the known load:")
    expectations = [
        ("capacity = 20", f"max(signup_founding_capacity{{{W}}})", lambda v: v == 20),
        ("assigned = 20", f"max(signup_founding_assigned{{{W}}})", lambda v: v == 20),
        ("remaining, burned and pooled = 0", f"max(signup_founding_remaining{{{W}}}) + max(signup_founding_burned{{{W}}})"
         f" + max(signup_founding_pooled{{{W}}})", lambda v: v == 0),
        ("unnumbered signups (exhausted) > 0", f"sum(signup_founding_exhausted_total{{{W}}})", lambda v: v > 0),
        ("created > 20", f'sum(signup_events_total{{{W},outcome="created"}})', lambda v: v > 20),
        ("duplicates and invalid > 0",
         f'min(sum by (outcome) (signup_events_total{{{W},outcome=~"duplicate|invalid"}}))', lambda v: v > 0),
        ("founding_number conflicts = 0", f'sum(signup_conflicts_total{{{W},kind="founding_number"}})', lambda v: v == 0),
        ("p99 latency over 5m > 0",
         f"histogram_quantile(0.99, sum by (le) (rate(signup_processing_duration_seconds_bucket{{{W}}}[5m])))", lambda v: v > 0),
        ("latency observations = events",
         f"sum(signup_processing_duration_seconds_count{{{W}}}) - sum(signup_events_total{{{W}}})", lambda v: v == 0),
    ]
    if args.rabbitmq:
        expectations += [
            ("DLQ depth = invalid + dead_lettered",
             f'sum(rabbitmq_detailed_queue_messages{{queue="{q}.dlq"}})'
             f' - sum(signup_events_total{{{W},outcome=~"invalid|dead_lettered"}})',
             lambda v: v == 0),
            ("one consumer on the queue", f'sum(rabbitmq_detailed_queue_consumers{{queue="{q}"}})', lambda v: v == 1),
        ]
    for label, expr, pred in expectations:
        v = scalar(prom, expr)
        check(v is not None and pred(v), f"{label} (got {v})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("structure")
    w, lv = sub.add_parser("wait"), sub.add_parser("live")
    for p in (s, lv):
        p.add_argument("--dashboard", required=True)
    for p in (w, lv):
        p.add_argument("--prom", required=True)
        p.add_argument("--queue", required=True)
        p.add_argument("--rate-interval", default="30s")
        p.add_argument("--rabbitmq", action="store_true", help="RabbitMQ's metrics are scraped")
    w.add_argument("--count", type=int, default=0)
    w.add_argument("--before-load", action="store_true", help="only wait for targets and series")
    w.add_argument("--targets", type=int, required=True)
    w.add_argument("--timeout", type=float, default=60)
    lv.add_argument("--rules", type=int, required=True, help="number of rules in the file")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    {"structure": structure, "wait": wait, "live": live}[args.cmd](args)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:", *FAILURES, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
