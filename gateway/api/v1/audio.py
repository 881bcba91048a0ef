"""Audio: ``/v1/embed/audio`` (clip embeddings, optionally per segment) and ``/v1/classify/audio``
(AudioSet labels with the default YAMNet), as JSON with base64 clips or a multipart upload."""

from __future__ import annotations

from flask import Blueprint, Response

from gateway.api.shapes import ENCODING_FORMAT, LABEL_SCORE, NUM, STR, VECTORS, array, obj
from gateway.encoding import json_response, short_float, vector_rows
from gateway.endpoints import endpoint, state
from gateway.schema import Boolean, EncodedFile, Integer, ListOf, Object
from mmserve.v1 import audio_pb2
from services.common.matrix import from_matrix
from services.common.settings import AudioSettings

blueprint = Blueprint("audio", __name__, url_prefix="/v1")

# The audio service's default limits, declared once in its settings; it enforces its configured ones.
_LIMITS = (
    f"At most {AudioSettings.max_audio_bytes} bytes and {AudioSettings.max_audio_seconds:g} s, a sample "
    f"rate of {AudioSettings.min_sample_rate_hz}-{AudioSettings.max_sample_rate_hz} Hz and "
    f"{AudioSettings.max_channels} channels (averaged to mono)"
)
AUDIO = EncodedFile(
    "audio",
    AudioSettings.max_audio_bytes,
    "An encoded audio file (WAV, FLAC, OGG Vorbis/Opus, MP3, M4A AAC/ALAC) as base64 or a base64 data "
    f"URL (data:audio/wav;base64,...). {_LIMITS}: the audio service's defaults.",
)
CLIPS = ListOf(AUDIO, max_items=AudioSettings.max_items_per_request)
_UPLOADS = {"audio": "clips"}
_FORM = "JSON, or multipart/form-data with one or more files in the form field 'audio'."

EMBED_AUDIO = Object(
    {
        "clips": CLIPS,
        "include_segments": Boolean(
            False, "Also return each segment's embedding and time span (YAMNet: 0.96 s every 0.48 s)."
        ),
        "encoding_format": ENCODING_FORMAT,
    },
    required=("clips",),
    description=_FORM,
)
SEGMENTS = obj(
    {
        "embeddings": VECTORS,
        "start_s": {**array(NUM), "description": "start of each segment in the clip, seconds"},
        "end_s": {**array(NUM), "description": "end of each segment (at most the clip's end), seconds"},
    },
    ["embeddings", "start_s", "end_s"],
)
EMBED_AUDIO_RESPONSE = obj(
    {
        "model": STR,
        "embeddings": {**VECTORS, "description": "one per clip: the mean of its segments, L2-normalised"},
        "duration_s": {**array(NUM), "description": "decoded length of each clip, seconds"},
        "segments": {**array(SEGMENTS), "description": "one per clip, with include_segments"},
    },
    ["model", "embeddings", "duration_s"],
)


@endpoint(
    blueprint, "POST", "/embed/audio",
    summary="Audio clip embeddings (JSON base64 / data URLs, or a multipart upload)",
    body=EMBED_AUDIO, response=EMBED_AUDIO_RESPONSE, uploads=_UPLOADS,
)  # fmt: skip
def embed_audio(body: dict) -> Response:
    request = audio_pb2.EmbedAudioRequest(clips=body["clips"], include_segments=body["include_segments"])
    reply = state().upstreams.call("audio", "Embed", request)
    answer = {
        "model": reply.model_id,
        "embeddings": vector_rows(from_matrix(reply.embeddings), body["encoding_format"]),
        "duration_s": [short_float(d) for d in reply.duration_s],
    }
    if body["include_segments"]:
        answer["segments"] = [
            {
                "embeddings": vector_rows(from_matrix(s.embeddings), body["encoding_format"]),
                "start_s": [short_float(t) for t in s.start_s],
                "end_s": [short_float(t) for t in s.end_s],
            }
            for s in reply.segments
        ]
    return json_response(answer)


CLASSIFY_AUDIO = Object(
    {"clips": CLIPS, "top_k": Integer(1, 1000, None, "Labels per clip (default: the service's, 5).")},
    required=("clips",),
    description=_FORM + " Scores are per label (sigmoid, multi-label with YAMNet): several may be high.",
)


@endpoint(
    blueprint, "POST", "/classify/audio",
    summary="Top-k sound labels per clip (AudioSet's 521 with the default YAMNet)",
    description="FAILED_PRECONDITION (400) when the audio model has no classifier.",
    body=CLASSIFY_AUDIO, uploads=_UPLOADS,
    response=obj({"model": STR, "results": array(obj({"labels": array(LABEL_SCORE)}, ["labels"]))}, ["model", "results"]),
)  # fmt: skip
def classify_audio(body: dict) -> Response:
    request = audio_pb2.ClassifyAudioRequest(clips=body["clips"], top_k=body["top_k"] or 0)
    reply = state().upstreams.call("audio", "Classify", request)
    results = [
        {"labels": [{"label": s.label, "score": short_float(s.score)} for s in result.labels]}
        for result in reply.results
    ]
    return json_response({"model": reply.model_id, "results": results})
