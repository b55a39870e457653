"""Speed measurements, side by side in one run (ratios, never absolute times in tests)."""
