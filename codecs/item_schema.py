"""XSD loading and schema-error reporting shared by the item and registration codecs.

Both validators are built from the same files in ``codecs/xsd/``: libxml2 (through
lxml) for speed on every item and entry, xmlschema for typed inspection and tooling.
Each compiled schema is cached: lxml validators once per thread (a validator keeps
its error log on the instance, so sharing one across threads could mix reports),
xmlschema schemas once per process. Nothing is compiled per call.

Errors are rewritten so that messages never carry document values (which may be
personal data): only the libxml2 error kind, element and attribute names and a
location path survive.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, cast

import xmlschema
from lxml import etree

from .errors import SchemaError

XSD_DIR: Final = Path(__file__).resolve().parent / "xsd"

_local = threading.local()
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_ELEMENT_IN_MESSAGE = re.compile(r"^Element '(?:\{[^}]*\})?([^']*)'")
_ATTRIBUTE_IN_MESSAGE = re.compile(r"attribute '(?:\{[^}]*\})?([^']*)'")
_STEP = re.compile(r"^(?:[^:\[\]]*:)?([^\[\]]*)(\[[0-9]+\])?$")

_DESCRIPTIONS: Final[dict[str, str]] = {
    "SCHEMAV_ELEMENT_CONTENT": "unexpected or missing child element",
    "SCHEMAV_CVC_ELT_1": "element is not declared by the schema",
    "SCHEMAV_CVC_ELT_3_1": "element may not be nil",
    "SCHEMAV_CVC_ELT_3_2_1": "a nil element must be empty",
    "SCHEMAV_CVC_ELT_3_2_2": "a nil element may not have a fixed value",
    "SCHEMAV_CVC_AU": "attribute does not have its fixed value",
    "SCHEMAV_CVC_COMPLEX_TYPE_4": "required attribute is missing",
    "SCHEMAV_CVC_COMPLEX_TYPE_3_2_1": "attribute is not allowed",
    "SCHEMAV_CVC_COMPLEX_TYPE_3_2_2": "attribute is not allowed",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_1": "element must be empty",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_3": "character content is not allowed here",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_4": "unexpected or missing child element",
    "SCHEMAV_CVC_ELT_4_3": "xsi:type is not allowed here",
}


def _xsd_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True
    )


@functools.cache
def _schema_source(file: str) -> bytes:
    """The XSD file's bytes, read once per process."""
    return (XSD_DIR / file).read_bytes()


def lxml_schema(file: str) -> etree.XMLSchema:
    """The libxml2 validator for ``file``, compiled once per thread."""
    cache: dict[str, etree.XMLSchema] | None = getattr(_local, "schemas", None)
    if cache is None:
        cache = {}
        _local.schemas = cache
    schema = cache.get(file)
    if schema is None:
        document = etree.fromstring(
            _schema_source(file), parser=_xsd_parser(), base_url=str(XSD_DIR / file)
        )
        schema = etree.XMLSchema(document)
        cache[file] = schema
    return schema


@functools.cache
def xmlschema_schema(file: str) -> Any:
    """The xmlschema (pure Python) schema for ``file``, compiled once per process.

    Only local files may be read (``allow="local"``: the includes beside it) and XML
    it parses is always defused (``defuse="always"``), also for instance documents.
    """
    return xmlschema.XMLSchema10(str(XSD_DIR / file), allow="local", defuse="always")


def _describe(type_name: str) -> str:
    described = _DESCRIPTIONS.get(type_name)
    if described is not None:
        return described
    if "VALID" in type_name or "FACET" in type_name or "DATATYPE" in type_name:
        return "value does not match its type"
    return "document does not match the schema"


def _safe_name(name: str) -> str:
    return name if _NAME.match(name) else "?"


def _normalise_path(path: str | None, message: str) -> str:
    """Turn libxml2's node path into ``/Local[2]/Name`` without namespace prefixes.

    libxml2 writes ``*`` for elements in a default namespace; the last such step is
    named from the message, the others stay ``*``.
    """
    steps: list[str] = []
    for raw in (path or "").split("/")[1:]:
        step = _STEP.match(raw)
        if step is None:
            steps.append("?")
            continue
        name, index = step.group(1), step.group(2) or ""
        steps.append(("*" if name == "*" else _safe_name(name)) + index)
    element = _ELEMENT_IN_MESSAGE.match(message)
    if element is not None:
        name = _safe_name(element.group(1))
        if not steps:
            steps = [name]
        elif steps[-1].startswith("*"):
            steps[-1] = name + steps[-1][1:]
    where = "/" + "/".join(steps)
    attribute = _ATTRIBUTE_IN_MESSAGE.search(message)
    if attribute is not None:
        where += "/@" + _safe_name(attribute.group(1))
    return where


def _locate(path: str | None, root: etree._Element) -> etree._Element | None:
    """Find the element libxml2's path names, relative to the validated ``root``.

    Steps become prefix-free XPath (``*[local-name()='Name'][2]`` or ``*[3]``), with
    names checked against a strict pattern first; ``None`` when not exactly one match.
    """
    raw_steps = (path or "").split("/")[1:]
    if not raw_steps:
        return None
    steps: list[str] = []
    for raw in raw_steps[1:]:  # the first step is ``root`` itself
        step = _STEP.match(raw)
        if step is None:
            return None
        name, index = step.group(1), step.group(2) or ""
        if name == "*":
            steps.append("*" + index)
        elif _NAME.match(name):
            steps.append(f"*[local-name()='{name}']{index}")
        else:
            return None
    if not steps:
        return root
    found = root.xpath("./" + "/".join(steps))
    if isinstance(found, list) and len(found) == 1 and isinstance(found[0], etree._Element):
        return found[0]
    return None


def schema_error(
    schema: etree.XMLSchema, subject: str, root: etree._Element | None = None
) -> SchemaError:
    """The first violation in ``schema.error_log`` as a value-free :class:`SchemaError`.

    With ``root`` (the element that was validated) the location is recomputed from
    the tree as ``/Root/Group[2]/Leaf``; otherwise libxml2's path is cleaned up.
    """
    entries: list[Any] = list(cast(Iterable[Any], schema.error_log))
    if not entries:
        return SchemaError(f"{subject} does not match its schema", where="/")
    first = entries[0]
    message = f"{subject}: {_describe(first.type_name)} [{first.type_name}]"
    if len(entries) > 1:
        message += f" and {len(entries) - 1} more violation(s)"
    where = _normalise_path(first.path, first.message)
    element = None if root is None else _locate(first.path, root)
    if element is not None and root is not None:
        where = element_path(element, root)
        attribute = _ATTRIBUTE_IN_MESSAGE.search(first.message)
        if attribute is not None:
            where += "/@" + _safe_name(attribute.group(1))
    return SchemaError(message, where=where)


def element_path(element: etree._Element, top: etree._Element) -> str:
    """``/Root/Group[2]/Leaf`` from ``top`` down to ``element`` (local names only)."""
    steps: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        qname = etree.QName(node)
        step = qname.localname
        parent = node.getparent()
        if parent is not None and node is not top:
            same = [sibling for sibling in parent if sibling.tag == node.tag]
            if len(same) > 1:
                step += f"[{same.index(node) + 1}]"
        steps.append(step)
        if node is top:
            break
        node = parent
    return "/" + "/".join(reversed(steps))
