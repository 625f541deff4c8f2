"""chukan.gateway."""
