"""Generic file helpers: atomic writes, content digests, user errors and config files."""
