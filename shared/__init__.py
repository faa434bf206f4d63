"""gatehouse shared package: bus schemas, subjects, errors and config used by every service."""
