"""``milnce.errors``: The exceptions users can catch."""

from __future__ import annotations

import errno

import milnce
import milnce.atomic
import milnce.fast
from milnce.errors import MilnceError, MissingFileError, OutputError, TrainingError, UsageError

# --------------------------------------------------------------------------- error contract


def test_error_classes_keep_builtin_bases():
    for cls, base in [(MissingFileError, FileNotFoundError), (OutputError, OSError), (TrainingError, RuntimeError)]:
        assert issubclass(cls, MilnceError) and issubclass(cls, base)
    e = OutputError("/x/y", OSError(errno.EROFS, "Read-only file system"))
    assert e.errno == errno.EROFS and str(e) == "cannot write /x/y: Read-only file system"


def test_usage_error_is_still_a_value_error():
    assert issubclass(UsageError, ValueError)


def test_error_hierarchy_keeps_builtin_bases():
    from milnce.index import IndexFolderError, IndexNotFoundError
    from milnce.video import VideoError, VideoNotFoundError

    for cls, base in [(milnce.CheckpointError, ValueError), (milnce.VocabularyError, ValueError),
                      (milnce.DownloadError, OSError), (VideoError, ValueError), (VideoNotFoundError, FileNotFoundError),
                      (IndexFolderError, ValueError), (IndexNotFoundError, FileNotFoundError), (UsageError, ValueError)]:
        assert issubclass(cls, MilnceError) and issubclass(cls, base), cls
