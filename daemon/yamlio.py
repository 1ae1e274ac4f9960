"""Safe, strict YAML reading for the configuration file.

The reader is built on a :class:`yaml.SafeLoader` subclass but uses only its scanner, parser and
composer: the node graph is composed here and walked once to build plain Python data together with
the 1-based line of every node. PyYAML's constructors and implicit resolver are never used, so the
typing rules below are exactly what the config file gets.

Rejected (each becomes a :class:`~daemon.errors.ConfigError` with a line where one is known):

* anchors and aliases (``&a`` / ``*a``) — this is what defeats "billion laughs" before anything expands;
* explicit tags of any kind (``!!python/object``, ``!!str``, ``!foo``, the bare ``!``);
* merge keys (plain ``<<``), duplicate keys, keys that are not strings (see below);
* more than one document, files over :data:`MAX_CONFIG_BYTES`, nesting deeper than :data:`MAX_DEPTH`;
* syntax errors, tabs used for indentation, bytes that are not UTF-8, non-printable characters.

Typing of *plain* (unquoted, non-block) scalars, close to the YAML 1.2 core schema:

* ``null``, ``Null``, ``NULL``, ``~`` and the empty value → ``None``;
* ``true``/``True``/``TRUE`` and ``false``/``False``/``FALSE`` → ``bool``. Mixed case such as ``tRue``,
  and the YAML 1.1 words ``yes``/``no``/``on``/``off``/``y``/``n``, stay strings;
* decimal integers ``[-+]?[0-9]+`` → ``int``, **except** those with a leading zero (``0755``, ``007``,
  ``-01``), which stay strings: YAML 1.1 would read them as octal and YAML 1.2 as decimal, so neither
  guess is safe; a model that wants a number (a file mode, say) parses the string itself;
* hexadecimal ``0x1F`` (no sign) → ``int``; there are no octal (``0o17``), binary, underscore
  (``1_000``) or sexagesimal (``1:30``) forms, those stay strings;
* an integer of more than :data:`MAX_INTEGER_DIGITS` decimal digits (hex counted by its value) is an
  error, ``number too large``: Python refuses to print such numbers, and no setting needs one (quote
  it if it is text);
* floats ``1.5``, ``.5``, ``1.``, ``1e3``, ``-2.5E-3`` and ``.inf``/``-.inf``/``.nan`` (any of the
  ``.inf``/``.Inf``/``.INF`` spellings) → ``float``. Infinity and NaN are kept; models decide;
* anything else (dates and timestamps included) → ``str``.

Quoted and block (``|``, ``>``) scalars are always strings.

Mapping keys must be plain or quoted scalars that are strings under the rules above: ``1:``,
``true:`` or ``null:`` are errors (quote them). Keys are never interpolated; a key containing ``${``
is an error, so the environment cannot change the document's structure.

Interpolation runs on scalar *values* after parsing: ``${VAR}`` is replaced by the variable's value,
``${VAR:-default}`` by the default when the variable is unset **or empty** (shell semantics), and
``$${`` is a literal ``${``. Names match ``[A-Za-z_][A-Za-z0-9_]*``; a ``${`` that does not form a
valid placeholder is an error. Substitution never changes the substituted text: a plain or quoted
scalar made of exactly one placeholder becomes an :class:`EnvText`, a ``str`` holding exactly that
text (``1e5``, ``0x10``, ``1.50``, ``null`` and ``true`` included), so a string field receives it
unchanged; the schema falls back to :func:`resolve_scalar` (the plain-scalar rules above) only where
a field rejects the text, so ``${MAX:-100}`` still fills an integer field with ``100`` and ``0x10``
with ``16``; a field that takes any value (tool arguments, subscribe messages) receives the text. A
plain placeholder that substitutes to nothing is ``None``. Anything else (text around placeholders,
block scalars) stays an ordinary string. Every interpolated path is recorded in
:attr:`LoadedYaml.secret_paths`, and the environment's values used there in
:attr:`LoadedYaml.secret_values`: they may be secrets and must never be printed, not even in errors.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml
from yaml.error import Mark, MarkedYAMLError, YAMLError
from yaml.events import AliasEvent, Event, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from daemon.errors import ConfigError, ConfigIssue

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_INTEGER_DIGITS",
    "EnvText",
    "LoadedYaml",
    "format_path",
    "load_yaml_file",
    "load_yaml_text",
    "resolve_scalar",
]

MAX_CONFIG_BYTES: int = 1024 * 1024
"""Largest accepted configuration, in UTF-8 bytes."""

MAX_DEPTH: int = 64
"""Deepest accepted nesting of mappings and sequences."""

MAX_INTEGER_DIGITS: int = 100
"""Most decimal digits of an integer (far below CPython's int/str conversion limit of at least 640)."""

YamlPath = tuple[str | int, ...]
"""A node's location: mapping keys and list indexes from the root."""

_ANCHOR_REASON = "anchors and aliases are not allowed"

_INT_DEC = re.compile(r"[-+]?[0-9]+")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_FLOAT_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_FLOAT_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})

