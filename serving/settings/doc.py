"""The configuration shown to people: the effective values with their sources (``serve
--print-config``) and docs/configuration.md (``make docs``), both from the one Settings object."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from serving.settings.fields import Settings
from serving.settings.loading import load_settings_with_sources


def describe(settings: Settings, sources: Mapping[str, str]) -> str:
    """The effective configuration, one line per knob: variable, value, source."""
    def shown(f: dataclasses.Field) -> str:
        value = getattr(settings, f.name)
        return "'***'" if f.metadata["secret"] and value is not None else repr(value)

    rows = [(f.metadata["env"], shown(f), sources.get(f.name, "default")) for f in dataclasses.fields(Settings)]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{env:<{width[0]}}  {value:<{width[1]}}  ({source})" for env, value, source in rows)


DOC_HEADER = """# Configuration

Generated from `serving/settings/fields.py` by `make docs` (`python -m serving.settings --markdown`);
a test fails when this file is stale.

Precedence: default < config file (`serve --config FILE` or `SERVING_CONFIG`, YAML keyed by field
name or variable) < environment < command-line flags. The same file's `training:` section holds
the training hyperparameters (`train --config FILE --print-config`; docs/training.md).
`serve --print-config` prints the effective values and their sources. The server exports every
value to its environment before loading the model script, which reads `DEVICE`, `TORCH_DTYPE`,
`MAX_INPUT_TOKENS`, `BASE_MODEL_DIR` / `BASE_MODEL_ID` and the generation limits from there (as
it must under AWS's toolkit too).

"""


def markdown_table() -> str:
    lines = [DOC_HEADER + "| variable | default | what it trades |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not None else "(unset)"
        doc = f.metadata["doc"]
        if f.metadata["choices"]:
            doc += f" One of: {', '.join(f.metadata['choices'])}."
        lines.append(f"| `{f.metadata['env']}` | `{default}` | {doc} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if "--markdown" in argv:
        print(markdown_table())
    else:
        print(describe(*load_settings_with_sources()))
