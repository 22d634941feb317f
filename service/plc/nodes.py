"""The address space of one model: a VisionSystem object shaped after OPC 40100-1 (state machine subset,
recipe management, result management with the acknowledgement handshake) and its ResultReady events.

Every node has a string NodeId, `ns=<ours>;s=<model>.<path>` (e.g. `bagel.ResultManagement.Unacknowledged`),
so a PLC program can name it without browsing. docs/DEPLOYMENT.md "Connecting a PLC" lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from asyncua import Node, Server, ua
from asyncua.server.address_space import NodeData

from service.plc.buffer import NotReadyError, ResultBuffer, UnknownResultError
from service.plc.results import RESULT_STATE_COMPLETED, PlcResult
from service.recipes.recipe import RecipeError

log = logging.getLogger(__name__)

V = ua.VariantType
# The fields of a result, in ResultDataType's names where OPC 40100-1 has one; the rest are ours.
RESULT_FIELDS: tuple[tuple[str, ua.VariantType], ...] = (
    ("ResultId", V.String),
    ("IsPartial", V.Boolean),
    ("ResultState", V.Int32),
    ("MeasId", V.String),
    ("PartId", V.String),
    ("ExternalRecipeId", V.String),
    ("InternalRecipeId", V.String),
    ("CreationTime", V.DateTime),
    ("ProcessingTime", V.Double),  # ms, from the request's arrival to its answer
    ("Verdict", V.String),  # ok, review, ng
    ("VerdictCode", V.Int32),  # 1 ok, 2 review, 3 ng; 0 no result
    ("IsAnomalous", V.Boolean),
    ("Score", V.Double),
    ("Threshold", V.Double),
    ("LargestRegionArea", V.Double),  # mm²
    ("LargestRegionLength", V.Double),  # mm
)
OVERRUN_FIELDS: tuple[tuple[str, ua.VariantType], ...] = (
    ("ResultId", V.String),
    ("Unacknowledged", V.UInt32),
    ("Waiting", V.UInt32),
)
# VisionStateMachine.ErrorCode while CurrentState is Error.
ERROR_NONE, ERROR_MODEL_UNAVAILABLE, ERROR_BUFFER_OVERRUN = 0, 1, 2


class RecipeCatalog(Protocol):
    """The recipes the line can switch between (service.recipes, when present)."""

    @property
    def active_id(self) -> str | None: ...

    def ids(self) -> Iterable[str]: ...

    def get(self, recipe_id: str) -> Any: ...

    def set_active(self, recipe_id: str | None) -> Any: ...


def result_values(result: PlcResult | None) -> dict[str, Any]:
    """The RESULT_FIELDS of `result`; empty values (ResultId "") when there is none."""
    if result is None:
        empty = {
            V.String: "",
            V.Boolean: False,
            V.Int32: 0,
            V.Double: 0.0,
            V.DateTime: datetime(1601, 1, 1, tzinfo=UTC),
        }
        return {name: empty[kind] for name, kind in RESULT_FIELDS}
    return {
        "ResultId": result.result_id,
        "IsPartial": False,
        "ResultState": RESULT_STATE_COMPLETED,
        "MeasId": result.meas_id,
        "PartId": result.part_id,
        "ExternalRecipeId": result.external_recipe_id,
        "InternalRecipeId": result.internal_recipe_id,
        "CreationTime": result.creation_time,
        "ProcessingTime": result.processing_time_ms,
        "Verdict": result.verdict,
        "VerdictCode": result.verdict_code,
        "IsAnomalous": result.is_anomalous,
        "Score": result.score,
        "Threshold": result.threshold,
        "LargestRegionArea": result.largest_area_mm2,
        "LargestRegionLength": result.largest_length_mm,
    }


@dataclass(frozen=True)
class EventTypes:
    result_ready: Node
    overrun: Node


async def create_event_types(server: Server, idx: int) -> EventTypes:
    """ResultReadyEventType (OPC 40100-1's name and properties, plus ours) and ResultBufferOverrunEventType."""
    ready = await server.create_custom_event_type(
        idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType, list(RESULT_FIELDS)
    )
    overrun = await server.create_custom_event_type(
        idx, "ResultBufferOverrunEventType", ua.ObjectIds.BaseEventType, list(OVERRUN_FIELDS)
    )
    return EventTypes(ready, overrun)


class VisionSystemNodes:
    """The nodes of one model's VisionSystem. `acknowledge(result_id)` is what AcknowledgeResult calls."""

    def __init__(self, server: Server, idx: int, model: str, acknowledge: Any, recipes: RecipeCatalog | None) -> None:
        self.server = server
        self.idx = idx
        self.model = model
        self._acknowledge = acknowledge
        self.recipes = recipes
        self.vars: dict[str, Node] = {}
        self.oldest: dict[str, Node] = {}
        self.obj: Node | None = None
        self._ready_event: Any = None
        self._overrun_event: Any = None
        self._model_ok = False
        self._overrun = False
        self._shown: dict[str, Any] = {}

    def nodeid(self, path: str) -> ua.NodeId:
        return ua.NodeId(ua.String(f"{self.model}.{path}" if path else self.model), ua.Int16(self.idx))

    async def _var(self, parent: Node, path: str, value: Any, kind: ua.VariantType) -> Node:
        name = path.rsplit(".", 1)[-1]
        node = await parent.add_variable(self.nodeid(path), ua.QualifiedName(name, self.idx), value, varianttype=kind)
        self.vars[path] = node
        return node

    async def build(self, parent: Node, event_types: EventTypes) -> None:
        idx = self.idx
        self.obj = obj = await parent.add_object(self.nodeid(""), ua.QualifiedName(self.model, idx))
        state = await obj.add_object(self.nodeid("VisionStateMachine"), ua.QualifiedName("VisionStateMachine", idx))
        await self._var(state, "VisionStateMachine.CurrentState", "Preoperational", V.String)
        await self._var(state, "VisionStateMachine.CurrentSubState", "", V.String)
        await self._var(state, "VisionStateMachine.ErrorCode", ERROR_NONE, V.Int32)
        await self._var(state, "VisionStateMachine.ErrorMessage", "", V.String)

        recipes = await obj.add_object(self.nodeid("RecipeManagement"), ua.QualifiedName("RecipeManagement", idx))
        active = await self._var(recipes, "RecipeManagement.ActiveRecipeId", self._active_recipe(), V.String)
        await self._var(recipes, "RecipeManagement.RecipeIds", self._recipe_ids(), V.String)
        if self.recipes is not None:
            await active.set_writable()
            self.server.set_attribute_value_setter(active.nodeid, self._write_recipe)

        results = await obj.add_object(self.nodeid("ResultManagement"), ua.QualifiedName("ResultManagement", idx))
        await self._var(results, "ResultManagement.BufferCapacity", 0, V.UInt32)
        await self._var(results, "ResultManagement.Unacknowledged", 0, V.UInt32)
        await self._var(results, "ResultManagement.Waiting", 0, V.UInt32)
        await self._var(results, "ResultManagement.Overrun", False, V.Boolean)
        await self._var(results, "ResultManagement.OverrunCount", 0, V.UInt32)
        oldest = await results.add_object(
            self.nodeid("ResultManagement.OldestResult"), ua.QualifiedName("OldestResult", idx)
        )
        for name, value in result_values(None).items():
            kind = dict(RESULT_FIELDS)[name]
            self.oldest[name] = await self._var(oldest, f"ResultManagement.OldestResult.{name}", value, kind)
        await results.add_method(
            self.nodeid("ResultManagement.AcknowledgeResult"),
            ua.QualifiedName("AcknowledgeResult", idx),
            self._on_acknowledge,
            [ua.VariantType.String],
            [],
        )
        self._ready_event = await self.server.get_event_generator(event_types.result_ready, obj.nodeid)
        self._overrun_event = await self.server.get_event_generator(event_types.overrun, obj.nodeid)

    # ---- recipes

    def _active_recipe(self) -> str:
        return (self.recipes.active_id or "") if self.recipes is not None else ""

    def _recipe_ids(self) -> list[str]:
        return sorted(self.recipes.ids()) if self.recipes is not None else []

    def _write_recipe(self, node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
        """A client wrote ActiveRecipeId: switch through the catalog, or refuse (BadOutOfRange)."""
        assert self.recipes is not None
        wanted = value.Value.Value if value.Value is not None else None
        if not isinstance(wanted, str):
            raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange)
        wanted = wanted.strip()
        # The server's own refresh writes through here too, with the catalog's active id: nothing to switch.
        if wanted != (self.recipes.active_id or ""):
            try:
                if wanted:
                    self.recipes.get(wanted)
                self.recipes.set_active(wanted or None)  # empty: no recipe, the models' own rules
            except (RecipeError, KeyError, ValueError) as exc:
                log.warning("OPC UA: recipe %r refused for %s: %s", wanted, self.model, exc)
                raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange) from exc
            log.info("OPC UA: active recipe set to %r", wanted)
        node.attributes[attr].value = ua.DataValue(ua.Variant(wanted, V.String))
        self._shown["RecipeManagement.ActiveRecipeId"] = wanted

    async def refresh_recipes(self) -> None:
        """Show the catalog's active recipe and ids (another client or the HTTP API may have changed them)."""
        if self.recipes is not None:
            await self._set("RecipeManagement.ActiveRecipeId", self._active_recipe(), V.String)
            await self._set("RecipeManagement.RecipeIds", self._recipe_ids(), V.String)

    # ---- state

    async def set_model_state(self, ready: bool) -> None:
        self._model_ok = ready
        await self._show_state()

    async def _show_state(self) -> None:
        if not self._model_ok:
            state, sub, code, message = "Error", "", ERROR_MODEL_UNAVAILABLE, f"model {self.model} is not loaded"
        elif self._overrun:
            state, sub, code = "Error", "", ERROR_BUFFER_OVERRUN
            message = "result buffer full: acknowledge results (AcknowledgeResult) to receive the waiting ones"
        else:
            state, sub, code, message = "Operational", "Ready", ERROR_NONE, ""
        await self._set("VisionStateMachine.CurrentState", state, V.String)
        await self._set("VisionStateMachine.CurrentSubState", sub, V.String)
        await self._set("VisionStateMachine.ErrorCode", code, V.Int32)
        await self._set("VisionStateMachine.ErrorMessage", message, V.String)

    async def _set(self, path: str, value: Any, kind: ua.VariantType) -> None:
        """Write a value when it changed: every write is a data change for the subscribed clients."""
        if self._shown.get(path) != value:
            await self.vars[path].write_value(ua.Variant(value, kind))
            self._shown[path] = value

    # ---- results (service.plc.handshake.HandshakeListener, for this model)

    async def result_ready(self, result: PlcResult) -> None:
        event = self._ready_event
        for name, value in result_values(result).items():
            setattr(event.event, name, ua.Variant(value, dict(RESULT_FIELDS)[name]))
        await event.trigger(message=f"result {result.result_id} ready: {result.verdict}")

    async def overrun(self, result: PlcResult, buffer: ResultBuffer) -> None:
        event = self._overrun_event
        event.event.ResultId = ua.Variant(result.result_id, V.String)
        event.event.Unacknowledged = ua.Variant(len(buffer.ready), V.UInt32)
        event.event.Waiting = ua.Variant(len(buffer.waiting), V.UInt32)
        await event.trigger(message=f"result buffer full: result {result.result_id} waits for acknowledgements")

    async def buffer_changed(self, buffer: ResultBuffer) -> None:
        await self._set("ResultManagement.BufferCapacity", buffer.capacity, V.UInt32)
        await self._set("ResultManagement.Unacknowledged", len(buffer.ready), V.UInt32)
        await self._set("ResultManagement.Waiting", len(buffer.waiting), V.UInt32)
        await self._set("ResultManagement.Overrun", buffer.overrun, V.Boolean)
        await self._set("ResultManagement.OverrunCount", min(buffer.overruns, 2**32 - 1), V.UInt32)
        oldest = buffer.oldest
        for name, value in result_values(oldest.result if oldest else None).items():
            await self.oldest[name].write_value(ua.Variant(value, dict(RESULT_FIELDS)[name]))
        if buffer.overrun != self._overrun:
            self._overrun = buffer.overrun
            await self._show_state()

    async def _on_acknowledge(self, parent: ua.NodeId, result_id: ua.Variant) -> ua.StatusCode | list[ua.Variant]:
        """AcknowledgeResult(ResultId). asyncua answers any exception with BadUnexpectedError, so the
        refusals are returned as status codes."""
        value = result_id.Value if isinstance(result_id, ua.Variant) else result_id
        if not isinstance(value, str) or not value:
            return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidArgument))
        try:
            await self._acknowledge(self.model, value)
        except NotReadyError:  # waits behind the full buffer: it was never announced
            return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidState))
        except UnknownResultError:
            return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadNotFound))
        return []
