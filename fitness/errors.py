"""The fitness layer's domain exception."""

from __future__ import annotations

from evosearch.errors import UsageError


class FitnessError(UsageError, ValueError):
    """Bad input to calibration, anchor selection or estimation; the message is one line naming the
    task, item, model or field at fault."""
