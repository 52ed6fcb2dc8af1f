#!/usr/bin/env python3
"""Offline checks of the deployment files in deploy/ (run through check-manifests.sh).

  compose     deploy/compose.yaml against the compose-spec JSON schema, then what a schema cannot
              see: health-check dependencies, mounted paths, ports, the worker replicas and their
              drain time, the shared image, RabbitMQ's plugins, Prometheus' targets.
  kubernetes  base and overlays rendered by `kubectl kustomize` (without it: the base's files as
              written, and a SKIP); built-in kinds validated by kubernetes-validate (strict); then
              the references between resources: env sources, selectors and labels, ports and
              probes, security contexts, the KEDA scaler and the PodMonitor.
  dockerfile  hadolint, then what is particular to this image: the cargo-chef layer, the numeric
              non-root USER that runAsUser repeats, STOPSIGNAL, HEALTHCHECK, the binary, .dockerignore.

The command lines and settings these files pass to the binary, and their values, are checked
against its clap definition by tests/cli_contract.rs. Needs no network and no Docker engine.
"""

import argparse
import base64
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate as kv
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE, DOCKERFILE, K8S = REPO / "deploy/compose.yaml", REPO / "deploy/Dockerfile", REPO / "deploy/kubernetes"

APP_NAME = "signup-worker"
RUNTIME_UID = 10001  # the image's USER, repeated as the pods' runAsUser
CREDENTIALS = {"DATABASE_URL", "AMQP_URL"}  # in Secrets, never in a ConfigMap
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # schemas shipped with kubernetes-validate
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor"}  # no bundled schema
REQUIRED_SERVICES = ["postgres", "rabbitmq", "migrate", "worker", "publish", "prometheus", "grafana"]


class Report:
    failures, passed, skipped = [], 0, 0

    def check(self, cond, what):
        self.passed += bool(cond)
        if not cond:
            self.failures.append(what)
            print(f"  FAIL {what}")
        return bool(cond)

    def info(self, what):
        print(f"  ok   {what}")

    def skip(self, what):
        self.skipped += 1
        print(f"  SKIP: {what}")


R = Report()


def rel(path):
    return str(Path(path).resolve().relative_to(REPO))


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path):
    (doc,) = load_yaml_docs(path)
    return doc


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


# ------------------------------------------------------------------------------------ compose


