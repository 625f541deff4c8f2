"""情報提供等記録: the hash-chained provision records, signed checkpoints, verification."""
