from .args import TitansModelArgs
from .model import TitansTransformer

__all__ = ["TitansModelArgs", "TitansTransformer"]
