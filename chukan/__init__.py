"""chukan: a 中間サーバー emulator for My Number information linkage (介護保険, 千葉市)."""
