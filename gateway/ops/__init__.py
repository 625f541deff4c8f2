"""Operations: health, readiness, metrics, status, statistics and the results purge."""
