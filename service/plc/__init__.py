"""The PLC interface: an OPC UA server with one Machine Vision VisionSystem per model (OPC 40100-1 subset)
and a result handshake over the push outbox; owner: service.plc.server."""
