"""Where results go: an MQTT broker (QoS 1) or an HTTP webhook. `send` returns once the destination has
acknowledged the message (PUBACK, a 2xx answer) and raises DeliveryError otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import httpx

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-BridgeNet-Signature"
SIGNATURE_FIELD = "signature"  # MQTT: the same value, as the payload's last member
IDEMPOTENCY_HEADER = "Idempotency-Key"


class DeliveryError(RuntimeError):
    """The destination did not take the message. Transient (the default): it stays in the outbox for a
    retry. Permanent: the destination refused this very message and would refuse it again (a 4xx answer),
    so it goes to the dead letters and the next message is tried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# 4xx answers that mean "not now" rather than "never": request timeout, too early, too many requests.
RETRYABLE_4XX = frozenset({408, 425, 429})


class Destination(Protocol):
    name: str

    async def send(self, request_id: str, payload: str) -> None: ...

    async def close(self) -> None: ...


class MqttDestination:
    """Publishes each result with QoS 1 to `topic` (its `{model}` replaced by the result's model name).

    One connection, opened on first use and again after any failure. The broker's PUBACK ends `send`;
    a message whose PUBACK was lost is sent again (at least once: subscribers dedupe on `request_id`).
    Credentials come from the arguments, else from the URL (`mqtt://user:password@host`); `mqtts://` speaks
    TLS and checks the broker's certificate against `ca_file` (else the system's CAs). With a `secret`,
    the payload ends with a `signature` member (see `signed_payload`).
    """

    name = "mqtt"

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        secret: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"expected mqtt://host:port, got {url!r}")
        self.hostname = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.username = username or (unquote(parts.username) if parts.username else None)
        self.password = password or (unquote(parts.password) if parts.password else None)
        self.tls = parts.scheme == "mqtts"
        self.ca_file = ca_file
        self.secret = secret.encode("utf-8") if secret else None
        self.topic = topic
        self._client: aiomqtt.Client | None = None

    def topic_for(self, payload: str) -> str:
        if "{model}" not in self.topic:
            return self.topic
        model = json.loads(payload).get("model", {}).get("name", "unknown")
        return self.topic.replace("{model}", model)

    def message(self, payload: str) -> bytes:
        body = payload.encode("utf-8")
        return body if self.secret is None else signed_payload(self.secret, body)

    async def send(self, request_id: str, payload: str) -> None:
        try:
            if self._client is None:
                client = aiomqtt.Client(
                    self.hostname,
                    self.port,
                    username=self.username,
                    password=self.password,
                    timeout=SEND_TIMEOUT_S,
                    tls_params=aiomqtt.TLSParameters(ca_certs=self.ca_file) if self.tls else None,
                )
                await client.__aenter__()
                self._client = client
            await self._client.publish(self.topic_for(payload), self.message(payload), qos=1, timeout=SEND_TIMEOUT_S)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            await self.close()
            raise DeliveryError(f"MQTT {self.hostname}:{self.port}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                # Bounded: a DISCONNECT the broker never completes must not hold up a shutdown.
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:  # already gone: nothing to close
                log.debug("MQTT disconnect: %s", exc)


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signed_payload(secret: bytes, body: bytes) -> bytes:
    """A JSON object's bytes with `"signature":"sha256=<hex>"` appended as its last member, the HMAC taken
    over the object's bytes without it. MQTT 3.1.1 has no headers, so the signature travels inside; a
    subscriber checks it by cutting the message at its last `,"signature":` and closing the object with `}`
    (`unsigned_payload`), which gives back the exact bytes that were signed."""
    if not body.endswith(b"}"):
        raise ValueError("only a JSON object can carry a signature member")
    return body[:-1] + b',"' + SIGNATURE_FIELD.encode() + b'":"' + signature(secret, body).encode() + b'"}'


def unsigned_payload(message: bytes) -> tuple[bytes, str]:
    """The signed bytes and the signature of a `signed_payload` message; ValueError if it carries none."""
    marker = b',"' + SIGNATURE_FIELD.encode() + b'":"'
    cut = message.rfind(marker)
    if cut < 0 or not message.endswith(b'"}'):
        raise ValueError("the message carries no signature member")
    return message[:cut] + b"}", message[cut + len(marker) : -2].decode("ascii")


class WebhookDestination:
    """POSTs each result as JSON. `Idempotency-Key: <request_id>` lets the receiver drop a retried
    duplicate; with a secret, `X-BridgeNet-Signature: sha256=<hex HMAC of the body>` proves the sender."""

    name = "webhook"

    def __init__(self, url: str, secret: str | None = None) -> None:
        self.url = url
        parts = urlsplit(url)  # for messages and logs: without user:password@ or a query string
        self.shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.secret = secret.encode("utf-8") if secret else None
        self._http = httpx.AsyncClient(timeout=SEND_TIMEOUT_S)

    async def send(self, request_id: str, payload: str) -> None:
        body = payload.encode("utf-8")
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: request_id}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        try:
            response = await self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.shown}: {exc or type(exc).__name__}") from exc
        if not response.is_success:
            code = response.status_code
            permanent = 400 <= code < 500 and code not in RETRYABLE_4XX
            raise DeliveryError(f"webhook {self.shown} answered {code}", permanent=permanent)

    async def close(self) -> None:
        await self._http.aclose()
