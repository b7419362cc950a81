"""Tests of ``backup.storage``: the contract every storage passes (``contract.py``), one
module per implementation, and the local directory's durable writes and lock."""
