"""Typed errors whose messages speak to people.

Every error that bad input can cause is an ``MlmonError``: the CLI prints its message and exits
with code 2, a page shows it with ``st.error``. Messages name the file, column or key at fault and
say what to do.
"""


class MlmonError(Exception):
    """Base class of every error caused by input or configuration (not by a bug)."""


class ConfigError(MlmonError):
    """The project file (mlmon.toml) is missing, malformed or names something that is not there."""


class SourceError(MlmonError):
    """A prediction or label file cannot be read, or lacks a column the config names."""


class FilterError(MlmonError):
    """A segment filter or window cannot be parsed or names an unknown column."""


class IngestError(MlmonError):
    """A file offered to the managed store was refused; the store is unchanged."""


class NotComputableError(MlmonError):
    """An analysis cannot be computed on this input (empty window, no labels, one class...)."""
