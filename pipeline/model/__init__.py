"""Models: backbones with an embedding layer (``networks``), classification heads (``heads``), the
transformations between spaces (``transformations``), the typed card (``card``) and artifact folders
(``artifacts``)."""
