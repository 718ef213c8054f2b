"""Block families; importing this package registers every section type."""
from . import acnet, conv, res2net, resnet, routing, scnet, yolo_layer  # noqa: F401  # noqa: F401  (ACNet, [bottleneck], [scbottleneck])
