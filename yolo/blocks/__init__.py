"""Block families; importing this package registers every section type (heads: ``yolo.heads``)."""
from . import acnet, conv, res2net, resnet, routing, scnet, yolo_layer  # noqa: F401  (registration by import)
