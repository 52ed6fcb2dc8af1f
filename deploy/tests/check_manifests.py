#!/usr/bin/env python3
"""Offline checks of the deployment files in deploy/.

Run it through deploy/tests/check-manifests.sh, which prepares a virtualenv with the pinned
tools (PyYAML, kubernetes-validate and the compose-spec JSON schema) and passes their paths.

What is checked:
  compose     deploy/compose.yaml against the compose-spec JSON schema, plus the services,
              replicas, commands, environment names (contract settings only), bind-mounted
              host paths, health-check dependencies and the RabbitMQ plugin file; and
              `docker compose config -q` when a compose client is installed.
  kubernetes  deploy/kubernetes/base and overlays/*: rendered by a built-in renderer for the
              kustomize subset the files use, and by `kubectl kustomize` when kubectl exists
              (both renderings must agree); every built-in kind validated by
              kubernetes-validate (bundled OpenAPI schemas, strict mode); the CRD kinds
              (KEDA ScaledObject and TriggerAuthentication, Prometheus Operator PodMonitor or
              ServiceMonitor) checked structurally; cross-references (env, selectors, ports,
              probes, scale target, secrets) checked between resources.
  dockerfile  deploy/Dockerfile structure (multi-stage, cargo-chef layer before the sources,
              numeric non-root USER, STOPSIGNAL, HEALTHCHECK, ENTRYPOINT), the root
              .dockerignore, and hadolint when it is on PATH.

Exit status 0 when everything passed, 1 otherwise. Nothing here needs the network or a
Docker engine.
"""

import argparse
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "kubernetes"

# Contract section 2 (plus BATCH_SIZE, a documented setting of `run`).
CONTRACT_SETTINGS = {
    "DATABASE_URL",
    "AMQP_URL",
    "SIGNUP_EXCHANGE",
    "SIGNUP_QUEUE",
    "SIGNUP_QUEUE_TYPE",
    "MAX_DELIVERIES",
    "METRICS_ADDR",
    "PREFETCH",
    "BATCH_SIZE",
    "FOUNDING_CAPACITY",
    "RUST_LOG",
    "LOG_FORMAT",
}
SECRET_SETTINGS = {"DATABASE_URL", "AMQP_URL"}
INTEGER_SETTINGS = {"MAX_DELIVERIES", "PREFETCH", "BATCH_SIZE", "FOUNDING_CAPACITY"}

REQUIRED_COMPOSE_SERVICES = ["postgres", "rabbitmq", "migrate", "worker", "publish", "prometheus", "grafana"]
SIGNUP_SERVICES = ["migrate", "worker", "publish"]
PUBLISH_DEMO_ARGS = [
    "publish", "--count", "2000", "--duplicates", "0.05", "--slug-collisions", "0.03",
    "--invalid", "0.02", "--demo", "0.1", "--no-progress",
]

# Kubernetes versions whose schemas (shipped with kubernetes-validate) are used.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "APIService",
    "ClusterTriggerAuthentication",
}
APP_NAME = "signup-worker"
RUNTIME_UID = 10001


class Report:
    def __init__(self):
        self.failures = []
        self.passed = 0
        self.skipped = []
        self.verbose = False

    def check(self, cond, what):
        if cond:
            self.passed += 1
            if self.verbose:
                print(f"  pass {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")
        return bool(cond)

    def fail(self, what):
        return self.check(False, what)

    def info(self, what):
        print(f"  ok   {what}")

    def skip(self, what):
        self.skipped.append(what)
        print(f"  skip {what}")


R = Report()


def section(title):
    print(f"\n== {title}")


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path):
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# The binary's own view of its settings and flags (src/cli.rs), to catch drift.


def cli_source():
    p = REPO / "src" / "cli.rs"
    return p.read_text(encoding="utf-8") if p.exists() else None


def check_cli_settings():
    section("contract settings (src/cli.rs)")
    src = cli_source()
    if src is None:
        R.skip("src/cli.rs not found: settings not cross-checked with the binary")
        return
    envs = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src))
    envs.add("RUST_LOG")  # read by tracing's EnvFilter, not clap
    R.check(CONTRACT_SETTINGS <= envs,
            f"every contract setting is read by the binary (missing: {sorted(CONTRACT_SETTINGS - envs)})")
    R.check(envs <= CONTRACT_SETTINGS,
            f"the binary reads no setting unknown to this check (unknown: {sorted(envs - CONTRACT_SETTINGS)})")
    R.info(f"{len(envs)} settings: {', '.join(sorted(envs))}")


def check_flags_exist(args, where):
    """Every --flag used in a command line is a field of the clap structs in src/cli.rs."""
    src = cli_source()
    if src is None:
        return
    for a in args:
        if a.startswith("--"):
            field = a[2:].split("=", 1)[0].replace("-", "_")
            R.check(re.search(rf"\bpub\s+{field}\s*:", src) or re.search(rf"\b{field}\s*:", src),
                    f"{where}: flag {a} exists in src/cli.rs")


# --------------------------------------------------------------------------------------------
# Compose


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


def compose_command(service):
    cmd = service.get("command")
    if cmd is None:
        return None
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(c) for c in cmd]


def parse_duration_seconds(s):
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(s)):
        total += float(num) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def interpolate(value):
    """Compose-style ${VAR:-default} / ${VAR-default} / ${VAR} with the defaults (for checks)."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}",
                  lambda m: os.environ.get(m.group(1), m.group(2) or ""), str(value))


def bind_mounts(service):
    """(host source, container target, read_only) of each bind mount of a service."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"], bool(v.get("read_only"))))
            continue
        parts = str(v).split(":")
        if len(parts) >= 2 and (parts[0].startswith(".") or parts[0].startswith("/") or parts[0].startswith("~")):
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def named_volumes(service):
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "volume" and v.get("source"):
                out.append(v["source"])
            continue
        parts = str(v).split(":")
        if len(parts) >= 2 and not (parts[0].startswith(".") or parts[0].startswith("/") or parts[0].startswith("~")):
            out.append(parts[0])
    return out


