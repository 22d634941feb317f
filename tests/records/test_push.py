"""Push through the outbox to a real mosquitto broker and a real webhook receiver, on SQLite and
PostgreSQL: at least once, in order, exactly the recorded bytes, across a broker outage and a restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from service.metrics import Metrics
from service.push.destinations import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    MqttDestination,
    WebhookDestination,
    unsigned_payload,
)
from service.push.dispatcher import Backoff, Bounds, Dispatcher, requeue
from service.records.database import create_db_engine, database_url, migrate
from service.records.store import DecisionRecord, Recorder
from service.records.tables import DeadLetterRow, OutboxRow
from tests.records.conftest import decision
from tests.records.servers import Mosquitto, WebhookReceiver, free_port, self_signed_certificate

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
        # The counter follows the delete's commit (another thread): wait for it, not only for the row.
        delivered = metrics.records.push_delivered.labels(destination="webhook")
        await wait_until(lambda: delivered._value.get() == 2, "both deliveries to be counted")
        await dispatcher.stop()
        db_engine.dispose()
        assert metrics.records.push_failures.labels(destination="webhook")._value.get() == 2

    asyncio.run(scenario())
    first_three, last = webhook.received[:3], webhook.received[3]
    body = json.dumps(decision(7, ng=True).payload(), separators=(",", ":")).encode()
    for got in first_three:  # the same message each time: one idempotency key, one body, a valid signature
        assert got.headers[IDEMPOTENCY_HEADER] == "req-00007"
        assert got.body == body
        assert got.headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert last.headers[IDEMPOTENCY_HEADER] == "req-00008"  # in order: the next one only after the first went
    assert json.loads(last.body)["is_anomalous"] is False


def test_webhook_4xx_dead_letters_the_message_and_the_next_goes_through_then_retry_requeues(
    db_url: str, webhook: WebhookReceiver
) -> None:
    # 429 means "later": retried. 422 means "never": dead-lettered, and the next result is not held back.
    webhook.script = [429, 422]

    async def scenario() -> None:
        engine = create_db_engine(db_url)
        migrate(engine)
        metrics = Metrics()
        dispatcher = Dispatcher(engine, [WebhookDestination(webhook.url)], metrics.records, FAST)
        recorder = Recorder(engine, destinations=("webhook",), on_commit=dispatcher.wake)
        await dispatcher.start()
        await asyncio.to_thread(recorder.record, decision(7, ng=True))
        await asyncio.to_thread(recorder.record, decision(8, ng=False))
        await wait_until(lambda: len(webhook.received) == 3, "429, 422 for the first result, 200 for the next")
        await wait_until(lambda: recorder.backlog()["webhook"]["waiting"] == 0, "the outbox to drain")
        delivered = metrics.records.push_delivered.labels(destination="webhook")
        await wait_until(lambda: delivered._value.get() == 1, "the next result to count as delivered")
        assert recorder.backlog()["webhook"]["dead_letters"] == 1
        refused = metrics.records.push_dead_lettered.labels(destination="webhook", reason="refused")
        assert refused._value.get() == 1

        assert requeue(engine, ["webhook"]) == {"webhook": 1}
        dispatcher.wake()
        await wait_until(lambda: len(webhook.received) == 4, "the re-queued result to go out again")
        await wait_until(lambda: recorder.backlog()["webhook"]["waiting"] == 0, "the outbox to drain again")
        assert recorder.backlog()["webhook"]["dead_letters"] == 0
        await wait_until(
            lambda: metrics.records.push_dead_letters.labels(destination="webhook")._value.get() == 0,
            "the dead-letter gauge to follow",
        )
        await dispatcher.stop()
        engine.dispose()

    asyncio.run(scenario())
    ids = [got.headers[IDEMPOTENCY_HEADER] for got in webhook.received]
    assert ids == ["req-00007", "req-00007", "req-00008", "req-00007"]
    assert webhook.received[3].body == webhook.received[0].body  # the same frozen bytes after the retry


def test_a_destination_that_stays_away_keeps_a_bounded_backlog(db_url: str) -> None:
    """Over the count bound the oldest results go to the dead letters (the newest keep their place); past
    the age bound every waiting one does; beyond their own bound the oldest dead letters are deleted."""
    unreachable = f"http://127.0.0.1:{free_port()}/results"  # nothing listens: every attempt fails, transiently

    async def scenario() -> None:
        engine = create_db_engine(db_url)
        migrate(engine)
        metrics = Metrics()
        bounds = Bounds(max_age=timedelta(hours=1), max_backlog=5, max_dead_letters=4)
        dispatcher = Dispatcher(engine, [WebhookDestination(unreachable)], metrics.records, FAST, bounds=bounds)
        recorder = Recorder(engine, destinations=("webhook",), on_commit=dispatcher.wake)
        await dispatcher.start()
        for i in range(8):
            await asyncio.to_thread(recorder.record, decision(i))
        overflow = metrics.records.push_dead_lettered.labels(destination="webhook", reason="overflow")
        await wait_until(lambda: overflow._value.get() == 3, "the backlog to shrink to its bound")
        assert recorder.backlog()["webhook"]["waiting"] == 5
        assert recorder.backlog()["webhook"]["dead_letters"] == 3
        with Session(engine) as session:
            waiting = session.scalars(select(OutboxRow.request_id).order_by(OutboxRow.id)).all()
            dead = session.scalars(select(DeadLetterRow.request_id).order_by(DeadLetterRow.id)).all()
        assert waiting == [f"req-{i:05d}" for i in range(3, 8)]
        assert dead == ["req-00000", "req-00001", "req-00002"]
        await dispatcher.stop()

        # The same outbox after a restart with a short age bound: everything waiting is too old now.
        aged = Bounds(max_age=timedelta(seconds=0.2), max_backlog=5, max_dead_letters=4)
        second = Dispatcher(engine, [WebhookDestination(unreachable)], metrics.records, FAST, bounds=aged)
        await asyncio.sleep(0.3)
        await second.start()
        expired = metrics.records.push_dead_lettered.labels(destination="webhook", reason="expired")
        await wait_until(lambda: expired._value.get() == 5, "the old results to expire")
        assert recorder.backlog()["webhook"]["waiting"] == 0
        with Session(engine) as session:
            dead = session.scalars(select(DeadLetterRow.request_id).order_by(DeadLetterRow.id)).all()
        assert dead == [f"req-{i:05d}" for i in range(4, 8)]  # 8 went dead; the 4 newest are kept
        assert recorder.get("req-00000") is not None  # the records themselves stay
        await second.stop()
        engine.dispose()

    asyncio.run(scenario())


async def one_message_through(
    engine: Engine, destination: MqttDestination, port: int, login: tuple[str, str], record: DecisionRecord
) -> bytes:
    """Subscribe as the PLC (`login`), record one result, push it through `destination`; the payload the
    PLC got."""
    async with aiomqtt.Client("127.0.0.1", port, username=login[0], password=login[1]) as plc:
        await plc.subscribe("bridgenet/results", qos=1)
        dispatcher = Dispatcher(engine, [destination], Metrics().records, FAST)
        recorder = Recorder(engine, destinations=("mqtt",), on_commit=dispatcher.wake)
        await dispatcher.start()
        await asyncio.to_thread(recorder.record, record)
        async with asyncio.timeout(DEADLINE_S):
            message = await anext(aiter(plc.messages))
        await dispatcher.stop()
    assert isinstance(message.payload, bytes)
    return message.payload


def test_mqtt_with_a_password_file_and_a_signed_payload(tmp_path: Path) -> None:
    """A broker that refuses anonymous clients: the service's user and password (from settings, the URL
    has none) get the result through; the payload's signature member checks out with the shared key."""
    broker = Mosquitto(tmp_path, users={"bridgenet": "line-1 pw", "plc": "plc-pw"})
    secret = "mqtt-shared-secret"

    async def scenario() -> None:
        broker.start()
        engine = create_db_engine(database_url(tmp_path / "data", None))
        migrate(engine)
        good = MqttDestination(
            broker.url, "bridgenet/results", username="bridgenet", password="line-1 pw", secret=secret
        )
        payload = await one_message_through(engine, good, broker.port, ("plc", "plc-pw"), decision(3, ng=True))
        body, sig = unsigned_payload(payload)
        assert body == json.dumps(decision(3, ng=True).payload(), separators=(",", ":")).encode()
        assert sig == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert json.loads(payload)["signature"] == sig  # still one JSON object

        # Without credentials the broker refuses the connection: a transient failure, the result waits.
        anonymous = Dispatcher(engine, [MqttDestination(broker.url, "bridgenet/results")], Metrics().records, FAST)
        recorder = Recorder(engine, destinations=("mqtt",), on_commit=anonymous.wake)
        await anonymous.start()
        await asyncio.to_thread(recorder.record, decision(4))
        await wait_until(lambda: (recorder.backlog()["mqtt"]["attempts"] or 0) >= 1, "a refused connection")
        assert recorder.backlog()["mqtt"]["waiting"] == 1
        assert recorder.backlog()["mqtt"]["dead_letters"] == 0
        await anonymous.stop()
        engine.dispose()

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_mqtts_with_credentials_in_the_url_and_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    broker = Mosquitto(tmp_path, users={"line": "p@ss:word"}, tls=(cert, key))

    async def scenario() -> None:
        broker.start()
        engine = create_db_engine(database_url(tmp_path / "data", None))
        migrate(engine)
        url = broker.tls_url.replace("mqtts://", "mqtts://line:p%40ss%3Aword@")  # percent-encoded in the URL
        destination = MqttDestination(url, "bridgenet/results", ca_file=str(cert))
        payload = await one_message_through(engine, destination, broker.port, ("line", "p@ss:word"), decision(5))
        assert payload == json.dumps(decision(5).payload(), separators=(",", ":")).encode()
        engine.dispose()

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_stop_ends_the_delivery_task_even_when_a_wake_lands_with_it(tmp_path: Path) -> None:
    """`stop()` cancels the delivery task while it idles; a `wake()` (a commit) can complete the idle wait
    in the very loop step the cancel lands in. Each stop must still end the task (a swallowed cancel would
    leave it polling for ever and `stop()` waiting on it), whatever the interleaving. SQLite only: the race is
    asyncio's, and on PostgreSQL a stopped dispatcher's advisory lock goes with its backend, which may exit
    after the next dispatcher asks (a replica waits a poll for it, as it should)."""
    unreachable = f"http://127.0.0.1:{free_port()}/results"

    async def scenario() -> None:
        engine = create_db_engine(database_url(tmp_path / "data", None))
        migrate(engine)
        for steps in range(8):  # how many loop steps the wake gets before the cancel
            for _ in range(10):
                dispatcher = Dispatcher(engine, [WebhookDestination(unreachable)], None, FAST, poll_s=30.0)
                await dispatcher.start()
                await asyncio.sleep(0.05)  # the task is idle now (nothing waits in the outbox)
                dispatcher.wake()
                for _ in range(steps):
                    await asyncio.sleep(0)
                async with asyncio.timeout(5.0):
                    await dispatcher.stop()
        engine.dispose()

    asyncio.run(scenario())


