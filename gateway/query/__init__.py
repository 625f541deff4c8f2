"""情報照会: a core system's query, sent to the hub and concluded exactly once."""
