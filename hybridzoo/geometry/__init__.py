"""Geometries: one class per geometry, one shared interface (:class:`Geometry`), one registry.

>>> from hybridzoo.geometry import Lorentz, Euclidean, Product
>>> g = Product([(Euclidean(), 64), (Lorentz(curvature=1.0), 64)])
"""
from __future__ import annotations

from .base import LOGIT_KINDS, Curvature, CurvedGeometry, Geometry, full_precision
from .euclidean import Euclidean
from .lorentz import Lorentz
from .product import Product
from .sphere import Sphere

__all__ = ["Geometry", "CurvedGeometry", "Curvature", "Euclidean", "Lorentz", "Sphere", "Product",
           "GEOMETRIES", "build_geometry", "full_precision", "LOGIT_KINDS"]

#: Geometry classes by config name. The only place that maps names to geometries.
GEOMETRIES: dict[str, type[Geometry]] = {cls.name: cls for cls in (Euclidean, Lorentz, Sphere, Product)}

# Keys of a geometry config that describe rather than parametrise (written for readers of config.json).
_DESCRIPTIVE_KEYS = ("geometry", "convention", "dim")


def build_geometry(config: dict) -> Geometry:
    """Rebuild a geometry from ``Geometry.to_config()`` output (or a hand-written dict of the same form).

    ``{"geometry": "lorentz", "curvature": 1.0}``; products list their factors, each with its ``dim``:
    ``{"geometry": "product", "factors": [{"geometry": "euclidean", "dim": 64}, {"geometry": "lorentz", "dim": 64}]}``.
    """
    name = config.get("geometry")
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r}; choose one of {sorted(GEOMETRIES)}")
    if name == Product.name:
        factors = config.get("factors") or []
        for factor in factors:
            if "dim" not in factor:
                raise ValueError(f"product factor {factor} needs a 'dim' (its feature dimension)")
        return Product([(build_geometry(f), int(f["dim"])) for f in factors])
    kwargs = {k: v for k, v in config.items() if k not in _DESCRIPTIVE_KEYS}
    try:
        return GEOMETRIES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for geometry {name!r}: {kwargs} ({err})") from None
