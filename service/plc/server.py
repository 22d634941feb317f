"""The OPC UA server of the PLC interface: settings → an asyncua server in the app's event loop, with one
VisionSystem per model (service.plc.nodes) fed by the result handshake (service.plc.handshake).

Security: with a key pair (BRIDGENET_OPCUA_CERT_FILE / _KEY_FILE) the only endpoint is Basic256Sha256
SignAndEncrypt and every session logs in with a user name and password from the users file; without one
(development only, service.config refuses it elsewhere) the endpoint is unencrypted and anonymous.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from sqlalchemy import Engine as DbEngine

from service.cancellation import cancel_until_done
from service.config import Settings
from service.engine import Engine
from service.metrics import PlcMetrics, RecordsMetrics
from service.plc.buffer import ResultBuffer
from service.plc.handshake import Handshake
from service.plc.nodes import RecipeCatalog, VisionSystemNodes, create_event_types
from service.plc.results import PlcResult
from service.ui.users import UserDirectory

log = logging.getLogger(__name__)

NAMESPACE = "urn:bridgenet:inspection:machinevision"
DEFAULT_APPLICATION_URI = f"{NAMESPACE}:server"
STATE_EVERY_S = 1.0


async def certificate_uri(path: Path) -> str | None:
    """The application URI in the certificate's subject alternative names: clients check that the server's
    application URI is the one its certificate names."""
    certificate = await uacrypto.load_certificate(path)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class PasswordUsers(UserManager):
    """asyncua's user manager over a users file (service.ui.users): a known name with its password is a
    User; anyone else, anonymous included, is refused."""

    def __init__(self, path: Path) -> None:
        self.directory = UserDirectory(path)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if not username or password is None:
            return None
        user = self.directory.authenticate(username, password)
        if user is None:
            log.warning("OPC UA: login refused for %r", username)
            return None
        return User(role=UserRole.User, name=user.name)


class _Router:
    """The handshake's listener: each call goes to its model's VisionSystem."""

    def __init__(self, systems: dict[str, VisionSystemNodes]) -> None:
        self.systems = systems

    async def result_ready(self, result: PlcResult) -> None:
        await self.systems[result.model].result_ready(result)

    async def overrun(self, result: PlcResult, buffer: ResultBuffer) -> None:
        await self.systems[buffer.model].overrun(result, buffer)

    async def buffer_changed(self, buffer: ResultBuffer) -> None:
        await self.systems[buffer.model].buffer_changed(buffer)


class PlcServer:
    """Start with `await PlcServer.start(...)` once the engine and the records run; `await stop()` before
    they stop. `handshake.wake` is the records' commit listener."""

    def __init__(self, server: Server, handshake: Handshake, systems: dict[str, VisionSystemNodes], engine: Engine):
        self.server = server
        self.handshake = handshake
        self.systems = systems
        self.engine = engine
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        engine: Engine,
        db_engine: DbEngine,
        metrics: PlcMetrics | None = None,
        recipes: RecipeCatalog | None = None,
        push_metrics: RecordsMetrics | None = None,
    ) -> PlcServer:
        assert settings.opcua_url is not None
        secure = settings.opcua_cert_file is not None
        users = PasswordUsers(settings.opcua_users_file or settings.users_path) if secure else None
        if users is not None and not users.directory.users():
            log.warning(
                "OPC UA: no users in %s, every login is refused; add one with "
                "`python -m service users add --file %s NAME`",
                users.directory.path,
                users.directory.path,
            )
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(settings.opcua_url)
        server.set_server_name("BridgeNet inspection")
        uri = await certificate_uri(settings.opcua_cert_file) if settings.opcua_cert_file else None
        await server.set_application_uri(uri or DEFAULT_APPLICATION_URI)
        if secure:
            assert settings.opcua_key_file is not None
            await server.load_certificate(str(settings.opcua_cert_file))
            await server.load_private_key(str(settings.opcua_key_file))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            log.warning("OPC UA without encryption or login (BRIDGENET_ENVIRONMENT=development, no key pair)")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        idx = await server.register_namespace(NAMESPACE)
        names = sorted(set(engine.models) | set(engine.unavailable))
        handshake = Handshake(
            db_engine,
            names,
            capacity=settings.opcua_buffer_size,
            ttl=timedelta(seconds=settings.opcua_result_ttl_s),
            metrics=metrics,
            push_metrics=push_metrics,
        )
        event_types = await create_event_types(server, idx)
        folder = await server.nodes.objects.add_folder(
            ua.NodeId(ua.String("VisionSystems"), ua.Int16(idx)), ua.QualifiedName("VisionSystems", idx)
        )
        systems = {name: VisionSystemNodes(server, idx, name, handshake.acknowledge, recipes) for name in names}
        for system in systems.values():
            await system.build(folder, event_types)
            await system.buffer_changed(handshake.buffers[system.model])
        handshake.listener = _Router(systems)
        plc = cls(server, handshake, systems, engine)
        await plc.show_state()
        await server.start()  # listening: a taken port fails the start-up here
        try:
            await handshake.start()
        except BaseException:
            await server.stop()
            raise
        plc._watch = asyncio.create_task(plc._watch_state(), name="plc-state")
        log.info(
            "OPC UA server at %s (%s), VisionSystems %s",
            settings.opcua_url,
            "Basic256Sha256 SignAndEncrypt, user names" if secure else "no security, anonymous",
            names,
        )
        return plc

    async def show_state(self) -> None:
        """Each VisionSystem Operational while its model is served and the engine ready, else Error."""
        served = set(self.engine.models) if self.engine.ready else set()
        for name, system in self.systems.items():
            await system.set_model_state(name in served)
            await system.refresh_recipes()

    async def _watch_state(self) -> None:
        while True:
            await asyncio.sleep(STATE_EVERY_S)
            try:
                await self.show_state()
            except Exception:  # one failed refresh must not end the state display for good
                log.exception("OPC UA: state refresh failed")

    async def stop(self) -> None:
        await cancel_until_done(self._watch)
        await self.handshake.stop()
        await self.server.stop()
