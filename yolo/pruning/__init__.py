"""Network slimming: the channel graph (graph.py) and what each section type couples (sections.py).
The entry points (prune_model, the report, the sparsity penalty, the CLI) are in ``yolo.prune``."""
