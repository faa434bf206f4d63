"""Rule data shipped with the guard (YAML), loaded once at startup."""
