"""Speed, memory and comparison scripts (run as `python benchmarks/<name>.py`)."""
