"""`.env` support: every command reads it, and a variable set in the environment wins over it."""

from __future__ import annotations

import os
from pathlib import Path


class EnvFileError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a `.env` file; blank lines, `# comments` and an `export ` prefix are allowed."""
    if not path.is_file():
        return {}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise EnvFileError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_dotenv(path: str | Path = ".env") -> None:
    """Copy the variables of `path` into os.environ where the environment does not set them."""
    for name, value in read_env_file(Path(path)).items():
        os.environ.setdefault(name, value)