def check_compose(schema_path):
    section(f"compose: {rel(COMPOSE_FILE)}")
    if not R.check(COMPOSE_FILE.exists(), f"{rel(COMPOSE_FILE)} exists"):
        return
    try:
        doc = load_yaml(COMPOSE_FILE)
    except Exception as e:  # noqa: BLE001 - report any parse error
        R.fail(f"compose.yaml parses as YAML: {e}")
        return
    R.info("parsed with PyYAML (anchors and merge keys resolved)")
    base = COMPOSE_FILE.parent

    # Schema.
    if schema_path:
        import jsonschema

        schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
        # It declares draft 2019-09 under a non-canonical URI: name the draft explicitly.
        validator_cls = jsonschema.Draft201909Validator
        validator = validator_cls(schema)
        # Keys starting with x- are extensions; the schema allows them at the top level.
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            R.fail(f"compose schema: {'/'.join(map(str, e.path)) or '(root)'}: {e.message[:300]}")
        if not errors:
            R.check(True, "compose.yaml valid against the compose-spec schema")
            R.info(f"valid against the compose-spec JSON schema ({Path(schema_path).name}, {validator_cls.__name__})")
    else:
        R.skip("compose-spec schema not given (--compose-schema): schema validation skipped")

    services = doc.get("services") or {}
    for name in REQUIRED_COMPOSE_SERVICES:
        R.check(name in services, f"compose service `{name}` exists")
    if "version" in doc:
        R.fail("compose.yaml has no obsolete top-level `version` key")
    declared_volumes = set((doc.get("volumes") or {}).keys())

    # Every service: depends_on targets exist, health dependencies have a healthcheck,
    # bind-mount sources exist, named volumes are declared.
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if not R.check(dep in services, f"{name}: depends_on `{dep}` is a service"):
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond == "service_healthy":
                target = services[dep]
                hc = target.get("healthcheck") or {}
                has_hc = bool(hc.get("test")) and not hc.get("disable")
                R.check(has_hc, f"{name}: depends on `{dep}` being healthy, and `{dep}` has a healthcheck")
            if cond == "service_completed_successfully":
                R.check(services[dep].get("restart", "no") in ("no", None),
                        f"{name}: `{dep}` is one-shot (restart: no)")
        for src, target, ro in bind_mounts(svc):
            host = (base / src).resolve() if not src.startswith("/") else Path(src)
            R.check(host.exists(), f"{name}: bind-mounted host path {rel(host)} exists (-> {target})")
            R.check(ro, f"{name}: bind mount {src} is read-only")
        for vol in named_volumes(svc):
            R.check(vol in declared_volumes, f"{name}: named volume `{vol}` is declared")
        for p in svc.get("ports") or []:
            R.check(str(interpolate(p)).startswith("127.0.0.1:"),
                    f"{name}: published port {p} is bound to 127.0.0.1 only")

    # The signup-worker services.
    images = set()
    for name in SIGNUP_SERVICES:
        svc = services.get(name)
        if svc is None:
            continue
        build = svc.get("build") or {}
        if isinstance(build, str):
            build = {"context": build}
        ctx = (base / build.get("context", ".")).resolve()
        R.check(ctx == REPO, f"{name}: build context is the repository root")
        dockerfile = (ctx / build.get("dockerfile", "Dockerfile")).resolve()
        R.check(dockerfile == DOCKERFILE, f"{name}: builds deploy/Dockerfile")
        images.add(svc.get("image"))
        env = compose_env(svc)
        unknown = set(env) - CONTRACT_SETTINGS
        R.check(not unknown, f"{name}: environment names are contract settings (unknown: {sorted(unknown)})")
        for key in ("DATABASE_URL", "AMQP_URL"):
            if R.check(key in env, f"{name}: sets {key}"):
                host = urlsplit(env[key]).hostname
                R.check(host in services, f"{name}: {key} points at the compose service `{host}`")
        if "SIGNUP_QUEUE_TYPE" in env:
            R.check(env["SIGNUP_QUEUE_TYPE"] in ("quorum", "classic"), f"{name}: SIGNUP_QUEUE_TYPE is quorum or classic")
        if "LOG_FORMAT" in env:
            R.check(env["LOG_FORMAT"] in ("text", "json"), f"{name}: LOG_FORMAT is text or json")
        for key in INTEGER_SETTINGS & set(env):
            R.check(env[key].isdigit() and int(env[key]) > 0, f"{name}: {key} is a positive integer")
        cmd = compose_command(svc) or []
        check_flags_exist(cmd, f"compose {name}")
    R.check(len(images) == 1 and None not in images, f"migrate, worker and publish share one image ({images})")

    worker = services.get("worker") or {}
    R.check(((worker.get("deploy") or {}).get("replicas")) == 3, "worker: deploy.replicas is 3")
    R.check(not worker.get("ports"), "worker: no published host port (replicas would clash)")
    R.check("container_name" not in worker, "worker: no container_name (replicas need generated names)")
    R.check(compose_command(worker) == ["run", "--no-migrate"], "worker: command is `run --no-migrate`")
    wdeps = worker.get("depends_on") or {}
    R.check(isinstance(wdeps, dict) and (wdeps.get("migrate") or {}).get("condition") == "service_completed_successfully",
            "worker: starts after `migrate` completed successfully (so --no-migrate is safe)")
    R.check(parse_duration_seconds(worker.get("stop_grace_period", "10s")) >= 30,
            "worker: stop_grace_period >= 30s (SIGTERM drain)")
    wenv = compose_env(worker)
    metrics_port = int(wenv.get("METRICS_ADDR", "0.0.0.0:9464").rsplit(":", 1)[1])
    R.check(str(metrics_port) in [str(e) for e in worker.get("expose") or []],
            f"worker: exposes the METRICS_ADDR port {metrics_port}")
    R.check(compose_command(services.get("migrate") or {}) == ["migrate"], "migrate: command is `migrate`")
    R.check(compose_command(services.get("publish") or {}) == PUBLISH_DEMO_ARGS,
            "publish: command is the demo publish (2000 events, hard cases mixed in, no progress bar)")
    for name in ("migrate", "publish"):
        hc = (services.get(name) or {}).get("healthcheck") or {}
        R.check(hc.get("disable") is True, f"{name}: image HEALTHCHECK disabled for the one-shot command")

    # RabbitMQ with the Prometheus plugin.
    rabbit = services.get("rabbitmq") or {}
    R.check("management" in str(rabbit.get("image", "")), "rabbitmq: a -management image")
    plugin_mounts = [(s, t) for s, t, _ in bind_mounts(rabbit) if t == "/etc/rabbitmq/enabled_plugins"]
    if R.check(plugin_mounts, "rabbitmq: enabled_plugins file mounted at /etc/rabbitmq/enabled_plugins"):
        path = (base / plugin_mounts[0][0]).resolve()
        if path.exists():
            text = path.read_text(encoding="utf-8").strip()
            m = re.fullmatch(r"\[\s*([a-z0-9_]+(?:\s*,\s*[a-z0-9_]+)*)?\s*\]\s*\.", text)
            if R.check(m, f"{rel(path)} is an Erlang list term `[...].`"):
                plugins = [p.strip() for p in (m.group(1) or "").split(",") if p.strip()]
                R.check("rabbitmq_prometheus" in plugins, "rabbitmq: rabbitmq_prometheus enabled")
                R.check("rabbitmq_management" in plugins, "rabbitmq: rabbitmq_management enabled")

    # Prometheus and Grafana mounts; Prometheus config consistent with the services.
    prom = services.get("prometheus") or {}
    targets = {t: s for s, t, _ in bind_mounts(prom)}
    R.check("/etc/prometheus/prometheus.yml" in targets, "prometheus: prometheus.yml mounted")
    R.check("/etc/prometheus/alerts.yml" in targets, "prometheus: alerts.yml mounted")
    prom_cfg_path = (base / targets.get("/etc/prometheus/prometheus.yml", "prometheus/prometheus.yml")).resolve()
    if prom_cfg_path.exists():
        cfg = load_yaml(prom_cfg_path) or {}
        sd_targets = set()
        for job in cfg.get("scrape_configs") or []:
            for sd in job.get("dns_sd_configs") or []:
                for n in sd.get("names") or []:
                    sd_targets.add((job.get("job_name"), n, sd.get("port")))
            for sc in job.get("static_configs") or []:
                for t in sc.get("targets") or []:
                    h, _, p = str(t).rpartition(":")
                    sd_targets.add((job.get("job_name"), h, int(p) if p.isdigit() else None))
        R.check(("signup-worker", "worker", metrics_port) in sd_targets,
                f"prometheus.yml: job `signup-worker` scrapes every `worker` replica on :{metrics_port}")
        R.check(any(h == "rabbitmq" and p == 15692 for _, h, p in sd_targets),
                "prometheus.yml: scrapes rabbitmq:15692 (rabbitmq_prometheus)")
    graf = services.get("grafana") or {}
    gtargets = {t for _, t, _ in bind_mounts(graf)}
    R.check("/etc/grafana/provisioning" in gtargets, "grafana: provisioning mounted")
    R.check("/var/lib/grafana/dashboards" in gtargets, "grafana: dashboards mounted")
    R.info(f"{len(services)} services: {', '.join(services)}")

    # A real compose client, when there is one.
    ran = False
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run(cmd + ["version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        res = subprocess.run(cmd + ["-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, cwd=REPO)
        R.check(res.returncode == 0, f"`{' '.join(cmd)} config -q` accepts the file: {res.stderr.strip()[:500]}")
        if res.returncode == 0:
            R.info(f"`{' '.join(cmd)} -f deploy/compose.yaml config -q` passed ({probe.stdout.strip().splitlines()[0]})")
        ran = True
        break
    if not ran:
        R.skip("no compose client (`docker compose` / `docker-compose`): `config -q` not run")


# --------------------------------------------------------------------------------------------
# Kustomize subset renderer


class RenderError(Exception):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}


