"""The Store: the core connection composed with its parts, one per concern."""

from __future__ import annotations

from cartflow.store.files import Files
from cartflow.store.gatings import Gatings
from cartflow.store.provenance import Provenance


class Store(Files, Gatings, Provenance):
    """A connection to the results store with the few operations the stages need: files and
    samples (:class:`Files`), gatings (:class:`Gatings`), the audit trail (:class:`Corrections`,
    through :class:`Provenance`) and reads across them, over one :class:`StoreCore`."""
