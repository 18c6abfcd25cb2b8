#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment (k8s/, Dockerfile): renders
# every kustomize overlay with kubectl, validates each object against the
# Kubernetes schema (kubernetes-validate) and the FoundationDBCluster CRD
# subset in k8s/crds, and checks the rules rollouts depend on
# (k8s/tests/check_manifests.py). Installs its Python packages into a venv
# under target/ the first time. Needs kubectl (with kustomize built in).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1; then
    cat >&2 <<'MSG'
kubectl is missing (it renders the kustomize overlays offline; no cluster needed).
Install it from the Kubernetes package repository, for example as root:
  curl -fsSL https://pkgs.k8s.io/core:/stable:/v1.32/deb/Release.key | gpg --dearmor -o /etc/apt/keyrings/kubernetes.gpg
  echo 'deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/v1.32/deb/ /' > /etc/apt/sources.list.d/kubernetes.list
  apt-get update && apt-get install -y kubectl
MSG
    exit 1
fi

venv=target/k8s-venv
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.33.1' 'PyYAML==6.0.2'
fi
exec "$venv/bin/python" k8s/tests/check_manifests.py