def find_kustomization(d):
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (d / n).exists():
            return d / n
    raise RenderError(f"no kustomization file in {rel(d)}")


def res_id(r):
    md = r.get("metadata") or {}
    return (r.get("apiVersion"), r.get("kind"), md.get("namespace"), md.get("name"))


def merge_patch(target, patch, where):
    """JSON merge patch on maps (what kustomize does for maps, built-in kinds or not).
    Lists are not supported here: strategic merge would merge them by key."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            if not isinstance(target.get(k), dict):
                target[k] = {}
            merge_patch(target[k], v, f"{where}.{k}")
        elif isinstance(v, list):
            raise RenderError(f"{where}.{k}: list in a patch (unsupported by the built-in renderer)")
        else:
            target[k] = v


def walk_containers(node, fn):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for c in v:
                    if isinstance(c, dict):
                        fn(c)
            else:
                walk_containers(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk_containers(v, fn)


def split_image(image):
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def render(d):
    d = Path(d)
    kfile = find_kustomization(d)
    k = load_yaml(kfile) or {}
    unsupported = set(k) - KUSTOMIZATION_KEYS
    if unsupported:
        raise RenderError(f"{rel(kfile)}: fields {sorted(unsupported)} are not supported by the built-in renderer")
    resources = []
    for entry in k.get("resources") or []:
        p = (d / entry).resolve()
        if p.is_dir():
            resources.extend(render(p))
        elif p.is_file():
            resources.extend(copy.deepcopy(load_yaml_docs(p)))
        else:
            raise RenderError(f"{rel(kfile)}: resource {entry} not found")

    for entry in k.get("patches") or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{rel(kfile)}: patch {entry}: only `path:` patches are supported")
        patch = load_yaml((d / entry["path"]))
        pid = (patch.get("apiVersion"), patch.get("kind"), (patch.get("metadata") or {}).get("name"))
        matches = [r for r in resources
                   if (r.get("apiVersion"), r.get("kind"), (r.get("metadata") or {}).get("name")) == pid]
        if len(matches) != 1:
            raise RenderError(f"{rel(kfile)}: patch {entry['path']} matches {len(matches)} resources")
        body = {kk: vv for kk, vv in patch.items() if kk not in ("apiVersion", "kind")}
        merge_patch(matches[0], body, entry["path"])

    ns = k.get("namespace")
    if ns:
        for r in resources:
            if r.get("kind") not in CLUSTER_SCOPED_KINDS:
                r.setdefault("metadata", {})["namespace"] = ns

    for entry in k.get("labels") or []:
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
            raise RenderError(f"{rel(kfile)}: labels entry {entry}: unsupported fields")
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError(f"{rel(kfile)}: labels with includeSelectors/includeTemplates are not supported")
        for r in resources:
            labels = r.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({str(a): str(b) for a, b in (entry.get("pairs") or {}).items()})

    for entry in k.get("images") or []:
        if set(entry) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"{rel(kfile)}: images entry {entry}: unsupported fields")

        def apply(c, entry=entry):
            name, tag, digest = split_image(str(c.get("image", "")))
            if name != entry["name"]:
                return
            name = entry.get("newName", name)
            if "digest" in entry:
                c["image"] = f"{name}@{entry['digest']}"
                return
            tag = entry.get("newTag", tag)
            c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

        for r in resources:
            walk_containers(r, apply)

    ids = [res_id(r) for r in resources]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RenderError(f"{rel(kfile)}: duplicate resources {sorted(map(str, dupes))}")
    return resources


def kubectl_render(d):
    res = subprocess.run(["kubectl", "kustomize", str(d)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RenderError(f"kubectl kustomize {rel(d)}: {res.stderr.strip()[:800]}")
    return [doc for doc in yaml.safe_load_all(res.stdout) if doc is not None]


def diff_paths(a, b, path=""):
    """First few paths where two parsed documents differ."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k} only in {'kubectl' if k in b else 'built-in'}")
            else:
                out.extend(diff_paths(a[k], b[k], f"{path}.{k}"))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff_paths(x, y, f"{path}[{i}]"))
    elif a != b:
        out.append(f"{path}: built-in {a!r} != kubectl {b!r}")
    return out[:5]


