"""simprune as a backend for other pruning tools.

* :mod:`simprune.integrations.torch_pruning`: ``SimilarityImportance``, a Torch-Pruning
  ``Importance`` (imported lazily: importing this package does not import Torch-Pruning).
* :mod:`simprune.integrations.nn_prune`: ``SimilarityStructured``, a ``torch.nn.utils.prune``
  method.
* Any other tool: the plain-tensor functions of :mod:`simprune.functional`.
"""
