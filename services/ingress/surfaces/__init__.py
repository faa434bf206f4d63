"""Pure translators between the extra client API surfaces (Anthropic Messages, OpenAI Responses) and chat form."""
