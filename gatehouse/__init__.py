"""gatehouse command line and launcher (starts NATS and the five services on one machine)."""
