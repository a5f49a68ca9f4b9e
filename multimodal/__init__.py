"""Per-modality projections and the fusion MLP into one joint embedding space (DESIGN section 8).

Built in a later issue; the encoders themselves live in ``arrowengine``. Depends on ``arrowengine`` only.
"""

__all__: list[str] = []
