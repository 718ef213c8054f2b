"""Block families; importing this package registers every section type."""
from . import conv, res2net, routing, yolo_layer  # noqa: F401
from . import acnet, resnet, scnet  # noqa: F401  (ACNet, [bottleneck], [scbottleneck])
