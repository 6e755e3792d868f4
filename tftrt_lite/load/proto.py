"""Reading a SavedModel's protobuf without loading it into TensorFlow.

``tf.saved_model.load`` reports a wrong tag, a missing signature or a damaged file with
errors that do not say what the directory actually holds, and it only does so after
restoring every variable. Parsing ``saved_model.pb`` ourselves first costs milliseconds,
lets every user error name the path and list what exists (files, tag sets, signature
keys), and picks the MetaGraph whose signatures are then loaded.
"""
import os

from google.protobuf import message, text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model import constants

from tftrt_lite.errors import (
    InvalidSavedModelError,
    SavedModelNotFoundError,
    UnknownSignatureError,
    UnknownTagError,
)

SAVED_MODEL_FILENAME_PB = "saved_model.pb"
SAVED_MODEL_FILENAME_PBTXT = "saved_model.pbtxt"

# Keys the exporter writes for its own bookkeeping; they are not callable signatures.
INTERNAL_SIGNATURE_KEYS = frozenset(
    {constants.INIT_OP_SIGNATURE_KEY, constants.TRAIN_OP_SIGNATURE_KEY})


def read_saved_model_proto(path: str) -> saved_model_pb2.SavedModel:
    """Parse the ``SavedModel`` proto of the directory ``path``.

    Raises ``SavedModelNotFoundError`` when ``path`` is missing or holds neither
    ``saved_model.pb`` nor ``saved_model.pbtxt``, and ``InvalidSavedModelError`` when the
    file cannot be parsed or holds no MetaGraph.
    """
    if not os.path.exists(path):
        raise SavedModelNotFoundError(f"SavedModel directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise SavedModelNotFoundError(
            f"{path!r} is a file, not a SavedModel directory (expected a directory holding "
            f"{SAVED_MODEL_FILENAME_PB})")
    pb_path = os.path.join(path, SAVED_MODEL_FILENAME_PB)
    pbtxt_path = os.path.join(path, SAVED_MODEL_FILENAME_PBTXT)
    proto = saved_model_pb2.SavedModel()
    if os.path.isfile(pb_path):
        with open(pb_path, "rb") as f:
            data = f.read()
        try:
            proto.ParseFromString(data)
        except message.DecodeError as e:
            raise InvalidSavedModelError(
                f"{pb_path!r} is truncated or corrupt ({len(data)} bytes): cannot parse it as a "
                f"SavedModel proto: {e}") from e
        source = pb_path
    elif os.path.isfile(pbtxt_path):
        with open(pbtxt_path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as e:
            raise InvalidSavedModelError(
                f"{pbtxt_path!r} is corrupt: cannot parse it as a text SavedModel proto: {e}") from e
        source = pbtxt_path
    else:
        found = sorted(os.listdir(path))
        raise SavedModelNotFoundError(
            f"{path!r} is not a SavedModel: it holds no {SAVED_MODEL_FILENAME_PB} or "
            f"{SAVED_MODEL_FILENAME_PBTXT}; files found: {found or 'none (empty directory)'}")
    if not proto.meta_graphs:
        # A cut that lands on a field boundary parses cleanly but leaves no MetaGraph.
        raise InvalidSavedModelError(
            f"{source!r} holds no MetaGraph (truncated or not written by a SavedModel exporter)")
    return proto


def tag_sets(proto: saved_model_pb2.SavedModel) -> list[list[str]]:
    """The tag set of every MetaGraph in ``proto``, in file order."""
    return [list(mg.meta_info_def.tags) for mg in proto.meta_graphs]


def select_meta_graph(proto: saved_model_pb2.SavedModel, tags: list[str],
                      path: str) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph whose tag set equals ``tags`` (as a set), as the SavedModel loader matches."""
    wanted = set(tags)
    for meta_graph in proto.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    raise UnknownTagError(
        f"SavedModel {path!r} has no MetaGraph with tags {sorted(wanted)}; "
        f"tag sets present: {tag_sets(proto)}")


def resolve_signature_keys(meta_graph: meta_graph_pb2.MetaGraphDef, signature_keys,
                           path: str) -> list[str]:
    """Turn the user's ``signature_keys`` (None, a str, or a sequence) into checked keys.

    ``None`` selects every signature, sorted. Raises ``UnknownSignatureError`` listing the
    keys present when one is missing, or when the MetaGraph has no signature at all.
    """
    present = sorted(k for k in meta_graph.signature_def if k not in INTERNAL_SIGNATURE_KEYS)
    tags = list(meta_graph.meta_info_def.tags)
    if not present:
        raise UnknownSignatureError(
            f"SavedModel {path!r} (tags {tags}) has no signatures; export it with "
            f"tf.saved_model.save(..., signatures=...) to convert it")
    if signature_keys is None:
        return present
    keys = [signature_keys] if isinstance(signature_keys, str) else list(signature_keys)
    if not keys:
        raise UnknownSignatureError(
            f"no signature key requested for SavedModel {path!r}; keys present: {present}")
    for key in keys:
        if key not in present:
            raise UnknownSignatureError(
                f"SavedModel {path!r} (tags {tags}) has no signature {key!r}; "
                f"keys present: {present}")
    return list(dict.fromkeys(keys))
