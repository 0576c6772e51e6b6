"""Hyperparameters live in one dataclass per recipe; this turns it into a CLI with overrides."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str] | None = None) -> None:
    """One ``--field-name`` option per dataclass field, defaulting to the field's default."""
    help_texts = help_texts or {}
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        kind = type(default)
        flag = "--" + field.name.replace("_", "-")
        text = help_texts.get(field.name, "") + f" (default: {default})"
        if kind is bool:
            parser.add_argument(flag, type=parse_bool, default=default, metavar="BOOL", help=text)
        elif default is None:
            parser.add_argument(flag, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**values)


def parse_config(cls: type[T], argv: Sequence[str] | None, description: str,
                 help_texts: dict[str, str] | None = None) -> T:
    parser = argparse.ArgumentParser(description=description)
    add_dataclass_args(parser, cls, help_texts)
    return from_args(cls, parser.parse_args(argv))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
