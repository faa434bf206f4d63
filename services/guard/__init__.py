"""gatehouse guard service."""
