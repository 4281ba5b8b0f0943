"""The on-disk data contracts: a dataset folder (``dataset``), written by ``importers`` and decoded by
``decode``, bad rows (``bad_rows``), and embeddings sets (``embeddings``)."""
