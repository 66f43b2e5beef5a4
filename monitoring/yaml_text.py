"""YAML as the bundle writes it: key order kept, multi-line strings (PromQL,
dashboard JSON) as literal blocks, no anchors or aliases (people read and copy
these files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(document: Any, width: int = 4096) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=width, allow_unicode=True)


def to_yaml_all(documents: Sequence[Any], width: int = 100) -> str:
    return yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, width=width, allow_unicode=True
    )
