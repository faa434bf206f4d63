"""gatehouse ingress service."""
