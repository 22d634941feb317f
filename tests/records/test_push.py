"""Push through the outbox to a real mosquitto broker and a real webhook receiver, on SQLite and
PostgreSQL: at least once, in order, exactly the recorded bytes, across a broker outage and a restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from service.metrics import Metrics
from service.push.destinations import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, MqttDestination, WebhookDestination
from service.push.dispatcher import Backoff, Dispatcher
from service.records.database import create_db_engine, migrate
from service.records.store import Recorder
from tests.records.conftest import decision
from tests.records.servers import Mosquitto, WebhookReceiver

FAST = Backoff(first_s=0.05, max_s=0.4)
DEADLINE_S = 30.0
PLC = "plc-line1"  # the subscriber's client id: a persistent session, as a PLC should have


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def subscribe_persistently(broker: Mosquitto, topic: str) -> None:
    """Register the PLC's persistent session (clean_session=False, QoS 1), then go offline."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=PLC, clean_session=False) as client:
        await client.subscribe(topic, qos=1)


async def collect(broker: Mosquitto, n: int) -> list[tuple[str, bytes]]:
    """Come back online with the persistent session and read `n` messages (queued ones first)."""
    out: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=PLC, clean_session=False) as client:
        async with asyncio.timeout(DEADLINE_S):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                out.append((str(message.topic), message.payload))
                if len(out) == n:
                    break
    return out


def test_broker_down_then_up_delivers_all_in_order_across_a_restart(db_url: str, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    n = 12

    async def scenario() -> None:
        broker.start()
        await subscribe_persistently(broker, "bridgenet/+/results")
        broker.stop()  # the line's broker goes down

        db_engine = create_db_engine(db_url)
        migrate(db_engine)
        metrics = Metrics()
        first = Dispatcher(db_engine, [MqttDestination(broker.url, "bridgenet/{model}/results")], metrics.records, FAST)
        recorder = Recorder(db_engine, destinations=("mqtt",), on_commit=first.wake)
        await first.start()
        for i in range(n):
            await asyncio.to_thread(recorder.record, decision(i, ng=i % 4 == 0))
        failures = metrics.records.push_failures.labels(destination="mqtt")
        await wait_until(lambda: failures._value.get() >= 2, "failed attempts while the broker is down")
        assert recorder.backlog()["mqtt"]["waiting"] == n
        assert "MQTT 127.0.0.1" in (recorder.backlog()["mqtt"]["last_error"] or "")
        await first.stop()  # the service restarts while the broker is still down
        db_engine.dispose()

        db_engine = create_db_engine(db_url)
        migrate(db_engine)
        second = Dispatcher(
            db_engine, [MqttDestination(broker.url, "bridgenet/{model}/results")], metrics.records, FAST
        )
        await second.start()
        broker.start()  # the broker comes back
        backlog = metrics.records.push_backlog.labels(destination="mqtt")
        await wait_until(
            lambda: (
                backlog._value.get() == 0
                and Recorder(db_engine, destinations=("mqtt",)).backlog()["mqtt"]["waiting"] == 0
            ),
            "the outbox to drain",
        )
        received = await collect(broker, n)
        await second.stop()
        db_engine.dispose()

        expected = [json.dumps(decision(i, ng=i % 4 == 0).payload(), separators=(",", ":")) for i in range(n)]
        assert [payload.decode() for _, payload in received] == expected  # all, in order, byte for byte
        assert {topic for topic, _ in received} == {"bridgenet/demo/results"}
        assert metrics.records.push_delivered.labels(destination="mqtt")._value.get() == n

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_webhook_500_twice_then_200_delivers_once_with_one_idempotency_key(
    db_url: str, webhook: WebhookReceiver
) -> None:
    webhook.script = [500, 500]
    secret = "line-1-shared-secret"

    async def scenario() -> None:
        db_engine = create_db_engine(db_url)
        migrate(db_engine)
        metrics = Metrics()
        dispatcher = Dispatcher(db_engine, [WebhookDestination(webhook.url, secret)], metrics.records, FAST)
        recorder = Recorder(db_engine, destinations=("webhook",), on_commit=dispatcher.wake)
        await dispatcher.start()
        await asyncio.to_thread(recorder.record, decision(7, ng=True))
        await asyncio.to_thread(recorder.record, decision(8, ng=False))
        await wait_until(lambda: len(webhook.received) == 4, "three attempts for the first result, one for the next")
        await wait_until(lambda: recorder.backlog()["webhook"]["waiting"] == 0, "the outbox to drain")
        await dispatcher.stop()
        db_engine.dispose()
        assert metrics.records.push_failures.labels(destination="webhook")._value.get() == 2
        assert metrics.records.push_delivered.labels(destination="webhook")._value.get() == 2

    asyncio.run(scenario())
    first_three, last = webhook.received[:3], webhook.received[3]
    body = json.dumps(decision(7, ng=True).payload(), separators=(",", ":")).encode()
    for got in first_three:  # the same message each time: one idempotency key, one body, a valid signature
        assert got.headers[IDEMPOTENCY_HEADER] == "req-00007"
        assert got.body == body
        assert got.headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert last.headers[IDEMPOTENCY_HEADER] == "req-00008"  # in order: the next one only after the first went
    assert json.loads(last.body)["is_anomalous"] is False
