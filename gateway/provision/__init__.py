"""情報提供: provision requests answered exactly once, and the 自動応答不可 review queue."""
