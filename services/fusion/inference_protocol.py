"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``, as KServe and
Triton clients speak it), served by the fusion service beside FusionService.

Fusion is the one service that can answer for every model: it holds channels to the text and
vision encoders and the head registry, so every encoder model and every predicting head is an
OIP model here (services.common.inference_protocol names them and the v1 calls behind them, as
the gateway's REST /v2 does). Heads run through FusionService.Predict in-process; encoder calls
carry the caller's deadline (or the configured default) and pass the encoder's status through.
Inputs come as ``contents.bytes_contents`` or ``raw_input_contents``; outputs always go back as
``raw_output_contents``, as Triton answers its own clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from mmserve.oip.v2 import grpc_service_pb2 as pb
from mmserve.oip.v2 import grpc_service_pb2_grpc as pb_grpc
from mmserve.v1 import common_pb2, fusion_pb2, text_pb2_grpc, vision_pb2_grpc
from services.common import inference_protocol as oip
from services.common.errors import InvalidInput, UpstreamError
from services.common.logs import REQUEST_ID_HEADER, request_id_var
from services.fusion.clients import EncoderClients, timeout_until

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class Heads(Protocol):
    """What this service needs from FusionService."""

    async def Predict(
        self, request: fusion_pb2.PredictRequest, context: Any
    ) -> fusion_pb2.PredictResponse: ...

    async def ListHeads(
        self, request: fusion_pb2.ListHeadsRequest, context: Any
    ) -> fusion_pb2.ListHeadsResponse: ...


class InferenceProtocolService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, heads: Heads, clients: EncoderClients) -> None:
        self._heads = heads
        self._clients = clients
        self._stubs: dict[str, Any] = {}
        self._catalogue: dict[str, oip.Model] = {}  # kept oip.CATALOGUE_TTL_S, as the gateway does
        self._fresh_until = 0.0

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    def _stub(self, service: str) -> Any:
        # Made on first use: the channels are asyncio objects of the running loop.
        if service not in self._stubs:
            if service == "text":
                self._stubs[service] = text_pb2_grpc.TextEncoderServiceStub(self._clients.text.channel)
            else:
                self._stubs[service] = vision_pb2_grpc.VisionEncoderServiceStub(self._clients.image.channel)
        return self._stubs[service]

    async def _call(self, service: str, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One v1 call: heads in-process, the encoders over their channels with the caller's deadline."""
        if service == "fusion":
            return await getattr(self._heads, method)(request, context)
        deadline = self._clients.deadline(context.time_remaining())
        try:
            return await getattr(self._stub(service), method)(
                request,
                timeout=timeout_until(deadline),
                metadata=((REQUEST_ID_HEADER, request_id_var.get()),),
            )
        except grpc.aio.AioRpcError as error:
            encoder = "text" if service == "text" else "vision"
            raise UpstreamError(
                error.code(), f"{encoder} encoder: {error.details() or error.code().name}"
            ) from None

    async def _models(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[dict[str, oip.Model], list[Exception]]:
        """Every model served now; an encoder that does not answer leaves its models out."""
        info = common_pb2.GetModelInfoRequest()
        services = ("text", "vision")
        answers = await asyncio.gather(
            *(self._call(service, "GetModelInfo", info, context) for service in services),
            return_exceptions=True,
        )
        replies: dict[str, Any] = {}
        failures: list[Exception] = []
        for service, answer in zip(services, answers, strict=True):
            if isinstance(answer, UpstreamError):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                replies[service] = answer
        heads = await self._heads.ListHeads(fusion_pb2.ListHeadsRequest(), context)
        return oip.catalogue(replies.get("text"), replies.get("vision"), heads.heads), failures

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> oip.Model:
        """The named model from the kept catalogue; asked afresh when it is old or lacks the name
        (a head added a moment ago is found at once). A partial view is used once, never kept."""
        model = self._catalogue.get(name) if time.monotonic() < self._fresh_until else None
        if model is None:
            models, failures = await self._models(context)
            if not failures:
                self._catalogue, self._fresh_until = models, time.monotonic() + oip.CATALOGUE_TTL_S
            model = oip.find(models, name, failures)
        model.check_version(version)
        return model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        models, _ = await self._models(context)
        return pb.ServerReadyResponse(ready=bool(models))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(
            name=oip.SERVER_NAME, version=oip.server_version(), extensions=list(oip.EXTENSIONS)
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        described = (await self._model(request.name, request.version, context)).metadata()
        return pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in described["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in described["outputs"]],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        model = await self._model(request.model_name, request.model_version, context)
        requested = model.requested_outputs([output.name for output in request.outputs])
        calls = model.plan(_inputs(request), requested)
        # An image model's embedding and labels are two encoder calls: made at once.
        replies = await asyncio.gather(
            *(self._call(c.task.service, c.task.method, c.request, context) for c in calls)
        )
        tensors = model.answer(calls, replies, requested)
        return pb.ModelInferResponse(
            model_name=model.name,
            model_version=oip.MODEL_VERSION,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                for t in tensors
            ],
            raw_output_contents=[oip.to_raw(t) for t in tensors],
        )


def _inputs(request: pb.ModelInferRequest) -> dict[str, tuple[str, list[bytes]]]:
    """Input name -> (datatype, elements), from raw_input_contents (all inputs) or typed contents."""
    raw: Sequence[bytes] = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, tuple[str, list[bytes]]] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        if tensor.name in inputs:
            raise InvalidInput(f"{where} is given twice")
        count = oip.element_count(tensor.shape, where)
        if tensor.datatype != oip.BYTES:
            elements: list[bytes] = []  # refused by the model's plan, which names the datatype it takes
        elif raw:
            elements = oip.split_bytes(raw[index], count, where)
        else:
            elements = list(tensor.contents.bytes_contents)
            if len(elements) != count:
                raise InvalidInput(
                    f"{where} has {len(elements)} elements but shape {list(tensor.shape)} needs {count}"
                )
        inputs[tensor.name] = (tensor.datatype, elements)
    return inputs
