"""gatehouse accounting service."""
