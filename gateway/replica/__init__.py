"""副本: the replica items, registration messages, export, reconciliation, bulk import."""
