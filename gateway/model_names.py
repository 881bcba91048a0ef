"""The names a caller may give a model: the served models' ids, and aliases the operator declares.

OpenAI clients send ``model`` with every embeddings call, often a name of their own
(``text-embedding-3-small``). Answering whatever encoder happens to be served would hide a
misconfiguration, so a name that is neither a served id nor a declared alias is a 404 with
reason ``model_not_found``; an alias maps a client's name to a served id
(``MMSERVE_GATEWAY_MODEL_ALIASES``, the chart's ``gateway.modelAliases``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc

from gateway.errors import ApiError, invalid

_NAME = re.compile(r"[^\s,=]+")


def parse_aliases(text: str) -> dict[str, str]:
    """``alias=model_id`` pairs, comma-separated; ValueError naming the first malformed one."""
    aliases: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        alias, sep, target = (side.strip() for side in pair.partition("="))
        if not sep or not _NAME.fullmatch(alias) or not _NAME.fullmatch(target):
            raise ValueError(f"model alias {pair!r} is not 'alias=model_id'")
        if alias == target or aliases.get(alias, target) != target:
            raise ValueError(f"model alias {alias!r} is declared twice or names itself")
        aliases[alias] = target
    return aliases


def model_not_found(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"the model {name!r} is not served; GET /v1/models lists the served models and their aliases",
        reason="model_not_found",
        param="model",
    )


def check_embedding_model(
    requested: str, aliases: Mapping[str, str], served: Mapping[str, str], modalities: set[str]
) -> None:
    """Raises unless ``requested`` names (directly or by alias) served embedding models that
    cover every input modality. ``served``: model id -> modality it embeds (text, image, audio);
    several models are named as the response names them, joined by ``+``."""
    names = [aliases.get(part, part) for part in aliases.get(requested, requested).split("+")]
    unknown = [name for name in names if name not in served]
    if unknown:
        raise model_not_found(requested)
    covered = {served[name] for name in names}
    missing = sorted(modalities - covered)
    if missing:
        raise invalid(
            f"the model {requested!r} embeds {', '.join(sorted(covered))}, not {', '.join(missing)}; "
            "name the model of each input's modality (joined by '+'), or leave 'model' out"
        )
