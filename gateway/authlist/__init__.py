"""照会許可照合リスト: the hub's signed authorization list, kept, refreshed and enforced."""
