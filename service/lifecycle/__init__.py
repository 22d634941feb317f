"""A model's life in the service: the versions its folder holds, which one is active, promotion and rollback."""
