"""The gateway's commands of the ``chukan`` command line (records, staff, ops, keys)."""
