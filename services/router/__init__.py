"""gatehouse router service."""
