"""Write k8s/base/prometheusrule.yaml from monitoring/rules.yaml (the one source of the rules).

prometheus-operator wants the rule groups wrapped in a PrometheusRule object; kustomize cannot
read a file outside k8s/ (its load restrictor), so the wrapper is generated and committed.
``--check`` exits 1 when the committed file is stale (CI runs it; a test also compares them).

    python monitoring/gen_prometheusrule.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "rules.yaml"
TARGET = ROOT / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from monitoring/rules.yaml by `python monitoring/gen_prometheusrule.py`
# (make k8s-rules). Do not edit: change monitoring/rules.yaml and regenerate.
# The Prometheus object's ruleSelector must match these labels (kube-prometheus-stack:
# add `release: <its release name>` in an overlay).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line PromQL stays a readable literal block instead of an escaped one-liner.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def load_rules(path: Path = RULES) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise ValueError(f"{path}: expected a Prometheus rule file with a top-level 'groups' list")
    return data


def render(rules: dict[str, Any]) -> str:
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "t5serving",
            "labels": {
                "app.kubernetes.io/name": "t5serving",
                "app.kubernetes.io/component": "server",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    text = render(load_rules())
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python monitoring/gen_prometheusrule.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
