"""The ``export`` command: the video and text towers as ONNX files (optional extra ``onnx``)."""

from __future__ import annotations

import argparse

from ..printable import show_path
from .vocabulary import deprecated_alias


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the video and text towers to ONNX for deployment",
        description="Write PREFIX.video.onnx (video B x 3 x T x H x W float RGB in [0, 1] -> "
        "video_embedding B x 512, mixed_5c B x 1024), PREFIX.text.onnx (text_ids B x 16 int64 -> "
        "text_embedding B x 512) and PREFIX.vocab.npy (the words for milnce.Tokenizer) from the "
        "exact eager network in fp32. The batch axis is dynamic; T and H = W are fixed. "
        "Needs: pip install 'milnce[onnx]'.",
        epilog="Example: milnce export --onnx s3d  (a trailing .onnx in PREFIX is dropped)",
    )
    p.add_argument("--onnx", required=True, metavar="PREFIX", help="output prefix of the ONNX files")
    frames = p.add_argument("--num-frames", type=int, help="frames T of the video input (default: the weights', 32)")
    deprecated_alias(p, frames, "--frames")
    p.add_argument("--size", type=int, help="height = width of the video input in px (default: the weights', 224)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    towers = p.add_mutually_exclusive_group()
    towers.add_argument("--video-only", action="store_true", help="export only the video tower")
    towers.add_argument("--text-only", action="store_true", help="export only the text tower and vocabulary")
    check = p.add_argument("--check-outputs", dest="verify", action="store_true",
                           help="run the files with onnxruntime on random inputs, print the difference to PyTorch and "
                   "a verdict (exit 2 if a difference exceeds the float32 tolerance)")
    deprecated_alias(p, check, "--verify")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g = p.add_argument_group("model")
    g.add_argument("--weights", help="weights file (.pth, .safetensors, bundle folder) or registry name; "
                   "default: $MILNCE_WEIGHTS or the published weights from the cache")
    g.add_argument("--vocab", help="vocabulary .npy (default: $MILNCE_VOCAB, next to the weights, or the cache)")
    g.add_argument("--device", default="cpu", help="torch device the model is loaded on and traced (default: cpu)")
    g.add_argument("--no-download", action="store_true", help="never download weights; fail if they are not local")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import check_device, load_model
    from ..errors import MilnceError
    from ..export import OPSET, check_onnx, check_targets, export_onnx, onnx_paths

    onnx_paths(args.onnx)  # a bad prefix fails before the weights load
    check_device(args.device)
    check_targets(args.onnx, video=not args.text_only, text=not args.video_only, overwrite=args.overwrite)
    model = load_model(args.weights, args.vocab, device=args.device, fast=False, download=not args.no_download)
    done = export_onnx(model, args.onnx, num_frames=args.num_frames, size=args.size,
                       opset=OPSET if args.opset is None else args.opset,
                       video=not args.text_only, text=not args.video_only)
    for path in (done.video, done.text, done.vocab):
        if path is not None:
            print(f"{show_path(str(path))}  ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"opset {done.opset}; dynamic batch; video input B x 3 x {done.num_frames} x {done.size} x {done.size}")
    if not args.verify:
        return 0
    checks = check_onnx(model, done)
    for c in checks.values():
        print(f"onnxruntime vs PyTorch, {c.name}: max difference {c.onnx_vs_torch:.1e} of the largest value; "
              f"against float64: onnxruntime {c.onnx_error:.1e}, PyTorch float32 {c.torch_error:.1e} "
              f"(accepted up to {c.tolerance:.1e})")
    bad = [c.name for c in checks.values() if not c.ok]
    if bad:
        raise MilnceError(f"verification FAILED: {', '.join(bad)} differ(s) from the float64 network by more than "
                          "float32 rounding explains: the ONNX files do not compute what the model does")
    print("verification passed: onnxruntime is within float32 rounding of the float64 network")
    return 0
