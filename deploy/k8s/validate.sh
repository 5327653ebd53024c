#!/usr/bin/env bash
# Validates the Kubernetes manifests in this folder against the official
# OpenAPI schemas (strict: unknown fields are errors), for the oldest
# Kubernetes version they need (1.30: the preStop `sleep` action is on by
# default from 1.30) and the newest the validator knows.
#
#   deploy/k8s/validate.sh
#
# Needs `kubernetes-validate` (PyPI; it bundles the schemas, no cluster or
# network needed). With `kubectl` present, also renders each kustomization
# (`kubectl kustomize`) and validates the result.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
command -v kubernetes-validate >/dev/null || {
    echo "validate: kubernetes-validate is not installed (pip install kubernetes-validate)" >&2
    exit 1
}

mapfile -t files < <(find . -name '*.yaml' ! -name kustomization.yaml | sort)
[ "${#files[@]}" -ge 6 ] || { echo "validate: expected the manifests, found: ${files[*]}" >&2; exit 1; }
for version in 1.30.0 1.37.0; do
    kubernetes-validate --strict --quiet -k "$version" "${files[@]}"
done

if command -v kubectl >/dev/null; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for k in base cpu backlog; do
        kubectl kustomize "$k" >"$tmp/$k.yaml"
        kubernetes-validate --strict --quiet "$tmp/$k.yaml"
    done
else
    echo "validate: kubectl not found; kustomizations not rendered" >&2
fi

# Cross-checks the schemas cannot make: the names and numbers that must agree
# between files, and the adapter's embedded configuration.
python3 - <<'EOF'
import sys
import yaml

def load(path):
    with open(path) as f:
        return yaml.safe_load(f)

dep = load("base/deployment.yaml")
svc = load("base/service.yaml")
pdb = load("base/pdb.yaml")
hpa_cpu = load("cpu/hpa.yaml")
hpa_backlog = load("backlog/hpa.yaml")
adapter = load("backlog/prometheus-adapter-rules.yaml")
errors = []

pod = dep["spec"]["template"]
labels = pod["metadata"]["labels"]
for what, selector in [
    ("deployment selector", dep["spec"]["selector"]["matchLabels"]),
    ("service selector", svc["spec"]["selector"]),
    ("pdb selector", pdb["spec"]["selector"]["matchLabels"]),
]:
    if any(labels.get(k) != v for k, v in selector.items()):
        errors.append(f"{what} {selector} does not match the pod labels {labels}")

for hpa in (hpa_cpu, hpa_backlog):
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
        errors.append(f"HPA targets {ref}, not the deployment")

(c,) = pod["spec"]["containers"]
env = {e["name"]: e["value"] for e in c["env"]}
port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
if not env["MPSERVER_HTTP_ADDR"].endswith(f":{port}"):
    errors.append(f"MPSERVER_HTTP_ADDR {env['MPSERVER_HTTP_ADDR']} is not on port {port}")
if pod["metadata"]["annotations"]["prometheus.io/port"] != str(port):
    errors.append("the prometheus.io/port annotation is not the http port")
for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
    if c[probe]["httpGet"]["path"] != path:
        errors.append(f"{probe} is not on {path}")

# Termination: preStop + drain_delay + shutdown_grace + close_timeout (5 s,
# the HTTP front's default) must fit in the grace period the kubelet gives.
pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
drain = int(env["MPSERVER_HTTP_DRAIN_DELAY_MS"]) / 1000
grace = int(env["MPSERVER_HTTP_GRACE_MS"]) / 1000
needed = pre_stop + drain + grace + 5
given = pod["spec"]["terminationGracePeriodSeconds"]
if given < needed:
    errors.append(f"terminationGracePeriodSeconds {given} < {needed} needed to drain")

# The seed flow pins workers to CPUs 0 and 1: the pod must ask for both.
if float(c["resources"]["requests"]["cpu"]) < 2:
    errors.append("the CPU request is below the 2 CPUs the seed flow pins to")

# The backlog autoscaler's metric must be one the adapter serves.
rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
served = {r["name"]["as"] for r in rules}
(m,) = hpa_backlog["spec"]["metrics"]
if m["pods"]["metric"]["name"] not in served:
    errors.append(f"the backlog HPA's metric {m['pods']['metric']['name']} is not served by the adapter ({served})")

if errors:
    print("validate: " + "\nvalidate: ".join(errors), file=sys.stderr)
    sys.exit(1)
EOF
echo "validate: deploy/k8s OK (${#files[@]} manifests, Kubernetes 1.30 and 1.37)"
