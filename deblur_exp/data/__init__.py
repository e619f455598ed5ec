"""Images in, aligned (sharp, degraded) uint8 patch arrays out. Each step is one module."""
