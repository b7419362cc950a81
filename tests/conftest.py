"""Fixtures for the whole test tree: real S3 servers (moto, SeaweedFS), buckets on them, a
fault-injecting proxy, and an environment pointing at them (see ``support/s3fixtures.py``)."""

pytest_plugins = ["support.s3fixtures"]
