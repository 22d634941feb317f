"""The network: frozen backbones (`backbones`), BridgeNet itself (`bridgenet`), its losses and the smoothing
of its anomaly maps."""
