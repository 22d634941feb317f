"""Push of recorded results to the line (MQTT, webhook) through the outbox; owner: service.push.dispatcher."""
