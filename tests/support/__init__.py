"""Helpers shared by the unit and integration tests (importable as ``support``):
storage emulators and fault-injecting wrappers, a source file system that fails on
purpose, fixed clocks, a CLI runner."""
