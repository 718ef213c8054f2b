"""Block families; importing this package registers every section type (heads: ``yolo.heads``)."""
from . import (  # noqa: F401  (registration by import)
    acnet,
    batchnorm,
    classifier,
    contrastive,
    conv,
    crnn,
    crop,
    dense,
    gates,
    pooling,
    reorg,
    res2net,
    resnet,
    routing,
    scnet,
    yolo_layer,
)
