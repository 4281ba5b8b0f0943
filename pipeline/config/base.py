"""The base of every schema: frozen models that refuse unknown keys, and errors that name the
file and the key (``ConfigError``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config file or dict that does not match its schema."""


class Strict(BaseModel):
    """A frozen schema that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# The tags of each union field's members, which pydantic puts in an error's key path right after
# the field's name (left out of messages: not keys).
UNION_TAGS = {"source": {"torchscript", "onnx", "timm", "embeddings"}, "old": {"trained", "imported"}}


def format_error(source: str, error: ValidationError) -> str:
    """One line per bad key of a pydantic ``error``, each naming ``source`` and the key."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        key = ".".join(str(part) for index, part in enumerate(loc)
                       if not (index and part in UNION_TAGS.get(loc[index - 1], ()))) or "<top level>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif item["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate(schema: type[BaseModel], raw: Any, source: str = "config") -> Any:
    """``raw`` checked against ``schema``, or ``ConfigError`` naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_error(source, error)) from None
