"""Video: ``/v1/embed/video``, a clip embedding from frames the vision service samples and embeds
with its image model (JSON with base64 videos, or a multipart upload)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from gateway.api.shapes import ENCODING_FORMAT, INT, NUM, STR, VECTORS, array, obj
from gateway.encoding import json_response, short_float, vector_rows
from gateway.endpoints import endpoint, state
from gateway.errors import invalid
from gateway.schema import Boolean, Context, EncodedFile, Integer, ListOf, Number, Object
from mmserve.v1 import vision_pb2
from services.common.matrix import from_matrix
from services.common.settings import VisionSettings

blueprint = Blueprint("video", __name__, url_prefix="/v1")

# The vision service's default limits, declared once in its settings; it enforces its configured ones.
VIDEO = EncodedFile(
    "video",
    VisionSettings.max_video_bytes,
    "An encoded video file (MP4/MOV or WebM/Matroska; H.264, H.265, VP8, VP9, AV1 or MPEG-4 video) as "
    f"base64 or a base64 data URL. At most {VisionSettings.max_video_bytes} bytes, "
    f"{VisionSettings.max_video_seconds:g} s, {VisionSettings.max_video_frame_pixels} pixels per frame and "
    f"{VisionSettings.max_video_decoded_frames} frames in all, and at most "
    f"{VisionSettings.max_video_decoded_pixels} pixels decoded to reach the sampled frames: the vision "
    "service's defaults.",
)


def _one_sampling(body: dict, _where: str) -> None:
    if body["num_frames"] is not None and body["frames_per_second"] is not None:
        raise invalid("give 'num_frames' or 'frames_per_second', not both")


def _not_both_samplings(ctx: Context) -> dict[str, Any]:
    """JSON Schema for _one_sampling."""
    both = {"num_frames": {"type": "number"}, "frames_per_second": {"type": "number"}}
    return {"not": {"required": list(both), "properties": both}}


EMBED_VIDEO = Object(
    {
        "videos": ListOf(VIDEO, max_items=VisionSettings.max_videos_per_request),
        "num_frames": Integer(
            1, VisionSettings.max_video_frames, None,
            f"Frames spread evenly over each video (default {VisionSettings.video_frames}).",
        ),
        "frames_per_second": Number(
            0.01, 30.0, None,
            "Instead of num_frames: frames per second of video; at most "
            f"{VisionSettings.max_video_frames} frames per video in all.",
        ),
        "include_frames": Boolean(False, "Also return each sampled frame's embedding and timestamp."),
        "encoding_format": ENCODING_FORMAT,
    },
    required=("videos",),
    check=_one_sampling,
    rules=_not_both_samplings,
    description="JSON, or multipart/form-data with one or more files in the form field 'video'.",
)  # fmt: skip
FRAMES = obj(
    {
        "embeddings": VECTORS,
        "timestamps_s": {**array(NUM), "description": "presentation time of each frame, seconds"},
    },
    ["embeddings", "timestamps_s"],
)
EMBED_VIDEO_RESPONSE = obj(
    {
        "model": STR,
        "embeddings": {**VECTORS, "description": "one per video: the mean of its frames' embeddings, L2-normalised"},
        "duration_s": {**array(NUM), "description": "length of each video, seconds"},
        "num_frames": {**array(INT), "description": "frames sampled from each video"},
        "frames": {**array(FRAMES), "description": "one per video, with include_frames"},
    },
    ["model", "embeddings", "duration_s", "num_frames"],
)  # fmt: skip


@endpoint(
    blueprint, "POST", "/embed/video",
    summary="Video clip embeddings: sampled frames through the image model, averaged",
    body=EMBED_VIDEO, response=EMBED_VIDEO_RESPONSE, uploads={"video": "videos"},
)  # fmt: skip
def embed_video(body: dict) -> Response:
    request = vision_pb2.EmbedVideoRequest(
        videos=body["videos"],
        num_frames=body["num_frames"] or 0,
        frames_per_second=body["frames_per_second"] or 0.0,
        include_frames=body["include_frames"],
    )
    reply = state().upstreams.call("vision", "EmbedVideo", request)
    answer = {
        "model": reply.model_id,
        "embeddings": vector_rows(from_matrix(reply.embeddings), body["encoding_format"]),
        "duration_s": [short_float(d) for d in reply.duration_s],
        "num_frames": list(reply.num_frames),
    }
    if body["include_frames"]:
        answer["frames"] = [
            {
                "embeddings": vector_rows(from_matrix(f.embeddings), body["encoding_format"]),
                "timestamps_s": [short_float(t) for t in f.timestamps_s],
            }
            for f in reply.frames
        ]
    return json_response(answer)
