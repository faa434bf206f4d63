"""gatehouse command line and launcher (starts NATS and the four services on one machine)."""
