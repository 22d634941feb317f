"""The VisionSystem's ActiveRecipeId over a real OPC UA session: a write goes through the recipe catalog,
an unknown recipe is refused and changes nothing, and a switch made elsewhere shows on the node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import Client, ua

from service.config import Settings
from service.plc.server import PlcServer
from service.records.database import create_db_engine, database_url, migrate
from tests.plc.opcua_client import VisionSystem, wait_until
from tests.reliability.conftest import HOST, free_port


class Catalog:
    """The smallest recipe catalog: two recipes, one active; remembers every switch."""

    def __init__(self) -> None:
        self.active_id: str | None = "bagel-a"
        self.switches: list[str] = []

    def ids(self) -> list[str]:
        return ["bagel-a", "bagel-b"]

    def get(self, recipe_id: str) -> dict[str, str]:
        if recipe_id not in self.ids():
            raise KeyError(f"unknown recipe {recipe_id!r}")
        return {"id": recipe_id}

    def set_active(self, recipe_id: str) -> None:
        self.get(recipe_id)
        self.switches.append(recipe_id)
        self.active_id = recipe_id


class Engine:
    """What the PLC server reads of the engine: which models are served, and whether it is ready."""

    def __init__(self) -> None:
        self.ready = True
        self.models = {"bagel": object()}
        self.unavailable = {"cookie": "model.onnx is missing"}


def test_the_active_recipe_is_written_through_the_catalog(tmp_path: Path) -> None:
    url = f"opc.tcp://{HOST}:{free_port()}"
    settings = Settings(opcua_url=url, data_dir=tmp_path)
    db_engine = create_db_engine(database_url(tmp_path, None))
    migrate(db_engine)
    catalog = Catalog()

    async def scenario() -> None:
        plc = await PlcServer.start(settings, Engine(), db_engine, recipes=catalog)  # type: ignore[arg-type]
        try:
            async with Client(url, timeout=10) as client:
                vs = await VisionSystem.find(client, "bagel")
                assert vs.idx == 2  # DEPLOYMENT's string NodeIds say ns=2
                by_id = client.get_node("ns=2;s=bagel.RecipeManagement.ActiveRecipeId")
                assert await by_id.read_value() == "bagel-a"
                assert await vs.read("RecipeManagement/RecipeIds") == ["bagel-a", "bagel-b"]
                active = await vs.child("RecipeManagement/ActiveRecipeId")
                assert await active.read_value() == "bagel-a"
                await active.write_value(ua.Variant("bagel-b", ua.VariantType.String))
                assert catalog.switches == ["bagel-b"] and catalog.active_id == "bagel-b"
                assert await active.read_value() == "bagel-b"
                with pytest.raises(ua.UaStatusCodeError) as refused:
                    await active.write_value(ua.Variant("donut", ua.VariantType.String))
                assert refused.value.code == ua.StatusCodes.BadOutOfRange
                assert catalog.switches == ["bagel-b"] and await active.read_value() == "bagel-b"

                catalog.set_active("bagel-a")  # e.g. through the HTTP API

                async def shown() -> bool:
                    return bool(await active.read_value() == "bagel-a")

                await wait_until(shown, "the catalog's switch shown on ActiveRecipeId")
                # A model that failed to load has its VisionSystem, in Error with code 1.
                cookie = await VisionSystem.find(client, "cookie")
                assert await cookie.read("VisionStateMachine/CurrentState") == "Error"
                assert await cookie.read("VisionStateMachine/ErrorCode") == 1
                assert await vs.read("VisionStateMachine/CurrentState") == "Operational"
        finally:
            await plc.stop()

    asyncio.run(scenario())
    db_engine.dispose()
