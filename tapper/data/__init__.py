"""LaMP data: record types, the task registry, file I/O, builders from raw dumps, the built-in sample, stats.

Import the submodules directly (`tapper.data.lamp_io`, `tapper.data.builders`, ...); this package file
stays empty so that importing one of them never pulls in the others.
"""
