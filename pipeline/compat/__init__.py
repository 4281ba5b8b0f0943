"""The training math, free of Ray: the method catalogue (``methods``), the losses and terms of each
method (``losses``), the objectives that add them up (``objectives``), old-space statistics
(``statistics``) and one optimisation step (``steps``)."""
