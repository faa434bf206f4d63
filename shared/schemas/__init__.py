"""Message schemas that travel on the bus (msgspec Structs; fields are only ever appended, with defaults)."""
