"""What can go wrong in an alignment request; the HTTP layer maps each class to its status."""

from __future__ import annotations

# Errors (the app maps each to its HTTP status)


class ManifestError(ValueError):
    """A manifest that cannot be processed as sent (HTTP 400)."""


class ManifestTooLarge(ManifestError):
    """A manifest with more entries than the server takes in one request (HTTP 413)."""


class ManifestForbidden(PermissionError):
    """A manifest path this client may not read (HTTP 403)."""


class AlignValueError(ValueError):
    """A value of the wrong type or range, or a language the aligner lacks (HTTP 422)."""


class AlignEntryFailed(RuntimeError):
    """Aligning one manifest entry failed for an internal reason (HTTP 500)."""
