"""The `ref2video` command."""
