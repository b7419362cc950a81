"""Helpers shared by the application's packages."""
