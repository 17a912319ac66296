"""Edit GitLab Runner's config.toml so job containers use pycntlm (text in, text out).

Owns: per [[runners]] table, the proxy variables of `environment` (the user's other entries are
kept, in order), our line in the git hook (pre_get_sources_script, or pre_clone_script for older
runners) and, with dind, in pre_build_script. Comments, layout and every other key stay as they
are; an already correct file comes back byte for byte.
Must not: read or write files, or touch any key it does not own.
"""

from __future__ import annotations

from dataclasses import dataclass

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Array, Item, String, StringType, Table

from pycntlm.errors import ConfigError
from pycntlm.gitlab import model


@dataclass(frozen=True)
class Options:
    """Which runners to edit and how."""

    runner: str | None = None  # only the [[runners]] with this name; None: all of them
    legacy_hook: bool = False  # write pre_clone_script (GitLab Runner before 15.9)


def edit(text: str, settings: model.Settings, options: Options, path: str) -> str:
    """The config.toml text with every selected runner carrying the proxy settings."""
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    runners = doc.get("runners")
    if not isinstance(runners, AoT) or not runners.body:
        raise ConfigError("has no [[runners]]: register a runner first", path)
    tables = [t for t in runners.body if options.runner in (None, t.get("name"))]
    if not tables:
        names = ", ".join(repr(t.get("name")) for t in runners.body)
        raise ConfigError(f"has no runner named {options.runner!r} (runners: {names})", path)
    for table in tables:
        _set_environment(table, model.container_env(settings))
        _set_script(table, hook_for(table, options.legacy_hook), model.GIT_HOOK_LINE)
        if settings.dind:
            _set_script(table, model.BUILD_HOOK, model.docker_config_script())
    return tomlkit.dumps(doc)


def hook_for(table: Table, legacy: bool) -> str:
    """pre_clone_script when asked, or when the runner already uses that name and not the new
    one (its runner version knows the old name); otherwise pre_get_sources_script."""
    if legacy:
        return model.GIT_HOOK_LEGACY
    if model.GIT_HOOK_LEGACY in table and model.GIT_HOOK not in table:
        return model.GIT_HOOK_LEGACY
    return model.GIT_HOOK


def _key_indent(table: Table) -> str:
    """The indentation of the table's own keys (GitLab Runner writes two spaces)."""
    for key, item in table.value.body:
        if key is not None and not isinstance(item, Table | AoT):
            return item.trivia.indent
    return "  "


def _put(table: Table, key: str, item: Item) -> None:
    """Set `key` to `item`, in place when it exists (keeping its indent and comment), else
    added after the table's other keys with their indentation."""
    old = table.get(key)
    if isinstance(old, Item):
        item.trivia.indent = old.trivia.indent
        item.trivia.comment_ws = old.trivia.comment_ws
        item.trivia.comment = old.trivia.comment
        table[key] = item
    else:
        item.trivia.indent = _key_indent(table)
        # tomlkit puts a "cosmetic" blank line before the next sub-table: undo that.
        tables = [(t, t.trivia.indent) for _, t in table.value.body if isinstance(t, Table)]
        table.add(key, item)
        for sub, indent in tables:
            sub.trivia.indent = indent


def _canonical_array(values: list[str], indent: str) -> Array:
    """A multi-line array of strings, one per line, indented under its key."""
    body = "".join(f"{indent}  {tomlkit.string(v).as_string()},\n" for v in values)
    array = tomlkit.parse(f"x = [\n{body}{indent}]\n")["x"]
    assert isinstance(array, Array)
    return array


def _set_environment(table: Table, ours: list[str]) -> None:
    current = table.get("environment")
    values = [str(v) for v in current] if isinstance(current, list) else []
    kept = [v for v in values if model.env_name(v).lower() not in model.OWNED_NAMES]
    wanted = kept + ours
    if values == wanted:
        return
    if isinstance(current, Array) and "\n" in current.as_string():
        # A multi-line array may carry the user's comments: edit it in place.
        for index in reversed(range(len(values))):
            if model.env_name(values[index]).lower() in model.OWNED_NAMES:
                del current[index]
        current.extend(ours)
        return
    indent = current.trivia.indent if isinstance(current, Item) else _key_indent(table)
    _put(table, "environment", _canonical_array(wanted, indent))


def _set_script(table: Table, key: str, line: str) -> None:
    current = table.get(key)
    existing = str(current) if current is not None else None
    wanted = model.merged_script(existing, line)
    if wanted == existing:
        return
    item = _appended(current, line, wanted) if isinstance(current, String) else None
    _put(table, key, item or _toml_string(wanted))


def _appended(current: String, line: str, wanted: str) -> String | None:
    """The user's own string with our line added inside its quotes, so that its layout and
    escapes stay as written; None when that does not give exactly `wanted`."""
    delimiter = {StringType.MLB: '"""', StringType.MLL: "'''", StringType.SLB: '"'}.get(
        current.type
    )
    if delimiter is None:
        return None
    literal = current.type is StringType.MLL
    body = line if literal else tomlkit.string(line).as_string()[1:-1]
    newline = "\\n" if current.type is StringType.SLB else "\n"
    added = body + newline if str(current).endswith("\n") else newline + body
    head = current.as_string()[: -len(delimiter)]
    return _parsed(head + added + delimiter, wanted)


def _toml_string(value: str) -> String:
    """The most readable TOML string for `value` that reads back exactly: a literal string
    ('...' or '''...''', no escapes needed), else a basic string escaped by tomlkit."""
    candidates = [f"'{value}'", f"'''{value}'''"]
    for raw in candidates:
        item = _parsed(raw, value)
        if item is not None:
            return item
    return tomlkit.string(value)


def _parsed(raw: str, wanted: str) -> String | None:
    """`raw` as a tomlkit String item when it is valid TOML whose value is `wanted`."""
    try:
        item = tomlkit.parse(f"x = {raw}\n")["x"]
    except TOMLKitError:
        return None
    return item if isinstance(item, String) and str(item) == wanted else None
