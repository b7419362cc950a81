"""The archive as a stream: the tar codec (``tarformat``), writing a tree into it
(``tarwriter``), reading it back (``tarreader``), the compression table
(``compression``) and the layers between tar and storage (``layers``, ``pipeline``)."""

__all__: list[str] = []
