"""The shared database: peewee models and one handle, used by the gateway and the admin app."""

from store.db import database, init_database

__all__ = ["database", "init_database"]
