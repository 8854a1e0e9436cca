#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in deploy/k8s/ (no cluster, no kubectl).
#
#   deploy/validate-k8s.sh [DIR]      # DIR defaults to deploy/k8s
#
# What is checked, and against what:
# - Built-in kinds (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler,
#   ConfigMap): `kubernetes-validate --strict` (unknown fields are errors) against the
#   OpenAPI schemas of each Kubernetes version in K8S_VERSIONS: the oldest supported (1.30,
#   where the preStop `sleep` action became beta and on by default) and the newest the tool
#   knows.
# - ServiceMonitor and ScaledObject: against their CRDs' OpenAPI schemas as shipped in the
#   PyPI packages cloudcoil-models-prometheus-operator and cloudcoil-models-keda (pydantic
#   models generated from the published CRDs), made strict like the API server's
#   fieldValidation=Strict: unknown fields are errors.
# - InferencePool and EndpointPickerConfig: NOT schema-checked (no registry package ships
#   their schemas; EndpointPickerConfig is not even a Kubernetes resource). They are parsed,
#   their apiVersion/kind checked, and checked by this script's own rules: the fields
#   the upstream Go types define, the plugin references resolving, the metric names.
# - Across files: selectors match the pod labels, ports match by name and number, autoscalers
#   target the Deployment, the grace period covers preStop + drain, Guaranteed QoS, the
#   metric names exist on the server's /metrics.
#
# Exits non-zero on any failure. Installs its tools into a venv ($VENV, default
# .ci/k8s-venv) from PyPI on first use (pinned versions); later runs reuse it and need no
# network.
set -euo pipefail

dir=${1:-deploy/k8s}
dir=$(cd "$dir" && pwd)
cd "$(dirname "$0")/.."

VENV=${VENV:-.ci/k8s-venv}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
# Pinned: these versions fix the schemas checked against.
PKGS=(
  kubernetes-validate==1.37.0
  "pyyaml>=6,<7"
  cloudcoil-models-prometheus-operator==0.80.1.0
  cloudcoil-models-keda==2.16.1.0
)

stamp="$VENV/.validate-k8s-packages"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PKGS[*]}" ]; then
  echo "== installing ${PKGS[*]} into $VENV"
  python3 -m venv "$VENV"
  # Keep the venv out of `git status` without touching the repository's .gitignore.
  printf '*\n' >"$VENV/.gitignore"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
  printf '%s' "${PKGS[*]}" >"$stamp"
fi

exec "$VENV/bin/python" - "$dir" "$K8S_VERSIONS" "$VENV/bin" "$PWD" <<'PYTHON'
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

root, versions, venv_bin, repo = Path(sys.argv[1]), sys.argv[2].split(), Path(sys.argv[3]), Path(sys.argv[4])
failures = []
passed = 0


def ok(msg):
    global passed
    passed += 1
    print(f"  ok    {msg}")


def fail(msg):
    failures.append(msg)
    print(f"  FAIL  {msg}")


def check(cond, msg):
    ok(msg) if cond else fail(msg)


