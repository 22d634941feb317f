"""The PLC interface's security on a real service: with a key pair only Basic256Sha256 SignAndEncrypt and a
user name with its password get in; production without a key pair does not start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from service.ui.users import add_user
from tests.plc.opcua_client import VisionSystem, start_service
from tests.plc.test_opcua_live import stop_cleanly
from tests.reliability.conftest import run_until_exit
from tests.service.fake_model import write_fake_model

pytestmark = pytest.mark.slow

LINE_KEY = "line-key-0123456789abcdef"
SERVER_URI = "urn:test:bridgenet:opcua-server"
CLIENT_URI = "urn:test:plc"
PASSWORD = "plc-password-0123"


def key_pair(directory: Path, uri: str, use: list[object]) -> tuple[Path, Path]:
    """A self-signed certificate (DER) naming `uri` and its key (PEM), as OPC UA wants them."""
    cert, key = directory / f"{uri.rsplit(':', 1)[-1]}.der", directory / f"{uri.rsplit(':', 1)[-1]}.pem"
    asyncio.run(setup_self_signed_certificate(key, cert, uri, "localhost", use, {"commonName": uri}))  # type: ignore[arg-type]
    return cert, key


def test_signed_encrypted_with_a_password_and_nothing_else(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    server_cert, server_key = key_pair(tmp_path, SERVER_URI, [ExtendedKeyUsageOID.SERVER_AUTH])
    client_cert, client_key = key_pair(tmp_path, CLIENT_URI, [ExtendedKeyUsageOID.CLIENT_AUTH])
    users = tmp_path / "plc-users.json"
    add_user(users, "plc1", "reviewer", PASSWORD)
    service, url = start_service(
        tmp_path / "models",
        tmp_path / "service.log",
        tmp_path / "data",
        environment="production",
        api_key=LINE_KEY,
        opcua_cert_file=str(server_cert),
        opcua_key_file=str(server_key),
        opcua_users_file=str(users),
    )

    def secure_client(user: str, password: str) -> Client:
        client = Client(url, timeout=10)
        client.application_uri = CLIENT_URI
        client.set_user(user)
        client.set_password(password)
        return client

    async def scenario() -> None:
        client = secure_client("plc1", PASSWORD)
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
        async with client:
            vs = await VisionSystem.find(client, "fake")
            assert await vs.read("VisionStateMachine/CurrentState") == "Operational"
            endpoints = await client.get_endpoints()
        assert {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints} == {
            ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt)
        }
        assert {t.TokenType for e in endpoints for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName}

        wrong = secure_client("plc1", "not-the-password")
        await wrong.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
        with pytest.raises(ua.UaStatusCodeError):
            async with wrong:
                pass

        anonymous = Client(url, timeout=10)  # no security, no user: the server offers no such endpoint
        with pytest.raises((ua.UaError, OSError, TimeoutError)):
            async with anonymous:
                await VisionSystem.find(anonymous, "fake")

    try:
        asyncio.run(scenario())
    finally:
        stop_cleanly(service)
    assert "login refused for 'plc1'" in service.log_text()
    assert PASSWORD not in service.log_text()


def test_production_without_a_key_pair_refuses_to_start(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    code, log = run_until_exit(
        tmp_path / "models", tmp_path, environment="production", api_key=LINE_KEY, opcua_url="opc.tcp://127.0.0.1:4840"
    )
    assert code == 2, log[-2000:]
    assert "BRIDGENET_OPCUA_URL in BRIDGENET_ENVIRONMENT=production needs BRIDGENET_OPCUA_CERT_FILE" in log
