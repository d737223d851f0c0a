"""JSON Schemas of what xbn reads and writes: scenarios, ``results.json`` (``xbn run --format
json``, ``xbn report``), snapshots (``xbn snapshot``/``xbn check``), fuzz findings and
known-divergences files (``xbn/profiles/divergences.toml`` and a user's ``--divergences``).

The schemas are package data (``xbn/schemas/*.json``, read with ``importlib.resources``) so that
a user's tooling (an editor, a pre-commit hook, another language) can check files without xbn's
Python, and ``xbn schema NAME`` prints one. Inside xbn they are a second net under the strict
readers (``xbn.scenario.loader``, ``xbn.guard.snapshot``): those give the precise messages, the
schema keeps the published contract and the readers from drifting apart (the tests validate
every file xbn writes against them).

A ground-floor package: it imports nothing from xbn but ``xbn.common``; ``jsonschema`` is
imported only when something is validated.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from ..common.strict import StrictError

NAMES = ("scenario", "results", "snapshot", "finding", "divergences")
BASE = "https://xbn.invalid/schemas/"  # the schemas' $id prefix (they refer to each other)
MAX_MESSAGE = 200  # characters of a validator's message kept in the one-line error


class SchemaError(StrictError):
    """A document that does not match its schema: one line naming the file and the key."""


def text(name: str) -> str:
    """The schema ``name`` (one of ``NAMES``) as its file holds it."""
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r} (schemas: {', '.join(NAMES)})")
    return resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")


@cache
def schema(name: str) -> dict:
    """The schema ``name`` as a dict (cached: treat it as read-only)."""
    return json.loads(text(name))


@cache
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (BASE + f"{n}.json", Resource.from_contents(schema(n))) for n in NAMES)
    cls = jsonschema.validators.validator_for(schema(name))
    return cls(schema(name), registry=registry)


def where(path) -> str | None:
    """``['steps', 2, 'op']`` -> ``'steps[2].op'`` (the readers' spelling of a location)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _message(error) -> str:
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        allowed = ", ".join(error.validator_value)
        return f"key {error.instance!r} is not allowed here (allowed: {allowed})"
    if error.validator in ("anyOf", "oneOf"):  # say what the first alternative wanted
        same_place = [e for e in error.context if not e.relative_path]
        if same_place:
            return _message(same_place[0])
    message = error.message
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def problems(name: str, document: Any) -> list[tuple[str | None, str]]:
    """Every place where ``document`` breaks schema ``name``: (location, message), in order."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [(where(e.absolute_path), _message(e)) for e in errors]


def validate(name: str, document: Any, file: str, error: type[StrictError] = SchemaError) -> None:
    """Raise ``error`` (one line: file, key, what is wrong) where ``document`` breaks schema
    ``name``; the most relevant of its problems is named (``jsonschema``'s ``best_match``)."""
    from jsonschema.exceptions import best_match

    found = best_match(_validator(name).iter_errors(document))
    if found is not None:
        raise error(file, f"{_message(found)} (schema {name})", where(found.absolute_path))


def kind_of(file: str, document: Any) -> str:
    """Which schema a decoded file is checked against: a snapshot by its ``kind``, results by
    their ``observations`` and ``diffs``, divergences by their ``[[divergence]]`` tables, a
    scenario otherwise."""
    if isinstance(document, dict):
        if document.get("kind") == "xbn-snapshot":
            return "snapshot"
        if "diffs" in document and "observations" in document:
            return "results"
        if "divergence" in document or (file.endswith(".toml") and not document):
            return "divergences"
    return "scenario"
