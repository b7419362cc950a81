"""Tests for backup.stream, one module each."""
