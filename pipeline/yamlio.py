"""The one YAML reader for configs and policies: safe, and a key given twice is an error.

PyYAML's ``safe_load`` keeps the last of two equal keys in a mapping, so a reader of the file sees
one value (``acc_f_max: 0.01`` near the top) and the run uses another (``acc_f_max: 1.0`` further
down). ``load`` refuses it with a ``yaml.YAMLError`` that says where, like any other syntax error.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *alias" merges are overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: SafeLoader reports it
                    break
                if duplicate:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"the key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a mapping key given twice."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
