"""Configuration from the environment, with `.env` filling in what the environment leaves unset."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from store.db import DEFAULT_DATABASE_URL
from store.environment import read_env_file

TRUTHY = {"1", "true", "yes", "on"}
DEFAULT_TOKEN_BUDGET = 100_000
DEFAULT_ARTIFACT_STORAGE_PATH = "data/artifacts"


class ConfigError(RuntimeError):
    pass


def settings_from_environment(
    environ: Mapping[str, str] | None = None, env_file: Path = Path(".env")
) -> dict:
    """The settings the admin app reads; a variable set in the environment wins over `.env`."""
    env = {**read_env_file(env_file), **(os.environ if environ is None else environ)}
    cookie = {}
    if env.get("SESSION_COOKIE_SECURE"):  # default: secure outside development (create_app)
        cookie["SESSION_COOKIE_SECURE"] = env["SESSION_COOKIE_SECURE"].lower() in TRUTHY
    return cookie | {
        "DATABASE_URL": env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        "SECRET_KEY": env.get("SECRET_KEY") or None,
        "DEBUG": env.get("FLASK_DEBUG", "").lower() in TRUTHY,
        "DEFAULT_TOKEN_BUDGET": _token_budget(env.get("DEFAULT_TOKEN_BUDGET")),
        # Absolute, because Flask resolves relative directories against the package, not the
        # working directory the operator started from (where the gateway writes its files).
        "ARTIFACT_STORAGE_PATH": os.path.abspath(
            env.get("ARTIFACT_STORAGE_PATH") or DEFAULT_ARTIFACT_STORAGE_PATH
        ),
    }


def _token_budget(value: str | None) -> int:
    if not value:
        return DEFAULT_TOKEN_BUDGET
    try:
        budget = int(value)
    except ValueError:
        budget = -1
    if budget < 0:
        raise ConfigError(
            f"DEFAULT_TOKEN_BUDGET must be a whole number of tokens of at least 0, not {value!r} "
            f"(the default is {DEFAULT_TOKEN_BUDGET})"
        )
    return budget


def ensure_secret_key(config) -> None:
    """Sessions need a stable secret in production; development and tests may use a throwaway one."""
    if config.get("SECRET_KEY"):
        return
    if config.get("DEBUG") or config.get("TESTING"):
        config["SECRET_KEY"] = secrets.token_hex(32)
        return
    raise ConfigError(
        "SECRET_KEY is not set: the admin app signs sessions with it. Set it in the environment or in .env "
        "(generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`), "
        "or set FLASK_DEBUG=1 for development."
    )
