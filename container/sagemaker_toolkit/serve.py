"""Start AWS's stack (sagemaker-inference 1.10.1 + multi-model-server 1.1.11) on a model dir.

    python container/sagemaker_toolkit/serve.py --model-dir DIR [--host 127.0.0.1] [--port 8080]
        [--run-dir DIR] [--handler-service MODULE]

DIR is a SageMaker model dir: the model (or LoRA adapter) files with the script at
DIR/code/inference.py. This calls the toolkit's own ``model_server.start_model_server`` as a
framework container does, with four redirections so it can run on a shared machine and in tests:

- the MMS config goes to RUN_DIR/mms.properties, not /etc/sagemaker-mms.properties;
- MMS binds --host (default 127.0.0.1) instead of the toolkit's hard-coded 0.0.0.0;
- TEMP/TMPDIR/LOG_LOCATION point into RUN_DIR: MMS keeps a pid file in the temp dir (and refuses
  to start while another MMS owns it) and puts its worker sockets there (/tmp/.mms.sock.9000 by
  default, which two instances would share);
- the toolkit finds the MMS JVM by scanning every process on the machine and fails with
  "multiple mms model servers are not supported" if another MMS runs anywhere; here it only
  looks at JVMs started with this run's config file.

When MMS's JVM exits (SIGTERM is forwarded to it by the toolkit), MMS leaves its Python workers
running; this script then stops the workers that belong to this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DEFAULT_HANDLER = "sagemaker_toolkit.handler_service"
STOCK_HANDLER = "sagemaker_inference.default_handler_service"
MMS_NAMESPACE = "com.amazonaws.ml.mms.ModelServer"
MMS_MAX_PORT = 32767


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path,
                        help="model (or adapter) dir with code/inference.py inside")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"),
                        help="bind address for inference + management API (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
                        help="port (env SAGEMAKER_BIND_TO_PORT, default 8080)")
    parser.add_argument("--run-dir", type=Path,
                        help="private dir for config, pid file, sockets, logs (default: a new temp dir)")
    parser.add_argument("--handler-service", default=DEFAULT_HANDLER,
                        help=f"MMS handler-service module (default {DEFAULT_HANDLER}; the toolkit's "
                             f"own is {STOCK_HANDLER}: it answers bad input with 500)")
    args = parser.parse_args(argv)
    if not 0 < args.port < MMS_MAX_PORT:
        # MMS's Connector rejects ports >= 32767 ("Invalid port number"), which excludes Linux's
        # whole ephemeral range (32768-60999): a port picked by binding to 0 will not work.
        parser.error(f"--port must be between 1 and {MMS_MAX_PORT - 1} (a multi-model-server limit)")
    if not (args.model_dir / "code" / "inference.py").is_file():
        parser.error(f"{args.model_dir}/code/inference.py not found: copy code/inference.py there "
                     "(SageMaker's layout for framework containers)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        parser.error("java not found: multi-model-server needs a JRE (apt-get install openjdk-17-jre-headless)")
    return args


def _our_processes(config_file: str, run_dir: str) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(MMS JVMs started with config_file, MMS Python workers whose socket is in run_dir)."""
    jvms, workers = [], []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if MMS_NAMESPACE in cmdline and config_file in cmdline:
            jvms.append(process)
        elif any(arg.endswith("model_service_worker.py") for arg in cmdline) and \
                any(arg.startswith(run_dir + os.sep) for arg in cmdline):
            workers.append(process)
    return jvms, workers


def _stop(processes: list[psutil.Process], timeout: float = 10) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    model_dir = args.model_dir.resolve()
    run_dir = (args.run_dir or Path(tempfile.mkdtemp(prefix="sagemaker-toolkit-"))).resolve()
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    config_file = str(run_dir / "mms.properties")
    address = f"http://{args.host}:{args.port}"

    os.environ.update({
        "SAGEMAKER_BIND_TO_PORT": str(args.port),
        # MMS reads MMS_<KEY> over its config file (enable_envvars_config=true in the toolkit's).
        "MMS_INFERENCE_ADDRESS": address,
        "MMS_MANAGEMENT_ADDRESS": address,
        "TEMP": str(run_dir / "tmp"),  # -> java.io.tmpdir: worker sockets
        "TMPDIR": str(run_dir / "tmp"),  # -> the multi-model-server launcher's pid file
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
        # The toolkit runs `multi-model-server` from PATH; MMS runs workers with that script's Python.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in [str(HERE.parent), os.environ.get("PYTHONPATH")] if p),
    })
    sys.path.insert(0, str(HERE.parent))

    from sagemaker_inference import environment, model_server

    model_server.MMS_CONFIG_FILE = config_file
    environment.model_dir = str(model_dir)
    environment.code_dir = str(model_dir / "code")
    model_server.REQUIREMENTS_PATH = str(model_dir / "code" / "requirements.txt")

    def find_ours() -> psutil.Process:
        jvms, _ = _our_processes(config_file, str(run_dir))
        if len(jvms) != 1:
            raise RuntimeError(f"expected one MMS JVM with {config_file}, found {len(jvms)}")
        return jvms[0]

    model_server._retrieve_mms_server_process = find_ours  # scope the toolkit's machine-wide scan

    # The JVM is not our child (the launcher exits), so its exit status is unknown: a JVM exit
    # without SIGTERM is a failure (e.g. "Invalid configuration") and must not exit 0.
    terminated = []
    add_sigterm_handler = model_server._add_sigterm_handler

    def add_sigterm_handler_and_flag(mms_process: psutil.Process) -> None:
        add_sigterm_handler(mms_process)
        forward = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signo, frame):
            terminated.append(signo)
            forward(signo, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    model_server._add_sigterm_handler = add_sigterm_handler_and_flag

    try:
        model_server.start_model_server(handler_service=args.handler_service)
    finally:
        # Reached when the JVM exits (SIGTERM forwarded by the toolkit) or the start failed.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        jvms, workers = _our_processes(config_file, str(run_dir))
        _stop(jvms + workers)
    if not terminated:
        print(f"multi-model-server exited on its own; see the log above and {run_dir}/logs",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
