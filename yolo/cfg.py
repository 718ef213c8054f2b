"""Darknet cfg text -> typed sections.

Every value is parsed from text exactly once, through a typed getter that knows the
file and line it came from, so a malformed value is reported where it was written and
``"0"`` can never be mistaken for true.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .assets import CFG_DIR
from .errors import YoloError

REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root (data/samples); site-packages when installed

_REQUIRED: Any = object()


class ConfigError(YoloError):
    """A problem in a cfg file; the message names file, line, section and key."""


class UnusedKeyWarning(UserWarning):
    """A cfg key no block reads (Darknet prints "Unused field")."""


class CfgWarning(UserWarning):
    """A cfg line Darknet reads, but perhaps not as its author meant (a value with spaces inside)."""


class RepeatedKeyWarning(CfgWarning):
    """A key set twice in one section with different values: Darknet uses the first, ignores the later."""


@dataclass
class Section:
    """One ``[type]`` block of a cfg file with its raw options and where each came from."""

    type: str
    file: str
    line: int
    index: int = -1  # position after [net]; -1 for [net] itself
    options: dict[str, str] = field(default_factory=dict)
    key_lines: dict[str, int] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- locating -----------------------------------------------------------------
    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key else self.line
        return f"{self.file}:{line}: [{self.type}]" + (f" key '{key}'" if key else "")

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.options

    # --- typed getters --------------------------------------------------------------
    def _get(self, key: str, default: Any, kind: str, convert: Callable[[str], Any]) -> Any:
        self.used.add(key)
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}' ({kind})")
            return default
        cache_key = f"{kind}:{key}"
        if cache_key not in self._cache:
            raw = self.options[key]
            text = raw if kind == "a string" else self._darknet_spaces(key, raw)
            try:
                self._cache[cache_key] = convert(text)
            except (ValueError, TypeError, OverflowError):
                raise self.error(f"expected {kind}, got '{raw}'", key) from None
        return self._cache[cache_key]

    def _darknet_spaces(self, key: str, raw: str) -> str:
        """A number (or list of numbers) as Darknet reads it: its parser removes every space and tab of a
        line first (``strip`` in ``read_cfg``), so ``61,45  61,45`` is ``61,4561,45``. Said as a warning."""
        text = "".join(raw.split())
        spaced = [p.strip() for p in raw.split(",") if len(p.split()) > 1]
        if spaced:
            warnings.warn(f"{self.where(key)}: '{spaced[0]}' has a space inside a number; Darknet removes "
                          f"spaces and reads '{''.join(spaced[0].split())}' (a comma missing?)",
                          CfgWarning, stacklevel=4)
        return text

    def int(self, key: str, default: Any = _REQUIRED) -> int:
        return self._get(key, default, "an integer", _to_int)

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        return self._get(key, default, "a finite number", _to_float)

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        return self._get(key, default, "0 or 1", _to_bool)

    def str(self, key: str, default: Any = _REQUIRED) -> str:
        return self._get(key, default, "a string", lambda s: s.strip())

    def ints(self, key: str, default: Any = _REQUIRED) -> list[int]:
        return self._get(key, default, "a comma-separated list of integers",
                         lambda s: [_to_int(v) for v in _split(s)])

    def floats(self, key: str, default: Any = _REQUIRED) -> list[float]:
        return self._get(key, default, "a comma-separated list of numbers",
                         lambda s: [_to_float(v) for v in _split(s)])

    def choice(self, key: str, choices: Sequence[str], default: Any = _REQUIRED) -> str:
        value = self.str(key, default)
        if value not in choices:
            raise self.error(f"expected one of {', '.join(choices)}, got '{value}'", key)
        return value

    def unsupported(self, key: str, default: str) -> None:
        """A Darknet key this port does not implement: fine at its default, an error otherwise.

        Better than an "unused field" warning for keys that change the result.
        """
        value = self.str(key, default)
        if value != default:
            raise self.error(f"'{key}={value}' is not supported by this implementation "
                             f"(only the default '{default}')", key)

    def unused(self) -> list[str]:
        return [k for k in self.options if k not in self.used]

    def warn_unused(self) -> None:
        for key in self.unused():
            warnings.warn(f"{self.where(key)}: unused field (no block reads it)",
                          UnusedKeyWarning, stacklevel=3)



def _split(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    return [p for p in parts if p]


INT_LIMIT = 2**31  # Darknet reads ints into a C int


def _to_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _to_int(text: str) -> int:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        number = _to_float(text)  # Darknet's atoi accepts "1.0"-style; refuse fractions
        if number != int(number):
            raise
        value = int(number)
    if not -INT_LIMIT < value < INT_LIMIT:
        raise ValueError(text)
    return value


def _to_bool(text: str) -> bool:
    value = _to_int(text)
    if value not in (0, 1):
        raise ValueError(text)
    return bool(value)


def resolve_path(name: str | Path, folder: Path, what: str) -> Path:
    """A path as given, or a bare file name looked up in one of the repo's folders."""
    path = Path(name)
    if path.exists():
        return path
    candidate = folder / path.name
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"{what} not found: '{name}' (also looked in {folder})")


def resolve_cfg(name: str | Path) -> Path:
    return resolve_path(name, CFG_DIR, "cfg file")


def strip_comment(line: str) -> str:
    """A cfg line without its ``#`` or ``;`` comment and surrounding space, as the parser reads it."""
    return line.split("#", 1)[0].split(";", 1)[0].strip()


def parse_cfg_text(text: str, file: str = "<string>") -> list[Section]:
    """Sections in file order; the first must be ``[net]`` or ``[network]``."""
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{file}:{lineno}: malformed section header '{raw.strip()}'")
            kind = line[1:-1].strip().lower()
            sections.append(Section(kind, file, lineno, index=len(sections) - 1))
            continue
        if "=" not in line:
            raise ConfigError(f"{file}:{lineno}: expected 'key=value', got '{raw.strip()}'")
        if not sections:
            raise ConfigError(f"{file}:{lineno}: 'key=value' before any [section]")
        key, value = (p.strip() for p in line.split("=", 1))
        if not key:
            raise ConfigError(f"{file}:{lineno}: empty key in '{raw.strip()}'")
        sec = sections[-1]
        if key in sec.options:  # Darknet's option_find returns the first match; a later one is never read
            first = sec.options[key]
            if "".join(value.split()) != "".join(first.split()):
                warnings.warn(f"{file}:{lineno}: [{sec.type}] key '{key}={value}' repeated with another value: "
                              f"Darknet uses the first, '{key}={first}' (line {sec.key_lines[key]}), and ignores "
                              "this one", RepeatedKeyWarning, stacklevel=2)
            continue
        sec.options[key] = value
        sec.key_lines[key] = lineno
    if not sections:
        raise ConfigError(f"{file}: no sections found")
    if sections[0].type not in ("net", "network"):
        raise ConfigError(f"{file}:{sections[0].line}: the first section must be [net], "
                          f"got [{sections[0].type}]")
    return sections


def read_cfg_text(path: Path) -> str:
    """The cfg's text (a UTF-8 byte-order mark is dropped); a binary file is a ConfigError."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text cfg file (undecodable byte at offset {e.start})") from None


def parse_cfg(path: str | Path) -> list[Section]:
    path = resolve_cfg(path)
    return parse_cfg_text(read_cfg_text(path), str(path))

