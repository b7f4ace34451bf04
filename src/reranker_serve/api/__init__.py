"""HTTP layer: one small module per API dialect, plus the system routes."""
