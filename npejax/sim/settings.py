"""Simulation settings built from a section of the experiment config (configs/default.py is the one place
that sets their values; the dataclasses have no defaults of their own)."""

from __future__ import annotations

import dataclasses


def from_config(cls, section: str, config, **given):
    """``cls(**given, **config)`` for a settings dataclass and its ConfigDict ``config.<section>``: every
    field not in ``given`` must be a key of ``config`` and every key a field, else a ValueError naming
    ``config.<section>`` and the keys. Lists become tuples (JSON round trips turn tuples into lists)."""
    known = {f.name for f in dataclasses.fields(cls)} - set(given)
    values = dict(config)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.{section}: unknown keys {unknown}; expected some of {sorted(known)}")
    missing = sorted(known - set(values))
    if missing:
        raise ValueError(f"config.{section}: missing keys {missing} (configs/default.py sets every one)")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**given, **values)
