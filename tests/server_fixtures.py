"""The server tests' library: a few generated videos indexed with the conftest model, and a
``TestClient`` over ``create_app`` for it (one way to build a served index, shared by the
server test modules)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from milnce.windows import WindowSettings
from video_fixtures import make_video


def indexed_library(root: Path, model: Any, videos: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """For a module-scoped fixture (``yield from``): ``videos`` (a path under ``root/videos`` ->
    ``make_video`` options) made and indexed into ``root/index`` (8 frames of 32 px, stride 8),
    the index opened; yields ``root``, ``videos`` (the folder), ``index``, ``index_dir``,
    ``model`` and ``ids`` (file name -> video id); closes the index afterwards."""
    from milnce.index import Index, build_index

    folder = root / "videos"
    for name, options in videos.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        make_video(folder / name, **options)
    build_index([folder], root / "index", model, window=WindowSettings.for_model(model, num_frames=8, size=32, stride=8),
                progress=False)
    index = Index.open(root / "index", model)
    try:
        ids = {Path(r.path).name: r.id for r in index.videos()}
        yield {"root": root, "videos": folder, "index": index, "index_dir": root / "index", "model": model,
               "ids": ids}
    finally:
        index.close()


@contextlib.contextmanager
def client_for(lib: dict[str, Any], **app_options: Any) -> Iterator[Any]:
    """A ``TestClient`` over ``create_app(lib["index"], lib["model"], **app_options)``."""
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    with TestClient(create_app(lib["index"], lib["model"], **app_options)) as c:
        yield c
