"""Network slimming: the channel graph (graph.py) and how a block declares what it couples (rules.py:
``Rule`` and the reusable traces; each block class carries its own ``prune_rule``).
The entry points (prune_model, the report, the sparsity penalty, the CLI) are in ``yolo.prune``."""