# --------------------------------------------------------------------------------------------
# Kubernetes checks


def by_kind(resources, kind):
    return [r for r in resources if r.get("kind") == kind]


def one(resources, kind, label):
    found = by_kind(resources, kind)
    R.check(len(found) == 1, f"{label}: exactly one {kind} (found {len(found)})")
    return found[0] if found else None


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_security(pod_spec, where):
    psc = pod_spec.get("securityContext") or {}
    R.check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    R.check(psc.get("runAsUser") == RUNTIME_UID, f"{where}: pod runAsUser {RUNTIME_UID} (the image's USER)")
    R.check(psc.get("runAsGroup") not in (None, 0), f"{where}: pod runAsGroup set, not 0")
    R.check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: no service account token mounted")
    for c in pod_spec.get("containers") or []:
        sc = c.get("securityContext") or {}
        cw = f"{where} container {c.get('name')}"
        R.check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation false")
        R.check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
        R.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cw}: drops ALL capabilities")
        R.check(sc.get("privileged") in (None, False), f"{cw}: not privileged")
        R.check(sc.get("runAsUser") in (None, RUNTIME_UID), f"{cw}: no other runAsUser")


def check_env_refs(pod_spec, where, configmaps, secrets, required):
    """Every env/envFrom reference resolves; every variable name is a contract setting.
    Returns the set of variable names the container gets."""
    names = set()
    for c in pod_spec.get("containers") or []:
        cw = f"{where} container {c.get('name')}"
        for ef in c.get("envFrom") or []:
            R.check(not ef.get("prefix"), f"{cw}: envFrom without prefix")
            if "configMapRef" in ef:
                n = ef["configMapRef"].get("name")
                if R.check(n in configmaps, f"{cw}: envFrom ConfigMap `{n}` is in the rendering"):
                    names |= set((configmaps[n].get("data") or {}).keys())
            elif "secretRef" in ef:
                n = ef["secretRef"].get("name")
                if R.check(n in secrets, f"{cw}: envFrom Secret `{n}` is in the rendering"):
                    names |= secret_keys(secrets[n])
            else:
                R.fail(f"{cw}: envFrom entry {ef} is neither configMapRef nor secretRef")
        for e in c.get("env") or []:
            names.add(e.get("name"))
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                ok = R.check(ref.get("name") in secrets, f"{cw}: env {e['name']}: Secret `{ref.get('name')}` is in the rendering")
                if ok:
                    R.check(ref.get("key") in secret_keys(secrets[ref["name"]]),
                            f"{cw}: env {e['name']}: key `{ref.get('key')}` is in Secret `{ref['name']}`")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                ok = R.check(ref.get("name") in configmaps, f"{cw}: env {e['name']}: ConfigMap `{ref.get('name')}` is in the rendering")
                if ok:
                    R.check(ref.get("key") in (configmaps[ref["name"]].get("data") or {}),
                            f"{cw}: env {e['name']}: key `{ref.get('key')}` is in ConfigMap `{ref['name']}`")
            elif vf:
                R.fail(f"{cw}: env {e['name']}: unsupported valueFrom {vf}")
        unknown = names - CONTRACT_SETTINGS
        R.check(not unknown, f"{cw}: every environment variable is a contract setting (unknown: {sorted(unknown)})")
        for key in sorted(required):
            R.check(key in names, f"{cw}: gets {key}")
    return names


def secret_keys(secret):
    return set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())


def secret_value(secret, key):
    import base64

    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode("utf-8", "replace")
    return None


def probe_port_ok(probe, container):
    port = ((probe or {}).get("httpGet") or {}).get("port")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    return port == "metrics" or (isinstance(port, int) and port == ports.get("metrics"))


def check_crd_shape(r, allowed_spec, required_spec, where):
    md = r.get("metadata") or {}
    R.check(bool(md.get("name")), f"{where}: metadata.name")
    spec = r.get("spec")
    if not R.check(isinstance(spec, dict), f"{where}: spec is a map"):
        return {}
    unknown = set(spec) - allowed_spec
    R.check(not unknown, f"{where}: spec fields are known ones (unknown: {sorted(unknown)})")
    for f in required_spec:
        R.check(f in spec, f"{where}: spec.{f} present")
    extra = set(r) - {"apiVersion", "kind", "metadata", "spec", "status"}
    R.check(not extra, f"{where}: no unknown top-level fields ({sorted(extra)})")
    return spec


def validate_builtin(resources, label, kv):
    counts = {}
    for r in resources:
        key = (r.get("apiVersion"), r.get("kind"))
        if key in CRD_KINDS:
            continue
        name = f"{r.get('kind')}/{(r.get('metadata') or {}).get('name')}"
        for version in K8S_VERSIONS:
            try:
                kv.validate(r, version, strict=True)
                counts[version] = counts.get(version, 0) + 1
                R.check(True, f"{label}: {name} valid against Kubernetes {version} (strict)")
            except kv.ValidationError as e:
                R.fail(f"{label}: {name} against Kubernetes {version} (strict): "
                       f"{'.'.join(map(str, e.path))}: {e.message[:300]}")
            except kv.SchemaNotFoundError as e:
                R.fail(f"{label}: {name}: no schema ({e.message}) and not a known CRD kind")
    for version, n in counts.items():
        R.info(f"{label}: {n} built-in resources valid against the Kubernetes {version} schemas (strict)")


