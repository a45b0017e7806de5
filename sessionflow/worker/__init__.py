"""The pipeline worker: claims queued sessions and takes each through download, parse and
summarize (see runner.py), with leases that make a crashed worker's jobs come back."""
