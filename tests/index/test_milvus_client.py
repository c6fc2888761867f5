"""Bad input to the Milvus backend gets one line each: an unreachable server (the token and any
password in the URL never shown), a collection built with other weights or window settings, a
collection name Milvus would refuse, a URI that is neither, a server refusing the token (a gRPC
stand-in answering every call as Milvus's authentication interceptor does)."""

from __future__ import annotations

import base64
import socket
from concurrent import futures
from pathlib import Path

import pytest

from milvus_fixtures import require_milvus_lite

require_milvus_lite()

from milnce.cli import main  # noqa: E402
from milnce.errors import UsageError  # noqa: E402
from milnce.index.errors import IndexMismatchError, IndexNotFoundError  # noqa: E402
from milnce.index.milvus_client import MilvusError, check_collection, show_uri  # noqa: E402
from milnce.index.milvus_store import MilvusIndex  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_unreachable_server_is_one_line_without_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MILNCE_MILVUS_TOKEN", "root:sekrit-token")
    uri = f"http://admin:pa55word@127.0.0.1:{_closed_port()}"
    with pytest.raises(MilvusError, match="cannot reach the Milvus server at http://127.0.0.1:"):
        MilvusIndex.open(uri)
    assert main(["remove", "--index", uri, "/x.mp4"]) != 0
    line = _one_line(capsys)
    assert "cannot reach the Milvus server" in line
    assert "sekrit" not in line and "pa55word" not in line and "admin" not in line
    assert show_uri(uri).startswith("http://127.0.0.1:")


class _RefusingMilvus:
    """A gRPC server on 127.0.0.1 that refuses every call the way a Milvus proxy with
    authentication refuses a wrong ``user:password`` token (status UNAUTHENTICATED and the proxy's
    message), recording the ``authorization`` metadata it was sent."""

    MESSAGE = "auth check failure, please check username and password are correct"

    def __init__(self) -> None:
        import grpc

        self.sent: list[str] = []
        outer = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):  # type: ignore[no-untyped-def]
                outer.sent.append(dict(details.invocation_metadata).get("authorization", ""))

                def refuse(request, context):  # type: ignore[no-untyped-def]
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, outer.MESSAGE)

                return grpc.unary_unary_rpc_method_handler(refuse)

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_wrong_token_is_one_line_naming_the_credentials(monkeypatch, capsys) -> None:
    pytest.importorskip("grpc")
    fake = _RefusingMilvus()
    try:
        monkeypatch.setenv("MILNCE_MILVUS_TOKEN", "root:wrong-sekrit")
        uri = f"http://127.0.0.1:{fake.port}"
        with pytest.raises(MilvusError, match="refused the credentials") as err:
            MilvusIndex.open(uri)
        assert fake.sent and base64.b64decode(fake.sent[0]) == b"root:wrong-sekrit"  # the token did go
        assert "MILNCE_MILVUS_TOKEN" in str(err.value) and "username and password" in str(err.value)
        assert main(["remove", "--index", uri, "/x.mp4"]) != 0
        line = _one_line(capsys)
        assert "refused the credentials" in line and "cannot reach" not in line
        assert "sekrit" not in line
    finally:
        fake.server.stop(0)


@pytest.mark.parametrize("name", ["bad-name", "1abc", "a b", "x" * 248, "", "ünï", "a;drop"])
def test_odd_collection_names_are_refused(name, tmp_path: Path, capsys) -> None:
    with pytest.raises(UsageError, match="collection"):
        check_collection(name)
    assert main(["remove", "--index", str(tmp_path / "v.db"), "--collection", name, "/x.mp4"]) != 0
    assert "a Milvus collection name is a letter or _" in _one_line(capsys)
    assert not (tmp_path / "v.db").exists()  # refused before anything was created


@pytest.mark.slow
def test_other_weights_or_window_settings_are_refused(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "w.db")
    MilvusIndex.create_for(db, "weights-a", WindowSettings()).close()
    with pytest.raises(IndexMismatchError, match="other weights"):
        MilvusIndex.create_for(db, "weights-b", WindowSettings())
    with pytest.raises(IndexMismatchError, match="other window settings"):
        MilvusIndex.create_for(db, "weights-a", WindowSettings(), check={"stride": 8})
    MilvusIndex.create_for(db, "weights-a", WindowSettings(), collection="second").close()  # another collection: fine
    with pytest.raises(IndexNotFoundError, match="no index in collection 'nothing_here'"):
        MilvusIndex.open(db, collection="nothing_here")


def test_not_a_milvus_uri(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a Milvus URI"):
        MilvusIndex.open(str(tmp_path / "folder"))


def test_serve_restart_keeps_the_collection() -> None:
    from milnce.cli import build_parser
    from milnce.commands.serve import _child_argv

    args = build_parser().parse_args(["serve", "--index", "videos.db", "--collection", "howto", "--restart"])
    argv = _child_argv(args)
    assert argv[argv.index("--collection") + 1] == "howto" and "--restart" not in argv
