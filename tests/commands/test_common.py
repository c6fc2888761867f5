"""``milnce.commands.common``: What every command module shares."""

from __future__ import annotations

from milnce.index import Index


def test_model_for_index_prefers_weights_then_record(tmp_path, model, checkpoint):
    """What search/serve/localize load (``commands.common.model_for_index``), without loading anything."""
    import argparse

    from milnce.commands.common import model_for_index
    from milnce.windows import WindowSettings

    idx = tmp_path / "ix"
    with Index.create_for(idx, model.weights_id, WindowSettings()) as ix:
        ix._commit([], weights_source={"kind": "file", "weights": str(checkpoint[0]), "vocab": str(checkpoint[1])})
    seen: list[tuple[str | None, str | None]] = []

    def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
        seen.append((args.weights, args.vocab))
        return model

    base = {"device": "cpu", "precision": "fp32", "eager": False, "no_download": True}
    assert model_for_index(argparse.Namespace(weights=None, vocab=None, **base), str(idx), load) is model
    assert seen[-1] == (str(checkpoint[0]), str(checkpoint[1]))
    model_for_index(argparse.Namespace(weights="other.pth", vocab=None, **base), str(idx), load)
    assert seen[-1] == ("other.pth", None)  # --weights wins
    model_for_index(argparse.Namespace(weights=None, vocab="mine.npy", **base), str(idx), load)
    assert seen[-1] == (str(checkpoint[0]), "mine.npy")  # --vocab wins over the recorded list
