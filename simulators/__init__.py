"""The network's other parties, simulated for offline tests: the hub and 国保連 (and devnet)."""
