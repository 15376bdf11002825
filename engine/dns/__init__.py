"""The serving resolver: one async, TTL-cached resolver whose answers are values (`resolver`)."""
