from .args import TitansModelArgs
from .model import TitansTransformer, caches_to_hold

__all__ = ["TitansModelArgs", "TitansTransformer", "caches_to_hold"]
