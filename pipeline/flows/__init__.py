"""The orders of steps: the embedded pipeline from one config (``experiment``) and the paper's
scenarios over seeds (``scenarios``)."""
