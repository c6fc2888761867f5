"""Fixtures of the tests/video files: the shared test videos of ``video_fixtures``, written once per session
and only read (a test that changes one undoes it)."""

from __future__ import annotations

import pytest

from video_fixtures import bad_inputs, clip_videos, one_video_folder, video_tree


@pytest.fixture(scope="session")
def vids(tmp_path_factory):
    return clip_videos(tmp_path_factory)


@pytest.fixture(scope="session")
def bad(tmp_path_factory):
    return bad_inputs(tmp_path_factory)


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return video_tree(tmp_path_factory)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return one_video_folder(tmp_path_factory)
