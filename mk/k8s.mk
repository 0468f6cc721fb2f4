# Kubernetes manifests and monitoring (docs/kubernetes.md, docs/observability.md).
K8S_OVERLAY ?= cpu

.PHONY: k8s-render k8s-check k8s-test k8s-rules k8s-dashboard

k8s-render: install ## Print the rendered overlay K8S_OVERLAY (cpu|gpu)
	$(VENV)/bin/kubectl kustomize k8s/overlays/$(K8S_OVERLAY)

k8s-rules: ## Regenerate k8s/base/prometheusrule.yaml from monitoring/rules.yaml
	$(PY) monitoring/gen_prometheusrule.py

k8s-dashboard: ## Regenerate monitoring/grafana-dashboard.json
	$(PY) monitoring/gen_dashboard.py

k8s-check: install ## Render + validate every overlay, yamllint, promtool check/test rules
	PY=$(PY) bash .ci/k8s.sh check

k8s-test: install ## All k8s/monitoring checks and tests (installs prometheus via apt if missing)
	PY=$(PY) bash .ci/k8s.sh all