# One of: an escaped "$${", a valid placeholder, or a stray "${" (an error).
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")
_SINGLE_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_\-/:@+*]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TOO_LARGE = f"number too large (more than {MAX_INTEGER_DIGITS} digits; quote it if it is text)"


class EnvText(str):
    """The exact text a scalar made of one ``${VAR}`` placeholder substituted to.

    A ``str``: string fields take it unchanged. Where a field rejects the text, the configuration
    schema retries with :func:`resolve_scalar` of it (``"0x10"`` → ``16``, ``"null"`` → ``None``).
    """

    __slots__ = ()


@dataclass(frozen=True)
class LoadedYaml:
    """A parsed configuration file: plain data plus where every node came from."""

    data: Any
    """A tree of ``dict`` / ``list`` / ``str`` / ``int`` / ``float`` / ``bool`` / ``None``."""
    lines: Mapping[YamlPath, int]
    """1-based line of every node by its path; a mapping entry maps to its key's line; ``()`` is the root."""
    file: str
    """The file name to print in errors."""
    secret_paths: frozenset[YamlPath] = field(default_factory=frozenset)
    """Paths whose value came, fully or partly, from ``${VAR}`` interpolation (never print these)."""
    secret_values: Mapping[YamlPath, tuple[str, ...]] = field(default_factory=dict)
    """Per interpolated path, the non-empty texts that came from the environment (not defaults):
    configuration errors at or around these paths must not contain them."""
    template_texts: Mapping[YamlPath, str] = field(default_factory=dict)
    """For string values whose substituted text holds ``{`` or ``}``: the same value as template text,
    those braces doubled, so a field that is a template reads them as literal text (an environment
    value is never template syntax). Used by the configuration for its template fields."""

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Return the line of ``path``, or of its longest known prefix, or ``None``."""
        key = tuple(path)
        for end in range(len(key), -1, -1):
            line = self.lines.get(key[:end])
            if line is not None:
                return line
        return None


def format_path(path: Sequence[str | int]) -> str:
    """Render a path for humans: ``("rules", "r", "then", 0, "tool")`` → ``rules.r.then[0].tool``.

    Keys that are empty or contain characters such as ``.``, ``[`` or spaces are written as
    ``["a.b"]`` so the rendering stays unambiguous.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _SIMPLE_KEY.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            escaped = _UNPRINTABLE.sub(_escape_char, part.replace("\\", "\\\\").replace('"', '\\"'))
            out.append(f'["{escaped}"]')
    return "".join(out)


def _escape_char(match: re.Match[str]) -> str:
    """Line breaks and other invisible characters in keys are written as escapes (one error, one line)."""
    code = ord(match.group(0))
    named = {10: "\\n", 13: "\\r", 9: "\\t"}.get(code)
    if named is not None:
        return named
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def load_yaml_text(text: str, file: str = "config.yaml", env: Mapping[str, str] | None = None) -> LoadedYaml:
    """Parse ``text`` strictly (see the module docstring); raise :class:`ConfigError` on any problem."""
    if env is None:
        env = os.environ
    size = None if len(text) > MAX_CONFIG_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size is None or size > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(file, 1, "", _too_large(size))])
    root = _compose(text, file)
    walker = _Walker(file, env)
    if root is None:
        return LoadedYaml(data=None, lines=MappingProxyType({(): 1}), file=file)
    data = walker.walk(root, ())
    if walker.issues:
        raise ConfigError(walker.issues)
    return LoadedYaml(
        data=data,
        lines=MappingProxyType(walker.lines),
        file=file,
        secret_paths=frozenset(walker.secret_paths),
        secret_values=MappingProxyType(walker.secret_values),
        template_texts=MappingProxyType(walker.template_texts),
    )


