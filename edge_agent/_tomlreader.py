"""Typed, validating access to one TOML table, used by every config section parser.

Each accessor names the file and the dotted key in its error, so an operator reading
``journalctl`` knows exactly what to fix. Unknown keys are refused (a typo must not silently
fall back to a default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.errors import ConfigError

__all__ = ["TableReader"]

_T = TypeVar("_T")


class TableReader:
    """Reads typed values from one table of a TOML document and tracks which keys were used."""

    def __init__(self, table: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
        self._table = table
        self._source = source
        self._prefix = prefix
        self._used: set[str] = set()

    @property
    def source(self) -> str:
        return self._source

    def key(self, name: str) -> str:
        """The dotted name of ``name`` in this table, for messages."""
        return f"{self._prefix}{name}"

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._source}: {self.key(name)}: {problem}")

    def has(self, name: str) -> bool:
        return name in self._table

    def _get(self, name: str, types: tuple[type, ...], default: Any, kind: str) -> Any:
        self._used.add(name)
        if name not in self._table:
            return default
        value = self._table[name]
        # bool is an int subclass; never accept it where a number is wanted.
        if isinstance(value, bool) and bool not in types:
            raise self.error(name, f"expected {kind}, got a boolean")
        if not isinstance(value, types):
            raise self.error(name, f"expected {kind}, got {type(value).__name__}")
        return value

    def string(self, name: str, default: str, *, choices: Iterable[str] | None = None) -> str:
        value: str = self._get(name, (str,), default, "a string")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise self.error(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def optional_string(self, name: str) -> str | None:
        value: str | None = self._get(name, (str,), None, "a string")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool = self._get(name, (bool,), default, "true or false")
        return value

    def integer(
        self, name: str, default: int, *, min_value: int | None = None, max_value: int | None = None
    ) -> int:
        value: int = self._get(name, (int,), default, "an integer")
        self._check_range(name, value, min_value, max_value)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> float:
        value = float(self._get(name, (int, float), default, "a number"))
        self._check_range(name, value, min_value, max_value)
        return value

    def _check_range(
        self, name: str, value: float, min_value: float | None, max_value: float | None
    ) -> None:
        if min_value is not None and value < min_value:
            raise self.error(name, f"must be >= {min_value}, got {value}")
        if max_value is not None and value > max_value:
            raise self.error(name, f"must be <= {max_value}, got {value}")

    def string_list(self, name: str, default: Iterable[str]) -> tuple[str, ...]:
        value = self._get(name, (list,), list(default), "a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise self.error(name, "expected a list of strings")
        return tuple(value)

    def path(self, name: str, default: Path, *, base: Path | None = None) -> Path:
        """A path; a relative one is resolved against ``base`` (the config file's folder)."""
        raw = self._get(name, (str,), None, "a path string")
        if raw is None:
            return default
        if raw == "":
            raise self.error(name, "must not be empty")
        p = Path(raw).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return p

    def optional_path(self, name: str, *, base: Path | None = None) -> Path | None:
        if name not in self._table:
            self._used.add(name)
            return None
        return self.path(name, Path(), base=base)

    def table(self, name: str) -> TableReader:
        """A sub-table (absent means empty)."""
        raw = self._get(name, (dict,), {}, "a table")
        return TableReader(raw, source=self._source, prefix=f"{self.key(name)}.")

    def raw(self, name: str, default: _T) -> Any:
        """A value as TOML gave it, for sections that validate their own shapes."""
        self._used.add(name)
        return self._table.get(name, default)

    def finish(self) -> None:
        """Refuse keys nobody asked for: they are typos or options of another version."""
        unknown = sorted(set(self._table) - self._used)
        if unknown:
            raise ConfigError(
                f"{self._source}: unknown key {self.key(unknown[0])!r}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
