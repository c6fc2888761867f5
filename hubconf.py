"""torch.hub entry points: ``torch.hub.load("<repo>", "s3d_howto100m", pretrained=True)``."""

# Import names torch.hub checks before loading: every runtime dependency of the package
# (pyproject.toml [project] dependencies; tests/test_packaging.py keeps the two in step).
dependencies = ["torch", "numpy", "av", "safetensors", "tqdm"]


def s3d_howto100m(pretrained: bool = True, **kwargs):  # type: ignore[no-untyped-def]
    """S3D text-video model trained on HowTo100M with MIL-NCE, as ``milnce.S3D`` (eval mode).

    With ``pretrained=True`` the published weights and vocabulary come from ``$MILNCE_WEIGHTS``/
    ``$MILNCE_VOCAB`` or the milnce cache (downloaded once). Keyword arguments go to
    ``milnce.load_model`` (e.g. ``weights=``, ``vocab=``, ``device=``).
    """
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parent / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import milnce

    if not pretrained:
        return milnce.S3D(None, 512, **kwargs)
    return milnce.load_model(fast=False, **kwargs).net