def load_yaml_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedYaml:
    """Read and parse a configuration file; ``env`` defaults to :data:`os.environ`.

    A missing, unreadable, oversized or non-UTF-8 file raises :class:`ConfigError`.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(file, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(file, None, "", "is a directory, not a file")]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read file: {reason}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(file, 1, "", _too_large(None))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _count_line_breaks(raw[: exc.start].decode("utf-8", "replace")) + 1
        reason = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise ConfigError([ConfigIssue(file, line, "", reason)]) from None
    return load_yaml_text(text, file=file, env=env)


# --------------------------------------------------------------------------------------------------
# Composition


class _Rejected(Exception):
    """Raised from inside the composer to stop at the first forbidden construct."""

    def __init__(self, event: Event, reason: str) -> None:
        super().__init__(reason)
        self.line = None if event.start_mark is None else event.start_mark.line + 1
        self.reason = reason


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses anchors, aliases, tags and deep nesting.

    Only ``get_single_node()`` is used; nothing is ever constructed by PyYAML.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, AliasEvent):
            raise _Rejected(event, _ANCHOR_REASON)
        if isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent):
            if event.anchor is not None:
                raise _Rejected(event, _ANCHOR_REASON)
            if event.tag is not None:
                raise _Rejected(event, f"explicit tags are not allowed (found {event.tag!r})")
        if not isinstance(event, SequenceStartEvent | MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Rejected(event, f"nesting is deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, file: str) -> Node | None:
    """Compose the single document in ``text`` into a node graph, mapping every failure to ConfigError."""
    try:
        loader = _StrictLoader(text)
    except ReaderError as exc:
        raise ConfigError([_reader_issue(file, text, exc)]) from None
    try:
        return loader.get_single_node()
    except _Rejected as exc:
        raise ConfigError([ConfigIssue(file, exc.line, "", exc.reason)]) from None
    except yaml.composer.ComposerError as exc:
        if exc.problem == "but found another document":
            reason = "only one YAML document is allowed (found a second '---')"
            raise ConfigError([ConfigIssue(file, _line(exc.problem_mark), "", reason)]) from None
        raise ConfigError([_marked_issue(file, exc)]) from None
    except MarkedYAMLError as exc:
        raise ConfigError([_marked_issue(file, exc)]) from None
    except ReaderError as exc:
        raise ConfigError([_reader_issue(file, text, exc)]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    except ValueError as exc:
        # PyYAML converts some digit runs with int() unguarded (e.g. ``%YAML 1.<5000 digits>``).
        raise ConfigError([ConfigIssue(file, loader.line + 1, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _line(mark: Mark | None) -> int | None:
    return None if mark is None else mark.line + 1


def _marked_issue(file: str, exc: MarkedYAMLError) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if "'\\t'" in problem:
        reason = "tab character where YAML expects indentation or a token (indent with spaces)"
    elif exc.context and exc.problem:
        reason = f"{exc.problem} ({exc.context})"
    else:
        reason = problem
    return ConfigIssue(file, _line(mark), "", reason)


def _reader_issue(file: str, text: str, exc: ReaderError) -> ConfigIssue:
    # For str input PyYAML reports the offending code point as an int and its index as ``position``.
    char = exc.character
    if isinstance(char, int) and isinstance(exc.position, int):
        line = _count_line_breaks(text[: exc.position]) + 1
        return ConfigIssue(file, line, "", f"unacceptable character #x{char:04x}: {exc.reason}")
    return ConfigIssue(file, None, "", f"unreadable input: {exc.reason}")


def _count_line_breaks(text: str) -> int:
    """Count line breaks the way PyYAML's marks do (``\\r\\n``, ``\\r``, ``\\n``, NEL, LS, PS)."""
    return len(_LINE_BREAKS.findall(text))


def _too_large(size: int | None) -> str:
    got = f"{size} bytes" if size is not None else f"more than {MAX_CONFIG_BYTES} bytes"
    return f"file is too large ({got}; the limit is {MAX_CONFIG_BYTES} bytes)"


# --------------------------------------------------------------------------------------------------
# Walking the node graph


class _BadScalar(ValueError):
    pass


def resolve_scalar(text: str) -> Any:
    """Type ``text`` as a plain scalar (the rules in the module docstring).

    Raises ``ValueError("number too large ...")`` for an integer of more than :data:`MAX_INTEGER_DIGITS`
    digits.
    """
    return _resolve_plain(text)


