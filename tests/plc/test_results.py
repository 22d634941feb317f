"""A pushed payload read into the fields the PLC sees, and the settings that guard the OPC UA server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.plc.results import PayloadError, parse_result
from tests.records.conftest import decision


def payload(**changes: Any) -> str:
    data = decision(7, ng=True).payload() | changes
    return json.dumps(data)


def test_a_recorded_payload_becomes_a_result() -> None:
    regions = [{"area_mm2": 3.5, "length_mm": 2.0}, {"area_mm2": 1.0, "length_mm": 4.5}, {"area_mm2": None}]
    result = parse_result(payload(regions=regions, meas_id="m-7"))
    assert (result.result_id, result.part_id, result.meas_id) == ("req-00007", "line1-0007", "m-7")
    assert (result.verdict, result.verdict_code, result.is_anomalous) == ("ng", 3, True)
    assert (result.largest_area_mm2, result.largest_length_mm) == (3.5, 4.5)
    assert (result.score, result.threshold, result.processing_time_ms) == (0.9, 0.5, 7.0)
    # Without a recipe the internal id still names exactly what produced the result: model and version.
    assert (result.external_recipe_id, result.internal_recipe_id) == ("", "demo@1.0.0")
    assert result.creation_time.tzinfo is not None


def test_recipe_ids_and_the_review_verdict_when_the_payload_carries_them() -> None:
    result = parse_result(payload(recipe={"id": "bagel-dark", "version": 3}, verdict="review"))
    assert (result.external_recipe_id, result.internal_recipe_id) == ("bagel-dark", "bagel-dark@3")
    assert (result.verdict, result.verdict_code) == ("review", 2)


@pytest.mark.parametrize("text", ["{}", "[1]", "not json", payload(verdict="maybe"), payload(score="high")])
def test_a_payload_that_is_no_result_is_refused_by_name(text: str) -> None:
    with pytest.raises(PayloadError):
        parse_result(text)


def test_settings_guard_the_opcua_server(tmp_path: Path) -> None:
    url = "opc.tcp://0.0.0.0:4840"
    assert Settings(opcua_url=url).opcua_url == url  # development: anonymous allowed
    cert = tmp_path / "cert.der"
    cert.write_bytes(b"x")
    cases = [
        ({"opcua_url": "http://0.0.0.0:4840"}, "expected opc.tcp://host:port"),
        ({"opcua_url": url, "opcua_cert_file": str(cert)}, "go together"),
        ({"opcua_url": url, "audit": "off"}, "needs BRIDGENET_AUDIT=on"),
        ({"opcua_url": url, "workers": 2}, "runs in one process only"),
        ({"opcua_url": url, "environment": "production", "api_key": "k" * 20}, "anonymous, unencrypted OPC UA"),
        ({"opcua_key_file": str(tmp_path / "missing.pem"), "opcua_cert_file": str(cert)}, "is not a file"),
    ]
    for values, expected in cases:
        with pytest.raises(ValidationError, match=expected):
            Settings(**values)
