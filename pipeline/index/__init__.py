"""Serving a gallery through an upgrade: an index on disk that records which model wrote each
vector (``store``), behind the compatibility guard (``guard``)."""