def _resolve_plain(text: str) -> Any:
    """Type a plain scalar under the rules in the module docstring."""
    if text in _NULLS:
        return None
    if text in _TRUES:
        return True
    if text in _FALSES:
        return False
    if _INT_DEC.fullmatch(text):
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0"):
            return text
        if len(digits) > MAX_INTEGER_DIGITS:  # before int(): huge inputs are never converted
            raise _BadScalar(_TOO_LARGE)
        return int(text)
    if _INT_HEX.fullmatch(text):
        significant = text[2:].lstrip("0")
        if len(significant) * 5 > MAX_INTEGER_DIGITS * 6:  # over 1.2 x 100 hex digits: over 100 digits
            raise _BadScalar(_TOO_LARGE)
        value = int(significant or "0", 16)
        if len(str(value)) > MAX_INTEGER_DIGITS:
            raise _BadScalar(_TOO_LARGE)
        return value
    if _FLOAT.fullmatch(text):
        return float(text)
    if _FLOAT_INF.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _FLOAT_NAN.fullmatch(text):
        return math.nan
    return text


class _Walker:
    """Turns a composed node graph into plain data, a line map, secret paths and issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[YamlPath, int] = {}
        self.secret_paths: set[YamlPath] = set()
        self.secret_values: dict[YamlPath, tuple[str, ...]] = {}
        self.template_texts: dict[YamlPath, str] = {}
        self.issues: list[ConfigIssue] = []

    def _issue(self, node: Node, path: YamlPath, reason: str) -> None:
        self.issues.append(ConfigIssue(self.file, _line(node.start_mark), format_path(path), reason))

    def walk(self, node: Node, path: YamlPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            items: list[Any] = []
            for index, child in enumerate(node.value):
                items.append(self.walk(child, (*path, index)))
            return items
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        raise TypeError(f"unexpected node type {type(node).__name__}")  # pragma: no cover

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in first_line:
                self._issue(key_node, child, f"duplicate key {key!r} (first at line {first_line[key]})")
                continue
            first_line[key] = key_line
            self.lines[child] = key_line
            result[key] = self.walk(value_node, child)
        return result

    def _key(self, node: Node, path: YamlPath) -> str | None:
        if not isinstance(node, ScalarNode):
            kind = "mapping" if isinstance(node, MappingNode) else "sequence"
            self._issue(node, path, f"mapping keys must be strings, not a {kind}")
            return None
        text: str = node.value
        if node.style is None:
            if text == "<<":
                self._issue(node, path, "merge keys ('<<') are not allowed")
                return None
            try:
                typed = _resolve_plain(text)
            except _BadScalar:
                typed = 0
            if not isinstance(typed, str):
                shown = "an empty key" if text == "" else f"{text!r} is read as {_kind(typed)}"
                self._issue(node, path, f"mapping keys must be strings ({shown}; quote it)")
                return None
        if "${" in text:
            self._issue(node, path, f"${{...}} is not allowed in mapping keys ({text!r})")
            return None
        return text

    def _scalar(self, node: ScalarNode, path: YamlPath) -> Any:
        text: str = node.value
        plain = node.style is None
        if "${" in text:
            text, interpolated = self._interpolate(node, path, text)
            if interpolated:
                self.secret_paths.add(path)
                if node.style in (None, "'", '"') and _SINGLE_PLACEHOLDER.fullmatch(node.value):
                    return None if plain and not text else EnvText(text)  # typed by the schema
                return text
        if not plain:
            return text
        try:
            return _resolve_plain(text)
        except _BadScalar as exc:
            self._issue(node, path, str(exc))
            return text

    def _interpolate(self, node: ScalarNode, path: YamlPath, text: str) -> tuple[str, bool]:
        """Return ``text`` with ``$${`` and placeholders replaced, and whether it had any placeholder."""
        parts: list[str] = []
        literal: list[str] = []  # ``parts`` with the substituted text's braces doubled (template_texts)
        pos = 0
        found = False
        for match in _PLACEHOLDER.finditer(text):
            parts.append(text[pos : match.start()])
            literal.append(parts[-1])
            pos = match.end()
            token = match.group(0)
            name = match.group("name")
            if token == "$${":
                parts.append("${")
                literal.append("${")
                continue
            found = True
            if name is None:
                self._issue(
                    node,
                    path,
                    "invalid ${...} placeholder (expected ${NAME} or ${NAME:-default}; "
                    "write $${ for a literal ${)",
                )
                continue
            value = self.env.get(name)
            default = match.group("default")
            if default is not None and not value:
                parts.append(default)
            elif value is not None:
                parts.append(value)
                if value:
                    self.secret_values[path] = (*self.secret_values.get(path, ()), value)
            else:
                self._issue(node, path, f"environment variable {name} is not set")
                continue
            literal.append(parts[-1].replace("{", "{{").replace("}", "}}"))
        parts.append(text[pos:])
        literal.append(parts[-1])
        if literal != parts:
            self.template_texts[path] = "".join(literal)
        return "".join(parts), found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    return "a float"
