"""What the live OPC UA tests share: a running service with an OPC UA address, an asyncua client on it,
the VisionSystem's nodes by browse path, and parts posted over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asyncua import Client, Node, ua

from tests.reliability.conftest import HOST, ServiceProcess, free_port, launch, service_env, wait_ready
from tests.service.fake_model import make_part, png_bytes, tiff_bytes

NAMESPACE = "urn:bridgenet:inspection:machinevision"
EVENT_TIMEOUT_S = 10.0


def start_service(models_dir: Path, log_path: Path, data_dir: Path, **settings: str) -> tuple[ServiceProcess, str]:
    """`python -m service` with an OPC UA server on a free loopback port; (service, opc.tcp URL)."""
    port, opc_port = free_port(), free_port()
    url = f"opc.tcp://{HOST}:{opc_port}"
    env = service_env(models_dir, "fake", opcua_url=url, data_dir=str(data_dir), **settings)
    service = ServiceProcess(launch(env, log_path, port), f"http://{HOST}:{port}", log_path)
    try:
        wait_ready(service)
    except BaseException:
        service.stop()
        raise
    return service, url


def post_part(service: ServiceProcess, part_id: str, meas_id: str | None = None, seed: int = 0) -> str:
    """Score one part over HTTP; its request id (the ResultId the PLC sees)."""
    rgb, xyz = make_part(seed=seed)
    data = {"part_id": part_id} | ({"meas_id": meas_id} if meas_id else {})
    answer = httpx.post(
        f"{service.url}/v1/predict",
        files={"rgb": ("rgb.png", png_bytes(rgb), "image/png"), "xyz": ("xyz.tiff", tiff_bytes(xyz), "image/tiff")},
        data=data,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


@dataclass
class Events:
    """An asyncua subscription handler that keeps every event it is sent."""

    received: list[Any] = field(default_factory=list)

    def event_notification(self, event: Any) -> None:
        self.received.append(event)

    async def wait_for(self, n: int, what: str = "events") -> list[Any]:
        deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT_S
        while len(self.received) < n:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{len(self.received)} {what} within {EVENT_TIMEOUT_S:g} s, expected {n}")
            await asyncio.sleep(0.05)
        return self.received


@dataclass
class VisionSystem:
    """One model's VisionSystem as a client finds it by browsing."""

    client: Client
    idx: int
    node: Node

    @classmethod
    async def find(cls, client: Client, model: str) -> VisionSystem:
        idx = await client.get_namespace_index(NAMESPACE)
        node = await client.nodes.objects.get_child([f"{idx}:VisionSystems", f"{idx}:{model}"])
        return cls(client, idx, node)

    async def child(self, path: str) -> Node:
        return await self.node.get_child([f"{self.idx}:{part}" for part in path.split("/")])

    async def read(self, path: str) -> Any:
        return await (await self.child(path)).read_value()

    async def event_type(self, name: str) -> Node:
        return await self.client.nodes.base_event_type.get_child(f"{self.idx}:{name}")

    async def subscribe(self, event_type: str) -> Events:
        events = Events()
        subscription = await self.client.create_subscription(20, events)
        await subscription.subscribe_events(self.node, await self.event_type(event_type))
        return events

    async def acknowledge(self, result_id: str) -> None:
        results = await self.child("ResultManagement")
        await results.call_method(f"{self.idx}:AcknowledgeResult", ua.Variant(result_id, ua.VariantType.String))


async def wait_until(check: Callable[[], Any], what: str, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.05)
