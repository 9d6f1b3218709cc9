"""Griffe extensions of the pandaflow site (mkdocs.yml, mkdocstrings ``extensions:``).

- :class:`ReSTRoles`: docstrings are written in reST's inline markup
  (``:class:`~pandaflow.spec.Job```, ``text::`` before a literal block); mkdocstrings renders
  Markdown, so each docstring is translated before it is parsed
  (:func:`pandaflow.reference.markdown.roles`).
- :class:`StructFields`: a msgspec struct documents its fields with ``Meta(description=...)``
  (what the OpenAPI document shows); those descriptions become the fields' docstrings.
"""

from __future__ import annotations

from typing import Any

import griffe
import msgspec

from pandaflow.reference.markdown import roles


class ReSTRoles(griffe.Extension):
    """Sphinx roles as code spans, ``::`` literal-block markers as ``:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = roles(obj.docstring.value)


class StructFields(griffe.Extension):
    """The fields of msgspec structs documented by their ``Meta`` descriptions."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        if not (isinstance(runtime, type) and issubclass(runtime, msgspec.Struct)):
            return
        _, schemas = msgspec.json.schema_components([runtime])
        properties = schemas[runtime.__name__].get("properties", {})
        for name, prop in properties.items():
            member = cls.members.get(name)
            about = prop.get("description") or next(
                (b["description"] for b in prop.get("anyOf", ()) if "description" in b), None
            )
            if member is not None and member.docstring is None and about:
                member.docstring = griffe.Docstring(roles(about), parent=member)
