"""chukan.simulators."""
