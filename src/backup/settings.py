"""Settings from a TOML file, for ``obs-backup --config FILE.toml``.

Top-level keys apply to every command; a table named after a command (``[create]``,
``[schedule]``, ``[prune]`` ...) applies to that command and wins over the top level.
Keys are the long option names, with ``-`` or ``_`` (``backup_dir``, ``keep-daily``).
Options given on the command line win over both.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["load_settings"]

COMMANDS = ("create", "restore", "verify", "list", "schedule", "prune")


def load_settings(path: Path, command: str, known: set[str], every_option: set[str]) -> dict[str, Any]:
    """Given a TOML file, a command, the option names it takes and those of every
    command, return the file's settings for that command.

    Raise ConfigError naming the file if it cannot be read or parsed, or if it sets an
    option no command has (a typo would otherwise be silently ignored).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}", path) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path) from exc
    merged: dict[str, Any] = {}
    for key, value in data.items():
        if key in COMMANDS:
            continue
        merged[_key(key)] = value
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{command}] must be a table", path)
    merged.update({_key(key): value for key, value in section.items()})
    # Top-level keys may belong to other commands; the command's own table must not.
    unknown = sorted(
        {key for key in merged if key not in every_option} | {_key(key) for key in section if _key(key) not in known}
    )
    if unknown:
        raise ConfigError(f"{path}: unknown settings for {command}: {', '.join(unknown)}", path)
    return {key: value for key, value in merged.items() if key in known}


def _key(name: str) -> str:
    return name.replace("-", "_")
