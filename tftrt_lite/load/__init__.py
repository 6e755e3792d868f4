"""Stage "load": SavedModel -> one frozen, Grappler-cleaned GraphDef per signature."""
from tftrt_lite.load.saved_model import load_saved_model
from tftrt_lite.load.signature import LoadedSavedModel, SignatureGraph, TensorBinding

__all__ = ["load_saved_model", "LoadedSavedModel", "SignatureGraph", "TensorBinding"]
