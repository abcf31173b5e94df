#!/usr/bin/env bash
# Validates the shipped production files offline (run by infra/test.sh):
# - yamllint on infra/k8s;
# - kubernetes-validate --strict on every built-in resource, against Kubernetes 1.33;
# - infra/check_k8s.py: the custom resources (KEDA, Prometheus Operator) against the
#   fields of their CRDs, and the manifests against each other;
# - checkov on the manifests and the Dockerfile: no failed check (a skip names its
#   reason in the resource's annotations).
# The tools are installed, pinned, into $HOME/.cache/hookstream/venv-infra when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE=${HOOKSTREAM_CACHE:-$HOME/.cache/hookstream}
VENV=$CACHE/venv-infra
K8S_VERSION=1.33.0
# The raw topic's partitions in production (the scaler's ceiling).
RAW_PARTITIONS=${RAW_PARTITIONS:-12}

if ! "$VENV/bin/python" -c 'import kubernetes_validate, yamllint, checkov' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'kubernetes-validate==1.37.0' 'yamllint==1.38.0' 'checkov==3.3.30'
fi

echo "yamllint"
"$VENV/bin/yamllint" --strict -c infra/yamllint.yaml infra/k8s

echo "kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
for f in infra/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  # Custom resources have no built-in schema: infra/check_k8s.py checks them.
  out=$("$VENV/bin/kubernetes-validate" --strict --no-warn -k "$K8S_VERSION" "$f" 2>&1) || { echo "$out"; exit 1; }
done

echo "custom resources and cross-references"
"$VENV/bin/python" infra/check_k8s.py infra/k8s "$RAW_PARTITIONS"

echo "checkov"
# --skip-download: offline (no policy metadata from the vendor's API).
"$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes -d infra/k8s
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile -f infra/docker/Dockerfile