class AckedDestination:
    """Waits in `send` for an acknowledgement through asyncio.wait_for, as aiomqtt waits for a PUBACK."""

    name = "acked"

    def __init__(self) -> None:
        self.sending = asyncio.Event()
        self.ack = asyncio.Event()

    async def send(self, request_id: str, payload: str) -> None:
        self.sending.set()
        await asyncio.wait_for(self.ack.wait(), 30.0)

    async def close(self) -> None:
        pass


def test_stop_ends_the_delivery_task_even_when_an_acknowledgement_lands_with_it(tmp_path: Path) -> None:
    """The acknowledgement a destination waits for can complete in the very loop step that stop()'s cancel
    lands in; on Python 3.11 the cancel is then dropped inside the destination's wait_for. stop() must end
    the task all the same, whatever the interleaving."""

    async def scenario() -> None:
        engine = create_db_engine(database_url(tmp_path / "data", None))
        migrate(engine)
        for steps in range(6):  # how many loop steps the acknowledgement gets before the cancel
            for i in range(5):
                destination = AckedDestination()
                dispatcher = Dispatcher(engine, [destination], None, FAST, poll_s=30.0)
                recorder = Recorder(engine, destinations=("acked",), on_commit=dispatcher.wake)
                await dispatcher.start()
                await asyncio.to_thread(recorder.record, decision(steps * 10 + i))
                async with asyncio.timeout(10.0):
                    await destination.sending.wait()
                destination.ack.set()
                for _ in range(steps):
                    await asyncio.sleep(0)
                async with asyncio.timeout(5.0):
                    await dispatcher.stop()
        engine.dispose()

    asyncio.run(scenario())
