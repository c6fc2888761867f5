"""Which engine an ``--index`` value names, and opening it: ``open_index`` and ``create_index``
return the embedded ``Index`` (a folder) or a ``MilvusIndex`` (a path ending ``.db``: Milvus
Lite; ``http(s)://host:port``: a Milvus server; ``collection``: the collection name). The
commands (``index``, ``search``, ``serve``, ``clip``, ``remove``, ``localize``) open through here."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..protocols import Encoder
from ..windows import WindowSettings
from .milvus_client import DEFAULT_COLLECTION, check_collection, is_milvus_uri
from .milvus_store import MilvusIndex
from .reader import IndexReader
from .writer import Index

__all__ = ["AnyIndex", "AnyWriter", "open_index", "create_index", "is_milvus_uri", "DEFAULT_COLLECTION"]

AnyIndex = IndexReader | MilvusIndex  # what open_index gives (a writer too with readonly=False)
AnyWriter = Index | MilvusIndex  # what create_index gives


def open_index(uri: str | os.PathLike[str], model: Encoder | None = None, *, readonly: bool = True,
               collection: str | None = None) -> AnyIndex:
    """Open an existing index: a folder, or a Milvus collection (default ``milnce``)."""
    if is_milvus_uri(uri):
        return MilvusIndex.open(uri, model, readonly=readonly, collection=DEFAULT_COLLECTION if collection is None else collection)
    if collection is not None and collection != DEFAULT_COLLECTION:
        check_collection(collection)
    return Index.open(uri, model, readonly=readonly)


def create_index(uri: str | os.PathLike[str], model: Encoder, window: WindowSettings | None = None, *,
                 roots: Sequence[str | os.PathLike[str]] = (), collection: str | None = None) -> AnyWriter:
    """``Index.create`` or ``MilvusIndex.create`` by the URI."""
    if is_milvus_uri(uri):
        return MilvusIndex.create(uri, model, window, roots=roots, collection=DEFAULT_COLLECTION if collection is None else collection)
    return Index.create(uri, model, window, roots=roots)

