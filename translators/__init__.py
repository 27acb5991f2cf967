"""Dialect translation: pure functions and incremental stream converters, no I/O."""
