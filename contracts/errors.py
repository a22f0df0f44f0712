"""The root of every error the platform raises on purpose."""


class CDPError(Exception):
    """Base class of all platform errors."""
