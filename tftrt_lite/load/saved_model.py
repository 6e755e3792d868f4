"""``load_saved_model``: the entry point of the load stage.

Order matters for error quality and speed: the proto is parsed and the tags and
signature keys are checked before TensorFlow restores anything, so a typo costs
milliseconds and the message lists what the SavedModel does hold. Only then is the
model restored once and each selected signature frozen and cleaned.
"""
import logging
import time

import tensorflow as tf

from tftrt_lite.errors import InvalidSavedModelError
from tftrt_lite.load.freeze import freeze_signature
from tftrt_lite.load.grappler import clean_frozen_graph
from tftrt_lite.load.proto import read_saved_model_proto, resolve_signature_keys, select_meta_graph
from tftrt_lite.load.signature import (
    LoadedSavedModel,
    SignatureGraph,
    check_bindings_in_graph,
    signature_bindings,
)

logger = logging.getLogger(__name__)

DEFAULT_TAGS = ("serve",)


def load_saved_model(path, tags=None, signature_keys=None) -> LoadedSavedModel:
    """Load the SavedModel at ``path`` as frozen, cleaned GraphDefs, one per signature.

    Args:
      path: SavedModel directory (``str`` or path-like).
      tags: tag set of the MetaGraph to load (a list, or one tag as a str); ``None`` means
        ``["serve"]``.
      signature_keys: ``None`` for every signature (sorted by key), one key as a str, or a
        sequence of keys (kept in the given order).

    Raises:
      SavedModelNotFoundError: ``path`` is missing or is not a SavedModel directory.
      InvalidSavedModelError: the proto or variables cannot be read, or a signature is too
        large to freeze.
      UnknownTagError / UnknownSignatureError: the tag set or a key is not in the model.
    """
    path = str(path)
    tags = list(DEFAULT_TAGS) if tags is None else ([tags] if isinstance(tags, str) else list(tags))
    proto = read_saved_model_proto(path)
    meta_graph = select_meta_graph(proto, tags, path)
    keys = resolve_signature_keys(meta_graph, signature_keys, path)

    start = time.perf_counter()
    try:
        loaded = tf.saved_model.load(path, tags)
    except (tf.errors.OpError, ValueError, OSError) as e:
        raise InvalidSavedModelError(
            f"TensorFlow could not restore SavedModel {path!r} (tags {tags}): "
            f"{type(e).__name__}: {e}") from e
    restore_seconds = time.perf_counter() - start

    signatures = {}
    for key in keys:
        signatures[key] = _load_signature(key, loaded.signatures[key], path)
        logger.info("loaded signature %r of %s: %d nodes, freeze %.2f s, cleanup %.2f s", key,
                    path, len(signatures[key].graph_def.node), signatures[key].freeze_seconds,
                    signatures[key].optimize_seconds)
    return LoadedSavedModel(path=path, tags=tags, signatures=signatures,
                            restore_seconds=restore_seconds)


def _load_signature(key: str, func, path: str) -> SignatureGraph:
    start = time.perf_counter()
    frozen_func = freeze_signature(key, func, path)
    inputs, outputs = signature_bindings(key, frozen_func)
    frozen_at = time.perf_counter()
    graph_def = clean_frozen_graph(frozen_func)
    check_bindings_in_graph(key, graph_def, inputs + outputs)
    done = time.perf_counter()
    return SignatureGraph(key=key, graph_def=graph_def, inputs=inputs, outputs=outputs,
                          frozen_func=frozen_func, freeze_seconds=frozen_at - start,
                          optimize_seconds=done - frozen_at)