def check_kubernetes_rendering(resources, label, kv, is_overlay):
    kinds = sorted({r.get("kind") for r in resources})
    R.info(f"{label}: {len(resources)} resources: {', '.join(kinds)}")
    validate_builtin(resources, label, kv)

    configmaps = {r["metadata"]["name"]: r for r in by_kind(resources, "ConfigMap")}
    secrets = {r["metadata"]["name"]: r for r in by_kind(resources, "Secret")}
    R.check(configmaps, f"{label}: has a ConfigMap")
    R.check(secrets, f"{label}: has a Secret")

    # Namespaces: one for every namespaced resource in an overlay.
    if is_overlay:
        nss = {(r.get("metadata") or {}).get("namespace") for r in resources if r.get("kind") not in CLUSTER_SCOPED_KINDS}
        R.check(len(nss) == 1 and None not in nss, f"{label}: every namespaced resource in one namespace ({nss})")
    for r in resources:
        if r.get("kind") == "Namespace":
            continue
        R.check(((r.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name") == APP_NAME,
                f"{label}: {r.get('kind')}/{r['metadata'].get('name')} labelled app.kubernetes.io/name={APP_NAME}")

    # ConfigMap: contract names, sane values.
    settings = {}
    for name, cm in configmaps.items():
        data = cm.get("data") or {}
        unknown = set(data) - CONTRACT_SETTINGS
        R.check(not unknown, f"{label}: ConfigMap {name}: every key is a contract setting (unknown: {sorted(unknown)})")
        R.check(not (set(data) & SECRET_SETTINGS), f"{label}: ConfigMap {name}: no credentials (URLs are in the Secret)")
        for k, v in data.items():
            R.check(isinstance(v, str), f"{label}: ConfigMap {name}: {k} is a string")
        settings.update(data)
    for k in INTEGER_SETTINGS & set(settings):
        R.check(str(settings[k]).isdigit() and int(settings[k]) > 0, f"{label}: {k} is a positive integer")
    if "BATCH_SIZE" in settings and "PREFETCH" in settings:
        R.check(int(settings["BATCH_SIZE"]) <= int(settings["PREFETCH"]), f"{label}: BATCH_SIZE <= PREFETCH")
        R.check(int(settings["BATCH_SIZE"]) <= 1000, f"{label}: BATCH_SIZE <= 1000")
    if "SIGNUP_QUEUE_TYPE" in settings:
        R.check(settings["SIGNUP_QUEUE_TYPE"] in ("quorum", "classic"), f"{label}: SIGNUP_QUEUE_TYPE quorum or classic")
    if "LOG_FORMAT" in settings:
        R.check(settings["LOG_FORMAT"] in ("text", "json"), f"{label}: LOG_FORMAT text or json")
    metrics_port = int(settings.get("METRICS_ADDR", "0.0.0.0:9464").rsplit(":", 1)[1])
    prefetch = int(settings.get("PREFETCH", "300"))
    queue = settings.get("SIGNUP_QUEUE", "tenant.signups")

    # Secrets: the worker URLs, plus the management URL used by KEDA.
    for name, s in secrets.items():
        for k in secret_keys(s):
            R.check(k in SECRET_SETTINGS or k == "RABBITMQ_MANAGEMENT_URL",
                    f"{label}: Secret {name}: key {k} is a credential setting or the KEDA management URL")

    # Deployment.
    dep = one(resources, "Deployment", label)
    pod_labels = {}
    container = {}
    if dep:
        spec = dep.get("spec") or {}
        tpl = spec.get("template") or {}
        pod_labels = (tpl.get("metadata") or {}).get("labels") or {}
        pod = tpl.get("spec") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        R.check(labels_match(sel, pod_labels), f"{label}: Deployment selector matches its pod labels")
        R.check(pod_labels.get("app.kubernetes.io/name") == APP_NAME, f"{label}: pods labelled app.kubernetes.io/name={APP_NAME}")
        R.check("replicas" not in spec, f"{label}: Deployment leaves spec.replicas to KEDA")
        tgps = pod.get("terminationGracePeriodSeconds")
        R.check(isinstance(tgps, int) and tgps >= 30, f"{label}: terminationGracePeriodSeconds >= 30 (is {tgps})")
        check_security(pod, f"{label}: Deployment")
        containers = pod.get("containers") or []
        R.check(len(containers) == 1, f"{label}: Deployment has one container")
        container = containers[0] if containers else {}
        args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        R.check(args[:1] == ["run"], f"{label}: worker container runs `signup-worker run` ({args})")
        check_flags_exist(args, f"{label}: worker args")
        ports = {p.get("name"): p for p in container.get("ports") or []}
        R.check("metrics" in ports and ports["metrics"].get("containerPort") == metrics_port,
                f"{label}: container port `metrics` is METRICS_ADDR's port {metrics_port}")
        lp, rp = container.get("livenessProbe") or {}, container.get("readinessProbe") or {}
        R.check((lp.get("httpGet") or {}).get("path") == "/healthz", f"{label}: livenessProbe GET /healthz")
        R.check((rp.get("httpGet") or {}).get("path") == "/readyz", f"{label}: readinessProbe GET /readyz")
        R.check(probe_port_ok(lp, container) and probe_port_ok(rp, container), f"{label}: probes on the metrics port")
        res = container.get("resources") or {}
        R.check({"cpu", "memory"} <= set((res.get("requests") or {}).keys()), f"{label}: cpu and memory requests")
        R.check("memory" in (res.get("limits") or {}), f"{label}: memory limit")
        check_env_refs(pod, f"{label}: Deployment", configmaps, secrets, {"DATABASE_URL", "AMQP_URL"})

    # Migration Job.
    job = one(resources, "Job", label)
    if job:
        spec = job.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        jc = (pod.get("containers") or [{}])[0]
        args = [str(a) for a in (jc.get("command") or []) + (jc.get("args") or [])]
        R.check(args == ["migrate"], f"{label}: Job runs `signup-worker migrate` ({args})")
        R.check(isinstance(spec.get("backoffLimit"), int), f"{label}: Job backoffLimit set")
        R.check(isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{label}: Job ttlSecondsAfterFinished set")
        R.check(pod.get("restartPolicy") in ("Never", "OnFailure"), f"{label}: Job restartPolicy Never/OnFailure")
        R.check(jc.get("image") == container.get("image"), f"{label}: Job and Deployment run the same image ({jc.get('image')})")
        job_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if dep:
            dsel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            R.check(not labels_match(dsel, job_labels), f"{label}: the Deployment's selector does not match the Job's pods")
        check_security(pod, f"{label}: Job")
        check_env_refs(pod, f"{label}: Job", configmaps, secrets, {"DATABASE_URL"})
    else:
        job_labels = {}

    # Service.
    svc = one(resources, "Service", label)
    if svc:
        sspec = svc.get("spec") or {}
        R.check(labels_match(sspec.get("selector") or {}, pod_labels), f"{label}: Service selector matches the worker pods")
        names = {p.get("name") for p in container.get("ports") or []}
        for p in sspec.get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            R.check(tp in names or tp == metrics_port, f"{label}: Service port {p.get('name')} targets a container port ({tp})")

    # PodMonitor / ServiceMonitor.
    monitors = by_kind(resources, "PodMonitor") + by_kind(resources, "ServiceMonitor")
    R.check(len(monitors) == 1, f"{label}: one PodMonitor or ServiceMonitor")
    for m in monitors:
        where = f"{label}: {m['kind']}/{m['metadata'].get('name')}"
        R.check(m.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1")
        if m["kind"] == "PodMonitor":
            spec = check_crd_shape(m, {"jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector",
                                       "namespaceSelector", "sampleLimit", "targetLimit", "labelLimit",
                                       "labelNameLengthLimit", "labelValueLengthLimit", "attachMetadata",
                                       "scrapeProtocols", "scrapeClass", "bodySizeLimit",
                                       "keepDroppedTargets", "selectorMechanism", "fallbackScrapeProtocol",
                                       "scrapeClassicHistograms", "nativeHistogramBucketLimit",
                                       "nativeHistogramMinBucketFactor", "convertClassicHistogramsToNHCB",
                                       "serviceDiscoveryRole"},
                                   ["selector", "podMetricsEndpoints"], where)
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            R.check(not (spec.get("selector") or {}).get("matchExpressions"), f"{where}: selector uses matchLabels only")
            R.check(labels_match(sel, pod_labels), f"{where}: selector matches the worker pod labels")
            R.check(not labels_match(sel, job_labels), f"{where}: selector does not match the migration Job's pods")
            port_names = {p.get("name") for p in container.get("ports") or []}
            eps = spec.get("podMetricsEndpoints") or []
            R.check(isinstance(eps, list) and eps, f"{where}: podMetricsEndpoints is a non-empty list")
            for ep in eps:
                R.check(ep.get("port") in port_names, f"{where}: endpoint port `{ep.get('port')}` is a named container port")
                R.check(ep.get("path", "/metrics") == "/metrics", f"{where}: endpoint path /metrics")
            jl = spec.get("jobLabel")
            if jl:
                R.check(pod_labels.get(jl) == APP_NAME, f"{where}: jobLabel {jl} gives job=\"{APP_NAME}\" (dashboard, alerts)")
        else:
            spec = check_crd_shape(m, {"jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector",
                                       "namespaceSelector", "sampleLimit", "targetLimit", "attachMetadata",
                                       "scrapeProtocols", "scrapeClass", "bodySizeLimit", "keepDroppedTargets",
                                       "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                                       "selectorMechanism", "fallbackScrapeProtocol", "serviceDiscoveryRole"},
                                   ["selector", "endpoints"], where)
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            R.check(svc is not None and labels_match(sel, (svc.get("metadata") or {}).get("labels") or {}),
                    f"{where}: selector matches the Service labels")
            sports = {p.get("name") for p in ((svc or {}).get("spec") or {}).get("ports") or []}
            for ep in spec.get("endpoints") or []:
                R.check(ep.get("port") in sports, f"{where}: endpoint port `{ep.get('port')}` is a Service port")

    # PodDisruptionBudget.
    pdb = one(resources, "PodDisruptionBudget", label)
    so_list = by_kind(resources, "ScaledObject")
    min_replicas = ((so_list[0].get("spec") or {}).get("minReplicaCount", 0)) if so_list else 1
    if pdb:
        pspec = pdb.get("spec") or {}
        R.check(labels_match((pspec.get("selector") or {}).get("matchLabels") or {}, pod_labels),
                f"{label}: PDB selector matches the worker pods")
        R.check(("minAvailable" in pspec) != ("maxUnavailable" in pspec), f"{label}: PDB sets one of minAvailable/maxUnavailable")
        if isinstance(pspec.get("minAvailable"), int):
            R.check(pspec["minAvailable"] < max(min_replicas, 1),
                    f"{label}: PDB minAvailable below the minimum replica count (else drains block)")

    # KEDA.
    tas = {r["metadata"]["name"]: r for r in by_kind(resources, "TriggerAuthentication")}
    for name, ta in tas.items():
        where = f"{label}: TriggerAuthentication/{name}"
        R.check(ta.get("apiVersion") == "keda.sh/v1alpha1", f"{where}: apiVersion keda.sh/v1alpha1")
        spec = check_crd_shape(ta, {"secretTargetRef", "env", "hashiCorpVault", "podIdentity", "azureKeyVault",
                                    "awsSecretManager", "gcpSecretManager", "configMapTargetRef",
                                    "boundServiceAccountToken", "azureAppConfiguration"},
                               [], where)
        refs = spec.get("secretTargetRef") or []
        R.check(isinstance(refs, list) and refs, f"{where}: secretTargetRef is a non-empty list")
        for ref in refs:
            R.check({"parameter", "name", "key"} <= set(ref), f"{where}: secretTargetRef entry has parameter, name, key")
            if R.check(ref.get("name") in secrets, f"{where}: Secret `{ref.get('name')}` is in the rendering"):
                R.check(ref.get("key") in secret_keys(secrets[ref["name"]]),
                        f"{where}: key `{ref.get('key')}` is in Secret `{ref['name']}`")
    so = one(resources, "ScaledObject", label)
    if so:
        where = f"{label}: ScaledObject/{so['metadata'].get('name')}"
        R.check(so.get("apiVersion") == "keda.sh/v1alpha1", f"{where}: apiVersion keda.sh/v1alpha1")
        spec = check_crd_shape(so, {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                                    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback",
                                    "advanced", "triggers"},
                               ["scaleTargetRef", "triggers"], where)
        tref = spec.get("scaleTargetRef") or {}
        R.check(dep is not None and tref.get("name") == dep["metadata"]["name"]
                and tref.get("kind", "Deployment") == "Deployment"
                and tref.get("apiVersion", "apps/v1") == "apps/v1",
                f"{where}: scaleTargetRef names the worker Deployment")
        mn, mx = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        R.check(isinstance(mn, int) and isinstance(mx, int) and 1 <= mn <= mx,
                f"{where}: 1 <= minReplicaCount ({mn}) <= maxReplicaCount ({mx})")
        for f in ("pollingInterval", "cooldownPeriod"):
            if f in spec:
                R.check(isinstance(spec[f], int) and spec[f] > 0, f"{where}: {f} is a positive integer")
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
        if behavior is not None:
            # Validate the HPA behavior with the real autoscaling/v2 schema, inside a stub HPA.
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "stub"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stub"},
                            "maxReplicas": 2, "behavior": behavior}}
            try:
                kv.validate(hpa, K8S_VERSIONS[0], strict=True)
                R.check(True, f"{where}: HPA behavior valid against autoscaling/v2")
            except kv.ValidationError as e:
                R.fail(f"{where}: advanced.horizontalPodAutoscalerConfig.behavior: {'.'.join(map(str, e.path))}: {e.message[:200]}")
            for direction in ("scaleUp", "scaleDown"):
                for pol in (behavior.get(direction) or {}).get("policies") or []:
                    R.check(pol.get("type") in ("Pods", "Percent"), f"{where}: {direction} policy type Pods or Percent")
        triggers = spec.get("triggers") or []
        R.check(isinstance(triggers, list) and len(triggers) >= 1, f"{where}: at least one trigger")
        for t in triggers:
            md = t.get("metadata") or {}
            R.check(t.get("type") == "rabbitmq", f"{where}: trigger type rabbitmq")
            R.check(md.get("protocol") == "http",
                    f"{where}: protocol http (management API; amqp mode ignores unacked messages)")
            R.check(md.get("mode") == "QueueLength", f"{where}: mode QueueLength")
            R.check(str(md.get("excludeUnacknowledged", "false")).lower() == "false",
                    f"{where}: excludeUnacknowledged is false (unacked messages count)")
            R.check(all(isinstance(v, str) for v in md.values()), f"{where}: trigger metadata values are strings")
            R.check(md.get("queueName") == queue, f"{where}: queueName is SIGNUP_QUEUE ({queue})")
            R.check("host" not in md and "hostFromEnv" not in md, f"{where}: no host in the trigger (it comes from the Secret)")
            try:
                value = float(md.get("value"))
            except (TypeError, ValueError):
                value = -1
            R.check(value > prefetch, f"{where}: value per replica ({md.get('value')}) above PREFETCH ({prefetch})")
            auth = (t.get("authenticationRef") or {}).get("name")
            if R.check(auth in tas, f"{where}: authenticationRef `{auth}` is a TriggerAuthentication in the rendering"):
                hosts = [ref for ref in (tas[auth].get("spec") or {}).get("secretTargetRef") or [] if ref.get("parameter") == "host"]
                if R.check(hosts, f"{where}: the TriggerAuthentication provides `host`"):
                    ref = hosts[0]
                    val = secret_value(secrets.get(ref.get("name"), {}), ref.get("key")) or ""
                    R.check(urlsplit(val).scheme in ("http", "https"),
                            f"{where}: `host` is an http(s) management API URL ({urlsplit(val).scheme}://...)")


def check_kubernetes(kv):
    section(f"kubernetes: {rel(K8S)}")
    dirs = [K8S / "base"] + sorted(p for p in (K8S / "overlays").glob("*") if p.is_dir())
    have_kubectl = shutil.which("kubectl") is not None
    if have_kubectl:
        v = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout.strip()
        R.info("kubectl: " + " / ".join(v.splitlines()))
    else:
        R.skip("kubectl not found: rendered with the built-in renderer only")
    overlays = 0
    for d in dirs:
        label = rel(d)
        is_overlay = d.parent.name == "overlays"
        overlays += is_overlay
        try:
            ours = render(d)
        except (RenderError, ValueError, OSError, yaml.YAMLError) as e:
            R.fail(f"{label}: built-in render: {e}")
            continue
        R.check(True, f"{label}: built-in render")
        rendered = ours
        if have_kubectl:
            try:
                theirs = kubectl_render(d)
            except RenderError as e:
                R.fail(str(e))
                theirs = None
            if theirs is not None:
                a = {res_id(r): r for r in ours}
                b = {res_id(r): r for r in theirs}
                R.check(set(a) == set(b),
                        f"{label}: kubectl kustomize and the built-in renderer give the same resources "
                        f"(only built-in: {sorted(map(str, set(a) - set(b)))}, only kubectl: {sorted(map(str, set(b) - set(a)))})")
                for key in sorted(set(a) & set(b), key=str):
                    if a[key] != b[key]:
                        R.fail(f"{label}: {key[1]}/{key[3]} differs between renderers: {diff_paths(a[key], b[key])}")
                    else:
                        R.check(True, f"{label}: {key[1]}/{key[3]} identical in both renderings")
                if set(a) == set(b) and all(a[k] == b[k] for k in a):
                    R.info(f"{label}: `kubectl kustomize` and the built-in renderer agree ({len(a)} resources)")
                rendered = theirs
        check_kubernetes_rendering(rendered, label, kv, is_overlay)
    R.check(overlays >= 1, "at least one overlay in deploy/kubernetes/overlays")


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text):
    """(keyword, arguments, line number) per instruction; continuations joined, comments dropped."""
    out = []
    buf, start = "", None
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if start is None:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        kw, _, rest = buf.strip().partition(" ")
        out.append((kw.upper(), rest.strip(), start))
        buf, start = "", None
    return out


def exec_form(args):
    try:
        v = json.loads(args)
        return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None
    except ValueError:
        return None


def check_dockerfile():
    section(f"dockerfile: {rel(DOCKERFILE)}")
    if not R.check(DOCKERFILE.exists(), "deploy/Dockerfile exists"):
        return
    ins = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stages = []  # (name, base image, [instructions])
    for kw, args, line in ins:
        if kw == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            stages.append({"base": m.group(1) if m else args, "name": (m.group(2) if m else None), "ins": [], "line": line})
        elif stages:
            stages[-1]["ins"].append((kw, args, line))
    R.check(len(stages) >= 3, f"multi-stage build ({len(stages)} stages: {', '.join(str(s['name']) for s in stages)})")
    names = [s["name"] for s in stages]

    def runs(stage):
        return [a for k, a, _ in stage["ins"] if k == "RUN"]

    R.check(any("cargo install cargo-chef" in r for s in stages for r in runs(s)), "cargo-chef installed in a stage")
    R.check(any("cargo chef prepare" in r for s in stages for r in runs(s)), "a planner stage runs `cargo chef prepare`")
    builders = [s for s in stages if any("cargo chef cook" in r for r in runs(s))]
    if R.check(len(builders) == 1, "one builder stage runs `cargo chef cook`"):
        b = builders[0]
        seq = b["ins"]
        cook = next(i for i, (k, a, _) in enumerate(seq) if k == "RUN" and "cargo chef cook" in a)
        copies = [(i, a) for i, (k, a, _) in enumerate(seq) if k == "COPY"]
        src_copies = [i for i, a in copies if "--from=" not in a]
        recipe = [i for i, a in copies if "recipe.json" in a and "--from=" in a]
        R.check(recipe and recipe[0] < cook, "builder: recipe.json copied from the planner before `cargo chef cook`")
        R.check(src_copies and all(i > cook for i in src_copies),
                "builder: `cargo chef cook` (dependency layer) runs before the sources are copied")
        build = [i for i, (k, a, _) in enumerate(seq) if k == "RUN" and re.search(r"cargo build\b.*--release", a)]
        R.check(build and src_copies and build[0] > max(src_copies), "builder: `cargo build --release` after the sources")
        R.check(all("--locked" in seq[i][1] for i in build + [cook]), "builder: cargo runs with --locked (Cargo.lock)")
        root = b
        while root["base"] in names:  # FROM <earlier stage>: follow it to the image
            root = stages[names.index(root["base"])]
        R.check(root["base"].startswith("rust:") and "bookworm" in root["base"],
                f"builder based on rust:*-bookworm ({b['base']} -> {root['base']})")
    final = stages[-1] if stages else None
    if final:
        R.check(final["base"] == "debian:bookworm-slim", f"runtime stage is debian:bookworm-slim ({final['base']})")
        kws = {}
        for k, a, _ in final["ins"]:
            kws.setdefault(k, []).append(a)
        R.check(not any("cargo" in r for r in kws.get("RUN", [])), "runtime stage runs no cargo")
        R.check(any("ca-certificates" in r for r in kws.get("RUN", [])), "runtime installs ca-certificates")
        R.check(any(re.search(r"--from=(\S+)", c) and "signup-worker" in c and re.search(r"--from=(\S+)", c).group(1) in names
                    for c in kws.get("COPY", [])), "runtime copies the signup-worker binary from the builder stage")
        users = kws.get("USER", [])
        if R.check(users, "runtime sets USER"):
            u = users[-1]
            m = re.fullmatch(r"(\d+)(?::(\d+))?", u)
            R.check(m and int(m.group(1)) != 0, f"USER is a numeric non-root uid ({u})")
            R.check(m and int(m.group(1)) == RUNTIME_UID, f"USER uid is {RUNTIME_UID} (the Kubernetes runAsUser)")
        R.check(kws.get("STOPSIGNAL", [None])[-1] == "SIGTERM", "STOPSIGNAL SIGTERM")
        R.check("9464" in " ".join(kws.get("EXPOSE", [])), "EXPOSE 9464")
        ep = exec_form(kws.get("ENTRYPOINT", ["null"])[-1])
        R.check(ep is not None and len(ep) == 1 and Path(ep[0]).name == "signup-worker",
                f"ENTRYPOINT [\"signup-worker\"] in exec form ({ep})")
        R.check(exec_form(kws.get("CMD", ["null"])[-1]) == ["run"], "CMD [\"run\"]")
        hcs = kws.get("HEALTHCHECK", [])
        if R.check(hcs, "HEALTHCHECK present"):
            hc = hcs[-1]
            m = re.search(r"\bCMD\s+(.*)$", hc)
            cmd = exec_form(m.group(1)) if m else None
            R.check(cmd is not None, "HEALTHCHECK CMD in exec form")
            R.check("/healthz" in hc and "9464" in hc, "HEALTHCHECK probes /healthz on port 9464 (the default)")
            R.check("curl" not in hc and "wget" not in hc, "HEALTHCHECK needs no curl/wget (not in the slim image)")
            if cmd and cmd[:2] == ["bash", "-c"]:
                res = subprocess.run(["bash", "-n", "-c", cmd[2]], capture_output=True, text=True)
                R.check(res.returncode == 0, f"HEALTHCHECK script passes `bash -n` {res.stderr.strip()}")
            R.check(re.search(r"--timeout=\d", hc), "HEALTHCHECK has a timeout")

    # .dockerignore at the build context (repository root).
    di = REPO / ".dockerignore"
    if R.check(di.exists(), ".dockerignore at the build context root"):
        pats = [l.strip() for l in di.read_text(encoding="utf-8").splitlines() if l.strip() and not l.startswith("#")]

        def ignored(path):
            hit = False
            for p in pats:
                neg = p.startswith("!")
                pp = p[1:] if neg else p
                if fnmatch.fnmatch(path, pp) or fnmatch.fnmatch(path, pp.rstrip("/")) or path.startswith(pp.rstrip("/") + "/"):
                    hit = not neg
            return hit

        for p in ("target", ".git"):
            R.check(ignored(p), f".dockerignore excludes {p}/")
        for p in ("Cargo.toml", "Cargo.lock", "src/main.rs", "entity/Cargo.toml", "migration/Cargo.toml"):
            R.check(not ignored(p), f".dockerignore keeps {p}")

    if shutil.which("hadolint"):
        res = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
        ver = subprocess.run(["hadolint", "--version"], capture_output=True, text=True).stdout.strip()
        if R.check(res.returncode == 0, f"hadolint: {res.stdout.strip()} {res.stderr.strip()}"):
            R.info(f"hadolint passed ({ver})")
    else:
        R.skip("hadolint not on PATH (optional; DEPLOY_CHECK_HADOLINT=1 check-manifests.sh installs it)")
    R.skip("`docker build` not run (no Docker engine here): the Dockerfile is checked structurally")


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compose-schema", help="compose-spec JSON schema file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every check, not only failures")
    args = ap.parse_args()
    R.verbose = args.verbose

    import kubernetes_validate as kv

    print(f"deploy checks in {REPO}")
    print(f"python {sys.version.split()[0]}, PyYAML {yaml.__version__}, "
          f"kubernetes-validate {kv.version.__version__} (schemas for Kubernetes {', '.join(K8S_VERSIONS)})")
    check_cli_settings()
    check_compose(args.compose_schema)
    check_kubernetes(kv)
    check_dockerfile()

    print()
    if R.failures:
        print(f"FAILED: {len(R.failures)} problem(s), {R.passed} checks passed, {len(R.skipped)} skipped")
        return 1
    print(f"OK: {R.passed} checks passed, {len(R.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
