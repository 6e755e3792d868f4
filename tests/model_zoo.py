"""The reference models every stage is checked on, built offline with random weights.

ResNet50, MobileNetV2 and VGG16 come from ``keras.applications`` (``weights=None``);
the BERT-style encoder is built from Keras layers (Embedding, MultiHeadAttention,
LayerNormalization, Dense with gelu) so it exercises the attention and layernorm
patterns the engine builder fuses. Image sizes default small so CI stays fast; the
benchmarks pass full sizes.
"""
import os

import numpy as np
import tensorflow as tf
import keras


def resnet50(image_size=64):
    return keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3))


def mobilenetv2(image_size=64):
    return keras.applications.MobileNetV2(weights=None, input_shape=(image_size, image_size, 3))


def vgg16(image_size=32):
    return keras.applications.VGG16(weights=None, input_shape=(image_size, image_size, 3))


def bert_encoder(seq_len=16, vocab=128, hidden=64, heads=4, ffn=128, layers=2):
    """A BERT-style encoder: token + position embeddings, post-LN transformer blocks."""
    ids = keras.Input((seq_len,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(vocab, hidden, name="tok_emb")(ids)
    pos = keras.layers.Embedding(seq_len, hidden, name="pos_emb")(np.arange(seq_len)[None, :])
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="emb_ln")(x + pos)
    for i in range(layers):
        attn = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"attn_{i}")(x, x)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"attn_ln_{i}")(x + attn)
        h = keras.layers.Dense(ffn, activation="gelu", name=f"ffn_in_{i}")(x)
        h = keras.layers.Dense(hidden, name=f"ffn_out_{i}")(h)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"ffn_ln_{i}")(x + h)
    return keras.Model(ids, x, name="bert_encoder")


def bert_base(seq_len=128):
    """BERT-base shape (12 layers, 768 hidden, 12 heads, 3072 ffn) for benchmarks."""
    return bert_encoder(seq_len=seq_len, vocab=30522, hidden=768, heads=12, ffn=3072, layers=12)


BUILDERS = {
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "vgg16": vgg16,
    "bert_encoder": bert_encoder,
}


#: Signature input name of each zoo model (Keras renumbers InputLayer names within a process).
INPUT_NAMES = {"resnet50": "images", "mobilenetv2": "images", "vgg16": "images", "bert_encoder": "input_ids"}


def randomize_weights(model, seed=0):
    """Give every zero/one-initialised weight a random value.

    ``weights=None`` leaves biases, BN shifts and moving statistics at 0 or 1, which
    Grappler folds away — graphs would then miss the BiasAdds and BN arithmetic real
    models have. Kernels keep their (already random) initialisation; variances stay
    positive and gammas near one so deep models keep a sane activation scale.
    """
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path if hasattr(w, "path") else w.name
        shape = tuple(w.shape)
        if "moving_variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "gamma" in name:
            value = rng.uniform(0.8, 1.2, shape)
        elif any(k in name for k in ("bias", "beta", "moving_mean")):
            value = 0.1 * rng.standard_normal(shape)
        else:
            continue
        w.assign(value.astype(w.dtype))
    return model


def export(model, path, input_name):
    """Write ``model`` as a SavedModel with a ``serving_default`` signature (batch dim free)."""
    specs = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype, name=input_name)]

    @tf.function(input_signature=specs)
    def serve(x):
        return {"output_0": model(x, training=False)}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def random_inputs(model_name, batch, seed=0, **builder_kwargs):
    """Fresh random inputs (never zeros) for a model of the zoo, keyed by signature arg name."""
    rng = np.random.default_rng(seed)
    if model_name == "bert_encoder":
        seq_len = builder_kwargs.get("seq_len", 16)
        vocab = builder_kwargs.get("vocab", 128)
        return {"input_ids": rng.integers(0, vocab, (batch, seq_len), dtype=np.int32)}
    size = builder_kwargs.get("image_size", 32 if model_name == "vgg16" else 64)
    return {"images": rng.standard_normal((batch, size, size, 3)).astype(np.float32)}


def build_saved_model(model_name, root, **builder_kwargs):
    """Build and export a zoo model under ``root``; returns the SavedModel path."""
    keras.utils.set_random_seed(1234)
    path = os.path.join(root, model_name)
    if not os.path.exists(path):
        model = randomize_weights(BUILDERS[model_name](**builder_kwargs))
        export(model, path, INPUT_NAMES[model_name])
    return path


class _SplitModel(tf.Module):
    """Two dense blocks with a string round trip between them, plus a second signature.

    The string ops (AsString, StringToNumber) can never join an engine, so the serving
    signature converts to two engines around them; ``logits`` is a second signature
    sharing the first block's variables.
    """

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.w1 = tf.Variable(rng.standard_normal((8, 16)).astype(np.float32) * 0.3)
        self.b1 = tf.Variable(rng.standard_normal(16).astype(np.float32) * 0.1)
        self.w2 = tf.Variable(rng.standard_normal((16, 4)).astype(np.float32) * 0.3)
        self.b2 = tf.Variable(rng.standard_normal(4).astype(np.float32) * 0.1)

    def block1(self, x):
        return tf.nn.relu(tf.matmul(tf.tanh(x), self.w1) + self.b1) * 2.0

    @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="x")])
    def serve(self, x):
        h = tf.strings.to_number(tf.strings.as_string(self.block1(x), precision=9))
        return {"y": tf.nn.sigmoid(tf.matmul(h, self.w2) + self.b2) - 0.5, "h": h}

    @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="x")])
    def logits(self, x):
        return {"logits": tf.matmul(self.block1(x), self.w2) + self.b2}


def build_split_model(root):
    """SavedModel of :class:`_SplitModel` with signatures ``serving_default`` and ``logits``."""
    path = os.path.join(root, "split_model")
    if not os.path.exists(path):
        m = _SplitModel()
        tf.saved_model.save(m, path, signatures={"serving_default": m.serve, "logits": m.logits})
    return path


def load_digits_split(seed=0):
    """scikit-learn's bundled 8x8 digits as (x_train, y_train, x_test, y_test): images in
    [0, 1] as float32 [N, 8, 8, 1], an 80/20 split shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def build_digits_classifier(root, epochs=30):
    """A small CNN (two convs, pool, two dense) trained on the digits train split and
    exported as a SavedModel (``images`` → ``output_0`` logits); returns its path.

    A trained model, unlike the random-weight zoo, has a task metric (accuracy) that an
    INT8 engine must keep."""
    path = os.path.join(root, "digits_cnn")
    if not os.path.exists(path):
        x_train, y_train, _, _ = load_digits_split()
        keras.utils.set_random_seed(7)
        model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ])
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        export(model, path, "images")
    return path
