"""The ``export`` command: the video and text towers as ONNX files (optional extra ``onnx``)."""

from __future__ import annotations

import argparse


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
    p.add_argument("--frames", type=int, help="frames T of the video input (default: the weights', 32)")
    p.add_argument("--size", type=int, help="height = width of the video input in px (default: the weights', 224)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    towers = p.add_mutually_exclusive_group()
    towers.add_argument("--video-only", action="store_true", help="export only the video tower")
    towers.add_argument("--text-only", action="store_true", help="export only the text tower and vocabulary")
    p.add_argument("--verify", action="store_true",
                   help="run the files with onnxruntime on random inputs and print the difference to PyTorch")
    g = p.add_argument_group("model")
    g.add_argument("--weights", help="weights file (.pth, .safetensors, bundle folder) or registry name; "
                   "default: $MILNCE_WEIGHTS or the published weights from the cache")
    g.add_argument("--vocab", help="vocabulary .npy (default: $MILNCE_VOCAB, next to the weights, or the cache)")
    g.add_argument("--no-download", action="store_true", help="never download weights; fail if they are not local")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..export import OPSET, export_onnx, onnx_paths, verify_onnx

    onnx_paths(args.onnx)  # a bad prefix fails before the weights load
    model = load_model(args.weights, args.vocab, device="cpu", fast=False, download=not args.no_download)
    done = export_onnx(model, args.onnx, num_frames=args.frames, size=args.size,
                       opset=OPSET if args.opset is None else args.opset,
                       video=not args.text_only, text=not args.video_only)
    for path in (done.video, done.text, done.vocab):
        if path is not None:
            print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"opset {done.opset}; dynamic batch; video input B x 3 x {done.num_frames} x {done.size} x {done.size}")
    if args.verify:
        for name, diff in verify_onnx(model, done).items():
            print(f"onnxruntime vs PyTorch, {name}: max difference {diff:.1e} of the largest value")
    return 0
