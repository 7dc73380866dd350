"""The peers TAP-PER is measured against, on the same harness (examples, loop, generation, metrics)."""
