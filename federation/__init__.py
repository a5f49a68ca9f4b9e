"""LoRA cards and delta sync between nodes over Arrow Flight DoExchange (DESIGN section 7).

Built in a later issue; this package is the seam. It may depend on ``arrowengine`` and ``quant`` only.
"""

__all__: list[str] = []