BUILTIN = {
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("v1", "ConfigMap"),
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        ("cloudcoil.models.prometheus_operator.v1", "ServiceMonitor", "prometheus-operator 0.80.1 CRD"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject", "KEDA 2.16.1 CRD"),
}
UNCHECKED = {("inference.networking.k8s.io/v1", "InferencePool")}
EPP_API_VERSIONS = {"inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"}

# The router gauges the server publishes (server/src/metrics.rs, router_gauges): as
# inferneo_NAME always, and as vllm:NAME with --metrics-compat vllm.
ROUTER_GAUGES = {"num_requests_waiting", "num_requests_running", "kv_cache_usage_perc", "cache_config_info"}

# --- parse -----------------------------------------------------------------------------
print(f"== parsing {root}")
files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
check(files, f"{len(files)} manifest files found")
docs = []  # (file, doc)
for f in files:
    try:
        loaded = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{f.name}: not valid YAML: {e}")
        continue
    good = True
    for d in loaded:
        if not (isinstance(d, dict) and d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")):
            fail(f"{f.name}: a document without apiVersion, kind and metadata.name")
            good = False
            continue
        key = (d["apiVersion"], d["kind"])
        if key not in BUILTIN | set(CRD_SCHEMAS) | UNCHECKED:
            fail(f"{f.name}: {key[1]} {key[0]} is no kind this script knows how to check")
            good = False
        docs.append((f, d))
    if good and loaded:
        ok(f"{f.name}: YAML, " + ", ".join(f"{d['kind']} {d['apiVersion']}" for d in loaded))


def find(kind, api=None):
    return [d for _, d in docs if d["kind"] == kind and (api is None or d["apiVersion"] == api)]


def one(kind):
    found = find(kind)
    if len(found) != 1:
        fail(f"expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


# --- built-in kinds: kubernetes-validate --strict --------------------------------------------
builtin_files = sorted({f for f, d in docs if (d["apiVersion"], d["kind"]) in BUILTIN})
mixed = sorted({f.name for f, d in docs if f in builtin_files and (d["apiVersion"], d["kind"]) not in BUILTIN})
check(not mixed, f"no file mixes built-in and custom kinds {mixed or ''}".rstrip())
for version in versions:
    print(f"== kubernetes-validate --strict -k {version}")
    run = subprocess.run(
        [str(venv_bin / "kubernetes-validate"), "--strict", "-k", version, *map(str, builtin_files)],
        capture_output=True, text=True)
    out = (run.stdout + run.stderr).strip()
    for line in out.splitlines():
        print(f"        {line.replace(str(root) + '/', '')}")
    # A kind it has no schema for is only a WARN with exit 0: count that as a failure too.
    check(run.returncode == 0 and "WARN" not in out and "ERROR" not in out,
          f"{len(builtin_files)} files of built-in kinds valid against Kubernetes {version}")

# --- CRDs with a schema from PyPI ---------------------------------------------------------
print("== CRD schemas (cloudcoil-models-*, strict)")
import importlib

import jsonschema


def strict(node):
    """Unknown fields are errors, as with the API server's fieldValidation=Strict."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


for (api, kind), (module, cls, what) in CRD_SCHEMAS.items():
    model = getattr(importlib.import_module(module), cls)
    validator = jsonschema.Draft202012Validator(strict(model.model_json_schema(by_alias=True, mode="validation")))
    for f, d in docs:
        if (d["apiVersion"], d["kind"]) != (api, kind):
            continue
        errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
        for e in errors:
            print(f"        {f.name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}")
        check(not errors, f"{f.name}: {kind} {d['metadata']['name']} valid against the {what} schema")

# --- cross-file and project rules -------------------------------------------------------
print("== cross-references and project rules")
dep = one("Deployment")
svc = one("Service")
pod_labels, containers, pod, args, port_names = {}, [], {}, [], {}
if dep:
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = pod["containers"]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def arg(args, flag, default=None):
    return args[args.index(flag) + 1] if flag in args else default


if dep:
    check(selects(dep["spec"]["selector"].get("matchLabels"), pod_labels), "Deployment selector matches its pod labels")
    c = containers[0]
    args = [str(a) for a in c.get("args", [])]
    port_names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(args[:1] == ["serve"] and arg(args, "--host") == "0.0.0.0",
          "container runs `serve --host 0.0.0.0` (the default 127.0.0.1 is unreachable from probes and Services)")
    check(str(arg(args, "--port", "8000")) in {str(p) for p in port_names.values()}, "--port is a declared containerPort")
    # Probes: load budget on /ready, liveness on /health, ports by declared names.
    probes = {k: c.get(k) or {} for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths = {k: (p.get("httpGet") or {}).get("path") for k, p in probes.items()}
    check(paths == {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"},
          "probes: startup and readiness on /ready, liveness on /health")
    check(all((p.get("httpGet") or {}).get("port") in port_names or (p.get("httpGet") or {}).get("port") in port_names.values()
              for p in probes.values()), "probe ports are declared container ports")
    sp = probes["startupProbe"]
    budget = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
    check(budget >= 120, f"startupProbe allows {budget} s for loading models (>= 120 s)")
    # Shutdown: the grace period must cover preStop + drain delay + drain timeout.
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    check("sleep" in pre and "exec" not in pre, "preStop uses the sleep action (the image has no shell or sleep binary)")
    sleep_s = (pre.get("sleep") or {}).get("seconds", 0)
    delay, timeout = float(arg(args, "--drain-delay", 0)), float(arg(args, "--drain-timeout", 30))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > sleep_s + delay + timeout,
          f"terminationGracePeriodSeconds {grace} > preStop {sleep_s} + drain-delay {delay:g} + drain-timeout {timeout:g}")
    # Guaranteed QoS with whole CPUs (static CPU manager), thread count from the limit.
    guaranteed = True
    for cc in containers + pod.get("initContainers", []):
        r = cc.get("resources", {})
        req, lim = r.get("requests", {}), r.get("limits", {})
        guaranteed &= all(k in lim and str(req.get(k, lim[k])) == str(lim[k]) for k in ("cpu", "memory"))
    check(guaranteed, "Guaranteed QoS: every container has cpu and memory limits equal to its requests")
    cpu = str(c.get("resources", {}).get("limits", {}).get("cpu", ""))
    check(re.fullmatch(r"[1-9][0-9]*", cpu) is not None, f"CPU limit {cpu!r} is a whole number (exclusive cores)")
    env = {e["name"]: e for e in c.get("env", [])}
    ref = (env.get("RAYON_NUM_THREADS", {}).get("valueFrom") or {}).get("resourceFieldRef") or {}
    check(ref.get("resource") == "limits.cpu" and str(ref.get("divisor", "1")) == "1",
          "RAYON_NUM_THREADS comes from limits.cpu (divisor 1)")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and (csc.get("runAsUser") or psc.get("runAsUser", 0)) != 0
          and csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True
          and "ALL" in (csc.get("capabilities") or {}).get("drop", []),
          "non-root, no privilege escalation, read-only root filesystem, all capabilities dropped")
    vols = {v["name"] for v in pod.get("volumes", [])}
    check(any(m["mountPath"] == "/models" and m["name"] in vols for m in c.get("volumeMounts", [])),
          "/models is mounted from a declared volume")

if dep and svc:
    check(selects(svc["spec"].get("selector"), pod_labels), "Service selector matches the pod labels")
    for p in svc["spec"]["ports"]:
        t = p.get("targetPort", p["port"])
        check(t in port_names or t in port_names.values(), f"Service port {p.get('name')} targets a container port ({t})")

pdb = one("PodDisruptionBudget")
if pdb and dep:
    check(selects(pdb["spec"]["selector"].get("matchLabels"), pod_labels), "PodDisruptionBudget selects the pods")

for sm in find("ServiceMonitor"):
    if svc:
        check(selects(sm["spec"]["selector"].get("matchLabels"), svc["metadata"].get("labels", {})),
              "ServiceMonitor selects the Service by its labels")
        names = {p.get("name") for p in svc["spec"]["ports"]}
        check(all(e.get("port") in names and e.get("path", "/metrics") == "/metrics" for e in sm["spec"]["endpoints"]),
              "ServiceMonitor scrapes /metrics on a named Service port")


def metric_names(text):
    return set(re.findall(r"\b(?:inferneo_|vllm:)[a-z_]+", text))


def published(name):
    """Whether the server publishes this router gauge, given the Deployment's flags."""
    prefix, base = ("vllm:", name[5:]) if name.startswith("vllm:") else ("inferneo_", name[len("inferneo_"):])
    if base not in ROUTER_GAUGES:
        return False
    return prefix == "inferneo_" or (dep is not None and arg(args, "--metrics-compat") == "vllm")


# The gauge names must still be in the server's source.
metrics_rs = repo / "server/src/metrics.rs"
if metrics_rs.exists():
    src = metrics_rs.read_text()
    check(all(f'"{g}"' in src or f'{{prefix}}{g}' in src for g in ROUTER_GAUGES),
          "router gauge names are still in server/src/metrics.rs")

adapter_metrics = set()
for cm in find("ConfigMap"):
    for key, text in (cm.get("data") or {}).items():
        try:
            inner = yaml.safe_load(text)
        except yaml.YAMLError as e:
            fail(f"ConfigMap {cm['metadata']['name']} {key}: not valid YAML: {e}")
            continue
        if isinstance(inner, dict) and "rules" in inner:  # prometheus-adapter config
            good = True
            for r in inner["rules"]:
                good &= set(r) <= {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
                good &= all(t in r.get("metricsQuery", "") for t in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"))
                good &= {"namespace", "pod"} <= set((r.get("resources") or {}).get("overrides", {}))
                names = metric_names(r.get("seriesQuery", ""))
                good &= bool(names) and all(published(n) for n in names)
                # Each gauge comes per model and once without `model`: sum only the latter.
                good &= 'model=""' in r.get("metricsQuery", "") + r.get("seriesQuery", "")
                adapter_metrics.add((r.get("name") or {}).get("as") or next(iter(names), ""))
            check(good, f"ConfigMap {cm['metadata']['name']}: prometheus-adapter rules are well formed, per pod, "
                        'on published series, summing only the model="" totals')
        if isinstance(inner, dict) and inner.get("kind") == "EndpointPickerConfig":
            name = f"ConfigMap {cm['metadata']['name']} {key}"
            check(inner.get("apiVersion") in EPP_API_VERSIONS,
                  f"{name}: EndpointPickerConfig apiVersion {inner.get('apiVersion')} is one an EPP reads")
            # Fields of EndpointPickerConfig (apix/config/v1alpha1), decoded strictly by the EPP.
            top = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer",
                   "flowControl", "requestHandler", "saturationDetector", "parser"}
            check(set(inner) <= top, f"{name}: only known top-level fields {sorted(set(inner) - top) or ''}".rstrip())
            plugins = inner.get("plugins") or []
            pnames = [p.get("name") or p.get("type") for p in plugins]
            check(all(isinstance(p, dict) and p.get("type") and set(p) <= {"name", "type", "parameters"} for p in plugins)
                  and len(pnames) == len(set(pnames)), f"{name}: plugins have a type and unique names")
            refs = [pp.get("pluginRef") for prof in inner.get("schedulingProfiles") or [] for pp in prof.get("plugins") or []]
            ok_fields = all(set(pp) <= {"pluginRef", "weight"} for prof in inner.get("schedulingProfiles") or []
                            for pp in prof.get("plugins") or [])
            for s in (inner.get("dataLayer") or {}).get("sources") or []:
                refs += [s.get("pluginRef")] + [e.get("pluginRef") for e in s.get("extractors") or []]
            check(ok_fields and refs and all(r in pnames for r in refs),
                  f"{name}: every pluginRef names a declared plugin")
            for p in plugins:
                if p["type"] != "core-metrics-extractor":
                    continue
                params = p.get("parameters") or {}
                engines = params.get("engineConfigs") or []
                spec_keys = {"name", "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec", "cacheInfoSpec",
                             "cacheBlockSizeLabelName", "cacheNumBlocksLabelName", "cacheBlockSizeSpec",
                             "cacheNumBlocksSpec", "customMetrics"}
                check(set(params) <= {"engineLabelKey", "defaultEngine", "engineConfigs"}
                      and all(set(e) <= spec_keys for e in engines),
                      f"{name}: core-metrics-extractor has only known parameters")
                default = params.get("defaultEngine", "vllm")
                mine = next((e for e in engines if e.get("name") == default), None)
                check(mine is not None, f"{name}: defaultEngine {default!r} is defined in engineConfigs")
                if mine:
                    used = {k: v.split("{")[0] for k, v in mine.items() if k.endswith("Spec") and v}
                    check(used and all(published(m) for m in used.values()),
                          f"{name}: engine {default!r} reads series the server publishes {sorted(used.values())}")

hpa = one("HorizontalPodAutoscaler")
if hpa and dep:
    t = hpa["spec"]["scaleTargetRef"]
    check((t.get("kind"), t.get("name")) == ("Deployment", dep["metadata"]["name"]), "HPA scales the Deployment")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    check(names and names <= adapter_metrics, f"HPA's Pods metrics {sorted(names)} are served by the adapter rules")
for so in find("ScaledObject"):
    if dep:
        check(so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "ScaledObject scales the Deployment")
    for trig in so["spec"]["triggers"]:
        q = (trig.get("metadata") or {}).get("query", "")
        names = metric_names(q)
        check(trig["type"] != "prometheus" or (names and all(published(n) for n in names) and 'model=""' in q),
              f'ScaledObject\'s query reads series the server publishes {sorted(names)}, only the model="" totals')

for pool in find("InferencePool"):
    # Not schema-checked: these rules follow the CRD (config/crd/bases of
    # kubernetes-sigs/gateway-api-inference-extension) by hand.
    spec = pool.get("spec") or {}
    ports = spec.get("targetPorts") or []
    epp = spec.get("endpointPickerRef") or {}
    check(set(spec) <= {"selector", "targetPorts", "endpointPickerRef", "appProtocol"}
          and set(spec.get("selector") or {}) == {"matchLabels"}
          and all(set(p) == {"number"} for p in ports)
          and set(epp) <= {"group", "kind", "name", "port", "failureMode"},
          "InferencePool: only fields of the v1 CRD")
    check(dep is not None and selects((spec.get("selector") or {}).get("matchLabels"), pod_labels),
          "InferencePool selector matches the pod labels")
    nums = [p.get("number") for p in ports]
    check(1 <= len(nums) <= 8 and len(set(nums)) == len(nums) and set(nums) <= set(port_names.values()),
          f"InferencePool targetPorts {nums} are unique container ports")
    check(bool(epp.get("name")) and 1 <= ((epp.get("port") or {}).get("number") or 0) <= 65535
          and epp.get("failureMode", "FailClose") in {"FailOpen", "FailClose"},
          f"InferencePool endpointPickerRef names a Service port ({epp.get('name')}:{(epp.get('port') or {}).get('number')})")

# --- summary -----------------------------------------------------------------------------
kinds = lambda keys: sorted({d["kind"] for _, d in docs if (d["apiVersion"], d["kind"]) in keys})
print("== summary")
print(f"schema-checked by kubernetes-validate --strict (Kubernetes {', '.join(versions)}): {', '.join(kinds(BUILTIN))}")
print(f"schema-checked against CRD schemas from PyPI: {', '.join(kinds(set(CRD_SCHEMAS)))}")
epp_present = any(isinstance(v, str) and "kind: EndpointPickerConfig" in v for cm in find("ConfigMap") for v in (cm.get("data") or {}).values())
print(f"not schema-checked: {', '.join(kinds(UNCHECKED) + (['EndpointPickerConfig'] if epp_present else []))}"
      " (parsed; apiVersion/kind, fields and references checked by this script's rules)")
if failures:
    print(f"validate-k8s: FAILED, {len(failures)} of {passed + len(failures)} checks:")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print(f"validate-k8s: OK, {passed} checks passed")
PYTHON