def command_of(service):
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def bind_mounts(service):
    """(host source, container target, read_only) of each bind mount (short syntax)."""
    out = []
    for v in service.get("volumes") or []:
        parts = str(v).split(":")
        if len(parts) >= 2 and parts[0][:1] in (".", "/", "~"):
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def check_compose(schema_path):
    print(f"\n== compose: {rel(COMPOSE_FILE)}")
    doc = load_yaml(COMPOSE_FILE)
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        print(f"       {'/'.join(map(str, e.path)) or '(root)'}: {e.message[:300]}")
    if R.check(not errors, f"valid against the compose-spec schema ({len(errors)} errors)"):
        R.info(f"valid against the compose-spec JSON schema ({type(validator).__name__})")

    services = doc.get("services") or {}
    base = COMPOSE_FILE.parent
    for name in REQUIRED_SERVICES:
        R.check(name in services, f"service `{name}` exists")
    volumes = set(doc.get("volumes") or {})
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {} for d in deps}
        for dep, spec in deps.items():
            if not R.check(dep in services, f"{name}: depends_on `{dep}` is a service"):
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond == "service_healthy":
                hc = services[dep].get("healthcheck") or {}
                R.check(hc.get("test") and not hc.get("disable"), f"{name}: waits for `{dep}` healthy, which has a healthcheck")
            if cond == "service_completed_successfully":
                R.check(services[dep].get("restart", "no") == "no", f"{name}: waits for `{dep}` to complete, a one-shot")
        for src, target, ro in bind_mounts(svc):
            R.check((base / src).exists(), f"{name}: mounted host path {src} exists (-> {target})")
            R.check(ro, f"{name}: bind mount {src} is read-only")
        for v in svc.get("volumes") or []:
            source = str(v).split(":")[0]
            if source[:1] not in (".", "/", "~"):
                R.check(source in volumes, f"{name}: named volume `{source}` is declared")
        for p in svc.get("ports") or []:
            R.check(str(p).startswith("127.0.0.1:"), f"{name}: published port {p} bound to 127.0.0.1 only")

    # The services running the signup-worker image.
    ours = {n: s for n, s in services.items() if "build" in s}
    R.check(set(ours) == {"migrate", "worker", "publish"}, f"migrate, worker and publish build the image ({sorted(ours)})")
    R.check(len({s.get("image") for s in ours.values()}) == 1, "they share one image name")
    for name, svc in ours.items():
        build = svc["build"]
        R.check((base / build.get("context", ".")).resolve() == REPO, f"{name}: build context is the repository root")
        R.check((REPO / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, f"{name}: builds deploy/Dockerfile")
        env = svc.get("environment") or {}
        for key in CREDENTIALS:
            R.check(urlsplit(str(env.get(key))).hostname in services, f"{name}: {key} names a compose service")
        if command_of(svc)[:1] != ["run"]:
            R.check((svc.get("healthcheck") or {}).get("disable") is True,
                    f"{name}: the image's HEALTHCHECK (it probes `run`) disabled for `{command_of(svc)[:1]}`")

    worker = services.get("worker") or {}
    R.check(((worker.get("deploy") or {}).get("replicas") or 1) > 1, "worker: several replicas")
    R.check(not worker.get("ports") and "container_name" not in worker,
            "worker: no host port and no container_name (the replicas would clash)")
    if "--no-migrate" in command_of(worker):
        cond = ((worker.get("depends_on") or {}).get("migrate") or {}).get("condition")
        R.check(cond == "service_completed_successfully", "worker: `--no-migrate` only after `migrate` completed")
    grace = re.fullmatch(r"(\d+)(s|m)", str(worker.get("stop_grace_period", "10s")))
    R.check(grace and int(grace[1]) * (60 if grace[2] == "m" else 1) >= 30, "worker: stop_grace_period >= 30s (drain)")
    metrics_port = port_of((worker.get("environment") or {}).get("METRICS_ADDR", "0.0.0.0:9464"))
    R.check(str(metrics_port) in map(str, worker.get("expose") or []), f"worker: exposes METRICS_ADDR's port {metrics_port}")

    rabbit = services.get("rabbitmq") or {}
    plugins = [s for s, t, _ in bind_mounts(rabbit) if t == "/etc/rabbitmq/enabled_plugins"]
    if R.check(plugins, "rabbitmq: an enabled_plugins file mounted"):
        text = (base / plugins[0]).read_text(encoding="utf-8").strip()
        m = re.fullmatch(r"\[\s*([a-z0-9_,\s]*)\]\s*\.", text)
        names = {p.strip() for p in (m[1] if m else "").split(",")}
        R.check(m and {"rabbitmq_prometheus", "rabbitmq_management"} <= names,
                f"rabbitmq: enabled_plugins is an Erlang list with rabbitmq_prometheus and rabbitmq_management ({text})")

    mounts = {t: s for s, t, _ in bind_mounts(services.get("prometheus") or {})}
    R.check({"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= set(mounts), "prometheus: config and rules mounted")
    targets = set()
    for job in load_yaml(base / mounts.get("/etc/prometheus/prometheus.yml", "prometheus/prometheus.yml")).get("scrape_configs") or []:
        for sd in job.get("dns_sd_configs") or []:
            targets |= {(job["job_name"], f"{n}:{sd.get('port')}") for n in sd.get("names") or []}
        for sc in job.get("static_configs") or []:
            targets |= {(job["job_name"], t) for t in sc.get("targets") or []}
    R.check((APP_NAME, f"worker:{metrics_port}") in targets, f"prometheus.yml: job {APP_NAME} scrapes every worker on :{metrics_port}")
    R.check(any(t == "rabbitmq:15692" for _, t in targets), "prometheus.yml: scrapes rabbitmq:15692")

    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run(cmd + ["version"], capture_output=True).returncode == 0:
            res = subprocess.run(cmd + ["-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True)
            R.check(res.returncode == 0, f"`{' '.join(cmd)} config -q` accepts the file {res.stderr.strip()[:500]}")
            break
    else:
        R.skip("no compose client (`docker compose`, `docker-compose`): `config -q` not run")


# --------------------------------------------------------------------------------- kubernetes


def kubectl_render(d):
    res = subprocess.run(["kubectl", "kustomize", str(d)], capture_output=True, text=True)
    if not R.check(res.returncode == 0, f"kubectl kustomize {rel(d)} {res.stderr.strip()[:800]}"):
        return None
    return [doc for doc in yaml.safe_load_all(res.stdout) if doc is not None]


def base_files():
    """Without kubectl: the base's resources as written (the base only adds a label)."""
    k = load_yaml(K8S / "base" / "kustomization.yaml")
    return [doc for f in k.get("resources") or [] for doc in load_yaml_docs(K8S / "base" / f)]


def check_kubernetes():
    print(f"\n== kubernetes: {rel(K8S)}")
    dirs = [K8S / "base"] + sorted(p for p in (K8S / "overlays").glob("*") if p.is_dir())
    R.check(len(dirs) > 1, "at least one overlay in deploy/kubernetes/overlays")
    if shutil.which("kubectl"):
        v = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
        R.info("rendered by kubectl kustomize (" + " / ".join(v.split("\n")).strip(" /") + ")")
        renderings = [(rel(d), kubectl_render(d), d.parent.name == "overlays") for d in dirs]
    else:
        R.skip("kubectl not found, overlays not rendered (the base's files are checked as written)")
        renderings = [("deploy/kubernetes/base (files as written)", base_files(), False)]
    for label, resources, is_overlay in renderings:
        if resources is not None:
            check_rendering(resources, label, is_overlay)


def by_kind(resources, kind):
    return [r for r in resources if r.get("kind") == kind]


def one(resources, kind, label):
    found = by_kind(resources, kind)
    R.check(len(found) == 1, f"{label}: exactly one {kind} (found {len(found)})")
    return found[0] if found else None


def name_of(r):
    return (r.get("metadata") or {}).get("name")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_data(secret):
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | {k: str(v) for k, v in (secret.get("stringData") or {}).items()}


def validate_builtin(resources, label):
    builtin = [r for r in resources if r.get("kind") not in CRD_KINDS]
    for r, version in ((r, v) for r in builtin for v in K8S_VERSIONS):
        try:
            kv.validate(r, version, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as e:  # not found: an unknown CRD kind
            where = ".".join(map(str, getattr(e, "path", [])))
            R.check(False, f"{label}: {r.get('kind')}/{name_of(r)} against Kubernetes {version} (strict): {where}: {e.message[:300]}")
    R.info(f"{label}: {len(builtin)} built-in resources validated against Kubernetes {', '.join(K8S_VERSIONS)} (strict)")


def check_pod(pod, where, configmaps, secrets, required_env):
    """Security context and env references of a pod template's spec."""
    psc = pod.get("securityContext") or {}
    R.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == RUNTIME_UID and psc.get("runAsGroup") not in (None, 0),
            f"{where}: pod runs as non-root uid {RUNTIME_UID} (the image's USER), group not 0")
    R.check(pod.get("automountServiceAccountToken") is False, f"{where}: no service account token mounted")
    for c in pod.get("containers") or []:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        R.check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in ((sc.get("capabilities") or {}).get("drop") or []) and not sc.get("privileged")
                and sc.get("runAsUser") in (None, RUNTIME_UID),
                f"{cw}: no privilege escalation, read-only root, ALL capabilities dropped")
        names = set()
        for ef in c.get("envFrom") or []:
            ref = ef.get("configMapRef") or ef.get("secretRef") or {}
            pool = configmaps if "configMapRef" in ef else secrets
            if R.check(ref.get("name") in pool and not ef.get("prefix"), f"{cw}: envFrom `{ref.get('name')}` is in the rendering"):
                names |= set(pool[ref["name"]])
        for e in c.get("env") or []:
            names.add(e.get("name"))
            vf = e.get("valueFrom") or {}
            ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
            if ref:
                pool = secrets if "secretKeyRef" in vf else configmaps
                R.check(ref.get("key") in pool.get(ref.get("name"), {}),
                        f"{cw}: env {e['name']} from `{ref.get('name')}`/{ref.get('key')}, which is in the rendering")
        for key in sorted(required_env):
            R.check(key in names, f"{cw}: gets {key}")


def check_rendering(resources, label, is_overlay):
    R.info(f"{label}: {len(resources)} resources: {', '.join(sorted({r.get('kind') for r in resources}))}")
    validate_builtin(resources, label)
    configmaps = {name_of(r): r.get("data") or {} for r in by_kind(resources, "ConfigMap")}
    secrets = {name_of(r): secret_data(r) for r in by_kind(resources, "Secret")}
    if is_overlay:
        nss = {(r.get("metadata") or {}).get("namespace") for r in resources if r.get("kind") != "Namespace"}
        R.check(len(nss) == 1 and None not in nss, f"{label}: every resource in one namespace ({nss})")
    for r in resources:
        if r.get("kind") != "Namespace":
            R.check(((r.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name") == APP_NAME,
                    f"{label}: {r.get('kind')}/{name_of(r)} labelled app.kubernetes.io/name={APP_NAME}")
    settings = {}
    for name, data in configmaps.items():
        R.check(not set(data) & CREDENTIALS, f"{label}: ConfigMap {name} holds no credentials (they go in the Secret)")
        settings |= data
    metrics_port = port_of(settings.get("METRICS_ADDR", "0.0.0.0:9464"))
    prefetch, queue = int(settings.get("PREFETCH", "300")), settings.get("SIGNUP_QUEUE", "tenant.signups")

    # The worker Deployment and the migration Job.
    dep, job = one(resources, "Deployment", label), one(resources, "Job", label)
    pod_labels, container, job_labels = {}, {}, {}
    if dep:
        spec = dep.get("spec") or {}
        pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        R.check(matches((spec.get("selector") or {}).get("matchLabels"), pod_labels), f"{label}: Deployment selector matches its pods")
        R.check("replicas" not in spec, f"{label}: Deployment leaves spec.replicas to KEDA")
        R.check((pod.get("terminationGracePeriodSeconds") or 0) >= 30, f"{label}: terminationGracePeriodSeconds >= 30 (drain)")
        containers = pod.get("containers") or [{}]
        R.check(len(containers) == 1, f"{label}: Deployment has one container")
        container = containers[0]
        R.check(container.get("args", [])[:1] == ["run"], f"{label}: the Deployment runs `signup-worker run`")
        ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        R.check(ports.get("metrics") == metrics_port, f"{label}: container port `metrics` is METRICS_ADDR's port {metrics_port}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (container.get(probe) or {}).get("httpGet") or {}
            R.check(get.get("path") == path and get.get("port") in ("metrics", metrics_port),
                    f"{label}: {probe} GET {path} on the metrics port")
        res = container.get("resources") or {}
        R.check({"cpu", "memory"} <= set(res.get("requests") or {}) and "memory" in (res.get("limits") or {}),
                f"{label}: cpu and memory requests, memory limit")
        check_pod(pod, f"{label}: Deployment", configmaps, secrets, CREDENTIALS)
    if job:
        spec = job.get("spec") or {}
        job_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        jc = (pod.get("containers") or [{}])[0]
        args = jc.get("args") or []
        R.check(args[:1] == ["migrate"] and "--grant-to" in args,
                f"{label}: the Job runs `signup-worker migrate --grant-to` (owner migrates, runtime role granted)")
        R.check("--no-migrate" in (container.get("args") or []), f"{label}: the replicas run with --no-migrate")
        R.check(jc.get("image") == container.get("image"), f"{label}: Job and Deployment run the same image ({jc.get('image')})")
        R.check(pod.get("restartPolicy") in ("Never", "OnFailure") and isinstance(spec.get("backoffLimit"), int)
                and isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{label}: Job restartPolicy, backoffLimit and TTL set")
        R.check(not matches(((dep or {}).get("spec") or {}).get("selector", {}).get("matchLabels"), job_labels),
                f"{label}: the Deployment's selector does not take the Job's pods")
        check_pod(pod, f"{label}: Job", configmaps, secrets, {"DATABASE_URL"})

    svc = one(resources, "Service", label)
    if svc:
        R.check(matches((svc.get("spec") or {}).get("selector"), pod_labels), f"{label}: Service selects the worker pods")
        for p in (svc.get("spec") or {}).get("ports") or []:
            R.check(p.get("targetPort") in ("metrics", metrics_port), f"{label}: Service port {p.get('name')} targets the metrics port")

    pm = one(resources, "PodMonitor", label)
    if pm:
        spec = pm.get("spec") or {}
        sel = (spec.get("selector") or {}).get("matchLabels")
        R.check(matches(sel, pod_labels) and not matches(sel, job_labels),
                f"{label}: PodMonitor selects the worker pods, not the Job's")
        eps = spec.get("podMetricsEndpoints") or []
        R.check(eps and all(ep.get("port") == "metrics" and ep.get("path", "/metrics") == "/metrics" for ep in eps),
                f"{label}: PodMonitor scrapes /metrics on the `metrics` port")
        R.check(pod_labels.get(spec.get("jobLabel")) == APP_NAME,
                f"{label}: PodMonitor jobLabel gives job=\"{APP_NAME}\" (dashboard, alerts)")

    so = one(resources, "ScaledObject", label)
    so_spec = (so or {}).get("spec") or {}
    pdb = one(resources, "PodDisruptionBudget", label)
    if pdb:
        spec = pdb.get("spec") or {}
        R.check(matches((spec.get("selector") or {}).get("matchLabels"), pod_labels), f"{label}: PDB selects the worker pods")
        R.check(("minAvailable" in spec) != ("maxUnavailable" in spec), f"{label}: PDB sets one of minAvailable, maxUnavailable")
        R.check(spec.get("minAvailable", 0) < so_spec.get("minReplicaCount", 1),
                f"{label}: PDB minAvailable below the minimum replicas")
    if so:
        check_keda(so_spec, label, dep, secrets, by_kind(resources, "TriggerAuthentication"), queue, prefetch)


def check_keda(spec, label, dep, secrets, auths, queue, prefetch):
    tref = spec.get("scaleTargetRef") or {}
    R.check(dep and tref.get("name") == name_of(dep) and tref.get("kind", "Deployment") == "Deployment",
            f"{label}: ScaledObject scales the worker Deployment")
    mn, mx = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    R.check(1 <= mn <= mx, f"{label}: 1 <= minReplicaCount ({mn}) <= maxReplicaCount ({mx})")
    behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
    if behavior is not None:  # the real autoscaling/v2 schema, inside a stub HPA
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "stub"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stub"},
                        "maxReplicas": 2, "behavior": behavior}}
        try:
            kv.validate(hpa, K8S_VERSIONS[0], strict=True)
            R.check(True, f"{label}: ScaledObject's HPA behavior valid against autoscaling/v2")
        except kv.ValidationError as e:
            R.check(False, f"{label}: ScaledObject's HPA behavior: {'.'.join(map(str, e.path))}: {e.message[:200]}")
    auths = {name_of(a): (a.get("spec") or {}).get("secretTargetRef") or [] for a in auths}
    triggers = spec.get("triggers") or []
    R.check(triggers, f"{label}: ScaledObject has triggers")
    for t in triggers:
        md = t.get("metadata") or {}
        # amqp mode counts ready messages only: busy replicas, whose messages are unacked, look idle.
        R.check(t.get("type") == "rabbitmq" and md.get("protocol") == "http" and md.get("mode") == "QueueLength"
                and md.get("excludeUnacknowledged", "false") == "false",
                f"{label}: trigger counts ready + unacked messages (rabbitmq, http, QueueLength)")
        R.check(all(isinstance(v, str) for v in md.values()), f"{label}: trigger metadata values are strings")
        R.check(md.get("queueName") == queue, f"{label}: trigger queueName is SIGNUP_QUEUE ({queue})")
        R.check(float(md.get("value", 0)) > prefetch, f"{label}: trigger value per replica above PREFETCH ({prefetch})")
        refs = auths.get((t.get("authenticationRef") or {}).get("name"))
        if R.check(refs, f"{label}: trigger authenticationRef is a TriggerAuthentication in the rendering"):
            for ref in refs:
                R.check(ref.get("key") in secrets.get(ref.get("name"), {}),
                        f"{label}: TriggerAuthentication's {ref.get('name')}/{ref.get('key')} exists")
            host = [secrets.get(r.get("name"), {}).get(r.get("key"), "") for r in refs if r.get("parameter") == "host"]
            R.check(host and urlsplit(host[0]).scheme in ("http", "https"),
                    f"{label}: the scaler's `host` is an http(s) management API URL")


# --------------------------------------------------------------------------------- dockerfile


def dockerfile_stages(text):
    """[{base, name, ins: [(KEYWORD, arguments)]}]; continuations joined, comments dropped."""
    stages, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not (buf or line.strip()):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        kw, _, args = (buf + line).strip().partition(" ")
        buf = ""
        if kw.upper() == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            stages.append({"base": m[1], "name": m[2], "ins": []})
        elif stages:
            stages[-1]["ins"].append((kw.upper(), args.strip()))
    return stages


def check_dockerfile():
    print(f"\n== dockerfile: {rel(DOCKERFILE)}")
    ver = subprocess.run(["hadolint", "--version"], capture_output=True, text=True).stdout.strip()
    res = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True)
    if R.check(res.returncode == 0, f"hadolint: {res.stdout.strip()} {res.stderr.strip()}"):
        R.info(f"hadolint passed, style findings included ({ver})")

    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    R.check(len(stages) >= 3, f"multi-stage build ({[s['name'] for s in stages]})")
    # cargo-chef: the dependency layer is built from recipe.json alone, before the sources,
    # so that it stays cached until Cargo.toml or Cargo.lock change.
    for s in stages:
        runs = [(i, a) for i, (k, a) in enumerate(s["ins"]) if k == "RUN"]
        cook = [i for i, a in runs if "cargo chef cook" in a]
        if not cook:
            continue
        copies = [(i, a) for i, (k, a) in enumerate(s["ins"]) if k == "COPY"]
        R.check(any(i < cook[0] and "recipe.json" in a for i, a in copies), "builder: recipe.json copied before `cargo chef cook`")
        R.check(all(i > cook[0] for i, a in copies if "--from=" not in a), "builder: sources copied after `cargo chef cook`")
        R.check(all("--locked" in a for i, a in runs if re.search(r"cargo (chef cook|build)", a)), "builder: cargo runs --locked")
    R.check(sum("cargo chef cook" in a for s in stages for k, a in s["ins"]) == 1, "one stage runs `cargo chef cook`")

    final = stages[-1] if stages else {"base": "", "ins": []}
    kws = {}
    for k, a in final["ins"]:
        kws.setdefault(k, []).append(a)
    release = re.search(r"-(\w+)$", stages[0]["base"] if stages else "")
    R.check(release and final["base"] == f"debian:{release[1]}-slim",
            f"runtime on the builder's Debian release, slim (glibc matches): {final['base']}")
    R.check(any(re.search(r"--from=\S+ .*/signup-worker /usr/local/bin/signup-worker$", c) for c in kws.get("COPY", [])),
            "runtime copies the signup-worker binary from a build stage into /usr/local/bin")
    user = re.fullmatch(r"(\d+)(?::(\d+))?", (kws.get("USER") or [""])[-1])
    R.check(user and int(user[1]) == RUNTIME_UID and user[2] not in (None, "0"),
            f"USER is the numeric non-root uid:gid {RUNTIME_UID} that runAsNonRoot can verify")
    R.check(kws.get("STOPSIGNAL") == ["SIGTERM"], "STOPSIGNAL SIGTERM (`run` drains on it)")
    hc = (kws.get("HEALTHCHECK") or [""])[-1]
    cmd = re.search(r"\bCMD\s+(\[.*\])$", hc)
    cmd = json.loads(cmd[1]) if cmd else []
    R.check("/healthz" in hc and "curl" not in hc and "wget" not in hc,
            "HEALTHCHECK probes /healthz without curl or wget (not in the slim image)")
    if R.check(cmd[:2] == ["bash", "-c"] and "--timeout=" in hc, "HEALTHCHECK is `bash -c` in exec form, with a timeout"):
        res = subprocess.run(["bash", "-n", "-c", cmd[2]], capture_output=True, text=True)
        R.check(res.returncode == 0, f"HEALTHCHECK script passes `bash -n` {res.stderr.strip()}")

    # The build context is the repository root: the workspace must get through .dockerignore.
    ignore = REPO / ".dockerignore"
    if R.check(ignore.exists(), ".dockerignore at the build context root"):
        pats = [p.strip() for p in ignore.read_text(encoding="utf-8").splitlines() if p.strip() and not p.startswith("#")]

        def ignored(path):
            hit = False
            for p in pats:
                pp = p.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(path, pp) or path.startswith(pp + "/"):
                    hit = not p.startswith("!")
            return hit

        R.check(ignored("target") and ignored(".git"), ".dockerignore excludes target/ and .git/")
        kept = ("Cargo.toml", "Cargo.lock", "src/main.rs", "entity/Cargo.toml", "migration/Cargo.toml")
        R.check(not any(map(ignored, kept)), f".dockerignore keeps {', '.join(kept)}")
    R.skip("`docker build` not run (no Docker engine here)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compose-schema", required=True, help="the compose-spec JSON schema")
    args = ap.parse_args()
    print(f"deploy checks in {REPO}: python {sys.version.split()[0]}, PyYAML {yaml.__version__}, "
          f"kubernetes-validate {kv.version.__version__}")
    for check in (lambda: check_compose(args.compose_schema), check_kubernetes, check_dockerfile):
        try:
            check()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
            R.check(False, f"could not check: {type(e).__name__}: {e}")
    print()
    status = "FAILED" if R.failures else "OK"
    print(f"{status}: {len(R.failures)} failed, {R.passed} passed, {R.skipped} skipped")
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
