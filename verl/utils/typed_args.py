"""Typed command lines: a dataclass holds every option with its default, argparse reads the flags, and the parsed
values are merged onto ``OmegaConf.structured(<dataclass>)`` (struct mode: an unknown key is an error; each value is
checked against its field's type) and handed back as that dataclass.

    @dataclass
    class ToolConfig:
        out: str  # output folder (no default: a required flag)
        n: int = 3  # items per file

    def build_parser() -> argparse.ArgumentParser: ...  # flags named like the fields, defaults taken from them

    cfg = parse_typed(build_parser(), ToolConfig, argv)  # a ToolConfig
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from verl.utils.cli import ConfigError

T = TypeVar("T")

# "${" opens an OmegaConf interpolation, and backslashes right before it are escapes
_INTERPOLATION = re.compile(r"(\\*)\$\{")


def _literal(value: Any) -> Any:
    """``value`` escaped so that OmegaConf keeps it verbatim: a flag such as ``--out '${RUN}/x'`` names that path,
    it is not an interpolation to resolve."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list | tuple):
        return [_literal(v) for v in value]
    return value


def typed_config(schema: type[T], values: argparse.Namespace | Mapping[str, Any],
                 source: str = "the command line") -> T:
    """``schema``'s defaults with ``values`` (parsed flags or a mapping) merged on top, as a ``schema`` instance.
    An unknown key, a value of the wrong type or a required field left unset raises ``ConfigError`` naming
    ``source`` and the key."""
    items = vars(values) if isinstance(values, argparse.Namespace) else dict(values)
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)  # an unknown key is an error, not a new field
    try:
        return OmegaConf.to_object(OmegaConf.merge(cfg, {k: _literal(v) for k, v in items.items()}))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: option {exc.key}: {str(exc).splitlines()[0]}") from None


def parse_typed(parser: argparse.ArgumentParser, schema: type[T], argv: list[str] | None = None) -> T:
    """``parser``'s flags (an unknown flag exits with argparse's usage error, code 2) as a ``schema`` instance."""
    return typed_config(schema, parser.parse_args(argv))
