"""Framework integrations; each is imported on its own and needs its extra:
``recordkit.integrations.lightning`` (``recordkit[lightning]``) and
``recordkit.integrations.keras`` (``recordkit[keras]``)."""
