"""An in-memory secret whose every accidental rendering is masked."""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["SecretToken"]

_MASK = "SecretToken('**********')"


class SecretToken:
    """Holds a bearer token; only :meth:`reveal` returns it.

    ``repr``, ``str``, ``format`` and f-strings show a mask, so a token inside a log
    argument, an exception or a dataclass repr never leaks. Pickling and copying to JSON
    are refused rather than silently serialising the secret.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret token must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretToken):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(SecretToken)  # never hash the secret itself into observable state

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretToken cannot be pickled")

    def __len__(self) -> int:
        return len(self._value)
