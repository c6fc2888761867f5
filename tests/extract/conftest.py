"""Fixtures of the tests/extract files: the shared test videos of ``video_fixtures``, written once per
session and only read (a test that changes one undoes it)."""

from __future__ import annotations

import pytest

from video_fixtures import one_video_folder, video_tree


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return video_tree(tmp_path_factory)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return one_video_folder(tmp_path_factory)
