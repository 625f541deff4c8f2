"""chukan.codecs."""
