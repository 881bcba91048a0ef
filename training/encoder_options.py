"""The encoder options every training command shares (--encoders, addresses, models, cache),
and the embedder they describe."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.common.settings import FusionSettings
from training.embedders import Embedder, GrpcEmbedder, InProcessEmbedder
from training.embedding_cache import DEFAULT_CACHE_DIR, CachedEmbedder


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FusionSettings()
    group = parser.add_argument_group("encoders")
    group.add_argument("--encoders", choices=("inprocess", "grpc"), default="inprocess",
                       help="inprocess: load the encoder models here; grpc: call running encoder services.")  # fmt: skip
    group.add_argument("--text-address", default=defaults.text_address, help="Text encoder target (grpc).")
    group.add_argument(
        "--vision-address", default=defaults.vision_address, help="Vision encoder target (grpc)."
    )
    group.add_argument(
        "--audio-address", default=defaults.audio_address, help="Audio encoder target (grpc; audio heads)."
    )
    group.add_argument(
        "--text-model", default="", help="Text model (inprocess); empty: the packaged default."
    )
    group.add_argument(
        "--vision-model", default="", help="Vision model (inprocess); empty: the packaged default."
    )
    group.add_argument(
        "--audio-model", default="", help="Audio model (inprocess); empty: the packaged YAMNet."
    )
    group.add_argument("--device", default="cpu", help="Device of the in-process encoders.")
    group.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="Embedding cache directory.")
    group.add_argument("--no-cache", action="store_true", help="Always re-embed.")


def create_embedder(args: argparse.Namespace) -> Embedder:
    if args.encoders == "grpc":
        inner: Embedder = GrpcEmbedder(
            args.text_address, args.vision_address, audio_address=args.audio_address
        )
    else:
        inner = InProcessEmbedder(
            args.text_model, args.vision_model, device=args.device, audio_model=args.audio_model
        )
    return inner if args.no_cache else CachedEmbedder(inner, args.cache_dir)
