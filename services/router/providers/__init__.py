"""Pure translators between gatehouse's canonical (OpenAI) form and each provider's wire format."""
