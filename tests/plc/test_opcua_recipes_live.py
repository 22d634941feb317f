"""Recipe switching from the PLC on a running service: writing ActiveRecipeId over OPC UA changes the model
that answers the next part, and its ResultReady event names the recipe."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from asyncua import Client, ua

from tests.plc.opcua_client import VisionSystem, post_part, start_service
from tests.plc.test_opcua_live import stop_cleanly
from tests.service.fake_model import write_fake_model

pytestmark = pytest.mark.slow


def test_the_plc_switches_the_recipe_and_the_next_part_is_scored_by_its_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    write_fake_model(models, "other")
    (models / "recipes").mkdir()
    for recipe_id, model in (("line-a", "fake"), ("line-b", "other")):
        recipe = {"id": recipe_id, "version": "1", "model": model}
        (models / "recipes" / f"{recipe_id}.json").write_text(json.dumps(recipe), encoding="utf-8")
    service, url = start_service(models, tmp_path / "service.log", tmp_path / "data", recipe="line-a")

    async def scenario() -> None:
        async with Client(url, timeout=10) as client:
            fake, other = await VisionSystem.find(client, "fake"), await VisionSystem.find(client, "other")
            assert await fake.read("RecipeManagement/ActiveRecipeId") == "line-a"
            assert await fake.read("RecipeManagement/RecipeIds") == ["line-a", "line-b"]
            on_fake, on_other = (
                await fake.subscribe("ResultReadyEventType"),
                await other.subscribe("ResultReadyEventType"),
            )
            first = await asyncio.to_thread(post_part, service, "before")
            (event,) = await on_fake.wait_for(1)
            assert (event.ResultId, event.ExternalRecipeId, event.InternalRecipeId) == (first, "line-a", "line-a@1")

            active = await fake.child("RecipeManagement/ActiveRecipeId")
            await active.write_value(ua.Variant("line-b", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError):
                await active.write_value(ua.Variant("line-z", ua.VariantType.String))
            second = await asyncio.to_thread(post_part, service, "after")
            (event,) = await on_other.wait_for(1)
            assert (event.ResultId, event.ExternalRecipeId) == (second, "line-b")
            assert len(on_fake.received) == 1
            record = httpx.get(f"{service.url}/v1/results/{second}", timeout=10).json()
            assert record["model"]["name"] == "other"

    try:
        asyncio.run(scenario())
    finally:
        stop_cleanly(service)
